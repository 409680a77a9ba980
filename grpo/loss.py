"""The run's policy loss, built once from the config: surrogate, KL term, aggregation and the
global normalizer that aggregation divides by.

    loss = PolicyLoss.from_config(cfg.algorithm, cfg.rollout.max_new_tokens)
    num_items = world.sum(loss.local_items(trajectory.loss_mask))   # every rank, every micro-batch
    value, metrics = loss(logprobs, old_logprobs, advantages, loss_mask, ref_logprobs, num_items)

The math is `algorithm.policy_loss`; which count the aggregation normalizes by (sequences or
loss-masked tokens) is declared next to it in `algorithm.AGGREGATIONS`, so neither the
trainer nor the update knows a loss type by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from grpo import algorithm

if TYPE_CHECKING:
    from grpo.config import AlgorithmConfig


@dataclass(frozen=True)
class PolicyLoss:
    loss_type: str
    beta: float
    epsilon: float
    epsilon_high: float | None
    kl_estimator: str
    max_completion_length: int

    @classmethod
    def from_config(cls, a: AlgorithmConfig, max_completion_length: int) -> PolicyLoss:
        if a.loss_type not in algorithm.AGGREGATIONS:
            raise ValueError(f"config field `algorithm.loss_type` = {a.loss_type!r} is invalid; allowed: "
                             f"{', '.join(algorithm.LOSS_TYPES)}")
        return cls(a.loss_type, a.beta, a.epsilon, a.epsilon_high, a.kl_estimator, max_completion_length)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def local_items(self, loss_mask: torch.Tensor) -> float:
        """This rank's share of the normalizer: its sequences, or its loss-masked tokens."""
        if algorithm.AGGREGATIONS[self.loss_type].counts == "tokens":
            return float(loss_mask.sum().item())
        return float(loss_mask.shape[0])

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 loss_mask: torch.Tensor, ref_logprobs: torch.Tensor | None,
                 num_items: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's share of the loss ([b, C'] tensors, advantages [b]) and its metrics."""
        return algorithm.policy_loss(
            logprobs, old_logprobs, advantages, loss_mask, ref_logprobs=ref_logprobs, beta=self.beta,
            epsilon=self.epsilon, epsilon_high=self.epsilon_high, loss_type=self.loss_type,
            max_completion_length=self.max_completion_length, kl_estimator=self.kl_estimator,
            num_items=max(num_items, 1.0),
        )
