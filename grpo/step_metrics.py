"""What a training step reports about its rollout: metrics over every rank's rows, sample records.

Lengths and token counts are of the tokens the policy sampled (the trajectory's loss_mask
as the engine returned it), not of tokens inserted between them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from grpo.distributed import World
from grpo.reward_harness import RewardScores
from grpo.tasks.base import Example
from grpo.trajectory import FINISH_LENGTH, Trajectory


def rollout_metrics(trajectory: Trajectory, scores: RewardScores, advantages: torch.Tensor, group_size: int,
                    world: World) -> dict[str, float]:
    """Over the whole batch: every rank's rows, gathered in rank order."""
    G, gather = group_size, world.gather
    lengths = gather(trajectory.loss_mask.sum(1).float())  # [N]
    truncated = gather(torch.tensor([r == FINISH_LENGTH for r in trajectory.finish_reasons], dtype=torch.float32))
    total, advantages = gather(scores.total), gather(advantages)
    out = {
        "reward/mean": total.mean().item(),
        "reward/std": total.std().item() if total.numel() > 1 else 0.0,
        "frac_reward_zero_std": (total.view(-1, G).std(1) == 0).float().mean().item(),
        "advantage/abs_mean": advantages.abs().mean().item(),
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
    return out


def sample_records(examples: list[Example], trajectory: Trajectory, scores: RewardScores, advantages: torch.Tensor,
                   group_size: int, num_samples: int) -> list[dict[str, Any]]:
    """The first `num_samples` completions with their question, rewards and advantage (samples.jsonl)."""
    out = []
    for i in range(min(num_samples, len(trajectory.completions))):
        ex = examples[i // group_size]
        out.append({
            "example_id": ex.id, "question": ex.question, "answer": ex.answer,
            "completion": trajectory.completions[i], "finish_reason": trajectory.finish_reasons[i],
            "reward": scores.total[i].item(), "advantage": advantages[i].item(),
            "rewards": {k: (None if math.isnan(v[i].item()) else v[i].item())
                        for k, v in scores.per_function.items()},
        })
    return out
