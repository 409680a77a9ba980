"""The weight dtypes a run may ask for: the table `model.dtype` is checked against and resolved by,
the servers' `--dtype` choices, and the dtypes of the weight push (grpo.serve.weights)."""

from __future__ import annotations

import torch

from grpo.config.values import DTYPE_NAMES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weight_dtype(name: str) -> torch.dtype:
    """The trained policy's weights (model.dtype): `auto` -> float32 master weights everywhere
    (the compute dtype is model.precision's, grpo.compute.precision)."""
    return torch.float32 if name == "auto" else resolve_dtype(name, torch.device("cpu"))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A frozen model's weights (reward models, `grpo serve-ref`): `auto` -> float32 on CPU,
    bfloat16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"config field `model.dtype` = {name!r} is invalid; allowed: {', '.join(DTYPE_NAMES)}")
    return DTYPES[name]
