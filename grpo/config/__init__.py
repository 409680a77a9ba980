"""The run's config tree: dataclasses with every field documented, their rules, YAML in and out.

    cfg = load_config("configs/demo.yaml", ["algorithm.beta=0.04", "train.num_steps=20"])

A leaf: it imports only the standard library and yaml, never the code it configures (nor
torch). values.py spells the allowed values (a test holds them equal to the code's dispatch
tables), checks.py the per-field checks written beside each field in sections.py (and
generation.py: the rollout section; objective.py: the algorithm section), rules.py
the rules across fields with the runtime facts passed in, schema.py the root `Config`, io.py
YAML and dotted overrides in and the resolved copy out, docs.py docs/configuration.md.
"""

from grpo.config.checks import doc
from grpo.config.generation import RolloutConfig
from grpo.config.io import (
    apply_overrides,
    describe,
    from_dict,
    load_config,
    read_yaml,
    save_config,
    to_dict,
)
from grpo.config.objective import AlgorithmConfig, AuxLossSpec
from grpo.config.rules import Facts
from grpo.config.schema import Config
from grpo.config.sections import (
    CheckpointConfig,
    EvalConfig,
    IterativeConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    ReferenceConfig,
    RewardSpec,
    TaskConfig,
    TrainConfig,
)

__all__ = ["AlgorithmConfig", "AuxLossSpec", "CheckpointConfig", "Config", "EvalConfig", "Facts", "IterativeConfig", "LogConfig",
           "LoraConfig", "ModelConfig", "ReferenceConfig", "RewardSpec", "RolloutConfig", "TaskConfig", "TrainConfig",
           "apply_overrides", "describe", "doc", "from_dict", "load_config", "read_yaml", "save_config", "to_dict"]
