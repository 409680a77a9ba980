"""Generation that prefills each prompt once and decodes only unfinished rows.

`model.generate` with G copies of a prompt prefills it G times and keeps decoding rows that
already stopped (as padding) until the longest row ends. On the bundled model the prompt is
most of the tokens, so here:
  1. each distinct prompt is prefilled once ([B, P]), its KV cache then repeated G times (its
     own G each under params.group_sizes);
  2. each decode step runs only the rows still generating; a row that emits EOS (or
     completes a stop string) leaves the batch, so padding is never decoded: a row from the
     end of the batch takes its place in the cache (`compaction`), so only the rows that move
     are copied, where indexing the kept rows copied the whole cache at every drop;
  3. the decode cache has room for every new token from the start (`PreallocatedLayer`):
     a step writes its keys/values in place instead of concatenating the whole cache
     (the concatenation was a sizeable share of a decode step on the bundled model:
     bench/RESULTS.md#figures-that-stood-in-code-comments-2026-12-02).
Sampling (temperature, top-k, top-p, greedy) is `sample_next_token`, a pure function that
also returns each drawn token's log-probability (the trajectory's sampler_logprobs).
Under greedy decoding this gives the same tokens as `model.generate` (tested).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from grpo.algorithm import sampling_logits
from grpo.rollout.base import SamplingParams
from grpo.rollout.stops import StopStrings
from grpo.rollout.transformers_engine import TransformersEngine


def sample_next_token(logits: torch.Tensor, params: SamplingParams,
                      rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from logits [n, V] -> (tokens [n] long, their log-probabilities [n]).

    greedy: argmax (log-probability 0: all mass on that token). Otherwise a draw (inverse_cdf_draw)
    from softmax(algorithm.sampling_logits(...)): temperature, then top_k, then top_p; the
    log-probability is the drawn token's under that truncated, renormalized distribution.
    rows [n] (distinct ids, e.g. each row's place in the output): the uniforms are handed out in
    increasing order of rows, so a row's draw does not depend on where the batch holds it.
    """
    if params.greedy:
        token = logits.argmax(dim=-1)
        return token, torch.zeros(token.shape, dtype=torch.float32, device=token.device)
    z = sampling_logits(logits, params.temperature, params.top_k, params.top_p)  # [n, V]
    uniforms = torch.rand(z.shape[0], 1, dtype=torch.float64, device=z.device)
    if rows is not None:
        uniforms = uniforms[rows.argsort().argsort()]  # the k-th smallest row gets the k-th uniform
    token = inverse_cdf_draw(torch.softmax(z, dim=-1), uniforms)  # [n, 1]
    return token.squeeze(-1), (z.gather(1, token) - torch.logsumexp(z, dim=-1, keepdim=True)).squeeze(-1)


def inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row of probs [n, V] (rows need not sum to 1) from uniforms [n, 1] in [0, 1).

    The index i with cdf[i-1] <= u * cdf[V-1] < cdf[i], cdf = cumsum(probs) in float64: an
    exact draw from the row's categorical distribution with one random number per row.
    `torch.multinomial` draws an exponential per vocabulary entry instead, many times slower
    over the bundled model's 49,152 and a visible share of each decode step in a profiled bf16
    rollout (bench/RESULTS.md#performance-iii-2026-12-02-a-third-host-the-sampler-sibling-products-the-table-at-the-top).
    A token of
    probability 0 is never drawn (its cdf equals the one before it); u * total is kept below
    the total so that rounding cannot step past the last token.
    # probs [0.125, 0.25, 0, 0.625]: cdf [0.125, 0.375, 0.375, 1]; u 0.0625 -> 0, 0.125 -> 1, 0.375 -> 3
    """
    cdf = probs.double().cumsum(-1)  # [n, V]
    total = cdf[:, -1:]
    target = torch.minimum(uniforms.double() * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)  # [n, 1]


def common_prefix_length(prompt_ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """Tokens every left-padded prompt row starts with, leaving each row >= 1 token of its own.

    prompt_ids [B, P] left-padded, lengths [B]. # rows [0 5 6 7] and [5 6 8] (pad 0) -> 2
    """
    P = prompt_ids.shape[1]
    shortest = int(lengths.min())
    # align the rows on their first real token: column j of `starts` is token j of each prompt
    idx = (P - lengths)[:, None] + torch.arange(shortest - 1, device=prompt_ids.device)[None]  # [B, shortest-1]
    starts = prompt_ids.gather(1, idx)
    same = (starts == starts[:1]).all(0)  # [shortest - 1]
    return int(same.long().cumprod(0).sum())


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values [n, heads, t, d] are views into a buffer with room for
    `extra` more positions: `update` writes in place (growing the buffer only if it is full)."""

    def __init__(self, layer: DynamicLayer, extra: int):
        super().__init__()
        n, h, t, d = layer.keys.shape
        self._keys = layer.keys.new_empty(n, h, t + extra, d)
        self._values = layer.values.new_empty(n, h, t + extra, d)
        self._keys[:, :, :t], self._values[:, :, :t] = layer.keys, layer.values
        self.dtype, self.device, self.is_initialized, self.length = layer.keys.dtype, layer.keys.device, True, t
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # full: double the room
            self._keys = torch.cat([self._keys, torch.empty_like(self._keys)], dim=-2)
            self._values = torch.cat([self._values, torch.empty_like(self._values)], dim=-2)
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._views()

    def move_rows(self, holes: torch.Tensor, sources: torch.Tensor, rows: int) -> None:
        """Rows `sources` of the cache copied into rows `holes`, then only the first `rows` kept (a
        view: nothing else moves). See `compaction`."""
        if len(holes):
            self._keys[holes, :, : self.length] = self._keys[sources, :, : self.length]
            self._values[holes, :, : self.length] = self._values[sources, :, : self.length]
        self._keys, self._values = self._keys[:rows], self._values[:rows]
        self._views()


def compaction(going: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How a batch keeps its rows still generating (going [n] bool) in its first m = going.sum()
    places, moving as few rows as possible: each finished row among the first m (a hole) takes a
    going row from behind them (a source). Dropping finished rows by indexing (batch_select_indices)
    copies every remaining row's cache, and a rollout drops rows at most decode steps; this copies
    only the rows that move, each once. Returns (order [m]: the old place of each kept row, holes
    [k], sources [k]).
    # going [T, F, T, F, T, T] -> m 4, holes [1, 3], sources [4, 5], order [0, 4, 2, 5]
    """
    m = int(going.sum())
    holes = (~going[:m]).nonzero().squeeze(1)
    sources = m + going[m:].nonzero().squeeze(1)
    order = torch.arange(m, device=going.device)
    order[holes] = sources
    return order, holes, sources


class SharedPrefixEngine(TransformersEngine):
    """TransformersEngine with its own decode loop (shared prompt prefill, no padding decode)."""

    def _prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Run the prompts [B, P]: (last logits [B, V], cache, attention mask [B, K], last position [B, 1]).

        The tokens all prompts start with (system prompt, worked examples: most of an eval
        batch's prompt) run once; then each prompt's own suffix, left-padded after that
        common prefix: the layout is [prefix | padding | suffix], masked and positioned so
        each row computes exactly what its unpadded prompt would.
        """
        lengths = prompt_mask.sum(1)  # [B]
        P = prompt_ids.shape[1]
        L = common_prefix_length(prompt_ids, lengths)
        cache = DynamicCache()
        if L > 0:
            prefix = prompt_ids[:1, P - int(lengths[0]) : P - int(lengths[0]) + L]  # [1, L]
            self.model(input_ids=prefix, position_ids=torch.arange(L, device=prefix.device)[None],
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(prompt_ids.shape[0])
        # Columns L.. hold each row's suffix right-aligned (its last length - L tokens, from
        # column P - length on); what lies left of it (padding, the row's own copy of the
        # prefix) is masked out.
        suffix_ids = prompt_ids[:, L:]  # [B, P - L]
        columns = torch.arange(L, P, device=prompt_ids.device)[None]  # original column numbers
        suffix_mask = (columns >= (P - lengths)[:, None] + L).to(prompt_mask.dtype)  # [B, P - L]
        attention_mask = torch.cat([prompt_mask.new_ones(len(lengths), L), suffix_mask], dim=1)  # [B, P]
        positions = L + (suffix_mask.cumsum(1) - 1).clamp(min=0)  # [B, P - L]
        out = self.model(input_ids=suffix_ids, attention_mask=attention_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values, attention_mask, positions[:, -1:]

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        device = prompt_ids.device
        logits, cache, attention_mask, last_position = self._prefill(prompt_ids, prompt_mask)
        if params.group_sizes is None:
            cache.batch_repeat_interleave(params.group_size)  # [B*G, heads, P, d] per layer
        else:  # each prompt's cache once per completion of its own group
            cache.batch_select_indices(params.repeat(torch.arange(len(prompt_ids), device=device)))
        cache.layers = [PreallocatedLayer(layer, params.max_new_tokens) for layer in cache.layers]
        logits = params.repeat(logits)  # [N, V]
        attention_mask = params.repeat(attention_mask)  # [N, P]
        next_position = params.repeat(last_position) + 1  # [N, 1]
        N = logits.shape[0]
        eos = torch.tensor(self.eos_ids, device=device)
        stops = StopStrings(self.tokenizer, params.stop) if params.stop else None
        tokens = torch.full((N, params.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((N, params.max_new_tokens), dtype=torch.float32, device=device)
        active = torch.arange(N, device=device)  # rows of `tokens` still generating
        steps = 0
        for t in range(params.max_new_tokens):
            token, logprob = sample_next_token(logits, params, active)  # [n], [n]
            tokens[active, t], logprobs[active, t] = token, logprob
            steps = t + 1
            going = ~torch.isin(token, eos)  # [n]
            if stops is not None:  # a row whose text now ends in a stop string is done too
                tails = tokens[active, max(0, t + 1 - stops.window) : t + 1].tolist()
                going &= ~torch.tensor(stops.hits(tails), device=device)
            if t == params.max_new_tokens - 1 or not going.any():
                break
            if not going.all():  # finished rows leave the batch and the cache
                keep, holes, sources = compaction(going)
                for layer in cache.layers:
                    layer.move_rows(holes, sources, len(keep))
                active, token = active[keep], token[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            out = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            next_position = next_position + 1
        return tokens[:, :steps], logprobs[:, :steps]
