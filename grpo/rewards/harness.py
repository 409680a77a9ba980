"""Score a batch of completions with several reward functions, containing their failures.

    scores = score([WeightedReward("accuracy", 1.0, fn), ...], completions, examples, timeout=10.0)
    scores.total            # [N] float32: sum of weight * value over the calls that succeeded
    scores.per_function     # name -> [N] float32, NaN where the call failed
    scores.errors           # name -> number of failed calls in this batch
    scores.steps            # None, or per row [(end offset, weighted score), ...] of the step rewards
    scores.outcome(fns)     # ([F, N] the outcome rewards' rows, [F] their weights): what total sums

Each function is a Reward (grpo.rewards.reward; a plain function is wrapped into one) and the
harness reads its fields. A step (process) reward (`steps` set: grpo.rewards.steps) returns the
scores of the completion's steps instead of one number; they go to `scores.steps` (every step
reward's steps of a row, pooled, each score times its function's weight), and its
per-function row is the mean of its step scores. Step rewards add nothing to `total`.

A call fails when it raises, runs past its timeout, or returns something that is not a
finite number (None, NaN, inf, a string...). A failed call contributes 0 to the total (the
other functions still count for that completion), is counted in `errors`, and is logged as a
warning once per (function, example id) so a flaky function cannot flood the log.

Threads: each function runs its N calls one after another on one daemon thread, and the
functions run side by side, so a batch costs one thread per function, not one per call. The
calling thread watches the clock; when a call overruns, it is abandoned and a fresh thread
carries on with the next completion. CPython cannot kill a thread, so a call that never
returns leaks its (daemon) thread, which keeps running until the process exits; daemon
threads do not hold up exit, but one still running inside torch when the interpreter shuts
down can abort it, so abandoned threads are recorded (grpo.plugins.abandoned) and `grpo.cli` ends
the process at once when some still run. A Reward with a `batch(completions, examples)` is
called once for the whole batch (one call, one timeout); if that call fails, every
completion fails for that function.

The timeout: `timeout` (the config's reward_timeout) for every function, except a Reward with
its own `timeout` (None: no limit). The model rewards (grpo.rewards.model_rewards) set
theirs: their cost is a known forward pass that cannot hang the way user code can, and a
generic limit sized for user functions failed every batch of a judge on a CPU.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from grpo import algorithm
from grpo.plugins.abandoned import abandon
from grpo.rewards import steps as step_splits
from grpo.rewards.reward import Reward
from grpo.tasks.base import Example

__all__ = ["RewardScores", "WeightedReward", "outcome_scores", "score"]

log = logging.getLogger(__name__)


class WeightedReward(NamedTuple):
    name: str  # key in RewardScores.per_function / errors
    weight: float
    fn: Reward | Callable[[str, Example], float]  # a plain function is scored as Reward(fn)


@dataclass
class RewardScores:
    total: torch.Tensor  # [N] float32, weighted sum over successful calls
    per_function: dict[str, torch.Tensor]  # name -> [N] float32, NaN where the call failed
    errors: dict[str, int]  # name -> failed calls in this batch
    steps: list[step_splits.Steps] | None = None  # per row, the step rewards' (end, weighted score)

    def outcome(self, reward_fns: list[WeightedReward]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and weights that `total` sums (outcome_scores)."""
        return outcome_scores(reward_fns, self.per_function, len(self.total))

    def select(self, rows: list[int]) -> RewardScores:
        """The scores of some rows (the errors stay the batch's: they happened)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return RewardScores(self.total[index], {k: v[index] for k, v in self.per_function.items()}, dict(self.errors),
                            None if self.steps is None else [self.steps[i] for i in rows])

    @staticmethod
    def cat(parts: list[RewardScores]) -> RewardScores:
        """Rows of several batches in order; errors summed."""
        errors: dict[str, int] = {}
        for part in parts:
            for k, v in part.errors.items():
                errors[k] = errors.get(k, 0) + v
        steps = None if parts[0].steps is None else [row for p in parts for row in p.steps]
        return RewardScores(torch.cat([p.total for p in parts]),
                            {k: torch.cat([p.per_function[k] for p in parts]) for k in parts[0].per_function}, errors,
                            steps)


def outcome_scores(reward_fns: list[WeightedReward] | list[tuple[str, float, Callable[..., Any]]],
                   per_function: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The outcome rewards' scores [F, N] (NaN where a call failed) and weights [F] (float64), in
    the order of `reward_fns`; a step reward is not one (its row is the mean of its steps).
    The total is algorithm.weighted_sum of these, and the advantages read the same rows."""
    outcome = [(name, float(weight)) for name, weight, fn in reward_fns if Reward.of(fn).steps is None]
    rows = [per_function[name] for name, _ in outcome]
    return (torch.stack(rows) if rows else torch.zeros(0, n),
            torch.tensor([weight for _, weight in outcome], dtype=torch.float64))


class _Failure(str):
    """Why a call failed (a str subclass so it is told apart from a float value)."""


def score(
    reward_fns: list[WeightedReward] | list[tuple[str, float, Callable[..., Any]]],
    completions: list[str],
    examples: list[Example],
    timeout: float | None = 10.0,
) -> RewardScores:
    """Run every function on every (completion, example) pair; see the module docstring.

    timeout: seconds one call may take (None: no limit), for the functions without a
    `timeout` of their own (Reward.timeout). The clock of a call starts when the call
    starts, not when the batch does.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples; expected one each")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"reward timeout = {timeout!r} is invalid: expected a number of seconds > 0 or None")
    declared = [Reward.of(fn) for _, _, fn in reward_fns]
    runs = [_Run(name, reward, completions, examples, reward.limit(timeout))
            for (name, _, _), reward in zip(reward_fns, declared, strict=True)]
    _watch(runs)
    n = len(completions)
    per_function: dict[str, torch.Tensor] = {}
    errors: dict[str, int] = {}
    pooled: list[step_splits.Steps] | None = None
    for (name, weight, _), run in zip(reward_fns, runs, strict=True):
        values = torch.full((n,), float("nan"), dtype=torch.float32)  # [N]
        errors[name] = 0
        is_step_reward = run.reward.steps is not None
        if is_step_reward and pooled is None:
            pooled = [[] for _ in range(n)]
        for i, outcome in enumerate(run.outcomes):
            if isinstance(outcome, _Failure):
                errors[name] += 1
                _warn_once(name, examples[i].id, outcome)
            elif is_step_reward:
                pooled[i].extend((end, float(weight) * value) for end, value in outcome)
                if outcome:
                    values[i] = sum(value for _, value in outcome) / len(outcome)
            else:
                values[i] = outcome
        per_function[name] = values
    if pooled is not None:
        pooled = [sorted(row, key=lambda step: step[0]) for row in pooled]
    total = algorithm.weighted_sum(*outcome_scores(reward_fns, per_function, n))  # [N]
    return RewardScores(total=total, per_function=per_function, errors=errors, steps=pooled)


def _as_steps(value: Any, completion: str, split: str) -> step_splits.Steps | _Failure:
    """A step reward's [(end, score)], or the reason its output is not that (grpo.rewards.steps.as_steps)."""
    try:
        return step_splits.as_steps(value, completion, split)
    except ValueError as e:
        return _Failure(str(e))


def _as_score(value: Any) -> float | _Failure:
    """A finite float, or the reason the value is not one."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        try:
            shown = repr(value)[:80]
        except Exception:
            shown = "?"
        return _Failure(f"returned {type(value).__name__} {shown}, not a number")
    value = float(value)
    return value if math.isfinite(value) else _Failure(f"returned {value}")


class _Run:
    """One reward function over one batch, item by item on a daemon thread.

    State shared with the thread is read and written under `lock`: `index` is the call in
    progress, `started` when it started, `token` identifies the live thread (an abandoned
    thread sees a different token and drops its result).
    """

    def __init__(self, name: str, reward: Reward, completions: list[str], examples: list[Example],
                 timeout: float | None):
        self.name, self.reward, self.completions, self.examples = name, reward, completions, examples
        self.timeout = timeout
        self.n = len(completions)
        self.batched = reward.batch is not None
        split = reward.steps
        self.convert = ((lambda value, i: _as_score(value)) if split is None  # value, row -> outcome
                        else (lambda value, i: _as_steps(value, completions[i], split)))
        self.outcomes: list[Any] = [_Failure("not run")] * self.n
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.index, self.started, self.token = 0, time.monotonic(), object()
        if self.n == 0:
            self.done.set()
        else:
            self._start(0)

    def _start(self, index: int) -> None:
        self.index, self.started, self.token = index, time.monotonic(), object()
        self.thread = threading.Thread(target=self._work, args=(self.token, index), daemon=True,
                                       name=f"reward:{self.name}")
        self.thread.start()

    def _work(self, token: object, index: int) -> None:
        if self.batched:
            results = self._call_batch()
            with self.lock:
                if self.token is token:
                    self.outcomes = [self._timed_out()] * self.n if self._overran() else results
                    self.index = self.n
                    self.done.set()
            return
        for i in range(index, self.n):
            try:
                outcome = self.convert(self.reward.fn(self.completions[i], self.examples[i]), i)
            except BaseException as e:  # noqa: BLE001 - contained and reported, whatever it is
                outcome = _Failure(f"raised {type(e).__name__}: {e}")
            with self.lock:
                if self.token is not token:
                    return
                self.outcomes[i] = self._timed_out() if self._overran() else outcome
                self.index, self.started = i + 1, time.monotonic()
                if i + 1 == self.n:
                    self.done.set()

    def _call_batch(self) -> list[float | _Failure]:
        try:
            values = list(self.reward.batch(self.completions, self.examples))
        except BaseException as e:  # noqa: BLE001
            return [_Failure(f"batch call raised {type(e).__name__}: {e}")] * self.n
        if len(values) != self.n:
            return [_Failure(f"batch call returned {len(values)} values for {self.n} completions")] * self.n
        return [self.convert(v, i) for i, v in enumerate(values)]

    def _overran(self) -> bool:
        # A call that returns after its deadline counts as timed out even when the watcher has
        # not looked yet: the outcome must not depend on which thread the scheduler ran first.
        return self.timeout is not None and time.monotonic() - self.started >= self.timeout

    def _timed_out(self, abandoned: bool = False) -> _Failure:
        return _Failure(f"timed out after {self.timeout:g} s" + (" (its thread is abandoned)" if abandoned else ""))

    def deadline(self, now: float) -> float | None:
        """Abandon the call in progress if it overran; the next deadline (None when finished)."""
        timeout = self.timeout
        with self.lock:
            if self.done.is_set():
                return None
            if timeout is None:
                return math.inf
            if now - self.started < timeout:
                return self.started + timeout
            failed = range(self.n) if self.batched else [self.index]
            for i in failed:
                self.outcomes[i] = self._timed_out(abandoned=True)
            abandon(self.thread)
            if failed[-1] + 1 >= self.n:
                self.token = object()
                self.done.set()
                return None
            self._start(failed[-1] + 1)
            return self.started + timeout


def _watch(runs: list[_Run]) -> None:
    """Wait until every run has finished, abandoning calls as they overrun."""
    while True:
        now = time.monotonic()
        pending = [(d, run) for run in runs if (d := run.deadline(now)) is not None]
        if not pending:
            return
        deadline, run = min(pending, key=lambda p: p[0])
        # Woken early when this run finishes; at its deadline otherwise (then re-checked).
        run.done.wait(None if deadline == math.inf else max(0.0, deadline - now) + 1e-3)


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(name: str, example_id: str, reason: str) -> None:
    with _warned_lock:
        if (name, example_id) in _warned:
            return
        _warned.add((name, example_id))
    log.warning("reward `%s` failed on example %s: %s (scored as 0 in the total; "
                "reported once per example)", name, example_id, reason)
