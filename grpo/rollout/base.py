"""What every generation engine takes and returns.

An engine samples completions for already-rendered prompt texts and returns a Trajectory
(grpo.trajectory): token ids, masks, the sampler's own log-probs, the policy version,
decoded text and why each completion stopped. It knows nothing about rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from grpo.trajectory import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Trajectory

if TYPE_CHECKING:
    from grpo.config import RolloutConfig

__all__ = ["FINISH_EOS", "FINISH_LENGTH", "FINISH_STOP", "RolloutEngine", "SamplingParams", "Trajectory", "completion_mask"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy (evaluation); top_k 0 and top_p 1 are off.

    seed: when set, sampling is reproducible for the same prompts and params (the global
    RNG is left untouched); when None, the global torch RNG is used. stop: stop strings
    (grpo.rollout.stops), () = stop only at EOS. group_sizes: each prompt's own number of
    completions, in prompt order (rollout.group_policy adaptive); None = group_size for each.
    """

    group_size: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] = ()
    group_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size = {self.group_size} is invalid: expected an integer >= 1")
        if self.group_sizes is not None and not all(isinstance(g, int) and g >= 1 for g in self.group_sizes):
            raise ValueError(f"group_sizes = {self.group_sizes} is invalid: expected integers >= 1, one per prompt")
        if self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} is invalid: expected a number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p} is invalid: expected a number in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k = {self.top_k} is invalid: expected an integer >= 0")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens} is invalid: expected an integer >= 1")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop = {self.stop!r} is invalid: expected non-empty strings")

    @classmethod
    def from_config(cls, cfg: RolloutConfig, seed: int | None = None) -> SamplingParams:
        return cls(cfg.group_size, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens, seed, tuple(cfg.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sizes(self, num_prompts: int) -> list[int]:
        """Each prompt's number of completions; the rows of a trajectory are ordered group by group."""
        if self.group_sizes is None:
            return [self.group_size] * num_prompts
        if len(self.group_sizes) != num_prompts:
            raise ValueError(f"group_sizes holds {len(self.group_sizes)} sizes for {num_prompts} prompts")
        return list(self.group_sizes)

    def repeat(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [N, ...]: each prompt's row once per completion (dim 0)."""
        if self.group_sizes is None:
            return rows.repeat_interleave(self.group_size, 0)
        counts = torch.tensor(self.sizes(rows.shape[0]), dtype=torch.long, device=rows.device)
        return rows.repeat_interleave(counts, 0)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> Trajectory:
        """Sample params.group_size completions for each rendered prompt text (params.group_sizes:
        each prompt its own count)."""
        ...

    def sync_weights(self, model: Any, version: int) -> None:
        """The policy's weights changed (an optimizer step, a loaded checkpoint): sample from
        them from now on, and stamp trajectories with `version` (optimizer updates seen)."""
        ...

    def close(self) -> None:
        """Release what the engine holds, after the run's last collective (under torchrun,
        vLLM's shutdown destroys the process group it joined)."""
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
