"""The run's config tree: dataclasses with every field documented, their rules, YAML in and out.

    cfg = load_config("configs/demo.yaml", ["algorithm.beta=0.04", "train.num_steps=20"])

schema.py holds the dataclasses, io.py builds them from YAML and dotted overrides and writes
the resolved copy into the run directory.
"""

from grpo.config.io import (
    apply_overrides,
    describe,
    from_dict,
    load_config,
    read_yaml,
    save_config,
    to_dict,
)
from grpo.config.schema import (
    AlgorithmConfig,
    CheckpointConfig,
    Config,
    EvalConfig,
    IterativeConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    ReferenceConfig,
    RewardSpec,
    RolloutConfig,
    TaskConfig,
    TrainConfig,
    doc,
)

__all__ = ["AlgorithmConfig", "CheckpointConfig", "Config", "EvalConfig", "IterativeConfig", "LogConfig", "LoraConfig",
           "ModelConfig", "ReferenceConfig", "RewardSpec", "RolloutConfig", "TaskConfig", "TrainConfig",
           "apply_overrides", "describe", "doc", "from_dict", "load_config", "read_yaml", "save_config", "to_dict"]
