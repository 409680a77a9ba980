"""Per-token log-probabilities of sampled completions under a model (policy or reference).

The model sees `prompt + completion` exactly as during generation: left-padded prompts,
position ids counted from the first real token (so a left-padded row is positioned like an
unpadded one), and only the logits that predict completion tokens are computed
(`logits_to_keep`), which skips the LM head over the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from grpo.algorithm import token_entropy, token_logprobs
from grpo.rollout.base import RolloutBatch


@dataclass
class MicroBatch:
    """A slice of a RolloutBatch with the all-padding columns trimmed off."""

    rows: torch.Tensor  # [b] indices into the rollout batch
    input_ids: torch.Tensor  # [b, P' + C']
    attention_mask: torch.Tensor  # [b, P' + C']
    position_ids: torch.Tensor  # [b, P' + C']
    completion_ids: torch.Tensor  # [b, C']
    completion_mask: torch.Tensor  # [b, C']


def micro_batches(batch: RolloutBatch, size: int, device: torch.device) -> Iterator[MicroBatch]:
    """Consecutive slices of `size` rows, each trimmed to its own longest prompt/completion."""
    for start in range(0, batch.completion_ids.shape[0], size):
        rows = torch.arange(start, min(start + size, batch.completion_ids.shape[0]))
        yield make_micro_batch(batch, rows, device)


def make_micro_batch(batch: RolloutBatch, rows: torch.Tensor, device: torch.device) -> MicroBatch:
    prompt_mask = batch.prompt_mask[rows]  # [b, P]
    completion_mask = batch.completion_mask[rows]  # [b, C]
    # Prompts are left-padded: drop leading columns that are padding in every row.
    first = int((prompt_mask.sum(0) > 0).nonzero()[0]) if prompt_mask.any() else prompt_mask.shape[1]
    # Completions are right-padded: keep at least one column so shapes stay valid.
    last = max(int(completion_mask.sum(1).max()), 1)
    prompt_ids = batch.prompt_ids[rows, first:]
    prompt_mask = prompt_mask[:, first:]
    completion_ids = batch.completion_ids[rows, :last]
    completion_mask = completion_mask[:, :last]
    attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_mask)], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return MicroBatch(
        rows=rows,
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1).to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
    )


def completion_logprobs(
    model: torch.nn.Module, mb: MicroBatch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) for each completion token: [b, C'] float32 (+ entropy [b, C']).

    Gradients flow when called outside no_grad (the policy update); callers wrap the
    reference and old-policy passes in torch.no_grad().
    """
    C = mb.completion_ids.shape[1]
    out = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        use_cache=False,
        logits_to_keep=C + 1,
    )
    logits = out.logits[:, :-1]  # [b, C, V]: position t predicts completion token t
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
        out[mb.rows, : lp.shape[1]] = lp.float().cpu()
    return out
