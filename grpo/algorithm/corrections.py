"""Off-policy corrections: importance weights for a sampler that is not pi_old (TIS/MIS) and
DeepSeek-V3.2's off-policy sequence masking.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

import torch

# Sampler correction mode -> (loss weights, which tokens were corrected) of importance weights
# w = pi_old / q with cap C.
SAMPLER_CORRECTIONS = {
    "none": None,
    "truncate": lambda w, cap: (w.clamp(max=cap), w > cap),  # TIS: weights above C count as C
    "mask": lambda w, cap: (((w >= 1 / cap) & (w <= cap)).to(w.dtype), (w < 1 / cap) | (w > cap)),  # MIS
}


SAMPLER_CORRECTION_LEVELS = ("token", "sequence")


@torch.no_grad()
def sampler_correction_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, loss_mask: torch.Tensor,
    mode: str = "truncate", level: str = "token", cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights that correct for sampling from q (the engine) instead of pi_old.

    old_logprobs: [B, T] the trainer's log-probs of the sampled tokens under the distribution
    the sampler used (same temperature, top-k, top-p); sampler_logprobs: [B, T] q's;
    loss_mask: [B, T]. With d_t = old_t - q_t on masked tokens:
      token:    log w_t = d_t
      sequence: log w_i = sum_t m_t d_t / |o_i| for every token of completion i (a mean, never the sum)
      truncate: weight = min(w, cap)                 (TIS)
      mask:     weight = 1 if 1/cap <= w <= cap else 0   (MIS)
    A token whose q or pi_old log-prob is not finite gets weight 0 (at sequence level, its
    whole completion) and is counted. Returns (weights [B, T], 0 off the mask; sums for
    metrics: num_tokens, num_nonfinite, num_corrected (truncated or masked), w_sum, w_min,
    w_max over the tokens that count, kl_sum: sum of k3 estimates of KL(q || pi_old) per token,
    exp(d) - d - 1, from tokens drawn from q).
    # d = [0.0, ln 3, ln 0.25], cap 2, token level: w = [1, 3, 0.25]
    # truncate -> [1, 2, 0.25] (one corrected); mask -> [1, 0, 0] (two corrected)
    """
    if mode not in SAMPLER_CORRECTIONS or SAMPLER_CORRECTIONS[mode] is None:
        raise ValueError(f"mode={mode!r} is invalid; allowed: {', '.join(m for m in SAMPLER_CORRECTIONS if m != 'none')}")
    if level not in SAMPLER_CORRECTION_LEVELS:
        raise ValueError(f"level={level!r} is invalid; allowed: {', '.join(SAMPLER_CORRECTION_LEVELS)}")
    keep = loss_mask.bool()
    old, q = old_logprobs.float(), sampler_logprobs.float().to(old_logprobs.device)
    finite = torch.isfinite(old) & torch.isfinite(q) & keep  # [B, T]
    nonfinite = keep & ~finite
    d = torch.where(finite, old - q, 0.0)  # [B, T]
    if level == "sequence":
        valid = finite.float()
        d_seq = d.sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1.0)  # [B, 1]
        log_w = d_seq.expand_as(d)
        finite = keep & ~nonfinite.any(1, keepdim=True)  # one bad token voids its completion's weight
    else:
        log_w = d
    w = torch.exp(log_w)
    loss_weights, corrected = SAMPLER_CORRECTIONS[mode](w, cap)
    weights = torch.where(finite, loss_weights, 0.0)  # [B, T]
    counted = w[finite]
    corrected = (corrected & finite).sum()
    tokens_d = d[keep & torch.isfinite(old) & torch.isfinite(q)]
    sums = {
        "num_tokens": finite.sum().float(), "num_nonfinite": nonfinite.sum().float(),
        "num_corrected": corrected.float(), "w_sum": counted.sum(),
        "w_min": counted.min() if counted.numel() else torch.tensor(float("nan")),
        "w_max": counted.max() if counted.numel() else torch.tensor(float("nan")),
        "kl_sum": (torch.exp(tokens_d) - tokens_d - 1).sum(), "kl_tokens": torch.tensor(float(tokens_d.numel())),
    }
    return weights, sums


@torch.no_grad()
def off_policy_sequence_mask(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSeek-V3.2's off-policy sequence masking: which completions keep their surrogate.

    logprobs: [B, T] pi_theta's log-probs of the sampled tokens (the current policy, under the
    distribution the sampler drew from); sampler_logprobs: [B, T] the sampler's own, q;
    advantages: [B] (or [B, T] per token); loss_mask: [B, T]. Per completion i:
      KL_i = sum_t m_t (q_t - logp_t) / |o_i|          over the tokens where both are finite
      M_i  = 0 if A_i < 0 and KL_i > threshold, else 1  (M_it with per-token advantages A_it)
    KL_i, the mean of log(q / pi_theta) over tokens drawn from q, estimates KL(q || pi_theta)
    per token. A completion without a token where both log-probs are finite cannot be
    measured: it is kept (no evidence that it drifted) and counted.
    Returns (keep: [B, 1] (or [B, T]) in logprobs' dtype; sums for metrics: num_sequences
    (with a token to train on), num_masked (those that lose a token to the mask), kl_sum and
    num_measured (KL_i over the measurable ones), num_unmeasured).
    # q - logp = [[0.1, 0.3], [1.0, 2.0], [1.0, 2.0]], A = [-1, -1, +1], threshold 0.5
    # -> KL = [0.2, 1.5, 1.5] -> keep [1, 0, 1] (the last has A > 0): one of three masked
    """
    trained = loss_mask.bool()  # [B, T]
    q, logp = sampler_logprobs.float().to(logprobs.device), logprobs.detach().float()
    finite = trained & torch.isfinite(q) & torch.isfinite(logp)  # [B, T]
    counted = finite.sum(1, keepdim=True)  # [B, 1]
    seq_kl = torch.where(finite, q - logp, 0.0).sum(1, keepdim=True) / counted.clamp(min=1)  # [B, 1]
    measured = counted > 0  # [B, 1]
    adv = advantages.to(logp.device)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    drop = (adv < 0) & (seq_kl > threshold) & measured  # [B, 1] or [B, T]
    rows = trained.any(1)  # [B]
    sums = {
        "num_sequences": rows.sum().float(), "num_masked": (drop & trained).any(1).sum().float(),
        "kl_sum": seq_kl[measured].sum(), "num_measured": measured.sum().float(),
        "num_unmeasured": (rows & ~measured.squeeze(1)).sum().float(),
    }
    return (~drop).to(logprobs.dtype), sums
