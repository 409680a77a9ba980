"""What answers the model between its turns in a multi-turn episode.

An environment is a small class (named in the config by import path, `my_pkg.envs:Game` or
`envs.py:Game`, built once per episode with `rollout.environment_options`):

    class Game:
        def reset(self, example) -> list[dict]:          # the conversation the episode starts from
            return example.prompt                          # (the task's chat messages, usually)
        def step(self, assistant_text: str) -> tuple[list[dict], bool]:
            return [{"role": "user", "content": "warmer"}], False   # messages to append, done

`ToolEnvironment` is the built-in one: it runs the tool calls in the model's turn and answers
with their results; a turn without a call ends the episode. Environments know nothing about
engines or token ids: the episode runner (grpo.episodes.turns) renders their messages into
tokens and drives the engine. A message may carry `name` (the tool) and `error` (the kind of
failure) besides `role` and `content`; the runner counts them in the metrics.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from grpo.episodes.tool_env import ToolEnvironment, parse_tool_calls
from grpo.plugins.importing import import_object

__all__ = ["Environment", "ToolEnvironment", "environment_factory", "parse_tool_calls"]


class Environment(Protocol):
    def reset(self, example: Any) -> list[dict]:
        """The messages the episode starts from (the prompt)."""
        ...

    def step(self, assistant_text: str) -> tuple[list[dict], bool]:
        """Answer the model's last turn: (messages to append, whether the episode is done)."""
        ...


def environment_factory(spec: str, options: dict[str, Any]) -> Callable[[], Environment]:
    """A zero-argument builder of fresh environments from `module:Class` / `file.py:Class`."""
    cls = import_object(spec, "environment")
    if not callable(cls):
        raise ValueError(f"environment {spec!r}: {type(cls).__name__} is not a class or factory")
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if inspect.isclass(cls) and missing:
        raise ValueError(f"environment {spec!r}: the class has no {' / '.join(missing)} method "
                         "(it needs reset(example) -> messages and step(text) -> (messages, done))")
    try:
        inspect.signature(cls).bind(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"environment {spec!r}: cannot be built with rollout.environment_options "
                         f"{options!r}: {e}") from None
    return lambda: cls(**options)
