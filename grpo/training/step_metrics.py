"""What a training step reports about its rollout: metrics over every rank's rows, sample records.

Lengths and token counts are of the tokens the policy sampled (the trajectory's loss_mask
as the engine returned it), not of tokens inserted between them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from grpo.algorithm import Groups, GroupsLike
from grpo.compute.distributed import World
from grpo.rewards.harness import RewardScores
from grpo.tasks.base import Example
from grpo.trajectory import FINISH_LENGTH, FINISH_TURNS, Trajectory


def rollout_metrics(trajectory: Trajectory, scores: RewardScores, advantages: torch.Tensor, groups: GroupsLike,
                    world: World) -> dict[str, float]:
    """Over the whole batch: every rank's rows, gathered in rank order (with their groups: G each, or
    each rank's own sizes)."""
    gather = world.gather
    if not isinstance(groups, int):
        groups = Groups.cat([Groups(tuple(part)) for part in world.gather_objects(list(groups.sizes))])
    lengths = gather(trajectory.loss_mask.sum(1).float())  # [N]
    truncated = gather(torch.tensor([r == FINISH_LENGTH for r in trajectory.finish_reasons], dtype=torch.float32))
    total, advantages = gather(scores.total), gather(row_advantages(advantages, trajectory.loss_mask))
    out = {
        "reward/mean": total.mean().item(),
        "reward/std": total.std().item() if total.numel() > 1 else 0.0,
        "frac_reward_zero_std": (Groups.of(groups, len(total)).std(total) == 0).float().mean().item(),
        "advantage/abs_mean": advantages.abs().mean().item(),
        # no signal as the advantages see it: normalize_then_sum can differ from the total's zero std
        "advantage/frac_zero_groups": Groups.of(groups, len(advantages)).all(advantages == 0).float().mean().item(),
        "completion_length/mean": lengths.mean().item(),
        "completion_length/min": lengths.min().item(),
        "completion_length/max": lengths.max().item(),
        "truncation_rate": truncated.mean().item(),
        "tokens_generated": int(lengths.sum().item()),
    }
    for name, values in scores.per_function.items():
        values = gather(values)
        ok = values[~torch.isnan(values)]
        out[f"reward/{name}/mean"] = ok.mean().item() if ok.numel() else float("nan")
        out[f"reward/{name}/errors"] = int(world.sum(scores.errors.get(name, 0)))
        if name in ("accuracy", "format"):
            out[name] = out[f"reward/{name}/mean"]
    if trajectory.episodes is not None:
        out.update(episode_metrics(trajectory, world))
    return out


def episode_metrics(trajectory: Trajectory, world: World) -> dict[str, float]:
    """Multi-turn episodes over every rank's rows: turns, tokens sampled and inserted, why
    episodes stopped, and each tool's calls and errors (`invalid`: calls naming no tool)."""
    assert trajectory.episodes is not None
    gather = world.gather
    turns = gather(torch.tensor([sum(m["role"] == "assistant" for m in e) for e in trajectory.episodes],
                                dtype=torch.float32))
    reasons = trajectory.finish_reasons
    stopped = gather(torch.tensor([[r == FINISH_TURNS, r == FINISH_LENGTH] for r in reasons], dtype=torch.float32))
    counts: dict[str, int] = {}
    for message in (m for e in trajectory.episodes for m in e if m["role"] in ("tool", "environment")):
        name = f"tools/{message['name']}" if message["role"] == "tool" else "environment"
        if message["role"] == "tool":
            counts[f"{name}/calls"] = counts.get(f"{name}/calls", 0) + 1
        counts[f"{name}/errors"] = counts.get(f"{name}/errors", 0) + (message.get("error") is not None)
    merged: dict[str, float] = {}
    for part in world.gather_objects(counts):
        for key, n in part.items():
            merged[key] = merged.get(key, 0) + n
    return {
        "episode/turns": turns.mean().item(),
        "episode/tokens_sampled": int(world.sum(trajectory.num_generated_tokens)),
        "episode/tokens_inserted": int(world.sum(int((trajectory.completion_mask - trajectory.loss_mask).sum()))),
        "episode/stopped_by_turns": stopped[:, 0].mean().item(),
        "episode/stopped_by_tokens": stopped[:, 1].mean().item(),
        **dict(sorted(merged.items())),
    }


def row_advantages(advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[N] advantages as they are, or per-token [N, C] ones (process supervision) as each
    row's mean over the tokens it trains on."""
    if advantages.dim() == 1:
        return advantages
    mask = loss_mask.to(advantages.device, advantages.dtype)
    return (advantages * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def sample_records(examples: list[Example], trajectory: Trajectory, scores: RewardScores, advantages: torch.Tensor,
                   groups: GroupsLike, num_samples: int) -> list[dict[str, Any]]:
    """The first `num_samples` completions with their question, group size, rewards and advantage
    (samples.jsonl); groups: G, or each example's group size."""
    out = []
    advantages = row_advantages(advantages, trajectory.loss_mask)
    groups = Groups.of(groups, len(trajectory))
    owners, sizes = groups.per_row(examples), groups.per_row(list(groups.sizes))
    for i in range(min(num_samples, len(trajectory.completions))):
        ex = owners[i]
        out.append({
            "example_id": ex.id, "question": ex.question, "answer": ex.answer, "group_size": sizes[i],
            "completion": trajectory.completions[i], "finish_reason": trajectory.finish_reasons[i],
            **({"episode": trajectory.episodes[i]} if trajectory.episodes is not None else {}),
            "reward": scores.total[i].item(), "advantage": advantages[i].item(),
            "rewards": {k: (None if math.isnan(v[i].item()) else v[i].item())
                        for k, v in scores.per_function.items()},
            **({"steps": [list(step) for step in scores.steps[i]]} if scores.steps is not None else {}),
        })
    return out
