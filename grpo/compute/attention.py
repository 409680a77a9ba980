"""Attention for grouped-query models on CPU without copying keys and values per query head.

transformers' "sdpa" attention repeats each key/value head for its group of query heads
(`repeat_kv`: SmolLM2-135M has 9 query heads over 3 key/value heads) before calling
`scaled_dot_product_attention` whenever a padding mask is present, which is always the case
in batched generation and in the trainer's log-prob passes. torch's SDPA reads grouped heads
itself with `enable_gqa=True`; on CPU its flash kernel then takes the mask as well: a faster
decode step on the bundled model, the same tokens (bench/RESULTS.md#generation). On CUDA the
masked GQA path falls back to the slow math kernel, so there the models keep transformers'
own "sdpa" (`attention_for`).

Under bf16 autocast (grpo.compute.precision) the attention itself runs in fp32: torch's CPU flash
kernel was slower in bf16 than in fp32 on the bundled model's update, and the update with the
casts was faster than without them at micro-batch 4 and 16
(bench/RESULTS.md#precision-chosen-by-the-machine-2026-12-02, "The update profile").

Registered with transformers' public AttentionInterface (with the sdpa mask function), so a
model loaded with `attn_implementation=NAME` uses it in every forward, training included.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "grpo_gqa_sdpa"


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, heads, q, d]
    key: torch.Tensor,  # [B, kv_heads, k, d]
    value: torch.Tensor,  # [B, kv_heads, k, d]
    attention_mask: torch.Tensor | None,  # [B, 1, q, k] bool/additive, or None (plain causal)
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scaling + mask) v with query head h reading key/value head h // groups.

    Returns [B, q, heads, d] as transformers expects. `is_causal` is used only without a mask
    and with as many keys as queries (SDPA aligns its causal mask to the top-left corner).
    """
    q_len, k_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal and attention_mask is None and q_len > 1)
    if causal and k_len > q_len:  # a prefill into an empty preallocated cache: keys past q are unused
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    dtype = query.dtype  # bf16 under autocast (model.precision): computed in fp32, handed back in bf16
    with torch.autocast(query.device.type, enabled=False):
        out = torch.nn.functional.scaled_dot_product_attention(
            query.float(), key.float(), value.float(), attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            is_causal=causal, enable_gqa=query.shape[1] != key.shape[1],
        )
    return out.transpose(1, 2).contiguous().to(dtype), None


AttentionInterface.register(NAME, gqa_sdpa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def attention_for(device: torch.device) -> str | None:
    """The attn_implementation to load a model with on `device` (None: transformers' default)."""
    return NAME if device.type == "cpu" else None
