"""The LM head in float32 while the body computes in a lower dtype (`model.lm_head_fp32`).

Under bf16 autocast the head's [hidden, vocab] product runs in bf16 like every other linear
layer, so each logit carries bf16's ~3 significant digits before the log-softmax; the sampler
and the trainer then disagree on log-probs by more than the body's own rounding would cause.
MiniMax-M1 (2025) traced its training/inference probability mismatch to the head
and fixed it by computing the head in fp32; ScaleRL (2025) keeps it in its recipe; TRL calls it
`cast_lm_head_to_fp32`. Here the head module's class is switched to `Float32Head`, a
`nn.Linear` whose forward leaves autocast and multiplies the float32 hidden states by the float32
weight. Switching the class (not wrapping the module) keeps the parameter names, a tied head
(SmolLM2 ties it to embed_tokens: one Parameter, the master weight) and state dicts as they
were, and reaches every place log-probs come from: the update, the old/reference passes and a
rollout that decodes with the policy module itself (grpo.compute.packed_linear reorders a
Float32Head's weight in float32 only). Weights held in bf16 (model.dtype, a frozen reference)
are upcast for the product: the weights are the bf16 ones, the arithmetic is float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Float32Head(nn.Linear):
    """nn.Linear computed in float32 outside autocast: logits [.., V] float32 from hidden [.., H]."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(hidden.float(), self.weight.float(), bias)  # .float() of a float32 tensor: itself


def keep_head_float32(model: nn.Module) -> nn.Module:
    """Make `model`'s output embedding (its LM head) a Float32Head, in place; returns the model.
    Call before LoRA wraps the model (peft keeps the module; it targets no head by default)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, Float32Head):
        return model
    if type(head) is not nn.Linear:
        raise ValueError(f"config field `model.lm_head_fp32` = true needs an nn.Linear LM head; "
                         f"{type(model).__name__}'s is {type(head).__name__}: set model.lm_head_fp32=false")
    head.__class__ = Float32Head
    return model
