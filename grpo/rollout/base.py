"""What every generation engine takes and returns.

An engine samples completions for already-rendered prompt texts and returns token ids,
masks, decoded text and why each completion stopped. It knows nothing about rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from grpo.config import RolloutConfig

FINISH_EOS, FINISH_LENGTH = "eos", "length"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy (evaluation); top_k 0 and top_p 1 are off.

    seed: when set, sampling is reproducible for the same prompts and params (the global
    RNG is left untouched); when None, the global torch RNG is used.
    """

    group_size: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size = {self.group_size} is invalid: expected an integer >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} is invalid: expected a number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p} is invalid: expected a number in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k = {self.top_k} is invalid: expected an integer >= 0")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens} is invalid: expected an integer >= 1")

    @classmethod
    def from_config(cls, cfg: RolloutConfig, seed: int | None = None) -> SamplingParams:
        return cls(cfg.group_size, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens, seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RolloutBatch:
    """G completions for each of the prompts, N = num_prompts * G rows ordered group by group
    (rows 0..G-1 are prompt 0's completions). Tensors live on the model's device.

    prompt_ids:      [N, P] long, left-padded with the pad id
    prompt_mask:     [N, P] long, 1 = prompt token, 0 = padding
    completion_ids:  [N, C] long, right-padded with the pad id after the EOS token
    completion_mask: [N, C] long, 1 = sampled token (the final EOS included), 0 = padding
    completions:     decoded completions (special tokens skipped), N strings
    finish_reasons:  "eos" (stopped at an EOS token) or "length" (hit max_new_tokens), N
    `torch.cat([prompt_ids, completion_ids], 1)` with the concatenated masks is the model
    input for log-prob forwards.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]

    def __post_init__(self) -> None:
        n = self.prompt_ids.shape[0]
        assert self.prompt_mask.shape == self.prompt_ids.shape
        assert self.completion_ids.shape == self.completion_mask.shape
        assert self.completion_ids.shape[0] == n == len(self.completions) == len(self.finish_reasons)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_generated_tokens(self) -> int:
        return int(self.completion_mask.sum())


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        """Sample params.group_size completions for each rendered prompt text."""
        ...


def completion_mask(completion_ids: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """1 for every token up to and including the first EOS of each row, 0 after it.

    completion_ids [N, C], eos_ids [K] -> mask [N, C] long. A row with no EOS is all ones.
    # ids [5, 2, 0, 0] with eos 2 -> is_eos [0, 1, 0, 0], eos strictly before [0, 0, 1, 1]
    # -> mask [1, 1, 0, 0]   (also right when pad == eos: later EOS tokens are not counted)
    """
    is_eos = torch.isin(completion_ids, eos_ids).long()  # [N, C]
    eos_before = is_eos.cumsum(1) - is_eos  # [N, C] EOS tokens strictly before each position
    return (eos_before == 0).long()
