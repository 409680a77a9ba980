"""Per-token log-probabilities of sampled completions under a model (policy or reference).

The model sees `prompt + completion` exactly as during generation: left-padded prompts,
position ids counted from the first real token (so a left-padded row is positioned like an
unpadded one), and only the logits that predict completion tokens are computed, which
skips the LM head over the prompt. Each distinct prompt runs once per micro-batch
(`completion_logits`): for G completions of a ~160-token prompt that is ~4x fewer tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from grpo.algorithm import token_entropy, token_logprobs
from grpo.rollout.base import RolloutBatch


@dataclass
class MicroBatch:
    """A slice of a RolloutBatch, all-padding columns trimmed, each distinct prompt once.

    The rows of a group share one prompt; `prompt_index` maps each row to its prompt so the
    prompt is run through the model once per micro-batch, not once per completion.
    """

    rows: torch.Tensor  # [b] indices into the rollout batch
    prompt_ids: torch.Tensor  # [u, P'] distinct prompts, left-padded
    prompt_mask: torch.Tensor  # [u, P']
    prompt_index: torch.Tensor  # [b] row -> its prompt in prompt_ids
    completion_ids: torch.Tensor  # [b, C']
    completion_mask: torch.Tensor  # [b, C']


def micro_batches(batch: RolloutBatch, size: int, device: torch.device) -> Iterator[MicroBatch]:
    """Consecutive slices of `size` rows (groups stay together when size is a multiple of G)."""
    for start in range(0, batch.completion_ids.shape[0], size):
        rows = torch.arange(start, min(start + size, batch.completion_ids.shape[0]))
        yield make_micro_batch(batch, rows, device)


def make_micro_batch(batch: RolloutBatch, rows: torch.Tensor, device: torch.device) -> MicroBatch:
    prompt_ids, prompt_mask = batch.prompt_ids[rows].cpu(), batch.prompt_mask[rows].cpu()  # [b, P]
    completion_mask = batch.completion_mask[rows].cpu()  # [b, C]
    # Prompts are left-padded: drop leading columns that are padding in every row.
    first = int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else prompt_mask.shape[1]
    # Completions are right-padded: keep at least one column so shapes stay valid.
    last = max(int(completion_mask.sum(1).max()), 1)
    unique, index = torch.unique(prompt_ids[:, first:], dim=0, return_inverse=True)  # [u, P'], [b]
    owner = torch.zeros(len(unique), dtype=torch.long).scatter_(0, index, torch.arange(len(rows)))
    return MicroBatch(
        rows=rows,
        prompt_ids=unique.to(device),
        prompt_mask=prompt_mask[owner, first:].to(device),
        prompt_index=index.to(device),
        completion_ids=batch.completion_ids[rows, :last].to(device),
        completion_mask=completion_mask[:, :last].to(device),
    )


def completion_logits(model: torch.nn.Module, mb: MicroBatch, share_prompt: bool = True) -> torch.Tensor:
    """Logits predicting each completion token: [b, C', V], position t predicts token t.

    The prompt runs once per distinct prompt with its KV cache kept; the completions then
    attend to that cache, selected per row. Exact (prompt positions never attend to
    completion positions), and gradients flow through the shared keys and values into the
    prompt's computation. Models with gradient checkpointing keep no cache in training, so
    they take the plain path: every row's prompt + completion in one forward.
    """
    C = mb.completion_ids.shape[1]
    prompt_positions = (mb.prompt_mask.cumsum(1) - 1).clamp(min=0)  # [u, P'], left padding skipped
    if not share_prompt or getattr(model, "is_gradient_checkpointing", False):
        ids = torch.cat([mb.prompt_ids[mb.prompt_index], mb.completion_ids], dim=1)
        mask = torch.cat([mb.prompt_mask[mb.prompt_index], torch.ones_like(mb.completion_mask)], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                    logits_to_keep=C + 1)
        return out.logits[:, :-1]
    prompt_out = model(input_ids=mb.prompt_ids, attention_mask=mb.prompt_mask, position_ids=prompt_positions,
                       past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    first = prompt_out.logits[:, -1:][mb.prompt_index]  # [b, 1, V] predicts completion token 0
    if C == 1:
        return first
    cache = prompt_out.past_key_values
    cache.batch_select_indices(mb.prompt_index)  # [u, ...] -> [b, ...], differentiable indexing
    b = mb.completion_ids.shape[0]
    mask = torch.cat([mb.prompt_mask[mb.prompt_index], mb.prompt_mask.new_ones(b, C - 1)], dim=1)
    start = prompt_positions[mb.prompt_index, -1:] + 1  # [b, 1]
    positions = start + torch.arange(C - 1, device=start.device)  # [b, C'-1]
    out = model(input_ids=mb.completion_ids[:, :-1], attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True)
    return torch.cat([first, out.logits], dim=1)


def completion_logprobs(
    model: torch.nn.Module, mb: MicroBatch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) for each completion token: [b, C'] float32 (+ entropy [b, C']).

    Gradients flow when called outside no_grad (the policy update); callers wrap the
    reference and old-policy passes in torch.no_grad().
    """
    logits = completion_logits(model, mb)  # [b, C', V]
    logprobs = token_logprobs(logits, mb.completion_ids, temperature)
    entropy = token_entropy(logits.detach(), temperature) if with_entropy else None
    return logprobs, entropy


@torch.no_grad()
def batch_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, micro_batch_size: int, device: torch.device,
    temperature: float = 1.0,
) -> torch.Tensor:
    """No-grad log-probs for a whole rollout batch: [N, C] (zeros on padding)."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
    for mb in micro_batches(batch, micro_batch_size, device):
        lp, _ = completion_logprobs(model, mb, temperature)
        out[mb.rows, : lp.shape[1]] = (lp * mb.completion_mask).float().cpu()
    return out
