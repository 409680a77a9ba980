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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _packable(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    # exactly nn.Linear: a subclass may compute something else in its forward
    return (type(layer) is nn.Linear and type(weight) in (torch.Tensor, nn.Parameter)
            and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def _packed_forward(layer: nn.Linear, packed: torch.Tensor):
    """layer's forward: x @ W^T + b through the reordered W [out, in] when no gradient is wanted."""
    plain = type(layer).forward.__get__(layer)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return plain(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], "")

    return forward


def _pack(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if _packable(m) and "forward" not in vars(m)]
    for layer in layers:
        layer.forward = _packed_forward(layer, torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach()))
    return layers


def _unpack(layers: list[nn.Module]) -> None:
    for layer in layers:
        del layer.forward  # the class's forward again; the reordered copy is freed


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, no-grad forwards of `model`'s fp32 CPU linear layers use a reordered
    copy of the weights taken on entry. Do not change the weights inside the block."""
    layers = _pack(model)
    try:
        yield
    finally:
        _unpack(layers)

