"""The trajectory: what a rollout engine returns and what every update path trains on.

A low module of its own: engines, log-prob code, the update and the reference server import
it; it imports nothing of theirs. One record holds a batch of N rows, each a prompt and the
tokens that followed it, exactly as sampled (never re-tokenized).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

FINISH_EOS, FINISH_LENGTH, FINISH_STOP = "eos", "length", "stop"
FINISH_TURNS = "max_turns"  # an episode used rollout.max_turns model turns without ending


@dataclass
class TokenSequences:
    """Prompts and what followed them, as token ids: the input of a log-prob forward (the
    policy's, the reference's, the reference server's). Shapes as in Trajectory."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    def __post_init__(self) -> None:
        assert self.prompt_mask.shape == self.prompt_ids.shape
        assert self.completion_mask.shape == self.completion_ids.shape
        assert self.completion_ids.shape[0] == self.prompt_ids.shape[0]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]


@dataclass
class Trajectory(TokenSequences):
    """G samples for each of the prompts, N = num_prompts * G rows ordered group by group
    (rows 0..G-1 are prompt 0's). Tensors live on the model's device (sampler_logprobs,
    policy_version on any device).

    prompt_ids:       [N, P] long, left-padded with the pad id
    prompt_mask:      [N, P] long, 1 = prompt token, 0 = padding
    completion_ids:   [N, C] long, everything after the prompt, right-padded with the pad id
    completion_mask:  [N, C] long, 1 = a token of the sequence (sampled by the policy or
                      inserted by a tool, environment or chat template), 0 = padding: with
                      prompt_mask it is the model input's attention mask
    loss_mask:        [N, C] long, 1 = a token the policy sampled and is trained on, 0 =
                      padding or inserted; the loss, the KL term, the entropy and every token
                      count use it. Within completion_mask (loss_mask <= completion_mask).
    sampler_logprobs: [N, C] float32, the log-probability of each sampled token under the
                      distribution the engine drew it from (after temperature, top-k and top-p,
                      renormalized; 0 under greedy decoding, which puts all mass on one token),
                      from the engine's own logits. Defined where loss_mask is 1 (0 elsewhere);
                      NaN where an engine cannot provide it, never a silent 0.
    policy_version:   [N] long, the number of optimizer updates the sampling weights had seen
    completions:      decoded completions (special tokens skipped; cut right after a stop
                      string; with task.assistant_prefix, that prefix + the completion), N strings
    finish_reasons:   why each row stopped: "eos" (an EOS token), "stop" (a stop string,
                      rollout.stop), "length" (the token budget: per turn or per episode) or
                      "max_turns" (an episode still going after rollout.max_turns turns)
    episodes:         multi-turn rollouts only (else None): each row's messages after the
                      prompt, {"role", "content"} (assistant turns as sampled; tool and
                      environment replies with "name" and "error" where they have them)
    `torch.cat([prompt_ids, completion_ids], 1)` with the concatenated masks is the model
    input for log-prob forwards.
    """

    loss_mask: torch.Tensor
    sampler_logprobs: torch.Tensor
    policy_version: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]
    episodes: list[list[dict]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        n, shape = self.prompt_ids.shape[0], self.completion_ids.shape
        assert self.completion_mask.shape == self.loss_mask.shape == self.sampler_logprobs.shape == shape
        assert shape[0] == n == len(self.completions) == len(self.finish_reasons) == self.policy_version.shape[0]
        assert not (self.loss_mask.bool() & ~self.completion_mask.bool()).any(), "loss_mask outside completion_mask"
        assert self.episodes is None or len(self.episodes) == n

    @property
    def num_generated_tokens(self) -> int:
        """Tokens the policy sampled (loss_mask), not the ones inserted between them."""
        return int(self.loss_mask.sum())

    def select(self, rows: slice | list[int] | torch.Tensor) -> Trajectory:
        """The trajectory of some rows (a rank's share, a subset to train on), every field kept."""
        if isinstance(rows, slice):
            rows = list(range(len(self)))[rows]
        index = torch.as_tensor(rows, dtype=torch.long)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                picked[f.name] = None
            elif isinstance(value, torch.Tensor):
                picked[f.name] = value[index.to(value.device)]
            else:
                picked[f.name] = [value[i] for i in index.tolist()]
        return type(self)(**picked)

    def without_truncated(self) -> Trajectory:
        """This trajectory with the rows that hit the token budget out of the loss mask (DAPO's
        overlong filtering); every other field, tensors included, is shared."""
        truncated = torch.tensor([r == FINISH_LENGTH for r in self.finish_reasons])
        return replace(self, loss_mask=self.loss_mask * ~truncated.to(self.loss_mask.device)[:, None])

    @classmethod
    def cat(cls, parts: list[Trajectory], pad_id: int) -> Trajectory:
        """Rows of several trajectories in order, prompts left-padded and completions
        right-padded to the widest (pad_id in the ids, 0 in masks and log-probs)."""
        if len(parts) == 1:
            return parts[0]
        P = max(t.prompt_ids.shape[1] for t in parts)
        C = max(t.completion_ids.shape[1] for t in parts)

        def left(x: torch.Tensor, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

        def right(x: torch.Tensor, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, C - x.shape[1]), value=value)

        return cls(
            prompt_ids=torch.cat([left(t.prompt_ids, pad_id) for t in parts]),
            prompt_mask=torch.cat([left(t.prompt_mask, 0) for t in parts]),
            completion_ids=torch.cat([right(t.completion_ids, pad_id) for t in parts]),
            completion_mask=torch.cat([right(t.completion_mask, 0) for t in parts]),
            loss_mask=torch.cat([right(t.loss_mask, 0) for t in parts]),
            sampler_logprobs=torch.cat([right(t.sampler_logprobs, 0.0) for t in parts]),
            policy_version=torch.cat([t.policy_version for t in parts]),
            completions=[c for t in parts for c in t.completions],
            finish_reasons=[r for t in parts for r in t.finish_reasons],
            episodes=[e for t in parts for e in t.episodes] if all(t.episodes is not None for t in parts) else None,
        )
