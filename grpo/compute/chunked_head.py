"""Per-token quantities from hidden states, the LM head applied a chunk of positions at a time.

A causal LM's forward ends in `logits = lm_head(hidden)`: a [rows, positions, vocabulary]
tensor that autograd keeps for the log-softmax's backward, and the largest tensor of an update
once the vocabulary is large (151,936 at the Qwen2.5 shapes: 0.6 GB per 1,000 positions in
float32, before the softmax's own temporaries). Here the model is split once (`ModelParts`):
its body gives hidden states [.., H], and `token_stats` runs the head, the sampler's processing
(temperature, top-k, top-p), the log-softmax, the picked token's log-prob and the entropy on
`CHUNK_POSITIONS` positions at a time, so at most one chunk's logits exist (or, with gradients,
at most KEEP_LOGITS_ELEMENTS of them, kept unchunked where they are that small). With gradients,
`_ChunkedHead` saves only the hidden states; its backward recomputes each chunk's logits, takes
that chunk's gradient, and frees it. The head module itself is called (a Float32Head, a LoRA
layer on the head, a bias, autocast all behave as in the model's forward), and its parameters
are inputs of the autograd node, so their gradients reach them as every other parameter's do
(a tied embedding's two uses add up; fsdp/ddp see ordinary gradients).

Models whose forward does more after the head (Gemma 2's logit soft-capping, Cohere's
logit_scale) are caught by a probe on first use (`parts_of`): it compares the model's own logits
with head(body(x)) on a short input and keeps the full-logits forward (head = identity) where
they differ, with a warning.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo import algorithm

log = logging.getLogger(__name__)

# Positions per chunk. The head's matmul of a chunk [n, H] x [H, V] loses speed on CPU when n is
# small (fewer rows than its blocking wants), and the chunk's float32 temporaries grow with n x V:
# 256 is where the time stopped falling at Qwen2.5's vocabulary (at the bundled model's, the times
# of every size were within the host's noise) and memory had not yet grown much
# (bench/chunked_head.py; bench/RESULTS.md, "Log-probs without full logits").
CHUNK_POSITIONS = 256
# Logits of at most this many elements (rows x positions x V) are kept for the backward as autograd
# would keep them, without chunks: there the recompute (a second head product and log-softmax)
# cost more time than the memory it saves is worth. On the demo recipe (16 completions of ~26
# tokens, V 49,152: 20 M elements) the recompute made the update a quarter slower; 2^25 elements
# is 128 MiB of float32 logits, small beside the weights and moments of any model with such a
# vocabulary (bench/RESULTS.md, "Log-probs without full logits").
KEEP_LOGITS_ELEMENTS = 2**25


def keeps_logits(positions: int, vocabulary: int) -> bool:
    """Whether an update keeps these logits whole for its backward (else one chunk at a time)."""
    return positions * vocabulary <= KEEP_LOGITS_ELEMENTS


@dataclass(frozen=True)
class ModelParts:
    """A causal LM as body (ids -> hidden states and cache) and head (hidden [.., H] -> logits [.., V]).

    exact=False: the head(body(x)) split did not reproduce the model's logits, so `body` is the
    model's own forward returning logits and `head` is the identity (the full-logits path).
    """

    body: Callable[..., tuple[torch.Tensor, Any]]  # (keep, **forward kwargs) -> (hidden of the last `keep` positions, cache)
    head: Callable[[torch.Tensor], torch.Tensor]
    head_params: tuple[torch.nn.Parameter, ...]  # the head's parameters (inputs of the chunked autograd node)
    device: torch.device | None = None  # where the head's weight lives (the probe's input goes there)
    exact: bool = True
    vocabulary: int = 0  # the head's output size (0: the identity head: its input's last dimension)


def split_model(model: Any, decoder: Any, head: Any) -> ModelParts:
    """The body/head split of a causal LM given its decoder (body) and output embedding (head)."""

    def body(keep: int = 0, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        out = decoder(**kwargs)
        return out.last_hidden_state[:, -keep:], getattr(out, "past_key_values", None)  # -0: every position

    return ModelParts(body, head, tuple(head.parameters()), head.weight.device,
                      vocabulary=int(getattr(head, "out_features", 0)))


def full_logits_parts(model: Any) -> ModelParts:
    """The model's own forward as the body (its logits as 'hidden states'), the identity as the head."""
    owner = weakref.ref(model)  # parts_of's cache must not keep the model alive

    def body(keep: int = 0, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        out = owner()(logits_to_keep=keep, **kwargs)  # 0: every position
        return out.logits, getattr(out, "past_key_values", None)

    return ModelParts(body, lambda x: x, (), exact=False)


def _split(model: Any) -> ModelParts:
    """An HF causal LM (or a PeftModel around one) split at its output embedding; a LoRA policy's
    reference lends its own split (grpo.compute.models.AdapterDisabledReference.model_parts)."""
    if hasattr(model, "model_parts"):
        return model.model_parts()
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return full_logits_parts(model)
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Module) or not hasattr(head, "weight"):
        return full_logits_parts(model)
    return split_model(model, decoder, head)


@torch.no_grad()
def _probe(model: Any, parts: ModelParts) -> bool:
    """Does head(body(x)) give the model's own logits? One forward of 3 tokens each way."""
    ids = torch.tensor([[1, 2, 3]], device=parts.device)
    want = model(input_ids=ids, use_cache=False).logits.float()
    got = parts.head(parts.body(input_ids=ids, use_cache=False)[0]).float()
    return want.shape == got.shape and torch.allclose(want, got, rtol=1e-3, atol=1e-3)


# model -> its ModelParts. Weak keys, and no part refers to its model strongly (the decoder and
# the head are submodules, which do not point back), so a model is freed when its user drops it.
_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parts_of(model: Any) -> ModelParts:
    """The model's body/head split, built and probed once per model object."""
    cached = _PARTS.get(model)
    if cached is None:
        cached = _split(model)
        if cached.exact and not _probe(model, cached):
            log.warning("%s: head(body(x)) differs from the model's logits (a transform after the head?): "
                        "log-probs use its full logits", type(model).__name__)
            cached = full_logits_parts(model)
        _PARTS[model] = cached
    return cached


# --------------------------------------------------------------------------- the chunked head


@dataclass(frozen=True)
class StatsSpec:
    """What token_stats computes besides the log-probs at `temperature`, and in chunks of how many positions."""

    temperature: float = 1.0
    entropy: str | None = None  # None: none; "metric": detached; "grad": with its gradient (the bonus)
    truncation: tuple[int, float] | None = None  # (top_k, top_p): log-probs under the truncated distribution, detached
    chunk_positions: int = 0  # 0: CHUNK_POSITIONS


def truncation(top_k: int, top_p: float) -> tuple[int, float] | None:
    """StatsSpec.truncation for a sampler's top_k / top_p: None where they truncate nothing."""
    return (top_k, top_p) if top_k > 0 or top_p < 1 else None


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _stats_of(logits: torch.Tensor, ids: torch.Tensor, spec: StatsSpec):
    """logits [n, V], ids [n] -> (log-probs [n], entropy [n] or None, truncated log-probs [n] or None);
    the entropy carries a gradient only for spec.entropy == "grad"."""
    lp = algorithm.token_logprobs(logits[None], ids[None], spec.temperature)[0]
    ent = None
    if spec.entropy is not None:
        source = logits if spec.entropy == "grad" else logits.detach()
        ent = algorithm.token_entropy(source[None], spec.temperature)[0].float()
    trunc = None
    if spec.truncation is not None:
        k, p = spec.truncation
        trunc = algorithm.token_logprobs(logits.detach()[None], ids[None], spec.temperature, k, p)[0]
    return lp, ent, trunc


@torch.no_grad()
def _forward_chunks(head: Callable, hidden: torch.Tensor, ids: torch.Tensor, spec: StatsSpec):
    """Every chunk without a graph: hidden [n, H], ids [n] -> three float32 tensors ([n], or [0] when not asked)."""
    n = hidden.shape[0]
    out = [torch.zeros(n if wanted else 0, dtype=torch.float32, device=hidden.device)
           for wanted in (True, spec.entropy is not None, spec.truncation is not None)]
    for c in _chunks(n, spec.chunk_positions):
        for total, part in zip(out, _stats_of(head(hidden[c]), ids[c], spec), strict=True):
            if part is not None:
                total[c] = part
    return tuple(out)


class _ChunkedHead(torch.autograd.Function):
    """log-probs (and entropy, truncated log-probs) of hidden [n, H] through `head`, keeping no logits.

    Saves the hidden states only; backward recomputes each chunk's logits under the forward's
    autocast state and returns the gradients of the hidden states and of the head's parameters
    (the inputs after the first four)."""

    @staticmethod
    def forward(ctx, head, spec, hidden, ids, *params):
        lp, ent, trunc = _forward_chunks(head, hidden, ids, spec)
        device = hidden.device.type
        ctx.head, ctx.spec = head, spec
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(hidden, ids)
        ctx.mark_non_differentiable(trunc)
        if spec.entropy != "grad":
            ctx.mark_non_differentiable(ent)
        ctx.params = params  # not saved tensors: parameters outlive the graph, and their versions do not matter here
        return lp, ent, trunc

    @staticmethod
    def backward(ctx, grad_lp, grad_ent, _grad_trunc):
        hidden, ids = ctx.saved_tensors
        (device, enabled, dtype), needs = ctx.autocast, ctx.needs_input_grad
        trainable = [p for p, need in zip(ctx.params, needs[4:], strict=True) if need]
        grad_hidden = torch.zeros_like(hidden) if needs[2] else None
        grad_params = [torch.zeros_like(p) for p in trainable]
        spec = StatsSpec(ctx.spec.temperature, "grad" if ctx.spec.entropy == "grad" and grad_ent is not None else None)
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            for c in _chunks(hidden.shape[0], ctx.spec.chunk_positions):
                h = hidden[c].detach().requires_grad_(grad_hidden is not None)
                lp, ent, _ = _stats_of(ctx.head(h), ids[c], spec)  # the chunk's logits again, with a graph
                outputs, grads = [lp], [grad_lp[c]]
                if ent is not None:
                    outputs.append(ent)
                    grads.append(grad_ent[c].to(ent.dtype))
                inputs = ([h] if grad_hidden is not None else []) + trainable
                got = list(torch.autograd.grad(outputs, inputs, grads, allow_unused=True))
                if grad_hidden is not None:
                    grad_hidden[c] = got.pop(0)
                for total, g in zip(grad_params, got, strict=True):
                    if g is not None:
                        total += g
        it = iter(grad_params)
        return (None, None, grad_hidden, None, *[next(it) if need else None for need in needs[4:]])


def token_stats(parts: ModelParts, hidden: torch.Tensor, ids: torch.Tensor, spec: StatsSpec):
    """hidden [b, T, H] (the logits [b, T, V] of a full-logits split), ids [b, T] ->
    (log-probs [b, T] float32, entropy [b, T] or None, truncated log-probs [b, T] or None).

    Values equal algorithm.token_logprobs / token_entropy of head(hidden); gradients reach
    `hidden` and the head's parameters (the entropy's too when spec.entropy == "grad")."""
    b, T = ids.shape
    spec = replace(spec, chunk_positions=spec.chunk_positions or CHUNK_POSITIONS)
    flat_h, flat_ids = hidden.reshape(b * T, hidden.shape[-1]), ids.reshape(b * T)
    params = [p for p in parts.head_params if p.requires_grad]
    vocabulary = parts.vocabulary or hidden.shape[-1]
    if torch.is_grad_enabled() and (hidden.requires_grad or params) and b * T > 0:
        if keeps_logits(b * T, vocabulary):  # small: autograd keeps these logits, no recompute
            lp, ent, trunc = _stats_of(parts.head(flat_h), flat_ids, spec)
        else:
            lp, ent, trunc = _ChunkedHead.apply(parts.head, spec, flat_h, flat_ids, *params)
    else:
        lp, ent, trunc = _forward_chunks(parts.head, flat_h, flat_ids, spec)
    return (lp.view(b, T), ent.view(b, T) if spec.entropy else None,
            trunc.view(b, T) if spec.truncation else None)
