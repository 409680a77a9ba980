"""Asynchronous generation with bounded staleness (rollout.max_staleness = k > 0).

Lockstep (k = 0) generates a step's rollouts, then trains on them, so generation and training
take turns. With k > 0 the rollouts of the next steps are generated (by the rollout server,
on its own devices) while the current step trains:

  1. at the start of step s the loop takes batch s and tops the queue up to batches
     s+1 .. s+L (L = k // algorithm.num_iterations, the lag in steps), each from the next
     prompts of the data stream; one background thread asks the engine for them in order;
  2. batch s+L is requested after the weights of step s were pushed (the loop pushes at the
     end of every step, before it comes back here), so it samples from version >= W_s, and
     trains at W_{s+L} <= W_s + L * num_iterations <= W_s + k: every sample is at most k
     optimizer updates older than the weights of the step's first update, the policy pi_old
     that its importance weight pi_old / q compares with the sampler's q. The loop asserts
     this for every row (`staleness`);
  3. rewards are scored when the loop takes a batch (the reward functions stay on the loop's
     thread), then advantages and the update as in lockstep.

Why only rollout.engine=server: the in-process engines generate on the devices the update
runs on (nothing to overlap with on one device), and either decode with the policy module
itself, which the optimizer changes in place under a running generation (torn weights), or
(vLLM) hold a copy that a sync rewrites while a generation reads it.
Why not with dynamic sampling: how many prompts a step draws depends on the rewards of its
earlier rounds, which are not known when its prompts must be requested ahead.

Checkpoints: rollouts in flight are dropped. The stream position saved is that of the
examples trained on (the position minus the prompts in flight), so a resumed run requests
the same prompts again, in the same order, sampled from the checkpoint's weights.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any


@dataclass
class Arrived:
    """One step's rollouts as the loop takes them."""

    examples: list[Any]  # this rank's prompts, in stream order
    trajectory: Any
    generation_seconds: float  # the background generation's own time
    wait_seconds: float  # how long the loop waited for it


class RolloutPipeline:
    """Batches of rollouts in flight ahead of the step that trains.

    take_prompts() -> the next step's prompts (this rank's share; `stride` stream positions
    each); sample(examples) -> Trajectory runs on the background thread; refresh() runs on the
    loop's thread while it waits (the server engine pushes weights there after a restart).
    """

    def __init__(self, take_prompts: Callable[[], list[Any]], sample: Callable[[list[Any]], Any], lag: int,
                 stride: int, refresh: Callable[[], None] = lambda: None):
        assert lag >= 1
        self.take_prompts, self.sample, self.lag, self.stride, self.refresh = take_prompts, sample, lag, stride, refresh
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-rollout-async")
        self.in_flight: deque[tuple[list[Any], Future]] = deque()

    @property
    def prompts_in_flight(self) -> int:
        """Stream positions taken for batches not yet trained on."""
        return len(self.in_flight) * self.stride

    def next(self, remaining: int) -> Arrived:
        """Step s's batch; batches up to s + lag are requested first (after this step's weights),
        none past the run's last step (`remaining`: steps left, this one included)."""
        while len(self.in_flight) < min(self.lag + 1, remaining):
            examples = self.take_prompts()
            self.in_flight.append((examples, self.executor.submit(self._timed, examples)))
        examples, future = self.in_flight.popleft()
        start = time.perf_counter()
        while not wait([future], timeout=0.1).done:
            self.refresh()
        trajectory, seconds = future.result()
        return Arrived(examples, trajectory, seconds, time.perf_counter() - start)

    def _timed(self, examples: list[Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        return self.sample(examples), time.perf_counter() - start

    def close(self) -> None:
        """Drop what is in flight (a running request finishes first; nothing trains on it)."""
        for _, future in self.in_flight:
            future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.in_flight.clear()


def staleness(policy_version: Any, trained_version: int, max_staleness: int) -> dict[str, float]:
    """Updates between each row's sampling weights and the weights that train on it; the bound
    is an invariant of the pipeline, so a violation is a bug (assert)."""
    lag = trained_version - policy_version.long()  # [N]
    assert int(lag.max()) <= max_staleness, f"a sample {int(lag.max())} updates old > rollout.max_staleness"
    assert int(lag.min()) >= 0, "a sample from weights newer than the trainer's"
    return {"async/staleness_mean": float(lag.float().mean()), "async/staleness_max": int(lag.max())}
