"""The weight dtypes a run may ask for: the table `model.dtype` is checked against and resolved by."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *DTYPES)  # the values config field `model.dtype` allows


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> float32 on CPU (bf16 matmuls are ~5x slower there), bfloat16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"config field `model.dtype` = {name!r} is invalid; allowed: {', '.join(DTYPE_NAMES)}")
    return DTYPES[name]
