"""Linear layers that run oneDNN with weights reordered once, for no-grad forwards on CPU.

Decoding multiplies a few rows (the completions still generating) by every weight matrix of
the model, once per token. torch's default CPU path (MKL sgemm on the plain weight) runs
such skinny products far below the machine's matmul rate; oneDNN with the weight reordered
ahead of time into its blocked layout does not (bench/RESULTS.md, "Figures that stood in code
comments"). The reorder costs one pass over the weights and a second copy of them while it lasts, so it is used
where many forwards run on the same weights: one rollout (`packed_linears(model)`; the
policy's weights change after every optimizer step, so they are reordered on entry and the
copy dropped on exit). The reference's log-prob pass multiplies hundreds of rows at once,
where the plain path is already fast: reordering its weights measured barely faster, not worth
a second copy of the weights in memory, so it is not done.

Only no-grad forwards use the reordered copy: with autograd enabled a layer runs its own
`forward`, so gradients are never computed through (or against) a stale copy. Weights that
are not plain fp32 CPU tensors (CUDA, bf16, sharded DTensors) keep the ordinary path.

rollout.precision bfloat16 (grpo.compute.precision) reorders a bf16 copy instead: only the products
run in bf16, activations, norms, attention and sampling stay float32; on a host with avx512_bf16
that halves the layer products of a decode step, and on a host without fast bf16 `auto` never
asks for it (a CPU without oneDNN's bf16 kernels at all autocasts instead: packed_dtypes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from grpo.compute.lm_head import Float32Head


def _packable(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    # exactly nn.Linear (a subclass may compute something else in its forward), or the float32
    # head, which computes x @ W^T + b too (packed in float32 only: _pack)
    return (type(layer) in (nn.Linear, Float32Head) and type(weight) in (torch.Tensor, nn.Parameter)
            and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                    dtype: torch.dtype) -> torch.Tensor:
    """x @ W^T + b through the reordered W (held in `dtype`), returned in x's dtype: a bf16 copy
    takes float32 x and returns float32 (the rest of the model stays float32: only the
    products run in bf16). .to() returns the tensor itself when the dtype already matches."""
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "").to(x.dtype)


def _no_grad_forward(layer: nn.Linear, fast: Callable[[torch.Tensor], torch.Tensor]):
    """layer's forward: `fast(x)` for a float32 input when no gradient is wanted, else the layer's own."""
    plain = type(layer).forward.__get__(layer)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return plain(x)
        return fast(x)

    return forward


def _packed_forward(layer: nn.Linear, packed: torch.Tensor, dtype: torch.dtype):
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    return _no_grad_forward(layer, lambda x: _packed_product(x, packed, bias, dtype))


# Linear layers of one module that read the same input in every architecture using these
# names (Llama, Qwen2, Mistral, ...): their products run as one (see _SiblingProduct).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _SiblingProduct:
    """One reordered weight [sum of outs, in] for sibling layers: the first sibling's call
    computes all their outputs for its input, each sibling then takes its slice.

    A decode step multiplies a few rows by every weight, so a product costs mostly its call: one
    product for q+k+v (and one for gate+up) costs less than the three (two) apart, and a decode
    step of the bundled model makes 90 calls fewer (bench/RESULTS.md, Performance III). A sibling
    called with another input than the one its slice was computed from (tensor identity) gets
    the product recomputed for that input: never a stale or mismatched slice.
    """

    def __init__(self, layers: list[nn.Linear], dtype: torch.dtype):
        weight = torch.cat([layer.weight.detach() for layer in layers]).to(dtype)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        biases = [layer.bias for layer in layers]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases]).to(dtype)
        self.sizes, self.dtype = [layer.out_features for layer in layers], dtype
        self.input: torch.Tensor | None = None
        self.slices: list[torch.Tensor | None] = [None] * len(layers)

    def slice_for(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.input is not x or self.slices[index] is None:
            product = _packed_product(x, self.packed, self.bias, self.dtype)
            self.input, self.slices = x, list(product.split(self.sizes, dim=-1))
        out, self.slices[index] = self.slices[index], None
        if all(s is None for s in self.slices):
            self.input = None  # every sibling has its slice: hold no activations past the call
        return out


def _sibling_forward(layer: nn.Linear, product: _SiblingProduct, index: int):
    return _no_grad_forward(layer, lambda x: product.slice_for(index, x))


def _sibling_groups(model: nn.Module) -> list[list[nn.Linear]]:
    groups = []
    for module in model.modules():
        for names in SIBLINGS:
            layers = [getattr(module, name, None) for name in names]
            if (all(_packable(layer) and "forward" not in vars(layer) for layer in layers)
                    and len({layer.in_features for layer in layers}) == 1
                    and len({layer.bias is None for layer in layers}) == 1):
                groups.append(layers)
    return groups


def _pack(model: nn.Module, dtype: torch.dtype) -> list[nn.Module]:
    packed = []
    for group in _sibling_groups(model):
        product = _SiblingProduct(group, dtype)
        for index, layer in enumerate(group):
            layer.forward = _sibling_forward(layer, product, index)
        packed += group
    for layer in [m for m in model.modules() if _packable(m) and "forward" not in vars(m)]:
        own = torch.float32 if isinstance(layer, Float32Head) else dtype  # model.lm_head_fp32
        weight = layer.weight.detach().to(own)
        layer.forward = _packed_forward(layer, torch.ops.mkldnn._reorder_linear_weight(weight), own)
        packed.append(layer)
    return packed


def _unpack(layers: list[nn.Module]) -> None:
    for layer in layers:
        del layer.forward  # the class's forward again; the reordered copy is freed


def packed_dtypes() -> tuple[torch.dtype, ...]:
    """What oneDNN's reordered linear runs in on this CPU: float32 everywhere, bfloat16 only where
    oneDNN has bf16 kernels for it (avx512bw/vl/dq or avx_ne_convert; on AVX2 alone it refuses)."""
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


@contextmanager
def packed_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Within the block, no-grad forwards of `model`'s fp32 CPU linear layers use a reordered
    copy of the weights taken on entry, in `dtype` (float32 or bfloat16: a bf16 copy is half
    the memory of a float32 one, where this CPU has bf16 kernels). Do not change the weights
    inside the block."""
    if dtype not in packed_dtypes():
        raise ValueError(f"oneDNN's reordered linear does not run in {dtype} on this CPU "
                         f"(it runs in {', '.join(map(str, packed_dtypes()))})")
    layers = _pack(model, dtype)
    try:
        yield
    finally:
        _unpack(layers)


@contextmanager
def rollout_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """A rollout's forwards in `dtype` (rollout.precision): the reordered copy on CPU; where the
    layers cannot be packed (CUDA, sharded or non-fp32 weights, a CPU without oneDNN's bf16
    kernels), autocast to a lower dtype."""
    weight = next(model.parameters())
    packable = weight.device.type == "cpu" and weight.dtype == torch.float32 and dtype in packed_dtypes()
    if packable:
        context = packed_linears(model, dtype)
    elif weight.dtype == torch.float32 and dtype != torch.float32:  # autocast only ever lowers
        context = torch.autocast(weight.device.type, dtype=dtype)
    else:
        context = nullcontext()
    with context:
        yield

