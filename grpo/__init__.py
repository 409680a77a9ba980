"""grpo: Group Relative Policy Optimization on verifiable rewards.

    import grpo
    results = grpo.train("configs/demo.yaml", rewards=[my_reward, "format"], **{"train.num_steps": 50})

`grpo.train` / `grpo.evaluate` (grpo.api) build the same Config and run the same loop as the
CLI; `grpo.Config` / `grpo.load_config` are the config tree; `grpo.rewards` the reward registry.
Imported on first use, so `import grpo` (and the CLI's start) stays light.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["Config", "evaluate", "load_config", "train"]

# Modules user code imports by their names from before the folders (grpo.steps.step_reward in a
# reward file, an environment's grpo.environments.Environment, a tool raising grpo.tools.ToolError).
MOVED = {"grpo.steps": "grpo.rewards.steps", "grpo.environments": "grpo.episodes.environment",
         "grpo.tools": "grpo.episodes.tools"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import grpo.steps` gives the module object of grpo.rewards.steps itself (one module, two names)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: Any) -> None:  # the module ran under its own name already
        pass


sys.meta_path.insert(0, _MovedModules())  # before the path finder: a stale old folder must not win


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate"):
        from grpo import api

        return getattr(api, name)
    if name in ("Config", "load_config"):
        from grpo import config

        return getattr(config, name)
    if f"grpo.{name}" in MOVED:
        return importlib.import_module(MOVED[f"grpo.{name}"])
    raise AttributeError(f"module 'grpo' has no attribute {name!r}")
