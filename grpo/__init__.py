"""grpo: Group Relative Policy Optimization on verifiable rewards.

    import grpo
    results = grpo.train("configs/demo.yaml", rewards=[my_reward, "format"], **{"train.num_steps": 50})

`grpo.train` / `grpo.evaluate` (grpo.api) build the same Config and run the same loop as the
CLI; `grpo.Config` / `grpo.load_config` are the config tree; `grpo.rewards` the reward registry.
Imported on first use, so `import grpo` (and the CLI's start) stays light.
"""

from typing import Any

__all__ = ["Config", "evaluate", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate"):
        from grpo import api

        return getattr(api, name)
    if name in ("Config", "load_config"):
        from grpo import config

        return getattr(config, name)
    raise AttributeError(f"module 'grpo' has no attribute {name!r}")
