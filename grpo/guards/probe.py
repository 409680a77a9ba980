"""The first-run check: a few real samples before training, to catch the silent failures.

Runs from public issue trackers that "train" for hours with nothing to learn share a few
causes that one batch of samples shows at once:
  - completions cut by the token budget (rewards stay 0: the answer never comes);
  - every group's G completions scored alike (all wrong or all right: zero advantages);
  - a reward that gives every completion the same score (it cannot tell them apart);
  - a chat template that drops the system prompt (the instructions never reach the model).
`probe` samples G completions for a few training examples exactly as training would (same
sampler, engine, rewards), with its own seed, so the run's random streams are untouched;
`problems` turns what it saw into one line per problem, naming the config field to change.
`grpo train` runs it at the start of a fresh run (train.first_run_check), `grpo check` always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo import rewards
from grpo.rollout import SamplingParams
from grpo.trajectory import FINISH_LENGTH

NUM_EXAMPLES = 2  # prompts in the probe: one batch of G samples each, about a training step's cost


@dataclass
class ProbeReport:
    prompt: str  # the first example's prompt text, as the model sees it
    system_prompt: str  # the system message the task wrote ("" when none)
    truncation_rate: float
    zero_variance_groups: float  # fraction of groups whose G total rewards are all equal
    reward_min: float
    reward_max: float
    num_samples: int


def probe(sampler: Any, reward_fns: list, examples: list, params: SamplingParams, timeout: float) -> ProbeReport:
    """G samples (params.group_size) for each of `examples`, scored by `reward_fns`."""
    trajectory = sampler.sample(examples, params)
    grouped = [ex for ex in examples for _ in range(params.group_size)]
    total = rewards.score(reward_fns, trajectory.completions, grouped, timeout).total  # [N]
    by_group = total.view(len(examples), params.group_size)
    first = examples[0].prompt
    return ProbeReport(
        prompt=sampler.render(examples[0]),
        system_prompt=first[0]["content"] if first and first[0]["role"] == "system" else "",
        truncation_rate=sum(r == FINISH_LENGTH for r in trajectory.finish_reasons) / len(trajectory),
        zero_variance_groups=(by_group.max(1).values == by_group.min(1).values).float().mean().item(),
        reward_min=float(torch.nan_to_num(total).min()), reward_max=float(torch.nan_to_num(total).max()),
        num_samples=len(trajectory),
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
    if report.system_prompt and report.system_prompt.strip()[:60] not in report.prompt:
        out.append("the rendered prompt does not contain the system prompt (the chat template dropped it): set "
                   "task.system_prompt='' and put the instructions in the question, or use another task.template")
    return out


def probe_params(cfg: Any) -> SamplingParams:
    """Training's sampling settings with a fixed seed of the probe's own."""
    return SamplingParams.from_config(cfg.rollout, seed=cfg.seed + 7919)
