"""Auxiliary losses beside the policy loss (hybrid objectives), from the step's own samples.

Each term in AUX_LOSSES has the same three parts:
  roles(rewards [N], G or the group sizes, eligible [N], min_reward) -> [N] long   which rows it trains, once per step:
      1 = pulled up (SFT's target, DPO's chosen), -1 = pushed down (DPO's rejected), 0 = untouched
  count(roles [N], loss_mask [N, T], loss_type) -> float          its normalizer's share of these rows
  loss(logprobs, ref_logprobs, loss_mask [b, T], roles, groups [b], num_items, options) -> 0-d
      one micro-batch's share, num_items the count summed over every micro-batch and rank
and AUX_SCHEDULES turn a term's weight and the step into the weight in effect.

Pure tensor functions (see grpo.algorithm for the shapes' names). Where we depart from the papers:
- RAFT (Dong et al. 2023) fine-tunes on the best of k samples; here the best completion of each
  group is trained only where it beats some other completion of its group (an all-equal group
  has no best) and, with min_reward, reaches that reward.
- DPO (Rafailov et al. 2023) takes its pairs from a preference data set; here each group gives
  one pair, its highest against its lowest total reward, sampled by the policy itself (online).
- On-policy distillation (Agarwal et al. 2024, GKD; Thinking Machines 2025) and self-distillation
  (SDPO, Huebotter et al. 2026) use one estimator here, reverse_kl_loss: the sampled token's
  log-ratio as a per-token negative advantage (Thinking Machines' form, discount 0), not GKD's
  full-vocabulary divergence and not SDPO's top-K logit distillation: only the sampled token's
  teacher log-prob is needed, so the teacher runs through the same chunked log-prob path as the
  reference (no [B, T, V] logits) and a `grpo serve-ref` server can serve it. The self-distillation
  teacher is the policy of the step (no EMA teacher, no feedback text).
- SFT on gold demonstrations (CHORD's expert data, arXiv 2508.11408) trains rows that were never
  sampled: the task's worked demonstration of each prompt of the step, teacher-forced after the prompt
  (grpo.training.teachers.GoldDemonstrations builds them; sft_loss is their loss, every row role 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grpo.algorithm.advantages import GroupsLike
from grpo.algorithm.groups import Groups
from grpo.algorithm.losses import AGGREGATIONS, LOSS_TYPES


@dataclass(frozen=True)
class AuxOptions:
    """What a term reads besides its tensors: the policy loss's aggregation and DPO's beta."""

    loss_type: str = "grpo"
    max_completion_length: int | None = None
    dpo_beta: float = 0.1


def group_extremes(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """Per group (rewards, eligible: [N]; G: the group size, or each group's size): the row index
    of its highest and of its lowest reward among the eligible rows (ties: the first), and whether
    they differ in reward (False for a group whose eligible rewards are all equal, or with < 2
    eligible). Returns (best [B] long, worst [B] long, distinct [B] bool).
    # rewards [1, 3, 3, 0 | 2, 2, 2, 2], eligible all: best [1, 4], worst [3, 4], distinct [True, False]
    # sizes [2, 3], rewards [1, 3 | 2, 0, 0]: best [1, 2], worst [0, 3], distinct [True, True]
    """
    groups = Groups.of(G, rewards.numel())
    r, ok = rewards.float(), eligible.bool()
    high = torch.where(ok, r, float("-inf"))  # [N]
    low = torch.where(ok, r, float("inf"))
    top, bottom = groups.amax(high), groups.amin(low)  # [B]
    best = groups.first_true(ok & (high == groups.spread(top)))  # the first of equal values
    worst = groups.first_true(ok & (low == groups.spread(bottom)))
    counts = torch.zeros(groups.num_groups, dtype=torch.long).index_add_(0, groups.ids, ok.long())
    distinct = (counts >= 2) & (top > bottom)
    # a group without an eligible row: its first row, as argmax over all -inf gives (distinct is False)
    first = torch.tensor(groups.starts, dtype=torch.long)
    none = counts == 0
    return torch.where(none, first, best), torch.where(none, first, worst), distinct


def best_completion_roles(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                          min_reward: float | None = None) -> torch.Tensor:
    """SFT's rows (RAFT): role 1 on each group's best completion where it beats another one of its
    group and (min_reward set) has a reward >= min_reward; 0 elsewhere. [N] -> [N] long.
    # rewards [1, 3, 3, 0 | 2, 2, 2, 2] -> [0, 1, 0, 0 | 0, 0, 0, 0]; min_reward 4 -> all 0
    """
    best, _, distinct = group_extremes(rewards, G, eligible)
    if min_reward is not None:
        distinct = distinct & (rewards.float()[best] >= min_reward)
    roles = torch.zeros(rewards.shape[0], dtype=torch.long, device=rewards.device)
    roles[best[distinct]] = 1
    return roles


def preference_pair_roles(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                          min_reward: float | None = None) -> torch.Tensor:
    """DPO's rows: in each group whose rewards differ, role 1 on its best completion and -1 on its
    worst (ties: the first); a group of equal rewards gives no pair. min_reward: unused. [N] -> [N] long.
    # rewards [1, 3, 3, 0 | 2, 2, 2, 2] -> [0, 1, 0, -1 | 0, 0, 0, 0]
    """
    best, worst, distinct = group_extremes(rewards, G, eligible)
    roles = torch.zeros(rewards.shape[0], dtype=torch.long, device=rewards.device)
    roles[best[distinct]] = 1
    roles[worst[distinct]] = -1
    return roles


def _aggregation(loss_type: str):
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type={loss_type!r} is invalid; allowed: {', '.join(LOSS_TYPES)}")
    return AGGREGATIONS[loss_type]


def sft_count(roles: torch.Tensor, loss_mask: torch.Tensor, loss_type: str) -> float:
    """The SFT normalizer's share of these rows: what loss_type's aggregation counts (sequences or
    loss-masked tokens), over the rows of role 1 only. roles [N], loss_mask [N, T]."""
    mask = loss_mask.float() * (roles == 1).float().unsqueeze(1)
    return float(_aggregation(loss_type).count(mask))


def pair_count(roles: torch.Tensor, loss_mask: torch.Tensor, loss_type: str) -> float:
    """The DPO normalizer's share of these rows: the number of pairs (rows of role 1)."""
    return float((roles == 1).sum())


def sft_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, loss_mask: torch.Tensor, roles: torch.Tensor,
             groups: torch.Tensor, num_items: float | torch.Tensor, options: AuxOptions) -> torch.Tensor:
    """Negative log-likelihood of the rows of role 1, aggregated as the policy loss aggregates
    (AGGREGATIONS[options.loss_type]) with num_items = sft_count over the whole batch:
      grpo: sum_i (sum_t -m logp / |o_i|) / num_items      bnpo, dapo: sum_it -m logp / num_items
      dr_grpo: sum_it -m logp / (num_items * max_completion_length)
    m = loss_mask on rows of role 1, 0 elsewhere. logprobs, loss_mask: [b, T]; roles: [b].
    ref_logprobs and groups unused. Masked positions get exactly zero gradient. Returns 0-d.
    # logp [[ln 0.5, ln 0.25], [ln 0.5, pad]], mask [[1, 1], [1, 0]], roles [1, 0]
    # grpo (num_items 1): (ln 2 + ln 4) / 2 = 1.0397; d/dlogp [[-1/2, -1/2], [0, 0]]
    # dapo (num_items 2 tokens): (ln 2 + ln 4) / 2 = 1.0397; dr_grpo (1 sequence, length 4): 2.0794 / 4 = 0.5199
    """
    aggregation = _aggregation(options.loss_type)
    trained = loss_mask.bool() & (roles == 1).unsqueeze(1)  # [b, T]
    nll = torch.where(trained, -logprobs, torch.zeros_like(logprobs))  # a NaN at a masked position never enters
    return aggregation.reduce(nll, trained.to(logprobs.dtype), num_items, options.max_completion_length)


def sequence_logprobs(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """log pi(o_i | q) over the tokens the policy sampled: sum_t m_it logp_it. [b, T] -> [b].
    # logp [[-1, -2], [-0.5, nan]], mask [[1, 1], [1, 0]] -> [-3, -0.5]
    """
    return torch.where(loss_mask.bool(), logprobs, torch.zeros_like(logprobs)).sum(1)


def dpo_pair_losses(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss of each pair: -log sigmoid(beta * (h_w - h_l)), h = log pi(o) - log pi_ref(o)
    of the chosen (w) and rejected (l) completions (TRL's `sigmoid` loss). [P], [P] -> [P].
    d/dh_w = -beta * sigmoid(-beta (h_w - h_l)) = -d/dh_l.
    # beta 0.5, h_w 1, h_l -1: -log sigmoid(1) = 0.31326; d/dh_w = -0.5 * sigmoid(-1) = -0.13447
    """
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


def dpo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor, roles: torch.Tensor,
             groups: torch.Tensor, num_items: float | torch.Tensor, options: AuxOptions) -> torch.Tensor:
    """In-group DPO: sum over the pairs of this micro-batch of dpo_pair_losses / num_items, num_items
    the number of pairs in the whole batch (pair_count). A pair is the row of role 1 and the row of
    role -1 of one group (groups [b]: each row's group); both must be in the micro-batch. The
    sequence log-probs are sums over the loss-masked tokens (sequence_logprobs) of logprobs (with
    grad) and ref_logprobs. logprobs, ref_logprobs, loss_mask: [b, T]. Returns 0-d.
    # one pair, beta 0.5: policy [w -1, l -3], reference [w -2, l -2] -> h_w 1, h_l -1 -> 0.31326
    """
    chosen, rejected = (roles == 1).nonzero().squeeze(1), (roles == -1).nonzero().squeeze(1)
    chosen, rejected = chosen[groups[chosen].argsort()], rejected[groups[rejected].argsort()]
    if not torch.equal(groups[chosen], groups[rejected]):
        raise ValueError("dpo_loss: each pair's two rows must be in the same micro-batch")
    h = sequence_logprobs(logprobs, loss_mask) - sequence_logprobs(ref_logprobs, loss_mask).detach()  # [b]
    return dpo_pair_losses(h[chosen], h[rejected], options.dpo_beta).sum() / num_items


def no_sampled_rows(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                    min_reward: float | None = None) -> torch.Tensor:
    """A term on rows outside the samples (gold demonstrations): no sampled row trains. [N] -> [N] zeros."""
    return torch.zeros(rewards.shape[0], dtype=torch.long, device=rewards.device)


def every_row_roles(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                    min_reward: float | None = None) -> torch.Tensor:
    """Distillation's rows: role 1 on every row with a token to train on; rewards and min_reward unused.
    # eligible [T, F, T, T] -> [1, 0, 1, 1]
    """
    return eligible.long()


def demonstrations(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                   min_reward: float | None = None) -> torch.Tensor:
    """Each row's demonstration for self-distillation: the row index of its group's successful completion,
    -1 where the group has none. The successful completion is SFT's row (best_completion_roles): the group's
    best where it beats another of its group and (min_reward set) reaches min_reward. [N] -> [N] long.
    # rewards [1, 3, 3, 0 | 2, 2, 2, 2] -> [1, 1, 1, 1 | -1, -1, -1, -1]; min_reward 4 -> all -1
    """
    groups = Groups.of(G, rewards.numel())
    first = groups.first_true(best_completion_roles(rewards, groups, eligible, min_reward) == 1)  # [B], N if none
    return groups.spread(torch.where(first < rewards.numel(), first, -1))


def demonstrated_roles(rewards: torch.Tensor, G: GroupsLike, eligible: torch.Tensor,
                       min_reward: float | None = None) -> torch.Tensor:
    """Self-distillation's rows: role 1 on the eligible rows of a group with a demonstration
    (`demonstrations`), the demonstration itself left out (its teacher has read it verbatim). [N] -> [N] long.
    # rewards [1, 3, 3, 0 | 2, 2, 2, 2] -> [1, 0, 1, 1 | 0, 0, 0, 0]
    """
    demo = demonstrations(rewards, G, eligible, min_reward)
    own = demo == torch.arange(rewards.shape[0])
    return ((demo >= 0) & ~own & eligible.bool()).long()


def reverse_kl_loss(logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, loss_mask: torch.Tensor,
                    roles: torch.Tensor, groups: torch.Tensor, num_items: float | torch.Tensor,
                    options: AuxOptions) -> torch.Tensor:
    """Per-token reverse KL(pi_theta || pi_teacher) on the policy's own samples, rows of role 1:
      k_t = logp_t - teacher_t                      (k1: an unbiased estimate of the token's reverse KL,
                                                     the token o_t sampled from pi_theta)
      l_t = sg(k_t) + sg(k_t) * (logp_t - sg(logp_t))  value k_t, gradient d l_t = sg(k_t) * d logp_t
    aggregated as the policy loss aggregates (AGGREGATIONS[options.loss_type], num_items = sft_count of the
    same rows over the whole batch; see sft_loss). The gradient is Thinking Machines' on-policy distillation:
    REINFORCE with the per-token advantage -k_t (discount 0), the score-function gradient of the reverse KL
    (E_pi[sg(k) d logp] = d KL(pi || teacher)). Not k1 with gradient (E_pi[d logp] = 0: no signal) nor TRL's
    k3 with gradient (E_pi[(1 - teacher / pi) d logp] is the gradient of the forward KL(teacher || pi)).
    No gradient reaches the teacher. logprobs, teacher_logprobs, loss_mask: [b, T]; roles [b]; groups unused.
    # logp [[ln 0.5, ln 0.25]], teacher [[ln 0.25, ln 0.25]], mask [[1, 1]], roles [1], grpo, num_items 1:
    # k [ln 2, 0] -> (ln 2 + 0) / 2 = 0.34657; d/dlogp [[ln 2 / 2, 0]] = [[0.34657, 0]]
    """
    aggregation = _aggregation(options.loss_type)
    trained = loss_mask.bool() & (roles == 1).unsqueeze(1)  # [b, T]
    # zero where untrained first: a NaN there would otherwise reach the gradient through k's product
    k = torch.where(trained, logprobs - teacher_logprobs, torch.zeros_like(logprobs)).detach()  # [b, T]
    token = torch.where(trained, k + k * (logprobs - logprobs.detach()), torch.zeros_like(k))
    return aggregation.reduce(token, trained.to(logprobs.dtype), num_items, options.max_completion_length)


@dataclass(frozen=True)
class AuxiliaryLoss:
    """One term of AUX_LOSSES: its rows (once per step), its normalizer and its loss; `pairs`: the rows
    of roles 1 and -1 of one group must share a micro-batch; `reference`: it reads ref_logprobs;
    `teacher`: its loss reads a teacher's log-probs in their place, "model" (a teacher model's) or
    "self" (the policy's, given its group's demonstration); `gold`: it trains the task's gold
    demonstrations, rows of their own beside the samples (each of role 1), and no sampled row."""

    roles: Callable[..., torch.Tensor]
    count: Callable[..., float]
    loss: Callable[..., torch.Tensor]
    pairs: bool = False
    reference: bool = False
    teacher: str | None = None
    gold: bool = False


# algorithm.aux_losses[].name -> its term: the table the config's names list.
AUX_LOSSES = {
    "sft": AuxiliaryLoss(best_completion_roles, sft_count, sft_loss),
    "gold_sft": AuxiliaryLoss(no_sampled_rows, sft_count, sft_loss, gold=True),
    "dpo": AuxiliaryLoss(preference_pair_roles, pair_count, dpo_loss, pairs=True, reference=True),
    "distill": AuxiliaryLoss(every_row_roles, sft_count, reverse_kl_loss, teacher="model"),
    "self_distill": AuxiliaryLoss(demonstrated_roles, sft_count, reverse_kl_loss, teacher="self"),
}

# algorithm.aux_losses[].schedule -> the weight's factor from progress p = min(1, step / until_step).
AUX_SCHEDULES = {
    "constant": lambda progress: 1.0,
    "linear_decay": lambda progress: 1.0 - progress,  # CHORD's mu: imitation first, then RL alone
    "linear_warmup": lambda progress: progress,
}


def aux_weight(weight: float, schedule: str, step: int, until_step: int) -> float:
    """The weight in effect at `step` (the steps completed before this one, 0 on the first):
    weight * AUX_SCHEDULES[schedule](min(1, step / until_step)).
    # weight 0.5, until_step 4: linear_decay at steps 0, 2, 4, 9 -> 0.5, 0.25, 0, 0; linear_warmup -> 0, 0.25, 0.5, 0.5
    """
    if schedule not in AUX_SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: {', '.join(AUX_SCHEDULES)}")
    return weight * AUX_SCHEDULES[schedule](min(1.0, step / max(until_step, 1)))
