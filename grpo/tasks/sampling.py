"""Which training prompts each step draws, and what the run has learned about each one.

    data = build_prompt_sampler(cfg, task, state.examples_seen, checkpoint)  # once per run
    examples = data.take(n)                      # every rank: the same n, in the same order
    rates = data.estimates(examples)             # their estimated pass rates (adaptive group sizes read them)
    lengths = data.expected_lengths(examples)    # their expected tokens per completion (a token budget reads them)
    data.observe(examples, scores.per_function, sizes, lengths)  # this rank's groups (every generation round)
    metrics = data.settle(world)                 # every rank, once per step: counts summed over ranks

Three samplers, one per task.sampler value (SAMPLERS), sharing `PassRates`: every training
prompt's decayed success and completion counts (grpo.tasks.difficulty: a Beta posterior mean
over them is its estimated pass rate) and, decayed alike, its generated tokens: their mean per
completion is its expected length (an unseen prompt: the run's mean so far, max_new_tokens before
any). `observe` only records this rank's groups; `settle` gathers every rank's records, adds them
in rank order (integer counts: exact) and applies them, so all ranks hold the same estimates and
the next draw is the same everywhere.

- uniform: grpo.tasks.base.DataStream's seeded permutation per epoch (the estimates are
  only logged).
- difficulty_pool: each draw splits n between the easy / learnable / hard pools by the
  weights of task.difficulty (difficulty.allocate) and picks uniformly inside each pool; its
  generator is seeded by (seed, position), so the draw's randomness is a function of the
  stream position and a resume from a checkpoint's position and estimates draws the same.
- curriculum: the reasoning-gym task regenerated at curriculum level L (procedural.
  curriculum_examples), read as a DataStream; after each step the level goes up when the
  last curriculum_window steps solved curriculum_threshold of their completions.

A checkpoint holds `sampling.json` (counts, lengths, curriculum level, where it began, its window);
the stream position is the trainer's examples_seen. JSON, so loading it runs no code.
Where we depart from prime-rl: pools come from a Beta posterior with decay rather than the
last group's mean reward, and a batch holds a pool's prompts at most once until every prompt
with weight is in it (prime-rl samples with replacement).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from grpo.config import Config
from grpo.tasks import difficulty
from grpo.tasks.base import DataStream, Example, Task

STATE_FILE = "sampling.json"


class PassRates:
    """Every training prompt's (successes, completions) and (generated tokens, completions), keyed by
    example id, with decay; this rank's observations since the last settle are pending.
    default_length: the expected tokens per completion before anything was observed."""

    def __init__(self, reward: str, threshold: float, prior: tuple[float, float], decay: float,
                 default_length: float = 1.0):
        self.reward, self.threshold, self.prior, self.decay = reward, threshold, prior, decay
        self.default_length = default_length
        self.counts: dict[str, tuple[float, float]] = {}
        self.lengths: dict[str, tuple[float, float]] = {}
        self.all_lengths = (0.0, 0.0)  # every observed completion's (tokens, count), undecayed
        # id -> [successes, completions, sum of its estimate, generated tokens]
        self.pending: dict[str, list[float]] = {}
        self.last_step = (0.0, 0.0)  # the last settle's (successes, completions) over every rank

    def estimate(self, example_id: str) -> float:
        return difficulty.pass_rate(*self.counts.get(example_id, (0.0, 0.0)), self.prior)

    def expected_length(self, example_id: str) -> float:
        """Mean generated tokens per completion of this prompt (decayed); unseen: the run's mean so far,
        default_length before any completion."""
        tokens, n = self.lengths.get(example_id, (0.0, 0.0))
        if n <= 0:
            tokens, n = self.all_lengths
        return max(tokens / n, 1.0) if n > 0 else self.default_length

    def observe(self, examples: list[Example], per_function: dict[str, torch.Tensor],
                sizes: Sequence[int] | None = None, lengths: torch.Tensor | None = None) -> None:
        """Record this rank's groups: examples[k] owns the next sizes[k] completions (None: G each, the
        rows split evenly); NaN (a failed call) fails. lengths [N]: each completion's generated tokens."""
        solved = per_function[self.reward] >= self.threshold  # [N]
        if sizes is None:
            sizes = [len(solved) // len(examples)] * len(examples)
        tokens = (lengths.cpu() if lengths is not None else torch.zeros(len(solved))).split(list(sizes))
        for ex, row, used in zip(examples, [part.tolist() for part in solved.split(list(sizes))], tokens, strict=True):
            seen = self.pending.setdefault(ex.id, [0, 0, 0.0, 0])
            seen[0] += sum(row)
            seen[1] += len(row)
            seen[2] += len(row) * self.estimate(ex.id)
            seen[3] += int(used.sum())

    def settle(self, world: Any) -> dict[str, float]:
        """Every rank's pending records applied on every rank (one decayed visit per prompt and step);
        the step's estimated and observed pass rates over the completions observed."""
        merged: dict[str, list[float]] = {}
        for part in world.gather_objects(self.pending):
            for key, values in part.items():
                total = merged.setdefault(key, [0, 0, 0.0, 0])
                for i, v in enumerate(values):
                    total[i] += v
        self.pending = {}
        for key in sorted(merged):
            s, n, _, tokens = merged[key]
            self.counts[key] = difficulty.decayed(self.counts.get(key, (0.0, 0.0)), (s, n), self.decay)
            self.lengths[key] = difficulty.decayed(self.lengths.get(key, (0.0, 0.0)), (tokens, n), self.decay)
            self.all_lengths = (self.all_lengths[0] + tokens, self.all_lengths[1] + n)
        solved, trials = sum(v[0] for v in merged.values()), sum(v[1] for v in merged.values())
        self.last_step = (solved, trials)
        if not trials:
            return {}
        return {"sampling/estimated_pass_rate": sum(v[2] for v in merged.values()) / trials,
                "sampling/observed_pass_rate": solved / trials}


class PromptSampler(ABC):
    """The trainer's data stream: take / observe / settle / save, the same on every rank.
    position: prompts drawn so far (the checkpoint's examples_seen).

    rates is None only under uniform without the success reward among `rewards` (nothing to
    estimate from)."""

    name = ""

    def __init__(self, examples: list[Example], seed: int, position: int, rates: PassRates | None,
                 bands: tuple[float, float]):
        if not examples:
            raise ValueError("the task has no training examples")
        self.examples, self.seed, self.position, self.rates, self.bands = examples, seed, position, rates, bands

    @abstractmethod
    def take(self, n: int) -> list[Example]:
        """The next n prompts, the same on every rank."""

    def observe(self, examples: list[Example], per_function: dict[str, torch.Tensor],
                sizes: Sequence[int] | None = None, lengths: torch.Tensor | None = None) -> None:
        if self.rates is not None and examples:
            self.rates.observe(examples, per_function, sizes, lengths)

    def estimates(self, examples: list[Example]) -> list[float]:
        """Each example's estimated pass rate; NaN where no estimates are kept (uniform without the
        success reward among `rewards`: only rollout.group_policy fixed runs so, and it reads none)."""
        if self.rates is None:
            return [float("nan")] * len(examples)
        return [self.rates.estimate(ex.id) for ex in examples]

    def expected_lengths(self, examples: list[Example]) -> list[float]:
        """Each example's expected generated tokens per completion (PassRates.expected_length); NaN where no
        estimates are kept (a token budget needs them: rules.group_policy_fits)."""
        if self.rates is None:
            return [float("nan")] * len(examples)
        return [self.rates.expected_length(ex.id) for ex in examples]

    def settle(self, world: Any) -> dict[str, float]:
        """Apply every rank's observations of this step; the sampling/* metrics."""
        if self.rates is None:
            return {}
        metrics = self.rates.settle(world)
        sizes = self.pool_sizes()
        return {**metrics, **{f"sampling/{name}": sizes[name] for name in difficulty.BANDS},
                "sampling/prompts_observed": sum(ex.id in self.rates.counts for ex in self.examples)}

    def pools(self) -> dict[str, list[int]]:
        """Indices into self.examples by band of their estimated pass rate."""
        assert self.rates is not None, "pools need estimates (rules.prompt_sampler_fits)"
        out: dict[str, list[int]] = {name: [] for name in difficulty.BANDS}
        for i, ex in enumerate(self.examples):
            out[difficulty.band(self.rates.estimate(ex.id), *self.bands)].append(i)
        return out

    def pool_sizes(self) -> dict[str, int]:
        return {name: len(members) for name, members in self.pools().items()}

    def state(self) -> dict[str, Any]:
        rates = self.rates
        if rates is None:
            return {"sampler": self.name, "counts": {}}
        return {"sampler": self.name, "counts": {k: list(v) for k, v in rates.counts.items()},
                "lengths": {k: list(v) for k, v in rates.lengths.items()}, "all_lengths": list(rates.all_lengths)}

    def load(self, saved: dict[str, Any]) -> None:
        """A checkpoint's estimates (one from before lengths were kept: none, as if unseen)."""
        if self.rates is not None:
            self.rates.counts = {k: (float(s), float(n)) for k, (s, n) in saved.get("counts", {}).items()}
            self.rates.lengths = {k: (float(t), float(n)) for k, (t, n) in saved.get("lengths", {}).items()}
            tokens, n = saved.get("all_lengths", (0.0, 0.0))
            self.rates.all_lengths = (float(tokens), float(n))

    def save(self, directory: Path) -> None:
        """Write sampling.json into a checkpoint being written (Snapshot.extra)."""
        (directory / STATE_FILE).write_text(json.dumps(self.state()))


class UniformSampler(PromptSampler):
    """Today's order: a seeded permutation per epoch (DataStream), resumable by position."""

    name = "uniform"

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.stream = DataStream(self.examples, self.seed, self.position)

    def take(self, n: int) -> list[Example]:
        out = self.stream.take(n)
        self.position = self.stream.position
        return out


class PoolSampler(PromptSampler):
    """difficulty_pool: n split between the easy / learnable / hard pools by weight, uniform inside each."""

    name = "difficulty_pool"

    def __init__(self, *args: Any, weights: tuple[float, float, float]):
        super().__init__(*args)
        self.weights = list(weights)

    def take(self, n: int) -> list[Example]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
        pools = self.pools()
        members = [pools[name] for name in difficulty.BANDS]
        counts = difficulty.allocate(n, self.weights, [len(m) for m in members])
        picked: list[int] = []
        for pool, k in zip(members, counts, strict=True):
            while k > 0:  # more draws than the pool holds: it is used up, then drawn again
                order = torch.randperm(len(pool), generator=generator)[:k].tolist()
                picked += [pool[i] for i in order]
                k -= len(order)
        mixed = torch.randperm(len(picked), generator=generator).tolist()  # each rank's share mixes the pools
        self.position += n
        return [self.examples[picked[i]] for i in mixed]


class CurriculumSampler(PromptSampler):
    """curriculum: the task regenerated at level L, read in a seeded order; one level up after
    curriculum_window steps at it solved curriculum_threshold of their completions."""

    name = "curriculum"

    def __init__(self, level_examples: Callable[[int], list[Example]], max_level: int, seed: int, position: int,
                 rates: PassRates | None, bands: tuple[float, float], window: int, threshold: float):
        self.level_examples, self.max_level, self.size, self.threshold = level_examples, max_level, window, threshold
        self.level, self.level_start, self.window = 0, 0, []  # level_start: the position where the level began
        super().__init__(level_examples(0), seed, position, rates, bands)

    def take(self, n: int) -> list[Example]:
        stream = DataStream(self.examples, self.seed + self.level, self.position - self.level_start)
        out = stream.take(n)
        self.position += n
        return out

    def settle(self, world: Any) -> dict[str, float]:
        """The base metrics (pools: of this level's examples) and the level this step trained at;
        then, where the window says so, the next level."""
        metrics = {**super().settle(world), "curriculum/level": self.level}
        if self.rates is not None and self.rates.last_step[1]:
            self.window = [*self.window, self.rates.last_step][-self.size:]
        level = difficulty.next_level(self.level, self.max_level, self.window, self.size, self.threshold)
        if level != self.level:
            self.set_level(level, self.position, [])
        return metrics

    def set_level(self, level: int, start: int, window: list[tuple[float, float]]) -> None:
        if level != self.level:
            self.examples = self.level_examples(level)
        self.level, self.level_start, self.window = level, start, window

    def state(self) -> dict[str, Any]:
        return {**super().state(), "curriculum": {"level": self.level, "level_start": self.level_start,
                                                 "window": [list(w) for w in self.window]}}

    def load(self, saved: dict[str, Any]) -> None:
        super().load(saved)
        c = saved.get("curriculum")
        if c is not None:
            self.set_level(int(c["level"]), int(c["level_start"]), [tuple(w) for w in c["window"]])


def _uniform(cfg: Config, task: Task, position: int, rates: PassRates | None) -> PromptSampler:
    return UniformSampler(task.train, cfg.seed, position, rates, _bands(cfg))


def _pool(cfg: Config, task: Task, position: int, rates: PassRates | None) -> PromptSampler:
    d = cfg.task.difficulty
    return PoolSampler(task.train, cfg.seed, position, rates, _bands(cfg),
                       weights=(d.easy_weight, d.learnable_weight, d.hard_weight))


def _curriculum(cfg: Config, task: Task, position: int, rates: PassRates | None) -> PromptSampler:
    from grpo.tasks.procedural import curriculum_examples, curriculum_max_level

    d = cfg.task.difficulty
    return CurriculumSampler(lambda level: curriculum_examples(cfg.task, task, level),
                             curriculum_max_level(cfg.task.name), cfg.seed, position, rates, _bands(cfg),
                             d.curriculum_window, d.curriculum_threshold)


# task.sampler -> builder (config, task, stream position, pass rates) -> the sampler
SAMPLERS: dict[str, Callable[[Config, Task, int, PassRates | None], PromptSampler]] = {
    "uniform": _uniform, "difficulty_pool": _pool, "curriculum": _curriculum}


def _bands(cfg: Config) -> tuple[float, float]:
    return cfg.task.difficulty.hard_below, cfg.task.difficulty.easy_above


def build_prompt_sampler(cfg: Config, task: Task, position: int, checkpoint: Path | None) -> PromptSampler:
    """The sampler task.sampler names at stream `position`, with the checkpoint's estimates and
    curriculum state (sampling.json; a checkpoint from before it: none yet, the position kept)."""
    d = cfg.task.difficulty
    rates = None
    if d.success_reward in [spec.name for spec in cfg.rewards]:
        rates = PassRates(d.success_reward, d.success_threshold, (d.prior[0], d.prior[1]), d.decay,
                          cfg.rollout.episode_tokens)
    sampler = SAMPLERS[cfg.task.sampler](cfg, task, position, rates)
    path = checkpoint / STATE_FILE if checkpoint is not None else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"checkpoint file {str(path)!r} cannot be read ({e}): it was damaged after it was "
                             "written; delete that checkpoint directory to resume from the previous one") from None
        sampler.load(saved)
    return sampler
