"""Linear layers that run oneDNN with weights reordered once, for no-grad forwards on CPU.

Decoding multiplies a few rows (the completions still generating) by every weight matrix of
the model, once per token. torch's default CPU path (MKL sgemm on the plain weight) runs
such skinny products far below the machine's matmul rate; oneDNN with the weight reordered
ahead of time into its blocked layout does not. Measured on the bundled model (2-core CPU,
fp32, the 211 linear layers of one decode step): 16 rows 87-102 -> 54-59 ms, 4 rows 78-80 ->
33-34 ms, 1 row 40-41 -> 28-30 ms (bench/RESULTS.md). The reorder costs one pass over the weights
(~0.3 s for the bundled model) and a second copy of them while it lasts, so it is used
where many forwards run on the same weights: one rollout (`packed_linears(model)`; the
policy's weights change after every optimizer step, so they are reordered on entry and the
copy dropped on exit). The reference's log-prob pass multiplies hundreds of rows at once,
where the plain path is already fast: reordering its weights measured 1.76-1.85 against
1.85-1.93 s per pass, not worth 0.5 GB more memory, so it is not done.

Only no-grad forwards use the reordered copy: with autograd enabled a layer runs its own
`forward`, so gradients are never computed through (or against) a stale copy. Weights that
are not plain fp32 CPU tensors (CUDA, bf16, sharded DTensors) keep the ordinary path.

rollout.precision bfloat16 (grpo.precision) reorders a bf16 copy instead: only the products
run in bf16, activations, norms, attention and sampling stay float32. Measured on a host with
avx512_bf16 (2 threads, one decode step's 210 layer products of the bundled model, 16 rows):
fp32 packed 24.8 ms + LM head 8.3 ms, bf16 packed 12.5 + 3.6 ms (4 rows: 11.7 + 4.8 against
10.7 + 3.1 ms); on a host without fast bf16 `auto` never asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn


def _packable(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    # exactly nn.Linear: a subclass may compute something else in its forward
    return (type(layer) is nn.Linear and type(weight) in (torch.Tensor, nn.Parameter)
            and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def _packed_forward(layer: nn.Linear, packed: torch.Tensor, dtype: torch.dtype):
    """layer's forward: x @ W^T + b through the reordered W [out, in] (held in `dtype`) when no
    gradient is wanted; a bf16 copy takes float32 x and returns float32 (the rest of the
    model stays float32: only the products run in bf16)."""
    plain = type(layer).forward.__get__(layer)
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return plain(x)
        # .to() returns the tensor itself when the dtype already matches (the float32 copy)
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "").to(x.dtype)

    return forward


def _pack(model: nn.Module, dtype: torch.dtype) -> list[nn.Module]:
    layers = [m for m in model.modules() if _packable(m) and "forward" not in vars(m)]
    for layer in layers:
        weight = layer.weight.detach().to(dtype)
        layer.forward = _packed_forward(layer, torch.ops.mkldnn._reorder_linear_weight(weight), dtype)
    return layers


def _unpack(layers: list[nn.Module]) -> None:
    for layer in layers:
        del layer.forward  # the class's forward again; the reordered copy is freed


PACKED_DTYPES = (torch.float32, torch.bfloat16)  # what oneDNN's reordered linear runs in on CPU


@contextmanager
def packed_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Within the block, no-grad forwards of `model`'s fp32 CPU linear layers use a reordered
    copy of the weights taken on entry, in `dtype` (float32 or bfloat16: a bf16 copy is half
    the memory of a float32 one). Do not change the weights inside the block."""
    layers = _pack(model, dtype)
    try:
        yield
    finally:
        _unpack(layers)


@contextmanager
def rollout_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """A rollout's forwards in `dtype` (rollout.precision): the reordered copy on CPU; where the
    layers cannot be packed (CUDA, sharded or non-fp32 weights), autocast to a lower dtype."""
    weight = next(model.parameters())
    packable = weight.device.type == "cpu" and weight.dtype == torch.float32 and dtype in PACKED_DTYPES
    if packable:
        context = packed_linears(model, dtype)
    elif weight.dtype == torch.float32 and dtype != torch.float32:  # autocast only ever lowers
        context = torch.autocast(weight.device.type, dtype=dtype)
    else:
        context = nullcontext()
    with context:
        yield

