"""Dynamic loss scaling for float16 compute (`model.precision=float16`).

float16 has bf16's memory and speed but 3 more mantissa bits, so the sampler and the trainer
agree far better ("Defeating the Training-Inference Mismatch via FP16", Qi et al. 2025); its
price is a narrow exponent: small gradients underflow to 0. The loss is multiplied by a scale
S before every backward (each micro-batch's; the prompt cache's second-stage backward pushes
gradients that were already scaled, grpo.training.logprobs.PromptCache), the float32 master
gradients are divided by S before clipping, and an update whose gradients overflowed (inf or
NaN) is skipped: S halves and the next update tries again; after train.fp16_growth_interval
updates without an overflow S doubles. That is torch.amp.GradScaler (verl's float16 runs use
its sharded form), here with the step decision kept in grpo.training.update.optimizer_step so a
skip is counted apart from the bad steps that stop a run (`overflowed`).

Under train.parallel=fsdp each rank holds a shard of the gradients, so an overflow must be
agreed on by all ranks: torch.distributed.fsdp's ShardedGradScaler all-reduces its finding
(FSDP2's sharded gradients included: tests/compute/test_distributed.py runs 2 gloo processes,
on CPU only). Under ddp the gradients are summed before the unscale, so every rank sees the
same ones and the plain scaler agrees by construction.
"""

from __future__ import annotations

import math

import torch

from grpo.compute.distributed import World


def build_loss_scaler(compute: torch.dtype, device_type: str, params: list[torch.nn.Parameter], world: World,
                      initial_scale: float, growth_interval: int) -> torch.amp.GradScaler | None:
    """The run's scaler when it computes in float16 (None otherwise: nothing to scale)."""
    if compute != torch.float16:
        return None
    low = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype != torch.float32})
    if low:  # the scaler divides float32 master gradients; float16 ones would lose what it saved
        raise ValueError(f"config field `model.dtype` gives {', '.join(low)} trainable weights, but "
                         "model.precision=float16 scales the loss and needs float32 ones: use model.dtype=auto "
                         "(float32 master weights) with model.precision=float16, or model.lora.enabled=true")
    kwargs = {"init_scale": initial_scale, "growth_interval": growth_interval}
    if world.parallel == "fsdp" and world.size > 1:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device_type, **kwargs)
    return torch.amp.GradScaler(device_type, **kwargs)


def scale_of(scaler: torch.amp.GradScaler | None) -> float | None:
    return None if scaler is None else float(scaler.get_scale())


def overflowed(scale_before: float | None, loss: float) -> bool:
    """Whether a skipped update is the scaler's to handle: the loss was finite and the gradients were
    scaled by more than 1, so halving the scale can bring them back in range. A non-finite loss, or
    gradients non-finite even unscaled, are bad steps (train.max_bad_steps) whatever the scale."""
    return scale_before is not None and scale_before > 1 and math.isfinite(loss)
