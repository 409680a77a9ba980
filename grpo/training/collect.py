"""Steps 1-3 of a training step: this rank's prompts, G completions each, their rewards.

    collector = build_collector(cfg, sampler, reward_fns, world, engine, pad_token_id)      # once per run
    examples, groups, trajectory, scores, metrics = collector.collect(data, params, state, lap)  # each step

`groups` (grpo.algorithm.Groups) says how many rows each example has: G each under
rollout.group_policy fixed; under adaptive each round's budget is split over its
prompts_per_step prompts by their estimated pass rates (GroupSizes, grpo.algorithm.allocation); a budget
of tokens (rollout.group_policy.unit) also weighs each prompt's expected completion length.
The split is of the whole round, over every rank's prompts: every rank holds the same estimates
(data.settle) and computes the same sizes, then generates the sizes of its own share, so the
budget is global and ranks may hold different numbers of rows.

Two variants, chosen once when the run is built, with the same methods (collect,
prompts_in_flight, group_sizes_in_flight, trained_order, close): `Rounds` generates in lockstep, `Ahead` (with
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
from dataclasses import dataclass, replace
from typing import Any

from grpo import algorithm, rewards
from grpo.algorithm import Groups
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

# examples, their groups, trajectory, scores, metrics
Collected = tuple[list[Example], Groups, Trajectory, RewardScores, dict[str, float]]


@dataclass(frozen=True)
class BudgetUnit:
    """What a rollout.group_policy budget counts: the cost of one more completion of each drawn prompt
    (None: 1 each, the budget an exact count) and what a trajectory spent of it."""

    costs: Callable[[PromptSampler, list[Example]], list[float] | None]
    spent: Callable[[Trajectory], int]


# rollout.group_policy.unit -> its costs and spending
BUDGET_UNITS = {
    "completions": BudgetUnit(lambda data, drawn: None, len),
    "tokens": BudgetUnit(lambda data, drawn: data.expected_lengths(drawn), lambda t: t.num_generated_tokens),
}


@dataclass(frozen=True)
class GroupSizes:
    """rollout.group_policy resolved: each prompt's number of completions in a round."""

    name: str = "fixed"  # algorithm.GROUP_POLICIES
    group_size: int = 8
    budget: int = 16  # completions (or tokens) per round of prompts_per_step prompts, over every rank
    min_group_size: int = 2
    max_group_size: int = 16
    unit: str = "completions"  # BUDGET_UNITS

    @classmethod
    def from_config(cls, cfg: Config) -> GroupSizes:
        g, G = cfg.rollout.group_policy, cfg.rollout.group_size
        return cls(g.name, G, *g.bounds(G, cfg.train.prompts_per_step), g.unit)

    def spent(self, trajectory: Trajectory) -> int:
        """What this trajectory spent of a budget: its completions, or its generated tokens."""
        return BUDGET_UNITS[self.unit].spent(trajectory)

    @property
    def adaptive(self) -> bool:
        return self.name != "fixed"

    def sizes(self, data: PromptSampler, drawn: list[Example]) -> list[int]:
        """Each drawn prompt's G, the same on every rank (the estimates are)."""
        return algorithm.GROUP_POLICIES[self.name](data.estimates(drawn), self.budget, self.min_group_size,
                                                   self.max_group_size, self.group_size,
                                                   BUDGET_UNITS[self.unit].costs(data, drawn))

    def params(self, params: SamplingParams, sizes: list[int]) -> SamplingParams:
        """The engine's params for this rank's prompts: their own sizes under adaptive (fixed: unchanged)."""
        return replace(params, group_sizes=tuple(sizes)) if self.adaptive else params

    def metrics(self, groups: Groups, generated: int, rounds: int, world: World) -> dict[str, float]:
        """group/*: G per trained prompt over every rank, and the share of the rounds' budgets generated
        (`generated`: this rank's completions or tokens, as `spent` counts; below 1 when dynamic sampling's full
        ranks skip a round, and with a token budget where completions ran shorter than expected); none under fixed."""
        if not self.adaptive:
            return {}
        sizes = [s for part in world.gather_objects(list(groups.sizes)) for s in part]
        return {"group/size_mean": sum(sizes) / len(sizes), "group/size_min": min(sizes),
                "group/size_max": max(sizes), "group/budget_used": world.sum(generated) / (rounds * self.budget)}


def build_collector(cfg: Config, sampler: SingleTurnSampler | EpisodeSampler, reward_fns: list[WeightedReward],
                    world: World, engine: RolloutEngine, pad_token_id: int,
                    state: TrainerState | None = None) -> Rounds | Ahead:
    """Rounds in lockstep, or Ahead over them with rollout.max_staleness > 0 (state: where a resumed
    run stands: its batches in flight's group sizes)."""
    rounds = Rounds.from_config(cfg, sampler, reward_fns, world, pad_token_id)
    if cfg.rollout.max_staleness > 0:
        return Ahead(rounds, cfg.rollout.max_staleness, cfg.algorithm.num_iterations, cfg.train.num_steps,
                     engine.refresh, state.group_sizes_in_flight if state is not None else None)
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
    group_sizes: GroupSizes | None = None  # each prompt's G (rollout.group_policy); None: group_size each

    def __post_init__(self) -> None:
        if self.group_sizes is None:  # frozen: the fixed policy of this G, set once
            object.__setattr__(self, "group_sizes", GroupSizes("fixed", self.group_size))
    prompts_in_flight = 0  # nothing is generated ahead in lockstep
    trained_order = None  # Ahead's record of what each step trained on

    @classmethod
    def from_config(cls, cfg: Config, sampler: SingleTurnSampler | EpisodeSampler, reward_fns: list[WeightedReward],
                    world: World, pad_token_id: int) -> Rounds:
        a = cfg.algorithm
        return cls(sampler, reward_fns, world, cfg.train.prompts_per_step, cfg.rollout.group_size, cfg.reward_timeout,
                   a.dynamic_sampling, a.dynamic_sampling_tolerance, a.max_generation_rounds, pad_token_id,
                   a.reward_aggregation, a.scale_rewards, a.advantage_eps, GroupSizes.from_config(cfg))

    def score(self, examples: list[Example], groups: Groups, trajectory: Trajectory) -> RewardScores:
        """Rewards per completion: each example's rows are its group's."""
        return rewards.score(self.reward_fns, trajectory.completions, groups.per_row(examples), self.reward_timeout)

    def close(self) -> None:
        pass  # nothing in flight

    def group_sizes_in_flight(self) -> list[list[int]]:
        return []  # nothing in flight

    def draw(self, data: PromptSampler) -> tuple[list[Example], list[int]]:
        """A round's prompts and each one's G, the same on every rank (the estimates are)."""
        drawn = data.take(self.prompts_per_step)
        return drawn, self.group_sizes.sizes(data, drawn)

    def collect(self, data: PromptSampler, params: SamplingParams, state: TrainerState,
                lap: Callable[[str], None]) -> Collected:
        """This rank's examples, their trajectory and scores, and the dynamic/* metrics (none
        without dynamic sampling). lap(name) is called after generation and after scoring;
        state (where the run stands) is Ahead's concern only."""
        world = self.world
        share = self.prompts_per_step // world.size
        kept: list[tuple[list[Example], Groups, Trajectory, RewardScores]] = []
        num_kept = num_dropped = rounds = generated = 0
        errors: dict[str, int] = {}
        while True:
            rounds += 1
            # 1. prompts: every rank reads the same stream, splits the round's budget the same way
            # (rollout.group_policy) and keeps its share
            drawn, sizes = self.draw(data)
            examples, sizes = world.shard(drawn), world.shard(sizes)
            groups = Groups(tuple(sizes))
            if num_kept < share:
                # 2. generate each prompt's completions (G, or its own size)
                trajectory = self.sampler.sample(examples, self.group_sizes.params(params, sizes))
                generated += self.group_sizes.spent(trajectory)
                lap("generation")
                # 3. rewards, per completion
                scores = self.score(examples, groups, trajectory)
                # dropped groups too: their pass rates and lengths
                data.observe(examples, scores.per_function, groups.sizes, trajectory.loss_mask.sum(1))
                lap("rewards")
                if not self.dynamic_sampling:
                    return (examples, groups, trajectory, scores,
                            self.group_sizes.metrics(groups, generated, rounds, world))
                for name, n in scores.errors.items():
                    errors[name] = errors.get(name, 0) + n
                signal = algorithm.REWARD_AGGREGATIONS[self.reward_aggregation].with_signal(
                    *scores.outcome(self.reward_fns), groups, self.tolerance, self.scale_rewards,
                    self.advantage_eps)  # [share]
                num_dropped += int((~signal).sum())
                chosen = signal.nonzero().flatten().tolist()[: share - num_kept]
                if chosen:
                    rows = groups.rows(chosen)
                    kept.append(([examples[g] for g in chosen], groups.select(chosen), trajectory.select(rows),
                                 scores.select(rows)))
                    num_kept += len(chosen)
            if not world.any(num_kept < share) or rounds >= self.max_rounds:
                break
        joined = self._joined(kept or [(examples, groups, trajectory, scores)], errors, rounds, num_kept, num_dropped)
        joined[4].update(self.group_sizes.metrics(joined[1], generated, rounds, world))
        return joined

    def _joined(self, kept: list[tuple[list[Example], Groups, Trajectory, RewardScores]], errors: dict[str, int],
                rounds: int, num_kept: int, num_dropped: int) -> Collected:
        """The kept groups of every round as one batch, with the dynamic/* metrics."""
        scores = RewardScores.cat([part[3] for part in kept])
        scores.errors = errors  # every round's failures, the dropped groups' included
        drawn = rounds * self.prompts_per_step
        world = self.world
        return ([ex for part in kept for ex in part[0]], Groups.cat([part[1] for part in kept]),
                Trajectory.cat([part[2] for part in kept], self.pad_token_id), scores, {"dynamic/rounds": rounds, "dynamic/prompts_drawn": drawn,
                         "dynamic/groups_dropped": world.sum(num_dropped) / drawn,
                         "dynamic/groups_with_signal": int(world.sum(num_kept))})


class Ahead:
    """Steps 1-3 with rollout.max_staleness > 0: this step's batch from the pipeline (the next
    steps' are requested now, after the last push), scored on arrival. Each batch's group sizes
    are split when its prompts are taken (the estimates then: after the step before) and kept
    until it arrives; a checkpoint saves those of the batches in flight (TrainerState), so a
    resumed run, which requests the same prompts again, splits them alike."""

    def __init__(self, rounds: Rounds, max_staleness: int, num_iterations: int, num_steps: int,
                 refresh: Callable[[], None], resumed_sizes: list[list[int]] | None = None):
        self.rounds, self.max_staleness, self.num_steps, self.refresh = rounds, max_staleness, num_steps, refresh
        self.lag = max_staleness // num_iterations  # in steps: each step makes num_iterations updates
        self.pipeline: RolloutPipeline | None = None  # started by the first step
        self.trained_order: dict[str, Any] | None = None  # the last step's data order (<run>/rollouts.jsonl)
        self.resumed_sizes = [list(s) for s in resumed_sizes or []]  # the checkpoint's batches in flight
        self.sizes: list[list[int]] = []  # each batch in flight's whole-round sizes, oldest first

    @property
    def prompts_in_flight(self) -> int:
        """Stream positions taken for batches not yet trained on (a checkpoint gives them back)."""
        return self.pipeline.prompts_in_flight if self.pipeline is not None else 0

    def group_sizes_in_flight(self) -> list[list[int]]:
        return [list(s) for s in self.sizes] if self.pipeline is not None else list(self.resumed_sizes)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    def _take(self, data: PromptSampler) -> tuple[list[Example], list[int]]:
        """The next batch's prompts and sizes (this rank's share): a resumed batch's saved sizes first."""
        r = self.rounds
        drawn, sizes = r.draw(data)
        if self.resumed_sizes:
            sizes = self.resumed_sizes.pop(0)
        self.sizes.append(sizes)
        return r.world.shard(drawn), r.world.shard(sizes)

    def collect(self, data: PromptSampler, params: SamplingParams, state: TrainerState,
                lap: Callable[[str], None]) -> Collected:
        """This step's examples, trajectory and scores, with the staleness and async/* metrics."""
        r = self.rounds
        if self.pipeline is None:
            self.pipeline = RolloutPipeline(lambda: self._take(data),
                                            lambda batch: r.sampler.sample(batch[0], r.group_sizes.params(params,
                                                                                                          batch[1])),
                                            self.lag, r.prompts_per_step, self.refresh)
        arrived = self.pipeline.next(self.num_steps - state.step)
        self.sizes.pop(0)  # the batch that arrived is no longer in flight
        lap("generation")  # the time the loop waited for it
        (examples, sizes), trajectory, version = arrived.examples, arrived.trajectory, state.num_updates
        ages = staleness(trajectory.policy_version, version, self.max_staleness)
        groups = Groups(tuple(sizes))
        scores = r.score(examples, groups, trajectory)
        data.observe(examples, scores.per_function, groups.sizes, trajectory.loss_mask.sum(1))
        lap("rewards")
        self.trained_order = {"trained_version": version, "example_ids": [ex.id for ex in examples],
                              "policy_versions": trajectory.policy_version.tolist()}
        metrics = {**ages, "async/generation_seconds": arrived.generation_seconds,
                   **r.group_sizes.metrics(groups, r.group_sizes.spent(trajectory), 1, r.world)}
        return examples, groups, trajectory, scores, metrics
