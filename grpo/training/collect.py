"""Steps 1-3 of a training step: this rank's prompts, G completions each, their rewards.

    collector = build_collector(cfg, sampler, reward_fns, world, engine, pad_token_id)  # once per run
    examples, trajectory, scores, metrics = collector.collect(data, params, state, lap)   # each step

Two variants, chosen once when the run is built, with the same methods (collect,
prompts_in_flight, trained_order, close): `Rounds` generates in lockstep, `Ahead` (with
rollout.max_staleness > 0) takes the batch that a background thread generated while earlier
steps trained (grpo.rollout.pipeline: at most max_staleness updates old).

In lockstep without algorithm.dynamic_sampling a step is one round. With it (DAPO's dynamic
sampling): rounds of train.prompts_per_step prompts, keeping the groups whose reward std
exceeds the tolerance (algorithm.reward_aggregation's own test: under normalize_then_sum, some
reward varies and the normalized rewards do not cancel, so exactly the groups it gives
advantages), until this rank holds its share or max_generation_rounds is reached.
Every rank takes every round's prompts from the stream (a full rank skips generating them)
and the rounds end together (world.any), so ranks stay in step and a resumed run draws the
same prompts. A rank that found no group with signal trains on its last round as it is
(advantages 0: only the KL term). The data stream is an argument of each call rather than
part of the object: it stays the trainer's, whose checkpoint records its position; every scored
group is shown to it (data.observe: its prompts' pass-rate estimates, grpo.tasks.sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpo import algorithm, rewards
from grpo.compute.distributed import World
from grpo.config import Config
from grpo.episodes.turns import EpisodeSampler, SingleTurnSampler
from grpo.rewards.harness import RewardScores, WeightedReward
from grpo.rollout import RolloutEngine, SamplingParams
from grpo.rollout.pipeline import RolloutPipeline, staleness
from grpo.tasks.base import Example
from grpo.tasks.sampling import PromptSampler
from grpo.training.checkpoint import TrainerState
from grpo.trajectory import Trajectory

Collected = tuple[list[Example], Trajectory, RewardScores, dict[str, float]]  # examples, trajectory, scores, metrics


def build_collector(cfg: Config, sampler: SingleTurnSampler | EpisodeSampler, reward_fns: list[WeightedReward],
                    world: World, engine: RolloutEngine, pad_token_id: int) -> Rounds | Ahead:
    """Rounds in lockstep, or Ahead over them with rollout.max_staleness > 0."""
    rounds = Rounds.from_config(cfg, sampler, reward_fns, world, pad_token_id)
    if cfg.rollout.max_staleness > 0:
        return Ahead(rounds, cfg.rollout.max_staleness, cfg.algorithm.num_iterations, cfg.train.num_steps,
                     engine.refresh)
    return rounds


@dataclass(frozen=True)
class Rounds:
    """What steps 1-3 need, built once per run; `collect` runs them for one training step."""

    sampler: SingleTurnSampler | EpisodeSampler
    reward_fns: list[WeightedReward]
    world: World
    prompts_per_step: int  # over all ranks: every round takes this many from the stream
    group_size: int
    reward_timeout: float
    dynamic_sampling: bool = False
    tolerance: float = 0.0  # a group with a reward std at most this has no signal
    max_rounds: int = 1
    pad_token_id: int = 0  # joins the kept rounds' trajectories
    reward_aggregation: str = "sum_then_normalize"  # which groups have signal (algorithm.REWARD_AGGREGATIONS)
    scale_rewards: str = "group"  # ... and its normalization (normalize_then_sum's cancellation test)
    advantage_eps: float = 1e-4
    prompts_in_flight = 0  # nothing is generated ahead in lockstep
    trained_order = None  # Ahead's record of what each step trained on

    @classmethod
    def from_config(cls, cfg: Config, sampler: SingleTurnSampler | EpisodeSampler, reward_fns: list[WeightedReward],
                    world: World, pad_token_id: int) -> Rounds:
        a = cfg.algorithm
        return cls(sampler, reward_fns, world, cfg.train.prompts_per_step, cfg.rollout.group_size, cfg.reward_timeout,
                   a.dynamic_sampling, a.dynamic_sampling_tolerance, a.max_generation_rounds, pad_token_id,
                   a.reward_aggregation, a.scale_rewards, a.advantage_eps)

    def score(self, examples: list[Example], trajectory: Trajectory) -> RewardScores:
        """Rewards per completion: completion i belongs to prompt i // G."""
        grouped = [ex for ex in examples for _ in range(self.group_size)]
        return rewards.score(self.reward_fns, trajectory.completions, grouped, self.reward_timeout)

    def close(self) -> None:
        pass  # nothing in flight

    def collect(self, data: PromptSampler, params: SamplingParams, state: TrainerState,
                lap: Callable[[str], None]) -> Collected:
        """This rank's examples, their trajectory and scores, and the dynamic/* metrics (none
        without dynamic sampling). lap(name) is called after generation and after scoring;
        state (where the run stands) is Ahead's concern only."""
        G, world = self.group_size, self.world
        share = self.prompts_per_step // world.size
        kept: list[tuple[list[Example], Trajectory, RewardScores]] = []
        num_kept = num_dropped = rounds = 0
        errors: dict[str, int] = {}
        while True:
            rounds += 1
            # 1. prompts: every rank reads the same stream and keeps its share
            examples = world.shard(data.take(self.prompts_per_step))
            if num_kept < share:
                # 2. generate G completions per prompt
                trajectory = self.sampler.sample(examples, params)
                lap("generation")
                # 3. rewards, per completion
                scores = self.score(examples, trajectory)
                data.observe(examples, scores.per_function)  # every scored group, dropped ones too: its prompt's pass rate
                lap("rewards")
                if not self.dynamic_sampling:
                    return examples, trajectory, scores, {}
                for name, n in scores.errors.items():
                    errors[name] = errors.get(name, 0) + n
                signal = algorithm.REWARD_AGGREGATIONS[self.reward_aggregation].with_signal(
                    *scores.outcome(self.reward_fns), G, self.tolerance, self.scale_rewards,
                    self.advantage_eps)  # [share]
                num_dropped += int((~signal).sum())
                groups = signal.nonzero().flatten().tolist()[: share - num_kept]
                if groups:
                    rows = [g * G + i for g in groups for i in range(G)]
                    kept.append(([examples[g] for g in groups], trajectory.select(rows), scores.select(rows)))
                    num_kept += len(groups)
            if not world.any(num_kept < share) or rounds >= self.max_rounds:
                break
        return self._joined(kept or [(examples, trajectory, scores)], errors, rounds, num_kept, num_dropped)

    def _joined(self, kept: list[tuple[list[Example], Trajectory, RewardScores]], errors: dict[str, int],
                rounds: int, num_kept: int, num_dropped: int) -> Collected:
        """The kept groups of every round as one batch, with the dynamic/* metrics."""
        scores = RewardScores.cat([part[2] for part in kept])
        scores.errors = errors  # every round's failures, the dropped groups' included
        drawn = rounds * self.prompts_per_step
        world = self.world
        return ([ex for part in kept for ex in part[0]], Trajectory.cat([part[1] for part in kept], self.pad_token_id),
                scores, {"dynamic/rounds": rounds, "dynamic/prompts_drawn": drawn,
                         "dynamic/groups_dropped": world.sum(num_dropped) / drawn,
                         "dynamic/groups_with_signal": int(world.sum(num_kept))})


class Ahead:
    """Steps 1-3 with rollout.max_staleness > 0: this step's batch from the pipeline (the next
    steps' are requested now, after the last push), scored on arrival."""

    def __init__(self, rounds: Rounds, max_staleness: int, num_iterations: int, num_steps: int,
                 refresh: Callable[[], None]):
        self.rounds, self.max_staleness, self.num_steps, self.refresh = rounds, max_staleness, num_steps, refresh
        self.lag = max_staleness // num_iterations  # in steps: each step makes num_iterations updates
        self.pipeline: RolloutPipeline | None = None  # started by the first step
        self.trained_order: dict[str, Any] | None = None  # the last step's data order (<run>/rollouts.jsonl)

    @property
    def prompts_in_flight(self) -> int:
        """Stream positions taken for batches not yet trained on (a checkpoint gives them back)."""
        return self.pipeline.prompts_in_flight if self.pipeline is not None else 0

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    def collect(self, data: PromptSampler, params: SamplingParams, state: TrainerState,
                lap: Callable[[str], None]) -> Collected:
        """This step's examples, trajectory and scores, with the staleness and async/* metrics."""
        r = self.rounds
        if self.pipeline is None:
            self.pipeline = RolloutPipeline(lambda: r.world.shard(data.take(r.prompts_per_step)),
                                            lambda examples: r.sampler.sample(examples, params),
                                            self.lag, r.prompts_per_step, self.refresh)
        arrived = self.pipeline.next(self.num_steps - state.step)
        lap("generation")  # the time the loop waited for it
        trajectory, version = arrived.trajectory, state.num_updates
        ages = staleness(trajectory.policy_version, version, self.max_staleness)
        scores = r.score(arrived.examples, trajectory)
        data.observe(arrived.examples, scores.per_function)
        lap("rewards")
        self.trained_order = {"trained_version": version, "example_ids": [ex.id for ex in arrived.examples],
                              "policy_versions": trajectory.policy_version.tolist()}
        return arrived.examples, trajectory, scores, {**ages, "async/generation_seconds": arrived.generation_seconds}
