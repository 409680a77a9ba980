"""The precision a run computes in, chosen once per run: `model.precision` and `rollout.precision`.

Weights and optimizer state stay in `model.dtype` (float32 by default: the master weights, so
small updates are not lost to bf16 rounding). What changes is the dtype matrix products run in:
  - the policy's forwards and backward and the reference's forward run under torch.autocast
    in the compute dtype (log-probs, the loss and its reductions stay float32:
    algorithm.token_logprobs upcasts the logits); the frozen reference is held in that dtype;
  - rollouts run their linear layers in the rollout dtype (grpo.compute.packed_linear on CPU, autocast
    elsewhere); their log-probs then differ slightly from the trainer's, which the sampler
    correction weighs (algorithm.sampler_correction auto turns it on).

`auto` on CPU measures: whether bf16 pays depends on the host (hosts of this project's machine
kind differ several-fold either way: bench/RESULTS.md, "Precision chosen by the machine"), so a
2 x 512 x 1024 x 1024 product is timed in both dtypes at start and bf16 is used when it is at
least BF16_MIN_SPEEDUP times faster; on CUDA, bf16 where the device supports it. Under torchrun
every rank measures and bf16 is used only if every rank wants it. The choice is written to
<run>/precision.json and a resumed run reuses it rather than measuring again.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from grpo.compute.dtypes import DTYPES

BF16_MIN_SPEEDUP = 1.5  # autocast adds casts and leaves elementwise work as it was: ask for a clear gain
RECORD = "precision.json"


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 1024, rows: int = 512,
                repeats: int = 3) -> float:
    """GFLOP/s of a [rows, size] x [size, size] product in `dtype`, best of `repeats`."""
    a = torch.randn(rows, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms the kernel up
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * size * size / best / 1e9


@dataclass(frozen=True)
class Precision:
    """compute: the autocast dtype of policy and reference passes (float32: no autocast);
    rollout: the dtype rollouts' linear layers run in; rates: what `auto` measured (GFLOP/s)."""

    compute: torch.dtype = torch.float32
    rollout: torch.dtype = torch.float32
    device_type: str = "cpu"
    rates: dict[str, float] = field(default_factory=dict)
    reason: str = "float32 everywhere"

    def autocast(self) -> AbstractContextManager:
        if self.compute == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    @property
    def lowered(self) -> bool:
        """True when anything runs below float32 (the rollouts' log-probs then differ from
        the trainer's by more than float noise)."""
        return self.compute != torch.float32 or self.rollout != torch.float32

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in self.rates.items())
        return (f"precision: compute {_name(self.compute)}, rollouts {_name(self.rollout)} ({self.reason}"
                + (f"; measured {rates}" if rates else "") + ")")

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "compute": _name(self.compute), "rollout": _name(self.rollout)}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def auto_compute(device: torch.device, world: Any = None) -> tuple[torch.dtype, dict[str, float], str]:
    """bfloat16 where it is clearly faster on this machine (every rank), else float32."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return (torch.bfloat16 if ok else torch.float32), {}, "CUDA " + ("supports" if ok else "lacks") + " bf16"
    if device.type != "cpu":
        return torch.float32, {}, f"auto keeps float32 on {device.type}"
    rates = {"float32": matmul_rate(torch.float32, device), "bfloat16": matmul_rate(torch.bfloat16, device)}
    wants = rates["bfloat16"] >= BF16_MIN_SPEEDUP * rates["float32"]
    if world is not None and world.size > 1:
        wants = world.sum(float(wants)) == world.size  # every rank computes the same way
    speedup = rates["bfloat16"] / rates["float32"]
    return (torch.bfloat16 if wants else torch.float32), rates, (
        f"auto: bf16 {speedup:.1f}x fp32 here, {'>=' if wants else '<'} {BF16_MIN_SPEEDUP}x")


def resolve(compute: str, rollout: str, weight_dtype: torch.dtype, device: torch.device, world: Any = None,
            run_dir: Path | None = None) -> Precision:
    """The run's Precision from `model.precision` and `rollout.precision` (auto = the compute
    dtype). A run directory holding precision.json (a resumed run) keeps its earlier choice."""
    record = _saved(run_dir) if compute == "auto" else None
    if record is not None:
        chosen, rates, reason = DTYPES[record["compute"]], record.get("rates", {}), "kept from " + RECORD
    elif compute == "auto":
        chosen, rates, reason = auto_compute(device, world)
    else:
        chosen, rates, reason = DTYPES[compute], {}, "model.precision"
    if weight_dtype != torch.float32:  # bf16 / fp16 weights compute in their own dtype
        chosen, reason = weight_dtype, f"model.dtype = {_name(weight_dtype)}"
    rollout_dtype = chosen if rollout == "auto" else DTYPES[rollout]
    return Precision(chosen, rollout_dtype, device.type, rates, reason)


@torch.no_grad()
def dither_master_weights(model: torch.nn.Module, precision: Precision) -> int:
    """Place float32 master weights at random inside the interval that rounds to their bf16
    value, once, at the start of a fresh run. Returns the number of weights that were not
    already at their bf16 value.

    Why: the bf16 forwards see round(w), and a float32 update of lr-sized steps reaches them
    only when a weight crosses a rounding boundary. Where the boundary is depends on where w
    starts: (a) a checkpoint from fp16 (the bundled GGUF: 8.1% of its weights lie exactly ON
    a boundary, halfway between two bf16 values) has those weights jump a whole bf16 step at
    the first update of any size: one lr 5e-6 update moved the bf16 log-probs by up to 4.5
    (KL to the reference 0.72) against 0.29 in float32; (b) weights exactly on the bf16 grid
    (a bf16 checkpoint, or (a) rounded) are half a step from every boundary, so the forwards
    see no update until a weight has moved half a bf16 step (~0.2% of it: ~12 coherent
    updates at lr 5e-6 for a weight of 0.03): measured, 5 bench steps of bf16 training kept
    the reward flat (0.19-0.44) where float32 rose to 1.12. Dithered uniformly inside the
    rounding interval (each half of it with equal mass: _dither), a weight crosses a boundary
    with probability |moved| / (the bf16 step on that side),
    so the bf16 view of the weights moves like the float32 weights in expectation from the
    first update on (stochastic rounding, paid once), and at the start it is round(w), the
    model the frozen bf16 reference holds."""
    if precision.compute == torch.float32:
        return 0
    changed = 0
    for param in model.parameters():
        if param.dtype == torch.float32:
            # in pieces that stay in cache: the same values (the same random stream), faster than
            # one pass over a whole matrix (bench/RESULTS.md, "Figures that stood in code comments")
            w = param.detach()
            for piece in (w.view(-1).split(DITHER_CHUNK) if w.is_contiguous() else [w]):
                changed += _dither(piece, precision.compute)
    return changed


DITHER_CHUNK = 1 << 18  # elements of a piece: 1 MiB of float32


# Offsets of the dithered float32 bit pattern from its bf16 value's: strictly inside the half
# step (0x8000 patterns) each way, so every dithered weight rounds back to its bf16 value.
DITHER_HALF_WIDTH = 0x7F00
_SIGN = -(2**31)  # the float32 sign bit as an int32


def _dither(w: torch.Tensor, compute: torch.dtype) -> int:
    """dither_master_weights on a flat float32 piece, in place; the number of elements moved off the grid.

    In bit patterns: a bf16 value's pattern is the top 16 bits of a float32 one, and within a
    sign the float32 patterns are ordered like the values, so the float32 numbers that round to
    the bf16 value g are the patterns within 0x8000 of g's (ties aside). The new pattern is g's
    magnitude plus a uniform offset in [-DITHER_HALF_WIDTH, DITHER_HALF_WIDTH] (reflected at
    zero), with w's sign. Uniform in patterns is uniform in value on each side of g; where g is a
    power of two the step below is half the one above, and equal mass on each side makes the
    expected bf16 move of a small update equal to the update in both directions. Integer passes
    only, and 15 random bits per weight (half an int32 draw): the random draw is the costly part."""
    bits = w.view(torch.int32)
    grid = w.to(compute).view(torch.int16).to(torch.int32).bitwise_left_shift_(16)  # g's float32 pattern
    changed = int(torch.count_nonzero(grid != bits))
    # random_() fills an int32 with 31 random bits (never the sign): 15 of them for each of its two halves
    draws = torch.empty((bits.numel() + 1) // 2, dtype=torch.int32, device=w.device).random_()
    r = draws.view(torch.int16)[: bits.numel()].to(torch.int32).bitwise_and_(0x7FFF)  # uniform in [0, 2^15)
    offset = r.mul_(2 * DITHER_HALF_WIDTH + 1).bitwise_right_shift_(15).sub_(DITHER_HALF_WIDTH)  # in [-W, W]
    magnitude = grid.bitwise_and(~_SIGN).add_(offset).abs_()  # the smallest non-zero bf16 pattern (0x10000) stays positive
    bits.copy_(magnitude.bitwise_or_(grid.bitwise_and_(_SIGN)))
    return changed


def _saved(run_dir: Path | None) -> dict[str, Any] | None:
    """The choice an earlier start of this run recorded, or None (none, or unreadable: measure again)."""
    path = run_dir / RECORD if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if record.get("compute") in DTYPES else None
    except (OSError, ValueError, AttributeError):
        return None


def save(precision: Precision, run_dir: Path) -> None:
    (run_dir / RECORD).write_text(json.dumps(precision.record(), indent=1) + "\n", encoding="utf-8")
