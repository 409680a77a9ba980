"""Advantages: group-relative normalization of outcome rewards (and of several rewards apart), the
no-signal test of dynamic sampling, and per-token process advantages.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from grpo.algorithm.groups import Groups

# What every function here takes as its groups: G (every group G rows), the sizes of the groups in
# row order, or Groups. Unequal groups (rollout.group_policy = adaptive) normalize each group over
# its own size; equal ones give the [B, G] results bit for bit (grpo.algorithm.groups).
GroupsLike = int | Sequence[int] | Groups

# The tables the code dispatches on; config fields list their keys as the allowed values.
# Advantage scale -> the std that divides the centred rewards [N] (None: no division), from the
# rewards [N] and their groups.
ADVANTAGE_SCALES = {
    "group": lambda rewards, groups: groups.spread(groups.std(rewards)),  # [N]: each row its group's
    "batch": lambda rewards, groups: rewards.std() if rewards.numel() > 1 else rewards.new_zeros(()),  # 0-d
    "none": None,
}


def group_advantages(
    rewards: torch.Tensor, group_size: GroupsLike, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages, no value model.

    rewards: [N] float, ordered group by group (the completions of prompt 0 first); group_size:
    G, or each group's size (GroupsLike). Returns [N]:
      scale="group": A_i = (r_i - mean(group)) / (std(group) + eps)     (GRPO)
      scale="batch": A_i = (r_i - mean(group)) / (std(all rewards) + eps)
      scale="none":  A_i =  r_i - mean(group)                            (Dr. GRPO)
    mean and std are over the group's own rows, however many it has; std is the unbiased
    (Bessel-corrected) standard deviation. A group with equal rewards gives zeros (its centred
    rewards are exactly zero), never NaN.
    # unequal groups, sizes [2, 3], rewards [1, 0 | 1, 1, 0], eps 0:
    # group 1: mean 1/2, std sqrt(2 * 0.25 / 1) = 0.7071 -> [0.7071, -0.7071]
    # group 2: mean 2/3, std sqrt((2 (1/3)^2 + (2/3)^2) / 2) = 0.5774 -> [0.5774, 0.5774, -1.1547]
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r} is invalid; allowed: {', '.join(ADVANTAGE_SCALES)}")
    std_of = ADVANTAGE_SCALES[scale]
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    groups = Groups.of(group_size, rewards.numel())
    r = rewards.float()  # [N]
    centred = r - groups.spread(groups.mean(r))  # [N]
    if std_of is None:
        return centred
    std = std_of(r, groups)  # [N] or 0-d
    # A group of equal rewards carries no signal: exact zeros (float rounding in the mean
    # would otherwise leave tiny residues that eps turns into noise, or NaN with eps=0).
    equal = groups.spread(groups.constant(r))  # [N]
    return torch.where(equal, torch.zeros_like(centred), centred / (std + eps))


def groups_with_signal(rewards: torch.Tensor, group_size: GroupsLike, tolerance: float = 0.0) -> torch.Tensor:
    """Which groups carry a learning signal (DAPO's dynamic sampling keeps only these).

    rewards: [N] ordered group by group -> [B] bool: std(group) > tolerance (the Bessel-
    corrected std that group_advantages divides by). A group of equal rewards (all right, all
    wrong) has std 0 and advantages 0: it is dropped even at tolerance 0.
    # rewards [1, 1, 0, 1 | 0.5, 0.5, 0.5, 0.5], tolerance 0 -> std [0.5, 0] -> [True, False]
    # sizes [2, 3]: rewards [1, 1 | 1, 0, 0] -> [False, True]
    """
    groups = Groups.of(group_size, rewards.numel())
    r = rewards.float()
    return ~groups.constant(r) & (groups.std(r) > tolerance)  # constant: exact, like group_advantages' zeros


# A group's weighted sum of normalized rewards counts as cancelled (exactly 0) when it stays within
# this fraction of its largest term: float rounding leaves ~1e-7 of complementary rewards (e.g.
# [1, 0, 0] and [0, 1, 1] of equal weight), which the batch division would blow up into noise.
CANCELLED = 1e-5


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The total reward: sum_f w_f * s_f per completion, a NaN score (a failed call) counting as 0.

    scores: [F, N], one row per reward function; weights: [F] (float64 keeps a config weight
    exact). Returns float32 [N], zeros when F = 0; summed function by function in float32, as
    the harness's total always was.
    # scores [[1, NaN], [0.5, 2]], weights [1, 2] -> [1 + 2 * 0.5, 0 + 2 * 2] = [2, 4]
    """
    total = torch.zeros(scores.shape[1], dtype=torch.float32)
    for row, weight in zip(scores.float(), weights.tolist(), strict=True):
        total += weight * torch.nan_to_num(row, nan=0.0)
    return total


def summed_advantages(scores: torch.Tensor, weights: torch.Tensor, group_size: GroupsLike, scale: str = "group",
                      eps: float = 1e-4) -> torch.Tensor:
    """sum_then_normalize (GRPO): group_advantages of the weighted total. [F, N], [F] -> [N]."""
    return group_advantages(weighted_sum(scores, weights), group_size, scale, eps)


def decoupled_sum(scores: torch.Tensor, weights: torch.Tensor, group_size: GroupsLike, scale: str = "group",
                  eps: float = 1e-4) -> torch.Tensor:
    """S = sum_f w_f * group_advantages(s_f, G, scale, eps): each reward normalized on its own, then
    weighted and summed (GDPO's first two stages). [F, N], [F] -> float32 [N], NaN scores as 0.
    A group whose terms cancel (|S| <= CANCELLED * its largest |w_f A_f| on every row) gets exact
    zeros, like a group of equal rewards in group_advantages."""
    if scores.shape[0] == 0:
        return torch.zeros(scores.shape[1], dtype=torch.float32)
    groups = Groups.of(group_size, scores.shape[1])
    normalized = torch.stack([group_advantages(torch.nan_to_num(row.float(), nan=0.0), groups, scale, eps)
                              for row in scores])  # [F, N]
    terms = weights.float().unsqueeze(1) * normalized  # [F, N]
    total = terms.sum(0)  # [N]
    largest = groups.spread(groups.amax(terms.abs().amax(0)))  # [N]: the group's largest term
    cancelled = groups.spread(groups.all(total.abs() <= CANCELLED * largest))  # [N]
    return torch.where(cancelled, 0.0, total)


def decoupled_advantages(scores: torch.Tensor, weights: torch.Tensor, group_size: GroupsLike, scale: str = "group",
                         eps: float = 1e-4) -> torch.Tensor:
    """normalize_then_sum: GDPO's advantages of several rewards (Liu et al. 2026, "GDPO: Group
    reward-Decoupled Normalization Policy Optimization"; TRL's multi_objective_aggregation).

    scores: [F, N] one row per outcome reward function, rows ordered group by group, NaN (a
    failed call) scored 0 as in the total; weights: [F]. Returns float32 [N]:
      A_f = group_advantages(s_f, G, scale, eps)   each function on its own (scale "group": its
                                                   group's std; "batch": its std over the batch)
      S   = sum_f w_f * A_f                         (decoupled_sum; cancelled groups exactly 0)
      A   = S / (std(S) + eps)                      std: Bessel-corrected, over all N rows
      A   = S                                       scale "none": no std divides anything, and A
                                                    is then sum_then_normalize's centred total
    GDPO and TRL subtract the batch mean of S first; it is zero here by construction (every
    group's S sums to 0), so it is left out: it would only add rounding to the zero groups. With
    one function and w > 0 this is sum_then_normalize's A divided by that A's batch std (and eps).
    # two rewards, weights [2, 1], two groups of 3, eps 0:
    # f1 [1, 0, 0 | 1, 1, 0], f2 [0, 2, 2 | 0, 0, 0]; totals [2, 2, 2 | 2, 2, 0]
    # f1: g1 mean 1/3, std 1/sqrt(3) -> [2, -1, -1] / sqrt(3); g2 -> [1, 1, -2] / sqrt(3)
    # f2: g1 [-2, 1, 1] / sqrt(3); g2 equal -> 0
    # S = 2 f1 + f2 = [2, -1, -1, 2, 2, -4] / sqrt(3); std = sqrt(30 / 5 / 3) = sqrt(2)
    # -> A = [2, -1, -1, 2, 2, -4] / sqrt(6) = [0.8165, -0.4082, -0.4082, 0.8165, 0.8165, -1.6330]
    # (sum_then_normalize: group 1's total is constant -> [0, 0, 0 | 0.5774, 0.5774, -1.1547])
    """
    total = decoupled_sum(scores, weights, group_size, scale, eps)  # [N]
    if ADVANTAGE_SCALES[scale] is None:
        return total
    std = ADVANTAGE_SCALES["batch"](total, None)  # 0-d
    return torch.where(total == 0, 0.0, total / (std + eps))  # all zero: no 0 / 0 at eps 0


def summed_signal(scores: torch.Tensor, weights: torch.Tensor, group_size: GroupsLike, tolerance: float = 0.0,
                  scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """sum_then_normalize's groups with signal: the weighted total varies (groups_with_signal). -> [B]"""
    return groups_with_signal(weighted_sum(scores, weights), group_size, tolerance)


def decoupled_signal(scores: torch.Tensor, weights: torch.Tensor, group_size: GroupsLike, tolerance: float = 0.0,
                     scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """normalize_then_sum's groups with signal -> [B] bool: some reward function of weight != 0
    varies in the group by a std > tolerance (in its own units), and the normalized rewards do not
    cancel (decoupled_sum is not 0). At tolerance 0 this is exactly "the group's advantages are
    not all 0". A constant total can hide varying rewards (signal here), and a varying total can
    hold rewards that cancel once normalized (none here).
    # f1 [1, 0, 0], f2 [0, 2, 2], weights [2, 1]: total constant, S = [2, -1, -1] / sqrt(3) -> True
    # f1 [1, 0, 0], f2 [0, 1, 1], weights [1, 1]: f2's A = -f1's A -> S = 0 -> False
    """
    groups = Groups.of(group_size, scores.shape[1])
    varies = [groups_with_signal(torch.nan_to_num(row, nan=0.0), groups, tolerance)
              for row, weight in zip(scores, weights.tolist(), strict=True) if weight != 0]
    some = torch.stack(varies).any(0) if varies else torch.zeros(groups.num_groups, dtype=torch.bool)
    total = decoupled_sum(scores, weights, groups, scale, eps)  # [N]
    return some & groups.any(total != 0)


@dataclass(frozen=True)
class RewardAggregation:
    """How several outcome rewards become advantages, and which groups that leaves a signal in
    (dynamic sampling keeps those). Both take (scores [F, N], weights [F], group_size, ...)."""

    advantages: Callable[..., torch.Tensor]  # (scores, weights, G, scale, eps) -> [N]
    with_signal: Callable[..., torch.Tensor]  # (scores, weights, G, tolerance, scale, eps) -> [B] bool


# algorithm.reward_aggregation -> its functions
REWARD_AGGREGATIONS = {
    "sum_then_normalize": RewardAggregation(summed_advantages, summed_signal),
    "normalize_then_sum": RewardAggregation(decoupled_advantages, decoupled_signal),
}


def process_advantages(
    step_rewards: torch.Tensor, step_rows: torch.Tensor, step_tokens: torch.Tensor, num_rows: int, length: int,
    group_size: GroupsLike, scale: str = "group", eps: float = 1e-4,
) -> torch.Tensor:
    """Process-supervision advantages (DeepSeekMath section 4.1.3), per token.

    step_rewards: [S] float, one score per step of every completion; step_rows: [S] long, the
    row of each step (rows ordered group by group: G per prompt, or the groups' sizes); step_tokens: [S] long, the
    completion token each step ends in. Returns [num_rows, length]:
      r~_j    = (r_j - mean(R_g)) / (std(R_g) + eps)   R_g: every step reward of the group's
                                                       completions, however many (scale "group")
      A_{i,t} = sum of r~_j over the steps j of row i that end at or after token t
    scale as in group_advantages: "batch" divides by the std of all S step rewards, "none" not
    at all. A group whose step rewards are all equal (one step included) gives zeros; tokens
    after a row's last step get 0, and so does a row without steps.
    # G = 2, step rewards [[1, 0], [0]]: mean 1/3, std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = 1/sqrt(3)
    # -> r~ = [[2/sqrt(3), -1/sqrt(3)], [-1/sqrt(3)]] = [[1.1547, -0.5774], [-0.5774]] (eps 0).
    # Steps of row 0 end at tokens 1 and 3, row 1's at token 2, length 4:
    # A = [[1.1547 - 0.5774, 1.1547 - 0.5774, -0.5774, -0.5774], [-0.5774, -0.5774, -0.5774, 0]]
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r} is invalid; allowed: {', '.join(ADVANTAGE_SCALES)}")
    if not step_rewards.shape == step_rows.shape == step_tokens.shape or step_rewards.dim() != 1:
        raise ValueError("step_rewards, step_rows and step_tokens must be 1-D of one length")
    row_groups = Groups.of(group_size, num_rows)
    num_groups = row_groups.num_groups
    r = step_rewards.float()  # [S]
    groups = row_groups.ids[step_rows.long()]  # [S]: each step's group
    count = torch.bincount(groups, minlength=num_groups).float()  # [num_groups]
    mean = torch.zeros(num_groups).index_add_(0, groups, r) / count.clamp(min=1.0)
    centred = r - mean[groups]  # [S]
    if scale == "group":
        var = torch.zeros(num_groups).index_add_(0, groups, centred.pow(2)) / (count - 1).clamp(min=1.0)
        centred = centred / (var.sqrt()[groups] + eps)
    elif scale == "batch":
        centred = centred / ((r.std() if r.numel() > 1 else r.new_zeros(())) + eps)
    high = torch.full((num_groups,), -torch.inf).scatter_reduce(0, groups, r, "amax")
    low = torch.full((num_groups,), torch.inf).scatter_reduce(0, groups, r, "amin")
    normalized = torch.where((high == low)[groups], 0.0, centred)  # exact zeros for equal groups
    per_token = torch.zeros(num_rows, length).index_put_(
        (step_rows.long(), step_tokens.long()), normalized, accumulate=True)  # [N, C]
    return per_token.flip(1).cumsum(1).flip(1)  # a step's reward reaches every token up to its end


# How outcome advantages [N] and process advantages [N, C] train the policy together.
ADVANTAGE_SOURCES = {
    "sum": lambda outcome, process: outcome.unsqueeze(1) + process,  # [N, C]: each normalized on its own
    "outcome": lambda outcome, process: outcome,  # [N]: step rewards are only logged
    "process": lambda outcome, process: process,  # [N, C]: outcome rewards are only logged
}
