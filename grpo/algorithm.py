"""The GRPO math as pure tensor functions.

Nothing here touches a model, a tokenizer or a process group: every function takes tensors
and returns tensors, so each is tested against hand-computed values.

Shapes: B = number of completions in the (micro-)batch (prompts x G, ordered group by
group), T = completion length (padded), V = vocabulary size.

Where we depart from the papers:
- DeepSeekMath's GRPO objective averages token losses per sequence, then over sequences
  (`loss_type="grpo"`). That gives long sequences less weight per token (the length bias
  Dr. GRPO points out), so `bnpo`, `dr_grpo` and `dapo` aggregations are offered too.
- The KL penalty uses Schulman's k3 estimator by default and is added per token to the
  surrogate (as DeepSeekMath and TRL do), not folded into the reward.
- The group std is Bessel-corrected (torch's default), as TRL and verl compute it; a group
  whose rewards are all equal gets zero advantages, never NaN.
- `num_items` is the normalizer over the whole global batch (all micro-batches and all
  processes), so gradient accumulation and data parallelism give the same gradient as one
  big batch. `bnpo` and `dapo` then coincide; they differ (as in TRL) only when `num_items`
  is left to default to the local micro-batch count.
- CISPO's weight bound is 1 + cispo_epsilon_high, as MiniMax-M1 and verl write it; TRL's
  `epsilon_high` for cispo caps the raw ratio (its 5.0 is our default 4).
- DeepSeek-V3.2's unbiased KL weighs each token's estimate by the token ratio pi_theta / pi_old
  (the surrogate's pi_old), also at sequence level; its off-policy mask keeps a completion it
  cannot measure (no token with finite sampler and trainer log-probs).
- normalize_then_sum (GDPO) leaves out the batch mean GDPO and TRL subtract (zero by
  construction) and zeroes groups whose normalized rewards cancel (decoupled_advantages).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The tables the code dispatches on; config fields list their keys as the allowed values.
# Advantage scale -> the std that divides the centred rewards [B, G] (None: no division).
ADVANTAGE_SCALES = {
    "group": lambda grouped: grouped.std(dim=1, keepdim=True),  # [B, 1]
    "batch": lambda grouped: grouped.flatten().std() if grouped.numel() > 1 else grouped.new_zeros(()),
    "none": None,
}
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
# Sampler correction mode -> (loss weights, which tokens were corrected) of importance weights
# w = pi_old / q with cap C.
SAMPLER_CORRECTIONS = {
    "none": None,
    "truncate": lambda w, cap: (w.clamp(max=cap), w > cap),  # TIS: weights above C count as C
    "mask": lambda w, cap: (((w >= 1 / cap) & (w <= cap)).to(w.dtype), (w < 1 / cap) | (w > cap)),  # MIS
}
SAMPLER_CORRECTION_LEVELS = ("token", "sequence")

# Tokens per chunk when turning logits into log-probabilities: bounds the float32
# temporary to CHUNK x V (1024 x 49152 x 4 B = 0.2 GB for the bundled model's vocabulary).
LOGPROB_CHUNK_TOKENS = 1024


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages, no value model.

    rewards: [B*G] float, ordered group by group (the G completions of prompt 0 first).
    Returns [B*G]:
      scale="group": A_i = (r_i - mean(group)) / (std(group) + eps)     (GRPO)
      scale="batch": A_i = (r_i - mean(group)) / (std(all rewards) + eps)
      scale="none":  A_i =  r_i - mean(group)                            (Dr. GRPO)
    std is the unbiased (Bessel-corrected) standard deviation. A group with equal rewards
    gives zeros (its centred rewards are exactly zero), never NaN.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r} is invalid; allowed: {', '.join(ADVANTAGE_SCALES)}")
    std_of = ADVANTAGE_SCALES[scale]
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if std_of is None:
        return centred.flatten()
    std = std_of(grouped)  # [B, 1] or 0-d
    # A group of equal rewards carries no signal: exact zeros (float rounding in the mean
    # would otherwise leave tiny residues that eps turns into noise, or NaN with eps=0).
    equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [B, 1]
    return torch.where(equal, torch.zeros_like(centred), centred / (std + eps)).flatten()


def groups_with_signal(rewards: torch.Tensor, group_size: int, tolerance: float = 0.0) -> torch.Tensor:
    """Which groups carry a learning signal (DAPO's dynamic sampling keeps only these).

    rewards: [B*G] ordered group by group -> [B] bool: std(group) > tolerance (the Bessel-
    corrected std that group_advantages divides by). A group of equal rewards (all right, all
    wrong) has std 0 and advantages 0: it is dropped even at tolerance 0.
    # rewards [1, 1, 0, 1 | 0.5, 0.5, 0.5, 0.5], tolerance 0 -> std [0.5, 0] -> [True, False]
    """
    grouped = rewards.float().view(-1, group_size)  # [B, G]
    equal = (grouped == grouped[:, :1]).all(dim=1)  # exact, like group_advantages' zeros
    return ~equal & (grouped.std(dim=1) > tolerance)


# --------------------------------------------------------------------------- several rewards

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


def summed_advantages(scores: torch.Tensor, weights: torch.Tensor, group_size: int, scale: str = "group",
                      eps: float = 1e-4) -> torch.Tensor:
    """sum_then_normalize (GRPO): group_advantages of the weighted total. [F, N], [F] -> [N]."""
    return group_advantages(weighted_sum(scores, weights), group_size, scale, eps)


def decoupled_sum(scores: torch.Tensor, weights: torch.Tensor, group_size: int, scale: str = "group",
                  eps: float = 1e-4) -> torch.Tensor:
    """S = sum_f w_f * group_advantages(s_f, G, scale, eps): each reward normalized on its own, then
    weighted and summed (GDPO's first two stages). [F, N], [F] -> float32 [N], NaN scores as 0.
    A group whose terms cancel (|S| <= CANCELLED * its largest |w_f A_f| on every row) gets exact
    zeros, like a group of equal rewards in group_advantages."""
    if scores.shape[0] == 0:
        return torch.zeros(scores.shape[1], dtype=torch.float32)
    normalized = torch.stack([group_advantages(torch.nan_to_num(row.float(), nan=0.0), group_size, scale, eps)
                              for row in scores])  # [F, N]
    terms = weights.float().unsqueeze(1) * normalized  # [F, N]
    total = terms.sum(0).view(-1, group_size)  # [B, G]
    largest = terms.abs().amax(0).view(-1, group_size).amax(1, keepdim=True)  # [B, 1]
    cancelled = (total.abs() <= CANCELLED * largest).all(1, keepdim=True)  # [B, 1]
    return torch.where(cancelled, 0.0, total).flatten()


def decoupled_advantages(scores: torch.Tensor, weights: torch.Tensor, group_size: int, scale: str = "group",
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
    std = ADVANTAGE_SCALES["batch"](total)  # 0-d
    return torch.where(total == 0, 0.0, total / (std + eps))  # all zero: no 0 / 0 at eps 0


def summed_signal(scores: torch.Tensor, weights: torch.Tensor, group_size: int, tolerance: float = 0.0,
                  scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """sum_then_normalize's groups with signal: the weighted total varies (groups_with_signal). -> [B]"""
    return groups_with_signal(weighted_sum(scores, weights), group_size, tolerance)


def decoupled_signal(scores: torch.Tensor, weights: torch.Tensor, group_size: int, tolerance: float = 0.0,
                     scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """normalize_then_sum's groups with signal -> [B] bool: some reward function of weight != 0
    varies in the group by a std > tolerance (in its own units), and the normalized rewards do not
    cancel (decoupled_sum is not 0). At tolerance 0 this is exactly "the group's advantages are
    not all 0". A constant total can hide varying rewards (signal here), and a varying total can
    hold rewards that cancel once normalized (none here).
    # f1 [1, 0, 0], f2 [0, 2, 2], weights [2, 1]: total constant, S = [2, -1, -1] / sqrt(3) -> True
    # f1 [1, 0, 0], f2 [0, 1, 1], weights [1, 1]: f2's A = -f1's A -> S = 0 -> False
    """
    num_groups = scores.shape[1] // group_size
    varies = [groups_with_signal(torch.nan_to_num(row, nan=0.0), group_size, tolerance)
              for row, weight in zip(scores, weights.tolist(), strict=True) if weight != 0]
    some = torch.stack(varies).any(0) if varies else torch.zeros(num_groups, dtype=torch.bool)
    total = decoupled_sum(scores, weights, group_size, scale, eps).view(-1, group_size)  # [B, G]
    return some & (total != 0).any(1)


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
    group_size: int, scale: str = "group", eps: float = 1e-4,
) -> torch.Tensor:
    """Process-supervision advantages (DeepSeekMath section 4.1.3), per token.

    step_rewards: [S] float, one score per step of every completion; step_rows: [S] long, the
    row of each step (rows ordered group by group, G per prompt); step_tokens: [S] long, the
    completion token each step ends in. Returns [num_rows, length]:
      r~_j    = (r_j - mean(R_g)) / (std(R_g) + eps)   R_g: every step reward of the group's
                                                       G completions (scale "group")
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
    num_groups = num_rows // group_size
    r = step_rewards.float()  # [S]
    groups = step_rows.long() // group_size  # [S]
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


def sampling_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """The logits of the distribution a sampler draws from: [n, V] -> float32 [n, V].

    z = logits / temperature; with top_k > 0 every token below the k-th largest z gets -inf;
    with top_p < 1 so does every token whose more likely tokens already reach probability
    top_p (the most likely token is always kept). softmax(z) is then the truncated,
    renormalized distribution. Ties at the k-th value are all kept.
    # z [2, 1, 0, -1], top_k 2 -> [2, 1, -inf, -inf]
    # probs [0.5, 0.3, 0.15, 0.05], top_p 0.7: mass before each [0, 0.5, 0.8, 0.95]
    # -> keep [0.5, 0.3] (0.5 < 0.7), drop 0.15 and 0.05 (0.8, 0.95 >= 0.7)
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]  # [n, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # [n, V] mass before the token reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> torch.Tensor:
    """log softmax(z)[token] for each position, z = sampling_logits(logits, temperature, top_k, top_p).

    logits: [B, T, V] (any float dtype), token_ids: [B, T] long. Returns float32 [B, T].
    log p(y) = z_y - logsumexp(z) (-inf for a token outside a top-k / top-p truncation).
    Works on chunks of LOGPROB_CHUNK_TOKENS positions so the float32 temporaries are
    [chunk, V], never a full-batch [B, T, V] copy; autograd keeps only views of `logits`
    plus [chunk] results.
    """
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)  # [N, V], a view when contiguous
    flat_ids = token_ids.reshape(B * T, 1)  # [N, 1]
    out = []
    for start in range(0, B * T, LOGPROB_CHUNK_TOKENS):
        z = sampling_logits(flat_logits[start : start + LOGPROB_CHUNK_TOKENS], temperature, top_k, top_p)
        picked = z.gather(1, flat_ids[start : start + LOGPROB_CHUNK_TOKENS]).squeeze(1)  # [n]
        out.append(picked - torch.logsumexp(z, dim=-1))
    if not out:
        return logits.new_zeros((B, T), dtype=torch.float32)
    return torch.cat(out).view(B, T)


def _token_blocks(B: int, T: int):
    """(row slice, column slice) blocks of at most LOGPROB_CHUNK_TOKENS positions of a [B, T] grid:
    whole rows where they fit, else one row cut into column chunks. Views of [B, T, V] logits
    by these blocks are never copies, whatever the strides."""
    if T <= LOGPROB_CHUNK_TOKENS:
        rows = max(1, LOGPROB_CHUNK_TOKENS // max(T, 1))
        for b in range(0, B, rows):
            yield slice(b, b + rows), slice(0, T)
    else:
        for b in range(B):
            for t in range(0, T, LOGPROB_CHUNK_TOKENS):
                yield slice(b, b + 1), slice(t, t + LOGPROB_CHUNK_TOKENS)


def _entropy_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32  # float64 for gradcheck


class _BlockwiseEntropy(torch.autograd.Function):
    """H of softmax(logits / temperature) per position, with a backward that recomputes each
    block's softmax instead of keeping it: autograd saves only `logits` (no float32 [B, T, V]
    temporaries), so the bonus costs one more [B, T, V] gradient, not a second copy of the logits.
    dH/dz_j = -p_j (z_j - sum_k p_k z_k), z = logits / temperature."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.temperature = temperature
        B, T, _ = logits.shape
        out = logits.new_zeros((B, T), dtype=_entropy_dtype(logits))
        for rows, cols in _token_blocks(B, T):
            z = logits[rows, cols].to(out.dtype) / temperature  # [r, t, V]
            p = torch.softmax(z, dim=-1)
            out[rows, cols] = torch.logsumexp(z, dim=-1) - (p * z).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad_entropy: torch.Tensor):
        (logits,) = ctx.saved_tensors
        grad = torch.zeros_like(logits)  # [B, T, V] in the logits' dtype
        for rows, cols in _token_blocks(*logits.shape[:2]):
            z = logits[rows, cols].to(_entropy_dtype(logits)) / ctx.temperature  # [r, t, V]
            p = torch.softmax(z, dim=-1)
            centred = z - (p * z).sum(-1, keepdim=True)
            g = grad_entropy[rows, cols].to(z.dtype).unsqueeze(-1)  # [r, t, 1]
            grad[rows, cols] = (-p * centred * g / ctx.temperature).to(grad.dtype)
        return grad, None


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the sampling distribution at each position, in blocks like token_logprobs.

    logits: [B, T, V]. H = logsumexp(z) - sum(softmax(z) * z), z = logits / temperature.
    Returns float32 [B, T] (float64 for float64 logits), differentiable (the entropy bonus) with dH/dz_j = -p_j (z_j - E_p[z]);
    pass logits.detach() for a metric. The gradient is recomputed block by block in backward,
    so autograd holds no [B, T, V] temporaries of its own.
    # z [ln 3, 0]: p [0.75, 0.25], H = 0.75 ln(4/3) + 0.25 ln 4 = 0.5623
    # E_p[z] = 0.75 ln 3 = 0.8240 -> dH/dz = [-0.75 (1.0986 - 0.8240), -0.25 (0 - 0.8240)] = [-0.2060, 0.2060]
    """
    if logits.shape[0] * logits.shape[1] == 0:
        return logits.new_zeros(logits.shape[:2], dtype=_entropy_dtype(logits))
    return _BlockwiseEntropy.apply(logits, temperature)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values * mask) / max(sum(mask), 1), zero where mask is 0 (even for NaN values).
    values, mask: same shape. Returns 0-d."""
    mask = mask.to(values.dtype)
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- aggregation


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


# --------------------------------------------------------------------------- surrogate objectives


@dataclass(frozen=True)
class ObjectiveOptions:
    """The parameters of every surrogate objective; each objective reads its own."""

    epsilon: float = 0.2  # clip: ratio bounds [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float = 0.2
    dual_clip: float | None = None  # clip: the bound c on -A r where A < 0 (None: off)
    cispo_epsilon_low: float | None = None  # cispo: weight bounds [1 - low, 1 + high] (None: no lower bound)
    cispo_epsilon_high: float = 4.0
    sapo_temperature_pos: float = 1.0  # sapo: gate temperatures for A > 0 and A <= 0
    sapo_temperature_neg: float = 1.05


def clipped_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                      o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, with the dual clip (Ye et al. 2020, "Mastering complex control in
    MOBA games"; verl's clip_ratio_c, INTELLECT-2's delta) when o.dual_clip = c is set:
      l = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)
      dual clip, A < 0 only: l = min(l, -A c)   (c > 1 + epsilon_high: a token whose ratio passed c
                                                 has constant loss, no gradient)
    ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns (l [B, T], {"clip/dual": tokens with A < 0
    and r > c} when dual clip is on).
    # A = -1, epsilon 0.2 / 0.28, c = 3: r 0.79 -> max(0.79, 0.8) = 0.8 (clipped low, no gradient);
    # r 2.9 -> 2.9 (d l / d logp = -A r = 2.9); r 3.1 -> min(3.1, 3) = 3 (dual clipped, no gradient)
    """
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - o.epsilon, 1 + o.epsilon_high) * adv)
    if o.dual_clip is None:
        return per_token, {}
    if o.dual_clip <= 1 + o.epsilon_high:
        raise ValueError(f"dual_clip={o.dual_clip} must exceed 1 + epsilon_high = {1 + o.epsilon_high}")
    negative = adv < 0
    per_token = torch.where(negative, torch.min(per_token, -adv * o.dual_clip), per_token)
    return per_token, {"clip/dual": negative & (ratio > o.dual_clip)}


def cispo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                    o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1): REINFORCE with a clipped, detached importance weight.
      w = sg(clip(r, 1 - cispo_epsilon_low, 1 + cispo_epsilon_high))   (no lower bound when low is None)
      l = -w A logprobs            d l / d logp = -w A: a clipped token still has its gradient
    ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns (l [B, T], {"clip/cispo": tokens whose
    weight was clipped, either side, any advantage}).
    # A = +1, bounds [0.8, 1.28]: r 0.5 -> w 0.8; r 1.27 -> 1.27; r 1.29 -> 1.28 (d l / d logp = -1.28)
    """
    low = None if o.cispo_epsilon_low is None else 1 - o.cispo_epsilon_low
    weight = torch.clamp(ratio, min=low, max=1 + o.cispo_epsilon_high).detach()  # [B, T]
    return -weight * adv * logprobs, {"clip/cispo": weight != ratio.detach()}


def sapo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                   o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization"): a sigmoid gate for the hard clip.
      tau = sapo_temperature_pos if A > 0 else sapo_temperature_neg
      l   = -A (4 / tau) sigmoid(tau (r - 1))
      d l / d logp = -A g r,  g = 4 s (1 - s),  s = sigmoid(tau (r - 1))
    g, the gate, is 1 at r = 1 (on-policy: the plain policy gradient) and decays smoothly as r leaves 1,
    faster for the larger temperature. ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns
    (l [B, T], {"sapo/gate": g}).
    # A = -1, tau 1.05, r 2.9: s = sigmoid(1.995) = 0.88027 -> l = 4 / 1.05 * 0.88027 = 3.35341,
    # g = 4 * 0.88027 * 0.11973 = 0.42158, d l / d logp = 0.42158 * 2.9 = 1.22257
    """
    tau = torch.where(adv > 0, adv.new_tensor(o.sapo_temperature_pos), adv.new_tensor(o.sapo_temperature_neg))
    s = torch.sigmoid(tau * (ratio - 1))  # [B, T]
    gate = (4 * s * (1 - s)).detach()
    return -adv * (4 / tau) * s, {"sapo/gate": gate}


@dataclass(frozen=True)
class Objective:
    """A per-token surrogate `surrogate(ratio, logprobs, adv, options) -> (l [B, T], flags)` (flags:
    [B, T] tensors logged as token means over the mask) and whether it may take GSPO's sequence ratio."""

    surrogate: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    sequence_level: bool


# policy_objective -> its surrogate. SAPO is token level only: its gate exists to damp the few
# off-policy tokens of a sequence and keep the rest, which one ratio per sequence cannot do.
POLICY_OBJECTIVES = {
    "clip": Objective(clipped_surrogate, sequence_level=True),
    "cispo": Objective(cispo_surrogate, sequence_level=True),  # one detached weight per completion
    "sapo": Objective(sapo_surrogate, sequence_level=False),
}


def policy_objective(name: str, importance_sampling_level: str) -> Objective:
    """The objective `name` at that ratio level, or a ValueError naming what is allowed."""
    if name not in POLICY_OBJECTIVES:
        raise ValueError(f"objective={name!r} is invalid; allowed: {', '.join(POLICY_OBJECTIVES)}")
    if importance_sampling_level == "sequence" and not POLICY_OBJECTIVES[name].sequence_level:
        raise ValueError(f"objective={name!r} needs importance_sampling_level='token'")
    return POLICY_OBJECTIVES[name]


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


# --------------------------------------------------------------------------- entropy in the objective


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
