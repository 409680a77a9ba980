"""Per-token log-probabilities of sampled completions under a model (policy or reference).

The model sees `prompt + completion` exactly as during generation: left-padded prompts,
position ids counted from the first real token (so a left-padded row is positioned like an
unpadded one), and only the logits that predict completion tokens are computed.

Two things make this cheap (on the demo task the prompt is ~85% of the tokens):
  - `PromptCache`: each distinct prompt of the rollout batch runs through the model once;
    completions attend to its keys/values. Exact: prompt positions never attend to
    completion positions. With gradients the cache tensors are detached leaves: each
    micro-batch's backward stops at them and accumulates their gradients, and one final
    `PromptCache.backward()` pushes the sum through the prompt forward (a two-stage
    backward), so the prompt costs one forward and one backward per optimizer step.
  - micro-batches hold rows of similar completion length, cut where padding would cost more
    than another forward (`length_sorted_rows`), so little padding is computed.
Models with gradient checkpointing keep no cache in training; they take the plain path
(prompt + completion of every row in one forward).

No [rows, positions, vocabulary] logits tensor is built: the model body gives hidden states and
grpo.compute.chunked_head applies the LM head a chunk of positions at a time, in the forward and
again in the backward, so peak memory holds one chunk of logits whatever the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from grpo.compute.chunked_head import ModelParts, StatsSpec, parts_of, token_stats, truncation
from grpo.trajectory import TokenSequences, Trajectory


@dataclass
class MicroBatch:
    """Rows of a rollout batch, completion padding trimmed to the longest row."""

    rows: torch.Tensor  # [b] indices into the rollout batch
    completion_ids: torch.Tensor  # [b, C']
    completion_mask: torch.Tensor  # [b, C'] the tokens the model sees
    loss_mask: torch.Tensor  # [b, C'] the tokens trained on (a trajectory's loss_mask)


# What one more forward/backward costs beyond its tokens, in token positions: the per-call
# work (an op dispatch per layer operation, the prompt keys/values gathered per row) is worth
# several completion positions of the update (bench/RESULTS.md, "Update"). A rough figure, not
# a tuned one.
MICRO_BATCH_OVERHEAD = 8


def length_sorted_rows(batch: TokenSequences, size: int) -> list[torch.Tensor]:
    """Row indices in micro-batches of at most `size` rows, longest completions first.

    Each micro-batch pads its rows to its longest one, so with lengths far apart (one row ran
    to max_new_tokens, the others stopped early) fixed chunks of `size` rows compute mostly
    padding. The cuts here minimise padded positions + MICRO_BATCH_OVERHEAD per micro-batch
    (dynamic programming over the sorted lengths, O(N * size)). No micro-batch has more rows
    or more positions than a fixed chunk of `size` rows could, so memory stays bounded as
    before; the loss uses global normalizers, so any cut gives the same gradient.
    # lengths [128, 40, 38, 35] size 4: one chunk pads to 4 * 128 = 512 positions; the cuts
    # [128] [40, 38, 35] pad to 128 + 3 * 40 = 248 (+ 8 for the extra forward): chosen
    """
    lengths = batch.completion_mask.sum(1).cpu()  # [N]
    order = torch.sort(lengths, descending=True, stable=True).indices
    ls = lengths[order].clamp(min=1).tolist()  # sorted, longest first
    n = len(ls)
    cost, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)  # best cost of rows [0, j), its last cut
    for j in range(1, n + 1):
        for i in range(max(0, j - size), j):  # rows [i, j) in one micro-batch, padded to ls[i]
            c = cost[i] + (j - i) * ls[i] + MICRO_BATCH_OVERHEAD
            if c < cost[j]:
                cost[j], cut[j] = c, i
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[i:j] for i, j in reversed(bounds)]


def pairs_together_rows(batch: TokenSequences, size: int, partner: torch.Tensor) -> list[torch.Tensor]:
    """Row indices in micro-batches of at most `size` (>= 2) rows where a row and its partner
    (partner [N]: the other row of its pair, -1 for none) always share one: a loss on the pair
    (in-group DPO) needs both sequences' log-probs in one forward. Units (a pair, or one row)
    go longest first and fill micro-batches in that order, so rows of similar length still
    share one; the loss uses global normalizers, so any cut gives the same gradient.
    # lengths [5, 1, 4, 2], partner [-1, 2, 1, -1], size 2 -> units [0] (5), [1, 2] (4), [3] (2) -> [0] [1, 2] [3]
    """
    assert size >= 2, "a pair needs micro-batches of two rows at least"
    lengths = batch.completion_mask.sum(1).cpu().tolist()
    partner = partner.tolist()
    units = [[i] if j < 0 else [i, j] for i, j in enumerate(partner) if j < 0 or i < j]
    units.sort(key=lambda unit: -max(lengths[i] for i in unit))  # stable: ties keep row order
    chunks: list[list[int]] = [[]]
    for unit in units:
        if len(chunks[-1]) + len(unit) > size:
            chunks.append([])
        chunks[-1] += unit
    return [torch.tensor(chunk) for chunk in chunks if chunk]


def make_micro_batch(batch: TokenSequences, rows: torch.Tensor, device: torch.device) -> MicroBatch:
    completion_mask = batch.completion_mask[rows].cpu()  # [b, C]
    last = max(int(completion_mask.sum(1).max()), 1)  # at least one column keeps shapes valid
    loss_mask = batch.loss_mask[rows, :last] if isinstance(batch, Trajectory) else completion_mask[:, :last]
    return MicroBatch(rows=rows, completion_ids=batch.completion_ids[rows, :last].to(device),
                      completion_mask=completion_mask[:, :last].to(device), loss_mask=loss_mask.to(device))


class PromptCache:
    """Every distinct prompt of a rollout batch, run once: its KV cache and last-position hidden state.

    prompt_ids/prompt_mask: [u, P'] (all-padding leading columns trimmed); row_prompt: [N]
    maps each batch row to its prompt. keys/values: per layer [u, heads, P', d].
    """

    def __init__(self, model: torch.nn.Module, batch: TokenSequences, device: torch.device):
        ids, mask = batch.prompt_ids.cpu(), batch.prompt_mask.cpu()  # [N, P]
        first = int((mask.sum(0) > 0).nonzero()[0])  # left padding common to every row
        unique, self.row_prompt = torch.unique(ids[:, first:], dim=0, return_inverse=True)  # [u, P'], [N]
        owner = torch.zeros(len(unique), dtype=torch.long).scatter_(0, self.row_prompt, torch.arange(len(ids)))
        self.prompt_ids, self.prompt_mask = unique.to(device), mask[owner, first:].to(device)
        self.positions = (self.prompt_mask.cumsum(1) - 1).clamp(min=0)  # [u, P']
        self.config = getattr(model, "config", None)
        hidden, cache = parts_of(model).body(1, input_ids=self.prompt_ids, attention_mask=self.prompt_mask,
                                             position_ids=self.positions, past_key_values=DynamicCache(),
                                             use_cache=True)
        self._graph = [hidden[:, -1]] + [t for layer in cache.layers for t in (layer.keys, layer.values)]
        # Leaves: micro-batch backwards stop here and accumulate; backward() finishes the job.
        self._leaves = [t.detach().requires_grad_(t.requires_grad) for t in self._graph]

    def backward(self) -> None:
        """Second stage: push the accumulated gradients of the leaves through the prompt forward."""
        pairs = [(t, leaf.grad) for t, leaf in zip(self._graph, self._leaves, strict=True) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self._graph = self._leaves = []

    def for_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache]:
        """(hidden state of the last prompt position [b, 1, H], prompt mask [b, P'], last prompt position [b, 1],
        cache of b rows)."""
        index = self.row_prompt[rows].to(self.prompt_ids.device)  # [b]
        first_hidden, kv = self._leaves[0], self._leaves[1:]
        # index_select, not kv[index]: the backward of advanced indexing (index_put_ with
        # accumulate) adds the rows of a shared prompt in a thread-dependent order on CPU, so two
        # identical runs differed in the last bits of the prompt's gradient (and exact resume
        # with them); index_select's backward (index_add_) adds them in index order.
        layers = [(kv[2 * i].index_select(0, index), kv[2 * i + 1].index_select(0, index))
                  for i in range(len(kv) // 2)]
        cache = DynamicCache(ddp_cache_data=layers, config=self.config)
        return (first_hidden.index_select(0, index)[:, None], self.prompt_mask[index], self.positions[index, -1:],
                cache)


def completion_hidden(model: torch.nn.Module, batch: TokenSequences, mb: MicroBatch,
                      prompts: PromptCache | None) -> torch.Tensor:
    """The hidden states that predict each completion token: [b, C', H], position t predicts token t
    (the logits [b, C', V] themselves where the model's split is not exact: grpo.compute.chunked_head)."""
    C, body = mb.completion_ids.shape[1], parts_of(model).body
    if prompts is None:  # plain path: every row's prompt + completion in one forward
        ids = torch.cat([batch.prompt_ids[mb.rows].to(mb.completion_ids.device), mb.completion_ids], dim=1)
        mask = torch.cat([batch.prompt_mask[mb.rows].to(mb.completion_ids.device),
                          torch.ones_like(mb.completion_mask)], dim=1)
        hidden, _ = body(C + 1, input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                         use_cache=False)
        return hidden[:, :-1]
    first, prompt_mask, last_position, cache = prompts.for_rows(mb.rows)
    if C == 1:
        return first
    b = mb.completion_ids.shape[0]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(b, C - 1)], dim=1)
    positions = last_position + 1 + torch.arange(C - 1, device=last_position.device)  # [b, C'-1]
    hidden, _ = body(0, input_ids=mb.completion_ids[:, :-1], attention_mask=mask, position_ids=positions,
                     past_key_values=cache, use_cache=True)
    return torch.cat([first, hidden], dim=1)


def completion_stats(
    model: torch.nn.Module, batch: TokenSequences, mb: MicroBatch, prompts: PromptCache | None, spec: StatsSpec,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log-probs [b, C'] float32, entropy [b, C'] or None, truncated log-probs [b, C'] or None) of a
    micro-batch's completion tokens: grpo.compute.chunked_head.token_stats of its hidden states."""
    parts: ModelParts = parts_of(model)
    return token_stats(parts, completion_hidden(model, batch, mb, prompts), mb.completion_ids, spec)


def prompt_cache(model: torch.nn.Module, batch: TokenSequences, device: torch.device) -> PromptCache | None:
    """The shared prompt pass, or None where the model cannot keep a cache (gradient checkpointing)."""
    if getattr(model, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
        return None
    return PromptCache(model, batch, device)


def completion_logprobs(
    model: torch.nn.Module, batch: TokenSequences, mb: MicroBatch, prompts: PromptCache | None,
    temperature: float = 1.0, with_entropy: bool = False, top_k: int = 0, top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) for each completion token of a micro-batch: [b, C'] float32 (+ entropy).

    pi is the model's distribution at `temperature`, truncated to top_k / top_p and
    renormalized when those are set (algorithm.sampling_logits: what a sampler drew from).
    Gradients flow when called outside no_grad; the reference and old-policy passes run under
    torch.no_grad() (batch_logprobs). The entropy (of the untruncated distribution) is detached.
    """
    cut = truncation(top_k, top_p)
    lp, entropy, trunc = completion_stats(model, batch, mb, prompts,
                                          StatsSpec(temperature, "metric" if with_entropy else None, cut))
    return (lp if cut is None else trunc), entropy


@torch.no_grad()
def batch_logprobs(
    model: torch.nn.Module, batch: TokenSequences, micro_batch_size: int, device: torch.device,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> torch.Tensor:
    """No-grad log-probs for a whole rollout batch: [N, C] (zeros on padding)."""
    return batch_logprobs_and_entropy(model, batch, micro_batch_size, device, temperature, top_k, top_p)[0]


@torch.no_grad()
def batch_logprobs_and_entropy(
    model: torch.nn.Module, batch: TokenSequences, micro_batch_size: int, device: torch.device,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """batch_logprobs, plus the entropy of logits / temperature [N, C] (zeros on padding) when
    asked: one forward gives both (high-entropy token selection reads the entropy)."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
    entropy = torch.zeros(batch.completion_ids.shape, dtype=torch.float32) if with_entropy else None
    prompts = prompt_cache(model, batch, device)
    for rows in length_sorted_rows(batch, micro_batch_size):
        mb = make_micro_batch(batch, rows, device)
        lp, ent = completion_logprobs(model, batch, mb, prompts, temperature, with_entropy, top_k=top_k, top_p=top_p)
        out[mb.rows, : lp.shape[1]] = torch.where(mb.completion_mask.bool(), lp, 0.0).float().cpu()
        if entropy is not None:
            entropy[mb.rows, : ent.shape[1]] = torch.where(mb.completion_mask.bool(), ent, 0.0).cpu()
    return out, entropy


class ReferenceModel(Protocol):
    """Where the KL term's reference log-probs come from (this process, or `grpo serve-ref`)."""

    def logprobs(self, batch: Trajectory) -> torch.Tensor:  # [N, C]
        ...


@dataclass
class LocalReference:
    """Reference log-probs from a model in this process (a frozen copy, or the LoRA base)."""

    model: Any
    micro_batch_size: int
    device: torch.device
    temperature: float
    autocast: Callable[[], AbstractContextManager] = nullcontext  # the compute dtype (grpo.compute.precision)

    def logprobs(self, batch: Trajectory) -> torch.Tensor:  # [N, C]
        with self.autocast():
            return batch_logprobs(self.model, batch, self.micro_batch_size, self.device, self.temperature)

    @torch.no_grad()
    def mix_from(self, policy: torch.nn.Module, mix: float) -> None:
        """ref <- mix * policy + (1 - mix) * ref, parameter by parameter (mix 1: an exact copy).
        Every rank calls it: a sharded (fsdp) policy parameter is gathered with full_tensor()."""
        own = dict(self.model.named_parameters())  # deduplicated: tied weights are mixed once
        for name, param in policy.named_parameters():
            source = param.full_tensor() if hasattr(param, "full_tensor") else param
            target = own[name]
            if mix == 1.0:
                target.copy_(source.to(target.device, target.dtype))
            else:
                target.mul_(1 - mix).add_(source.to(target.device, target.dtype), alpha=mix)
