"""The run's policy loss, built once from the config: surrogate, KL term, aggregation and the
global normalizer that aggregation divides by.

    loss = PolicyLoss.from_config(cfg.algorithm, cfg.rollout.max_new_tokens)
    num_items = world.sum(loss.local_items(trajectory.loss_mask))   # every rank, every micro-batch
    value, metrics = loss(logprobs, old_logprobs, advantages, loss_mask, ref_logprobs, num_items)

The math is `algorithm.policy_loss`, its surrogate the config's `policy_objective` (a key of
`algorithm.POLICY_OBJECTIVES`, resolved here once); which count the aggregation normalizes by (sequences or
loss-masked tokens) is declared next to it in `algorithm.AGGREGATIONS`, so neither the
trainer nor the update knows a loss type by name.

`EntropyControl`, also built once, holds entropy's place in the objective: the bonus term
(algorithm.entropy_bonus, aggregated like the loss), its coefficient's update toward a target
(algorithm.adapted_entropy_coef; the coefficient itself is TrainerState, saved in checkpoints)
and the high-entropy token selection (algorithm.entropy_threshold over the whole batch).

`SamplerCorrection`, also built once, turns the engine's sampler log-probs and the trainer's
log-probs of the same tokens into the importance weights that policy_loss multiplies the
surrogate by (algorithm.sampler_correction_weights). `OffPolicyMask` (DeepSeek-V3.2's
off-policy sequence masking) takes the surrogate away from negative-advantage completions
that the current policy has drifted too far from (algorithm.off_policy_sequence_mask).

`AuxiliaryLosses`, also built once, holds the terms of algorithm.aux_losses (algorithm.AUX_LOSSES:
SFT on each group's best completion or on the task's gold demonstrations, in-group DPO, distillation): once
per step its `plan` picks each term's rows from the rewards and counts their normalizers over every rank, and
carries the distillation terms' teacher log-probs and the gold demonstrations (grpo.training.teachers); the
plan adds each micro-batch's share of sum_k weight_k * term_k in the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from grpo import algorithm
from grpo.compute.chunked_head import truncation
from grpo.rollout import ENGINES
from grpo.training.teachers import DemonstrationBatch

if TYPE_CHECKING:
    from grpo.config import AlgorithmConfig, RolloutConfig


@dataclass(frozen=True)
class PolicyLoss:
    loss_type: str
    beta: float
    epsilon: float
    epsilon_high: float | None
    kl_estimator: str
    max_completion_length: int
    importance_sampling_level: str = "token"
    objective: str = "clip"  # algorithm.POLICY_OBJECTIVES, with the options each one reads
    dual_clip: float | None = None
    cispo_epsilon_low: float | None = None
    cispo_epsilon_high: float = 4.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    kl_importance_weighted: bool = False  # DeepSeek-V3.2's unbiased KL: k3 times the token ratio

    @classmethod
    def from_config(cls, a: AlgorithmConfig, max_completion_length: int) -> PolicyLoss:
        if a.loss_type not in algorithm.AGGREGATIONS:
            raise ValueError(f"config field `algorithm.loss_type` = {a.loss_type!r} is invalid; allowed: "
                             f"{', '.join(algorithm.LOSS_TYPES)}")
        # a sequence ratio is a mean of token log-ratios: it moves far less, so GSPO clips it tighter
        sequence = a.importance_sampling_level == "sequence"
        epsilon, epsilon_high = ((a.sequence_epsilon, a.sequence_epsilon_high) if sequence
                                 else (a.epsilon, a.epsilon_high))
        algorithm.policy_objective(a.policy_objective, a.importance_sampling_level)  # fails here, not mid-step
        return cls(a.loss_type, a.beta, epsilon, epsilon_high, a.kl_estimator, max_completion_length,
                   a.importance_sampling_level, a.policy_objective, a.dual_clip, a.cispo_epsilon_low,
                   a.cispo_epsilon_high, a.sapo_temperature_pos, a.sapo_temperature_neg,
                   a.kl_importance_weighted)

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def local_items(self, loss_mask: torch.Tensor) -> float:
        """This rank's share of the normalizer: its sequences with a token to train on, or its
        loss-masked tokens (algorithm.Aggregation.count)."""
        return float(algorithm.AGGREGATIONS[self.loss_type].count(loss_mask.float()))

    def entropy_term(self, entropy: torch.Tensor, loss_mask: torch.Tensor, num_items: float,
                     coef: float) -> torch.Tensor:
        """One micro-batch's share of the entropy bonus, -coef * H aggregated as this loss aggregates."""
        return algorithm.entropy_bonus(entropy, loss_mask, coef, self.loss_type, max(num_items, 1.0),
                                       self.max_completion_length)

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 loss_mask: torch.Tensor, ref_logprobs: torch.Tensor | None, num_items: float,
                 token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's share of the loss ([b, C'] tensors, advantages [b]) and its metrics."""
        return algorithm.policy_loss(
            logprobs, old_logprobs, advantages, loss_mask, ref_logprobs=ref_logprobs, beta=self.beta,
            epsilon=self.epsilon, epsilon_high=self.epsilon_high, loss_type=self.loss_type,
            max_completion_length=self.max_completion_length, kl_estimator=self.kl_estimator,
            num_items=max(num_items, 1.0), importance_sampling_level=self.importance_sampling_level,
            token_weights=token_weights, objective=self.objective, dual_clip=self.dual_clip,
            cispo_epsilon_low=self.cispo_epsilon_low, cispo_epsilon_high=self.cispo_epsilon_high,
            sapo_temperature_pos=self.sapo_temperature_pos, sapo_temperature_neg=self.sapo_temperature_neg,
            kl_importance_weighted=self.kl_importance_weighted,
        )


@dataclass(frozen=True)
class EntropyControl:
    """The entropy bonus's coefficient (fixed, or adapted toward a target entropy after each
    step) and the high-entropy token selection."""

    coef: float = 0.0  # the coefficient a run starts with
    target: float | None = None  # None: coef stays fixed
    coef_lr: float = 1e-3
    top_quantile: float = 1.0  # 1: every loss-masked token trains the surrogate

    @classmethod
    def from_config(cls, a: AlgorithmConfig) -> EntropyControl:
        return cls(a.entropy_coef, a.entropy_target, a.entropy_coef_lr, a.top_entropy_quantile)

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    @property
    def has_bonus(self) -> bool:
        return self.coef > 0 or self.adaptive

    @property
    def selects(self) -> bool:
        return self.top_quantile < 1.0

    def current(self, saved: float | None) -> float:
        """The coefficient for this step: the one the run's state carries, else the configured one."""
        return self.coef if saved is None else saved

    def next_coef(self, coef: float, entropy: float) -> float:
        """After a step whose sampling policy had mean token entropy `entropy` (every rank's)."""
        return algorithm.adapted_entropy_coef(coef, entropy, self.target, self.coef_lr) if self.adaptive else coef

    def selection(self, entropy: torch.Tensor, loss_mask: torch.Tensor, world: Any) -> tuple[torch.Tensor, float]:
        """The tokens whose surrogate trains ([N, C] float, 1 or 0) and their fraction of the
        loss-masked tokens, the threshold taken over every rank's loss-masked entropies [N, C]."""
        keep = loss_mask.bool()
        threshold = algorithm.entropy_threshold(world.gather(entropy[keep].float()), self.top_quantile)
        selected = algorithm.high_entropy_mask(entropy, loss_mask, threshold)  # [N, C]
        fraction = world.sum(float(selected.sum())) / max(world.sum(float(keep.sum())), 1.0)
        return selected.float(), fraction


@dataclass(frozen=True)
class SamplerCorrection:
    """Importance weights pi_old / q for the tokens an engine sampled (mode none: no weights).

    `auto` resolves here, once: truncate for the engines that sample with their own numerics
    (EngineKind.own_numerics in grpo.rollout.ENGINES: vllm and server, with their own copy of
    the weights, their own kernels and dtype), for asynchronous generation (max_staleness >
    0: q is an older policy than pi_old) and wherever rollouts or the trainer compute below
    float32 (grpo.compute.precision: bf16 rounding separates the sampler's log-probs from the
    trainer's; docs/algorithm.md has the measured gap), none for the engines that sample with
    the trainer's own module in float32.
    """

    mode: str  # none | truncate | mask
    level: str  # token | sequence
    cap: float

    @classmethod
    def from_config(cls, a: AlgorithmConfig, engine: str, max_staleness: int = 0,
                    lowered: bool = False) -> SamplerCorrection:
        """lowered: something computes below float32 (grpo.compute.precision.Precision.lowered)."""
        mode = a.sampler_correction
        if mode == "auto":
            mode = "truncate" if ENGINES.get(engine).own_numerics or max_staleness > 0 or lowered else "none"
        return cls(mode, a.sampler_correction_level, a.sampler_correction_cap)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def weights(self, old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss weights [b, C] of some whole rows (a micro-batch or all of them) and their sums
        for `metrics` (algorithm.sampler_correction_weights)."""
        return algorithm.sampler_correction_weights(old_logprobs, sampler_logprobs, loss_mask.to(old_logprobs.device),
                                                    self.mode, self.level, self.cap)

    def metrics(self, parts: list[dict[str, torch.Tensor]], world: Any) -> dict[str, float]:
        """The weights' metrics over every micro-batch of every rank: is_weight/mean, /min, /max
        (of pi_old / q), is_weight/truncated or /masked (fraction corrected), is_weight/nonfinite
        (tokens without a finite log-prob, weight 0) and sampler_kl (KL(q || pi_old) per token)."""
        total = {k: world.sum(sum(float(p[k]) for p in parts))
                 for k in ("num_tokens", "num_nonfinite", "num_corrected", "w_sum", "kl_sum", "kl_tokens")}
        local = torch.tensor([[min((float(p["w_min"]) for p in parts), default=float("nan")),
                               -max((float(p["w_max"]) for p in parts), default=float("nan"))]])
        extremes = world.gather(local.nan_to_num(float("inf")))  # [ranks, 2]; NaN = no token there
        n = max(total["num_tokens"], 1.0)
        corrected = "truncated" if self.mode == "truncate" else "masked"
        return {
            "is_weight/mean": total["w_sum"] / n,
            "is_weight/min": extremes[:, 0].min().item(),
            "is_weight/max": -extremes[:, 1].min().item(),
            f"is_weight/{corrected}": total["num_corrected"] / n,
            "is_weight/nonfinite": int(total["num_nonfinite"]),
            "sampler_kl": total["kl_sum"] / max(total["kl_tokens"], 1.0),
        }


@dataclass(frozen=True)
class OffPolicyMask:
    """DeepSeek-V3.2's off-policy sequence masking (threshold None: off).

    Every update compares the current policy with the sampler on each micro-batch's own
    forward: pi_theta's log-probs under the sampler's distribution (its top-k and top-p
    truncation too, so a truncation alone never reads as drift) against the trajectory's
    sampler_logprobs. The mask multiplies the surrogate's token weights; the KL term and the
    normalizer keep every completion, as in the paper's objective (1/G over all of them).
    """

    threshold: float | None
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def from_config(cls, a: AlgorithmConfig, rollout: RolloutConfig) -> OffPolicyMask:
        return cls(a.off_policy_mask_threshold, rollout.top_k, rollout.top_p)

    @property
    def active(self) -> bool:
        return self.threshold is not None

    @property
    def truncation(self) -> tuple[int, float] | None:
        """(top_k, top_p) when on under a truncating sampler: the log-probs `keep` needs are under it."""
        return truncation(self.top_k, self.top_p) if self.active else None

    def keep(self, logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, advantages: torch.Tensor,
             loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The keep mask [b, 1] (or [b, C] with per-token advantages) of one micro-batch and its sums.
        logprobs [b, C]: pi_theta's under the sampler's distribution (temperature, and `truncation`
        when set; detached), the rest [b, C] (advantages [b])."""
        return algorithm.off_policy_sequence_mask(logprobs, sampler_logprobs, advantages,
                                                  loss_mask.to(logprobs.device), self.threshold)

    def metrics(self, parts: list[dict[str, torch.Tensor]], world: Any) -> dict[str, float]:
        """Over every micro-batch of every rank: off_policy/masked (fraction of the completions
        trained on whose surrogate the mask took), off_policy/kl (mean per-token KL(q || pi_theta)
        of a completion) and off_policy/unmeasured (completions without a finite log-prob pair, kept)."""
        total = {k: world.sum(sum(float(p[k]) for p in parts))
                 for k in ("num_sequences", "num_masked", "kl_sum", "num_measured", "num_unmeasured")}
        return {
            "off_policy/masked": total["num_masked"] / max(total["num_sequences"], 1.0),
            "off_policy/kl": total["kl_sum"] / max(total["num_measured"], 1.0),
            "off_policy/unmeasured": int(total["num_unmeasured"]),
        }


@dataclass(frozen=True)
class AuxTerm:
    """One entry of algorithm.aux_losses, resolved: its term in algorithm.AUX_LOSSES and its weight's schedule."""

    name: str
    weight: float
    schedule: str
    until_step: int
    min_reward: float | None
    options: algorithm.AuxOptions

    @property
    def term(self) -> algorithm.AuxiliaryLoss:
        return algorithm.AUX_LOSSES[self.name]


@dataclass(frozen=True)
class AuxiliaryLosses:
    """The terms added to the policy loss (hybrid objectives), built once: `plan` picks each term's rows
    for a step (from the rewards, before the micro-batch loop), `AuxPlan.__call__` adds the terms of
    one micro-batch."""

    terms: tuple[AuxTerm, ...] = ()

    @classmethod
    def from_config(cls, a: AlgorithmConfig, num_steps: int, max_completion_length: int) -> AuxiliaryLosses:
        options = {s.name: algorithm.AuxOptions(a.loss_type, max_completion_length, s.dpo_beta) for s in a.aux_losses}
        for s in a.aux_losses:  # names and schedules fail here, not mid-step
            if s.name not in algorithm.AUX_LOSSES:
                raise ValueError(f"config field `algorithm.aux_losses[].name` = {s.name!r} is invalid; allowed: "
                                 f"{', '.join(algorithm.AUX_LOSSES)}")
            algorithm.aux_weight(s.weight, s.schedule, 0, 1)
        return cls(tuple(AuxTerm(s.name, s.weight, s.schedule, s.until_step or num_steps, s.min_reward,
                                 options[s.name]) for s in a.aux_losses))

    def plan(self, rewards: torch.Tensor, loss_mask: torch.Tensor, groups: algorithm.GroupsLike, step: int,
             world: Any, teachers: dict[str, torch.Tensor] | None = None,
             demonstrations: DemonstrationBatch | None = None) -> AuxPlan | None:
        """The step's rows, normalizers (every rank's) and weights; None without terms. rewards [N]
        (total), loss_mask [N, C]: a row with nothing to train is never chosen; groups: G or the groups'
        sizes. step: steps done before. teachers: each distillation term's teacher log-probs [N, C]
        (grpo.training.teachers); demonstrations: the gold rows a gold term trains (None: this rank has none)."""
        if not self.terms:
            return None
        eligible = loss_mask.bool().any(1).cpu()
        rewards, loss_mask = rewards.cpu(), loss_mask.cpu()
        groups = algorithm.Groups.of(groups, len(rewards))
        gold_mask = demonstrations.completion_mask if demonstrations is not None else torch.zeros(0, 1, dtype=torch.long)
        roles, counts, metrics = {}, {}, {}
        for t in self.terms:
            roles[t.name] = t.term.roles(rewards, groups, eligible, t.min_reward)  # [N]
            if t.term.gold:  # its rows are the demonstrations, every one trained
                counts[t.name] = world.sum(t.term.count(torch.ones(len(gold_mask)), gold_mask, t.options.loss_type))
                chosen = world.sum(float(len(gold_mask)))
            else:
                counts[t.name] = world.sum(t.term.count(roles[t.name], loss_mask, t.options.loss_type))
                chosen = world.sum(float(groups.any(roles[t.name] == 1).sum()))  # groups with a trained row
            metrics[f"aux/{t.name}/weight"] = algorithm.aux_weight(t.weight, t.schedule, step, t.until_step)
            metrics[f"aux/{t.name}/groups"] = chosen / max(world.sum(groups.num_groups), 1.0)
        return AuxPlan(self.terms, roles, counts, metrics, groups.ids, teachers or {}, demonstrations)


@dataclass(frozen=True)
class AuxPlan:
    """One step's auxiliary terms: each term's roles [N] (algorithm.AUX_LOSSES), its normalizer over the whole
    batch of every rank, the weights in effect (in `metrics`), each row's group [N], the distillation
    terms' teacher log-probs [N, C] (by name) and the gold demonstrations a gold term trains (`gold_loss`)."""

    terms: tuple[AuxTerm, ...]
    roles: dict[str, torch.Tensor]
    counts: dict[str, float]
    metrics: dict[str, float]
    groups: torch.Tensor
    teachers: dict[str, torch.Tensor] = field(default_factory=dict)
    demonstrations: DemonstrationBatch | None = None

    def partners(self) -> torch.Tensor | None:
        """[N] long: the other row of a row's pair (a term with `pairs`: they share a micro-batch), else -1."""
        paired = [self.roles[t.name] for t in self.terms if t.term.pairs]
        if not paired:
            return None
        partner = torch.full_like(self.groups, -1)
        for roles in paired:
            chosen, rejected = (roles == 1).nonzero().squeeze(1), (roles == -1).nonzero().squeeze(1)
            partner[chosen], partner[rejected] = rejected, chosen  # one of each per paired group, in group order
        return partner

    def __call__(self, logprobs: torch.Tensor, reference: torch.Tensor, loss_mask: torch.Tensor,
                 rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's share of sum_k weight_k * term_k (with grad) and each term's share (unweighted)
        for aux/<name>. logprobs, reference (the DPO reference: ref_logprobs, else pi_old), loss_mask: [b, C']."""
        total, parts = logprobs.new_zeros(()), {}
        groups = self.groups[rows].to(logprobs.device)
        for t in self.terms:
            if t.term.gold:  # no sampled row: its share is gold_loss's, on the demonstrations
                parts[f"aux/{t.name}"] = 0.0
                continue
            roles = self.roles[t.name][rows].to(logprobs.device)
            other = reference  # a distillation term compares with its teacher instead
            if t.term.teacher is not None:
                other = self.teachers[t.name][rows, : logprobs.shape[1]].to(logprobs.device)
            value = t.term.loss(logprobs, other, loss_mask, roles, groups, max(self.counts[t.name], 1.0), t.options)
            total = total + self.metrics[f"aux/{t.name}/weight"] * value
            parts[f"aux/{t.name}"] = value.item()
        return total, parts

    def gold_loss(self, logprobs: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch of gold demonstrations: sum over the gold terms of weight * term (with grad), every row
        trained, and each term's share (unweighted). logprobs, loss_mask: [b, D'] (the demonstration tokens)."""
        total, parts = logprobs.new_zeros(()), {}
        roles = torch.ones(logprobs.shape[0], dtype=torch.long, device=logprobs.device)
        for t in self.terms:
            if t.term.gold:
                value = t.term.loss(logprobs, None, loss_mask, roles, torch.zeros_like(roles),
                                    max(self.counts[t.name], 1.0), t.options)
                total = total + self.metrics[f"aux/{t.name}/weight"] * value
                parts[f"aux/{t.name}"] = value.item()
        return total, parts
