"""Step 4 of the loop: the advantages a step trains on, from its rewards.

    advantages, metrics = step_advantages(cfg, trajectory, groups, scores, reward_fns, tokenizer, world)

Outcome rewards become group-relative advantages by the configured aggregation
(algorithm.REWARD_AGGREGATIONS: their weighted total normalized in its group, or each reward
normalized on its own, then summed); step rewards add per-token process advantages, combined
as algorithm.advantages says (algorithm.ADVANTAGE_SOURCES). Whole groups count (each over its own
size: grpo.algorithm.Groups), truncated completions included (whether those train is the loss mask's business, not this one's).
"""

from __future__ import annotations

from typing import Any

import torch

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.config import Config
from grpo.rewards.harness import RewardScores, WeightedReward
from grpo.rewards.steps import place_steps
from grpo.trajectory import Trajectory


def step_advantages(cfg: Config, trajectory: Trajectory, groups: algorithm.Groups, scores: RewardScores,
                    reward_fns: list[WeightedReward], tokenizer: Any,
                    world: World) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages [N] (or [N, C] per token with step rewards) and the process metrics
    (process/steps: placed steps per completion, process/unplaced) when step rewards exist."""
    a = cfg.algorithm
    aggregation = algorithm.REWARD_AGGREGATIONS[a.reward_aggregation]
    advantages = aggregation.advantages(*scores.outcome(reward_fns), groups, a.scale_rewards, a.advantage_eps)  # [N]
    if scores.steps is None:
        return advantages, {}
    placed = place_steps(tokenizer, trajectory.completion_ids, trajectory.completion_mask,
                         trajectory.completions, scores.steps, cfg.task.assistant_prefix)
    per_token = algorithm.process_advantages(placed.rewards, placed.rows, placed.tokens, len(trajectory),
                                             trajectory.completion_ids.shape[1], groups, a.scale_rewards,
                                             a.advantage_eps)  # [N, C]
    advantages = algorithm.ADVANTAGE_SOURCES[a.advantages](advantages, per_token)  # [N] or [N, C]
    return advantages, {"process/steps": world.sum(len(placed.rows)) / world.sum(len(trajectory)),
                        "process/unplaced": int(world.sum(placed.unplaced))}
