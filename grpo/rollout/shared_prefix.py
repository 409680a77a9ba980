"""Generation that prefills each prompt once and decodes only unfinished rows.

`model.generate` with G copies of a prompt prefills it G times and keeps decoding rows that
already stopped (as padding) until the longest row ends. On the bundled model the prompt is
~85% of the tokens, so here:
  1. each distinct prompt is prefilled once ([B, P]), its KV cache then repeated G times;
  2. each decode step runs only the rows still generating; a row that emits EOS leaves
     the batch (its cache rows are dropped), so padding is never decoded.
Sampling (temperature, top-k, top-p, greedy) is `sample_next_token`, a pure function.
Under greedy decoding this gives the same tokens as `model.generate` (tested).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from grpo.rollout.base import SamplingParams
from grpo.rollout.hf import TransformersEngine


def sample_next_token(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One token per row from logits [n, V] -> [n] long.

    greedy: argmax. Otherwise softmax(logits / temperature) restricted to the top_k most
    likely tokens (top_k > 0) and to the smallest set whose probability reaches top_p
    (top_p < 1; the most likely token is always kept), then a multinomial draw.
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [n, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p  # [n, V]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)


class SharedPrefixEngine(TransformersEngine):
    """TransformersEngine with its own decode loop (shared prompt prefill, no padding decode)."""

    def _sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        G, device = params.group_size, prompt_ids.device
        position_ids = (prompt_mask.cumsum(1) - 1).clamp(min=0)  # [B, P] left padding skipped
        cache = DynamicCache()
        out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(G)  # [B*G, heads, P, d] per layer
        logits = out.logits[:, -1].repeat_interleave(G, 0)  # [N, V]
        attention_mask = prompt_mask.repeat_interleave(G, 0)  # [N, P]
        next_position = position_ids[:, -1:].repeat_interleave(G, 0) + 1  # [N, 1]
        N = logits.shape[0]
        eos = torch.tensor(self.eos_ids, device=device)
        tokens = torch.full((N, params.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        active = torch.arange(N, device=device)  # rows of `tokens` still generating
        steps = 0
        for t in range(params.max_new_tokens):
            token = sample_next_token(logits, params)  # [n]
            tokens[active, t] = token
            steps = t + 1
            going = ~torch.isin(token, eos)  # [n]
            if t == params.max_new_tokens - 1 or not going.any():
                break
            if not going.all():  # finished rows leave the batch and the cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, token = active[keep], token[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            out = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            next_position = next_position + 1
        return tokens[:, :steps]
