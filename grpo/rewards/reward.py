"""The declared reward type: a score function and what the harness needs to know about it.

    Reward(fn)                                        # fn(completion, example) -> float
    Reward(one, batch=many, load=load, timeout=None)  # a model reward: whole batches, no limit
    Reward(fn, steps="newline")                       # a step reward (grpo.rewards.steps)
    reward("<answer>7</answer>", example)             # called like the function it holds

Built-ins and the model rewards construct one; a user's plain function is wrapped into one
(`Reward.of`); `@grpo.steps.step_reward(split)` returns one. The harness
(grpo.rewards.harness) reads these fields, never attributes planted on a function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpo.tasks.base import Example

__all__ = ["REWARD_TIMEOUT", "Reward"]


class _ConfigTimeout:
    """The default of Reward.timeout: the run's `reward_timeout` applies."""

    def __repr__(self) -> str:
        return "REWARD_TIMEOUT"


REWARD_TIMEOUT = _ConfigTimeout()


def _nothing() -> None:
    """The load of a reward that holds nothing to load."""


@dataclass(frozen=True)
class Reward:
    fn: Callable[[str, Example], Any]  # one completion's score (a step reward: its steps' scores)
    # the whole batch in one call, -> one value per completion; the harness prefers it
    batch: Callable[[list[str], list[Example]], list[Any]] | None = None
    # loads what it holds (a model) before the first call: rewards.build calls it, so a bad
    # model directory fails before training and loading is not charged to the timeout
    load: Callable[[], Any] = _nothing
    # seconds one call (one batch call) may take; None: no limit; REWARD_TIMEOUT: the config's
    timeout: float | None | _ConfigTimeout = REWARD_TIMEOUT
    steps: str | None = None  # None: one number per completion; else its step split (grpo.rewards.steps)

    def __call__(self, completion: str, example: Example) -> Any:
        return self.fn(completion, example)

    @classmethod
    def of(cls, fn: Reward | Callable[[str, Example], Any]) -> Reward:
        """`fn` itself when it is a Reward, else a plain function wrapped into one."""
        return fn if isinstance(fn, Reward) else cls(fn)

    def limit(self, default: float | None) -> float | None:
        """The timeout that applies to this reward when the run's reward_timeout is `default`."""
        return default if isinstance(self.timeout, _ConfigTimeout) else self.timeout
