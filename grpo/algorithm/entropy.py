"""Entropy in the objective: the bonus, its adaptive coefficient and high-entropy token selection.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

import math

import torch

from grpo.algorithm.losses import AGGREGATIONS, LOSS_TYPES


def entropy_bonus(
    entropy: torch.Tensor, loss_mask: torch.Tensor, coef: float, loss_type: str = "grpo",
    num_items: float | int | torch.Tensor | None = None, max_completion_length: int | None = None,
) -> torch.Tensor:
    """The entropy bonus as a term of the loss: -coef * agg(H), agg the loss_type's aggregation.

    entropy: [B, T] (with grad: token_entropy), loss_mask: [B, T]. agg is AGGREGATIONS[loss_type]
    with the same num_items as policy_loss (the global count), so micro-batch terms add up to
    the whole batch's, and masked positions get exactly zero gradient. Returns 0-d.
    # H [[1, 2], [3, pad]], mask [[1, 1], [1, 0]], coef 0.1
    # grpo (num_items 2 sequences): (3/2 + 3/1) / 2 = 2.25 -> -0.225; dH = -0.1 [[1/4, 1/4], [1/2, 0]]
    # dapo (num_items 3 tokens): 6 / 3 = 2 -> -0.2; dr_grpo (2 sequences, max length 2): 6 / 4 -> -0.15
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type={loss_type!r} is invalid; allowed: {', '.join(LOSS_TYPES)}")
    aggregation = AGGREGATIONS[loss_type]
    mask = loss_mask.to(entropy.dtype)
    masked = torch.where(loss_mask.bool(), entropy, torch.zeros_like(entropy))  # [B, T]
    n = num_items if num_items is not None else aggregation.count(mask).clamp(min=1.0)
    return -coef * aggregation.reduce(masked, mask, n, max_completion_length)


def adapted_entropy_coef(coef: float, entropy: float, target: float, lr: float) -> float:
    """The entropy bonus's next coefficient: max(0, coef + lr * (target - entropy)).

    Gradient ascent on the dual variable of the constraint entropy >= target (the form of SAC's
    temperature update, on the coefficient itself): the bonus grows while the measured mean
    token entropy is below the target and shrinks to 0 above it. A non-finite measurement
    leaves coef as it is.
    # coef 0.01, target 1.0, lr 0.05: entropy 0.6 -> 0.01 + 0.05 * 0.4 = 0.03; entropy 1.5 -> max(0, -0.015) = 0
    """
    if entropy != entropy or entropy in (float("inf"), float("-inf")):
        return coef
    return max(0.0, coef + lr * (target - entropy))


def entropy_threshold(entropies: torch.Tensor, top_quantile: float) -> torch.Tensor:
    """The smallest entropy among the top `top_quantile` fraction: the k-th largest of
    `entropies` [n] (the loss-masked tokens of the whole batch), k = ceil(top_quantile * n), at
    least 1. Returns 0-d (+inf when n = 0: nothing is selected).
    # entropies [0.1, 0.9, 0.5, 0.3, 0.7], top_quantile 0.4 -> k = 2 -> 0.7
    """
    n = entropies.numel()
    if n == 0:
        return torch.tensor(float("inf"))
    k = min(n, max(1, math.ceil(top_quantile * n - 1e-9)))  # 0.2 * 10 is 2, not 3, in spite of rounding
    return torch.kthvalue(entropies.float().flatten(), n - k + 1).values


def high_entropy_mask(entropy: torch.Tensor, loss_mask: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The tokens the surrogate trains on under high-entropy selection ("Beyond the 80/20 Rule",
    Wang et al. 2025): loss-masked and entropy >= threshold (entropy_threshold). Ties at the
    threshold are all kept. entropy, loss_mask: [B, T] -> bool [B, T].
    # H [[0.1, 0.9], [0.7, pad]], mask [[1, 1], [1, 0]], threshold 0.7 -> [[False, True], [True, False]]
    """
    keep = loss_mask.bool()
    return keep & (torch.where(keep, entropy.float(), float("-inf")) >= threshold)
