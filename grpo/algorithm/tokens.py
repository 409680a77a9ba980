"""From logits to per-token quantities: the sampler's processed logits, the picked tokens'
log-probabilities and the entropy of the sampling distribution, chunked over positions.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

import torch

# Tokens per chunk when turning logits into log-probabilities: bounds the float32
# temporary to CHUNK x V (1024 x 49152 x 4 B = 0.2 GB for the bundled model's vocabulary).
LOGPROB_CHUNK_TOKENS = 1024


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
