"""The first-run check: a few real samples before training, to catch the silent failures.

Runs from public issue trackers that "train" for hours with nothing to learn share a few
causes that one batch of samples shows at once:
  - completions cut by the token budget (rewards stay 0: the answer never comes);
  - every group's G completions scored alike (all wrong or all right: zero advantages);
  - a reward that gives every completion the same score (it cannot tell them apart), in the
    total or in one reward function while another varies (the total hides it);
  - a chat template that drops the system prompt (the instructions never reach the model).
`probe` samples G completions for a few training examples exactly as training would (same
sampler, engine, rewards), with its own seed, so the run's random streams are untouched;
`problems` turns what it saw into one line per problem, naming the config field to change.
`grpo train` runs it at the start of a fresh run (train.first_run_check), `grpo check` always.

Each reward function is looked at on its own (`spreads`, `reward_problems`; `grpo check` uses
them too). One that fails on every completion is reported as failing, not as constant. Step
(process) rewards are left out of the constant test: their signal is each step's score against
the group's other steps (algorithm.step_advantages), which the per-completion mean of the
harness's row does not show (steps [1, 0] and [0, 1] have one mean and still teach); a step
reward that finds no step in any completion is reported, as it adds nothing at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo import rewards
from grpo.rewards.reward import Reward
from grpo.rollout import SamplingParams
from grpo.trajectory import FINISH_LENGTH

NUM_EXAMPLES = 2  # prompts in the probe: one batch of G samples each, about a training step's cost


@dataclass
class RewardSpread:
    """One reward function's scores over a set of completions (its harness row)."""

    name: str
    index: int  # its place in cfg.rewards: the field a hint names
    weight: float
    step: bool  # a step (process) reward: its row is the mean of a completion's step scores
    num_completions: int
    num_failed: int  # calls that raised, timed out or returned no number
    num_scored: int  # completions with a score (a step reward's without steps have none)
    min: float  # over the scored completions; NaN when none
    max: float
    std: float
    num_distinct: int

    @property
    def constant(self) -> bool:
        return self.num_scored > 0 and self.min == self.max


def spreads(reward_fns: list, scores: rewards.RewardScores, rows: list[int] | None = None) -> list[RewardSpread]:
    """Each function's spread over `rows` of `scores` (None: all rows)."""
    out = []
    for index, (name, weight, fn) in enumerate(reward_fns):
        values = scores.per_function[name]  # [N], NaN where the call failed (or, for a step reward, no step)
        if rows is not None:
            values = values[torch.as_tensor(rows, dtype=torch.long)]
        scored = values[~torch.isnan(values)]  # [n]
        step = Reward.of(fn).steps is not None
        errors = scores.errors.get(name, 0)
        # the harness counts failures per batch, not per row: in a subset an outcome reward's NaN row
        # is a failure; a step reward's may be a completion without steps, so only "all failed" is known
        if rows is not None:
            errors = len(values) - len(scored) if not step or errors == len(scores.total) else 0
        failed = min(errors, len(values) - len(scored))
        has = len(scored) > 0
        out.append(RewardSpread(
            name, index, float(weight), step, len(values), failed, len(scored),
            float(scored.min()) if has else math.nan, float(scored.max()) if has else math.nan,
            float(scored.std(unbiased=False)) if has else math.nan, len(set(scored.tolist()))))
    return out


def reward_problems(spread: list[RewardSpread], what: str, total_varies: bool) -> list[str]:
    """One line per reward function that cannot tell `what` (e.g. "probe completions") apart.
    A constant one is named only when the total varies: a constant total has its own line."""
    out = []
    for s in spread:
        field_ = f"rewards[{s.index}]"
        if s.num_failed == s.num_completions:
            out.append(f"reward `{s.name}` failed on all {s.num_completions} {what} (it raised, timed out or returned "
                       f"no number; see the log above): it adds 0 to every total; fix it, raise reward_timeout, or "
                       f"drop {field_} from `rewards`")
        elif s.step and s.num_scored == 0:
            out.append(f"step reward `{s.name}` found no step in any of the {s.num_completions} {what}: it adds "
                       f"no signal; see which steps it scores (its split, {field_}.steps) and ask for them "
                       "(task.system_prompt, task.few_shot)")
        elif total_varies and s.constant and not s.step and s.weight != 0:
            failed = f" ({s.num_failed} more failed)" if s.num_failed else ""
            out.append(f"reward `{s.name}` scored all {s.num_scored} {what} {s.min:g}{failed}: it cannot tell them "
                       f"apart, so it adds the same to every total and teaches nothing; see what it expects with "
                       f"`grpo check`, make the layout it asks for clearer (task.system_prompt, task.few_shot), "
                       f"or change {field_} (its options or weight, or drop it)")
    return out


@dataclass
class ProbeReport:
    prompt: str  # the first example's prompt text, as the model sees it
    system_prompt: str  # the system message the task wrote ("" when none)
    truncation_rate: float
    zero_variance_groups: float  # fraction of groups whose G total rewards are all equal
    reward_min: float
    reward_max: float
    num_samples: int
    rewards: list[RewardSpread] = field(default_factory=list)  # each function's spread over the samples


def probe(sampler: Any, reward_fns: list, examples: list, params: SamplingParams, timeout: float) -> ProbeReport:
    """G samples (params.group_size) for each of `examples`, scored by `reward_fns`."""
    trajectory = sampler.sample(examples, params)
    grouped = [ex for ex in examples for _ in range(params.group_size)]
    scores = rewards.score(reward_fns, trajectory.completions, grouped, timeout)
    total = scores.total  # [N]
    by_group = total.view(len(examples), params.group_size)
    first = examples[0].prompt
    return ProbeReport(
        prompt=sampler.render(examples[0]),
        system_prompt=first[0]["content"] if first and first[0]["role"] == "system" else "",
        truncation_rate=sum(r == FINISH_LENGTH for r in trajectory.finish_reasons) / len(trajectory),
        zero_variance_groups=(by_group.max(1).values == by_group.min(1).values).float().mean().item(),
        reward_min=float(torch.nan_to_num(total).min()), reward_max=float(torch.nan_to_num(total).max()),
        num_samples=len(trajectory), rewards=spreads(reward_fns, scores),
    )


def problems(report: ProbeReport, cfg: Any) -> list[str]:
    """One line per problem the probe saw, each naming the config field to change."""
    r, out = cfg.rollout, []
    if report.truncation_rate >= 0.5:
        out.append(f"{report.truncation_rate:.0%} of {report.num_samples} probe completions hit the token budget "
                   f"(rollout.max_new_tokens = {r.max_new_tokens}): answers that never arrive score 0; raise "
                   "rollout.max_new_tokens (or add rollout.stop)")
    if report.reward_max == report.reward_min:
        out.append(f"all {report.num_samples} probe completions got the same total reward ({report.reward_min:g}): "
                   "the rewards cannot tell them apart; check `rewards` with `grpo check`, or add a partial-credit "
                   "reward such as format")
    elif report.zero_variance_groups == 1.0:
        out.append(f"in every probe group the rollout.group_size = {r.group_size} completions scored alike: no "
                   "learning signal; raise rollout.group_size or rollout.temperature, or change the task's "
                   "difficulty (task.params)")
    out += reward_problems(report.rewards, "probe completions", report.reward_max != report.reward_min)
    if report.system_prompt and report.system_prompt.strip()[:60] not in report.prompt:
        out.append("the rendered prompt does not contain the system prompt (the chat template dropped it): set "
                   "task.system_prompt='' and put the instructions in the question, or use another task.template")
    return out


def probe_params(cfg: Any) -> SamplingParams:
    """Training's sampling settings with a fixed seed of the probe's own."""
    return SamplingParams.from_config(cfg.rollout, seed=cfg.seed + 7919)
