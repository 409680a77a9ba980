"""The policy loss: importance ratio, surrogate (grpo.algorithm.objectives), KL penalty and the
aggregation of token losses into one number.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grpo.algorithm.objectives import ObjectiveOptions, policy_objective
from grpo.algorithm.tokens import masked_mean

# KL estimator -> its value from log_ratio = ref_logprobs - logprobs (see kl_divergence).
KL_ESTIMATORS = {
    "k1": lambda log_ratio: -log_ratio,
    "k2": lambda log_ratio: log_ratio.pow(2) / 2,
    "k3": lambda log_ratio: torch.exp(log_ratio) - log_ratio - 1,
}


# Importance-ratio level of the clipped surrogate -> log-ratio [B, T] or [B, 1] from the token
# log-ratios [B, T] and the loss mask (see policy_loss).
IMPORTANCE_SAMPLING_LEVELS = {
    "token": lambda log_ratio, mask: log_ratio,  # PPO / GRPO
    "sequence": lambda log_ratio, mask: (  # GSPO: the mean token log-ratio of each completion
        (log_ratio * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)),
}


def kl_divergence(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3",
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from tokens sampled from pi_theta.

    logprobs, ref_logprobs: [B, T]. With log_ratio = ref - logp (Schulman, "Approximating
    KL divergence"):
      k1 = -log_ratio                          unbiased, high variance, can be negative
      k2 = log_ratio**2 / 2                    biased, low variance
      k3 = exp(log_ratio) - log_ratio - 1      unbiased, low variance, always >= 0
    With old_logprobs [B, T] (the tokens were sampled from pi_old, not pi_theta), each
    estimate is importance-weighted (DeepSeek-V3.2's unbiased KL estimate):
      KL_t = exp(logp - old)_t * k_t           the ratio keeps its gradient: with it,
    d KL_t / d theta = log(pi_theta / pi_ref)_t * d logp_t / d theta, whose expectation under
    pi_old is the exact gradient of KL(pi_theta || pi_ref) (for k1 and k3; k2 stays biased).
    Returns [B, T].
    # logp = ln 0.5, ref = ln 0.25, old = ln 0.25: k3 = 0.193147, ratio 2 -> 0.386294
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is invalid; allowed: {', '.join(KL_ESTIMATORS)}")
    estimate = KL_ESTIMATORS[estimator](ref_logprobs - logprobs)
    if old_logprobs is None:
        return estimate
    return torch.exp(logprobs - old_logprobs) * estimate  # the token ratio, never the sequence one


def per_sequence_mean(masked: torch.Tensor, mask: torch.Tensor, num_items, max_length) -> torch.Tensor:
    """grpo: sum_i (sum_t m*l / |o_i|) / num_items; num_items = number of sequences."""
    return (masked.sum(1) / mask.sum(1).clamp(min=1.0)).sum() / num_items


def token_sum(masked: torch.Tensor, mask: torch.Tensor, num_items, max_length) -> torch.Tensor:
    """bnpo, dapo: sum_it m*l / num_items; num_items = number of (loss-masked) tokens."""
    return masked.sum() / num_items


def constant_normalized_sum(masked: torch.Tensor, mask: torch.Tensor, num_items, max_length) -> torch.Tensor:
    """dr_grpo: sum_it m*l / (num_items * max_completion_length); num_items = number of sequences."""
    if max_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")
    return masked.sum() / (num_items * max_length)


@dataclass(frozen=True)
class Aggregation:
    """How token losses become one number: `reduce(masked [B, T], mask [B, T], num_items,
    max_length)`, and what `num_items` counts ("sequences" or "tokens")."""

    reduce: Callable[..., torch.Tensor]
    counts: str

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        """What num_items counts in these rows: their loss-masked tokens, or their sequences with
        a token to train on (a row the mask empties, e.g. an overlong one, is not one). 0-d."""
        if self.counts == "tokens":
            return mask.sum()
        return (mask.sum(1) > 0).sum().to(mask.dtype)


# loss_type -> its aggregation: the one table that trainer, loss and config read.
AGGREGATIONS = {
    "grpo": Aggregation(per_sequence_mean, "sequences"),
    "bnpo": Aggregation(token_sum, "tokens"),
    "dr_grpo": Aggregation(constant_normalized_sum, "sequences"),
    "dapo": Aggregation(token_sum, "tokens"),
}


LOSS_TYPES = tuple(AGGREGATIONS)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    kl_estimator: str = "k3",
    num_items: float | int | torch.Tensor | None = None,
    importance_sampling_level: str = "token",
    token_weights: torch.Tensor | None = None,
    objective: str = "clip",
    dual_clip: float | None = None,
    cispo_epsilon_low: float | None = None,
    cispo_epsilon_high: float = 4.0,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    kl_importance_weighted: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Surrogate (`objective`, default the clipped one) plus KL penalty, aggregated by `loss_type`.

    logprobs: [B, T] (with grad), old_logprobs: [B, T], advantages: [B] (or [B, T]: per-token
    advantages of process supervision, A_it in place of A_i below),
    loss_mask: [B, T] (1 = a token the policy sampled; 0 = padding or an inserted token),
    ref_logprobs: [B, T] or None, token_weights: [B, T] or None (no gradient: the sampler
    correction's weights, sampler_correction_weights).
    Per token t of sequence i:
      ratio = exp(logprobs - old_logprobs)                                   (level "token")
      ratio = exp(sum_t m_it (logprobs - old_logprobs)_it / |o_i|), per i     (level "sequence", GSPO)
      l_it  = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i) * w_it + beta * KL_it
    The surrogate is `objective`'s (POLICY_OBJECTIVES: clip, above, with dual_clip; cispo; sapo), each
    given the ratio and the options its docstring names (sapo at token level only); their flags join
    the metrics.
    (epsilon_high defaults to epsilon; w_it = 1 without token_weights, which weigh only the
    surrogate, as TRL does; the KL term only when beta > 0, times the token ratio
    exp(logprobs - old_logprobs)_it with kl_importance_weighted: see kl_divergence.) At sequence level every token of
    a completion carries the same ratio and its gradient reaches every token through the mean.
    Aggregation (AGGREGATIONS), with m the mask and |o_i| the number of masked tokens of sequence i:
      grpo:    sum_i (sum_t m*l / |o_i|) / num_items   num_items = #sequences (default local)
      bnpo:    sum_it m*l / num_items                  num_items = #tokens (default local)
      dr_grpo: sum_it m*l / (num_items * max_completion_length)   num_items = #sequences
      dapo:    sum_it m*l / num_items                  num_items = #tokens in the global batch
    Pass the global counts as num_items to make micro-batch losses add up to the big-batch
    loss. Positions with mask 0 get exactly zero gradient, whatever their values (NaN too).
    Returns (loss 0-d, metrics of 0-d detached tensors: kl, clip/low, clip/high,
    clip/region, ratio_mean, the objective's flags (clip/dual, clip/cispo, sapo/gate); all token
    means over the mask).
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type={loss_type!r} is invalid; allowed: {', '.join(LOSS_TYPES)}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level={importance_sampling_level!r} is invalid; allowed: "
                         f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}")
    aggregation = AGGREGATIONS[loss_type]
    surrogate = policy_objective(objective, importance_sampling_level).surrogate
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = loss_mask.to(logprobs.dtype)  # [B, T]
    adv = advantages.to(logprobs.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # [B, 1], or [B, T] per token (process)
    # Masked positions are replaced before any arithmetic, not multiplied away after it: a NaN
    # or inf there (padding, an inserted token's missing log-prob) would otherwise turn the
    # zero gradient of a where() into 0 * NaN = NaN.
    keep = loss_mask.bool()
    logprobs = torch.where(keep, logprobs, 0.0)
    old_logprobs = torch.where(keep, old_logprobs, 0.0)
    if ref_logprobs is not None:
        ref_logprobs = torch.where(keep, ref_logprobs, 0.0)

    log_ratio = IMPORTANCE_SAMPLING_LEVELS[importance_sampling_level](logprobs - old_logprobs, mask)
    ratio = torch.exp(log_ratio).expand_as(logprobs)  # [B, T]
    options = ObjectiveOptions(epsilon, eps_high, dual_clip, cispo_epsilon_low, cispo_epsilon_high,
                               sapo_temperature_pos, sapo_temperature_neg)
    per_token, flags = surrogate(ratio, logprobs, adv, options)  # [B, T]
    if token_weights is not None:
        per_token = per_token * torch.where(keep, token_weights.to(per_token.dtype), 0.0).detach()
    kl = None
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_divergence(logprobs, ref_logprobs, kl_estimator,
                           old_logprobs if kl_importance_weighted else None)  # [B, T]
        per_token = per_token + beta * kl

    masked = torch.where(keep, per_token, torch.zeros_like(per_token))  # [B, T]
    n = num_items if num_items is not None else aggregation.count(mask).clamp(min=1.0)
    loss = aggregation.reduce(masked, mask, n, max_completion_length)

    metrics = surrogate_metrics(ratio, adv, mask, epsilon, eps_high, kl)
    metrics.update({name: masked_mean(flag.detach().to(mask.dtype), mask) for name, flag in flags.items()})
    return loss, metrics


@torch.no_grad()
def surrogate_metrics(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, epsilon: float,
                      epsilon_high: float, kl: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """policy_loss's metrics, token means over the mask: clip/low (ratio below 1 - epsilon where
    A < 0), clip/high (above 1 + epsilon_high where A > 0), clip/region (either), ratio_mean,
    and kl when given. ratio, mask, kl: [B, T]; adv: [B, 1] or [B, T]."""
    low = (ratio < 1 - epsilon) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    metrics = {
        "clip/low": masked_mean(low.float(), mask),
        "clip/high": masked_mean(high.float(), mask),
        "clip/region": masked_mean((low | high).float(), mask),
        "ratio_mean": masked_mean(ratio, mask),
    }
    if kl is not None:
        metrics["kl"] = masked_mean(kl, mask)
    return metrics
