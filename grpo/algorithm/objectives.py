"""Per-token surrogate objectives of the policy loss: the clipped one (PPO/GRPO, with the dual clip),
CISPO and SAPO.

Pure tensor functions (see grpo.algorithm for the shapes' names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ObjectiveOptions:
    """The parameters of every surrogate objective; each objective reads its own."""

    epsilon: float = 0.2  # clip: ratio bounds [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float = 0.2
    dual_clip: float | None = None  # clip: the bound c on -A r where A < 0 (None: off)
    cispo_epsilon_low: float | None = None  # cispo: weight bounds [1 - low, 1 + high] (None: no lower bound)
    cispo_epsilon_high: float = 4.0
    sapo_temperature_pos: float = 1.0  # sapo: gate temperatures for A > 0 and A <= 0
    sapo_temperature_neg: float = 1.05


def clipped_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                      o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, with the dual clip (Ye et al. 2020, "Mastering complex control in
    MOBA games"; verl's clip_ratio_c, INTELLECT-2's delta) when o.dual_clip = c is set:
      l = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)
      dual clip, A < 0 only: l = min(l, -A c)   (c > 1 + epsilon_high: a token whose ratio passed c
                                                 has constant loss, no gradient)
    ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns (l [B, T], {"clip/dual": tokens with A < 0
    and r > c} when dual clip is on).
    # A = -1, epsilon 0.2 / 0.28, c = 3: r 0.79 -> max(0.79, 0.8) = 0.8 (clipped low, no gradient);
    # r 2.9 -> 2.9 (d l / d logp = -A r = 2.9); r 3.1 -> min(3.1, 3) = 3 (dual clipped, no gradient)
    """
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - o.epsilon, 1 + o.epsilon_high) * adv)
    if o.dual_clip is None:
        return per_token, {}
    if o.dual_clip <= 1 + o.epsilon_high:
        raise ValueError(f"dual_clip={o.dual_clip} must exceed 1 + epsilon_high = {1 + o.epsilon_high}")
    negative = adv < 0
    per_token = torch.where(negative, torch.min(per_token, -adv * o.dual_clip), per_token)
    return per_token, {"clip/dual": negative & (ratio > o.dual_clip)}


def cispo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                    o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1): REINFORCE with a clipped, detached importance weight.
      w = sg(clip(r, 1 - cispo_epsilon_low, 1 + cispo_epsilon_high))   (no lower bound when low is None)
      l = -w A logprobs            d l / d logp = -w A: a clipped token still has its gradient
    ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns (l [B, T], {"clip/cispo": tokens whose
    weight was clipped, either side, any advantage}).
    # A = +1, bounds [0.8, 1.28]: r 0.5 -> w 0.8; r 1.27 -> 1.27; r 1.29 -> 1.28 (d l / d logp = -1.28)
    """
    low = None if o.cispo_epsilon_low is None else 1 - o.cispo_epsilon_low
    weight = torch.clamp(ratio, min=low, max=1 + o.cispo_epsilon_high).detach()  # [B, T]
    return -weight * adv * logprobs, {"clip/cispo": weight != ratio.detach()}


def sapo_surrogate(ratio: torch.Tensor, logprobs: torch.Tensor, adv: torch.Tensor,
                   o: ObjectiveOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization"): a sigmoid gate for the hard clip.
      tau = sapo_temperature_pos if A > 0 else sapo_temperature_neg
      l   = -A (4 / tau) sigmoid(tau (r - 1))
      d l / d logp = -A g r,  g = 4 s (1 - s),  s = sigmoid(tau (r - 1))
    g, the gate, is 1 at r = 1 (on-policy: the plain policy gradient) and decays smoothly as r leaves 1,
    faster for the larger temperature. ratio, logprobs: [B, T]; adv: [B, 1] or [B, T]. Returns
    (l [B, T], {"sapo/gate": g}).
    # A = -1, tau 1.05, r 2.9: s = sigmoid(1.995) = 0.88027 -> l = 4 / 1.05 * 0.88027 = 3.35341,
    # g = 4 * 0.88027 * 0.11973 = 0.42158, d l / d logp = 0.42158 * 2.9 = 1.22257
    """
    tau = torch.where(adv > 0, adv.new_tensor(o.sapo_temperature_pos), adv.new_tensor(o.sapo_temperature_neg))
    s = torch.sigmoid(tau * (ratio - 1))  # [B, T]
    gate = (4 * s * (1 - s)).detach()
    return -adv * (4 / tau) * s, {"sapo/gate": gate}


@dataclass(frozen=True)
class Objective:
    """A per-token surrogate `surrogate(ratio, logprobs, adv, options) -> (l [B, T], flags)` (flags:
    [B, T] tensors logged as token means over the mask) and whether it may take GSPO's sequence ratio."""

    surrogate: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    sequence_level: bool


# policy_objective -> its surrogate. SAPO is token level only: its gate exists to damp the few
# off-policy tokens of a sequence and keep the rest, which one ratio per sequence cannot do.
POLICY_OBJECTIVES = {
    "clip": Objective(clipped_surrogate, sequence_level=True),
    "cispo": Objective(cispo_surrogate, sequence_level=True),  # one detached weight per completion
    "sapo": Objective(sapo_surrogate, sequence_level=False),
}


def policy_objective(name: str, importance_sampling_level: str) -> Objective:
    """The objective `name` at that ratio level, or a ValueError naming what is allowed."""
    if name not in POLICY_OBJECTIVES:
        raise ValueError(f"objective={name!r} is invalid; allowed: {', '.join(POLICY_OBJECTIVES)}")
    if importance_sampling_level == "sequence" and not POLICY_OBJECTIVES[name].sequence_level:
        raise ValueError(f"objective={name!r} needs importance_sampling_level='token'")
    return POLICY_OBJECTIVES[name]
