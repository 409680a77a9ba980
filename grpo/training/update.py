"""One policy update on a trajectory: gradients over micro-batches, then the optimizer step.

    updater = Updater(model, params, loss, world, settings)           # once per run
    metrics = updater.accumulate_gradients(UpdateBatch(trajectory, advantages, old, ref))
    grad_norm, applied = optimizer_step(optimizer, scheduler, params, max_grad_norm, metrics["loss"])

`UpdateBatch` is what an update trains on: the trajectory, its advantages, the old and
reference log-probs, the sampler correction's weights (`SamplerWeights`), the high-entropy
tokens the surrogate is restricted to, the entropy bonus's coefficient and the auxiliary terms'
plan (grpo.training.loss.AuxPlan: with a DPO term each pair's rows share a micro-batch; with gold_sft
its gold demonstrations are micro-batches of their own after the samples', through the same prompt pass). The updater's
`accumulate_gradients` owns the micro-batch loop: rows cut by completion length
(`length_sorted_rows`), each distinct prompt run once per update with its share of the
gradient pushed through in a second stage (`PromptCache.backward`), and the World's hooks
that make the last backward (and only it) reduce gradients across ranks. The normalizers
are global (every micro-batch of every rank), so the gradients add up to the gradient of
the whole batch in one process. `optimizer_step` clips, refuses a non-finite update, steps
and advances the schedule (`make_scheduler`); under float16 the backwards are scaled and
optimizer_step unscales (grpo.compute.loss_scale). None of them knows a loss type by name
(grpo.training.loss) or touches an engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace

import torch

from grpo import algorithm
from grpo.compute.chunked_head import StatsSpec, truncation
from grpo.compute.distributed import World
from grpo.config import Config
from grpo.training.logprobs import (
    MicroBatch,
    PromptCache,
    completion_stats,
    length_sorted_rows,
    make_micro_batch,
    pairs_together_rows,
    prompt_cache,
)
from grpo.training.loss import AuxPlan, OffPolicyMask, PolicyLoss, SamplerCorrection
from grpo.training.teachers import DemonstrationBatch
from grpo.trajectory import Trajectory


@dataclass(frozen=True)
class UpdateSettings:
    micro_batch_size: int
    temperature: float  # the sampling temperature: log-probs are of logits / temperature
    device: torch.device
    autocast: Callable[[], AbstractContextManager] = nullcontext  # forwards in the compute dtype (grpo.compute.precision)


@dataclass
class SamplerWeights:
    """The sampler correction's weights pi_old / q [N, C] for one step's trajectory.

    The step's first update fills them from its own forward, whose policy is pi_old (no extra
    forward: the log-probs under the sampler's truncated distribution come from the same
    logits); the later updates of the step reuse them. Filled micro-batch by micro-batch;
    every micro-batch holds whole rows, as the sequence level needs.
    """

    correction: SamplerCorrection
    top_k: int = 0
    top_p: float = 1.0
    values: torch.Tensor | None = None  # [N, C] on the CPU once filled
    sums: list[dict[str, torch.Tensor]] = field(default_factory=list)
    complete: bool = False

    @property
    def truncation(self) -> tuple[int, float] | None:
        """(top_k, top_p) while the weights are still to be filled under a truncating sampler, else None."""
        return None if self.complete else truncation(self.top_k, self.top_p)

    def for_micro_batch(self, trajectory: Trajectory, mb: MicroBatch, behaviour: torch.Tensor) -> torch.Tensor:
        """behaviour [b, C]: pi_old's log-probs of the tokens under the sampler's distribution (detached)."""
        C = behaviour.shape[1]
        if self.complete:
            return self.values[mb.rows, :C].to(behaviour.device)
        weights, sums = self.correction.weights(behaviour, trajectory.sampler_logprobs[mb.rows, :C], mb.loss_mask)
        if self.values is None:
            self.values = torch.zeros(trajectory.completion_ids.shape)
        self.values[mb.rows, :C] = weights.cpu()
        self.sums.append(sums)
        return weights


@dataclass(frozen=True)
class UpdateBatch:
    """What the updates of one step train on; the same value for each of its num_iterations updates."""

    trajectory: Trajectory
    advantages: torch.Tensor  # [N], or [N, C] per token (process supervision)
    old_logprobs: torch.Tensor | None = None  # [N, C]; None: the current policy, detached (ratio 1)
    ref_logprobs: torch.Tensor | None = None  # [N, C]; None without a KL term
    sampler: SamplerWeights | None = None  # the sampler correction's weights (filled on the first update)
    selected: torch.Tensor | None = None  # [N, C] 1 on the high-entropy tokens the surrogate trains on; None: all
    entropy_coef: float = 0.0  # the entropy bonus's coefficient this step (0: no bonus, no entropy gradient)
    aux: AuxPlan | None = None  # the step's auxiliary terms (grpo.training.loss.AuxiliaryLosses.plan); None: none


@dataclass(frozen=True)
class Updater:
    """The gradients of the loss built once from the config, over micro-batches: built once per run.

    params are the optimizer's (under fsdp the shards); their .grad receive the gradients,
    summed over ranks.
    """

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    loss: PolicyLoss
    world: World
    settings: UpdateSettings
    scaler: torch.amp.GradScaler | None = None  # float16: every backward scaled (grpo.compute.loss_scale)
    off_policy: OffPolicyMask = OffPolicyMask(None)  # DeepSeek-V3.2's off-policy sequence masking (None: off)

    def accumulate_gradients(self, batch: UpdateBatch, with_entropy: bool = False) -> dict[str, float]:
        """Backward of the whole batch's loss into the .grad of `params`.

        Returns, over all ranks: `loss` (the batch loss, entropy bonus and auxiliary terms included) and the
        loss metrics as means over loss-masked tokens (each micro-batch weighted by its share of them), plus
        `entropy` when asked, the correction's metrics on the update that filled its weights, the
        off-policy mask's (off_policy/*) when it is on and the auxiliary terms' (aux/*) when there are any.
        """
        trajectory, world, model, sampler = batch.trajectory, self.world, self.model, batch.sampler
        # One autocast region over every micro-batch: its cache keeps each weight's bf16 cast for the
        # whole update (a region per micro-batch would cast all weights again for each).
        with self.settings.autocast():
            # Global normalizers: the micro-batch losses of every rank add up to the whole batch's.
            num_items = world.sum(self.loss.local_items(trajectory.loss_mask))
            num_tokens = max(world.sum(float(trajectory.loss_mask.sum().item())), 1.0)
            sums: dict[str, float] = {}
            masked_parts: list[dict[str, torch.Tensor]] = []  # the off-policy mask's sums per micro-batch
            aux_totals: dict[str, float] = {}  # each auxiliary term's micro-batch shares, summed
            total_loss = 0.0
            world.gather_weights(model)
            prompts = prompt_cache(model, trajectory, self.settings.device)  # each distinct prompt once per update
            partners = batch.aux.partners() if batch.aux is not None else None
            size = self.settings.micro_batch_size
            chunks = (length_sorted_rows(trajectory, size) if partners is None else
                      pairs_together_rows(trajectory, size, partners))  # a pair's rows together
            gold = batch.aux.demonstrations if batch.aux is not None else None  # gold_sft's rows, after the samples'
            gold_chunks = [] if gold is None else length_sorted_rows(gold, size)
            last = len(chunks) + len(gold_chunks) - 1
            for i, rows in enumerate(chunks):
                world.gradient_sync(model, prompts is None and i == last)  # the last backward
                value, metrics, num_masked = self._micro_batch(batch, rows, prompts, num_items, with_entropy,
                                                               masked_parts, aux_totals)
                total_loss += value
                share = num_masked / num_tokens  # token-weighted means of the micro-batch metrics
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + v.item() * share
            for j, rows in enumerate(gold_chunks):
                world.gradient_sync(model, prompts is None and len(chunks) + j == last)
                total_loss += self._gold_micro_batch(batch, gold, rows, prompts, aux_totals)
            if prompts is not None:
                world.gradient_sync(model, True)
                prompts.backward()  # the prompts' share of the gradient, summed over micro-batches
        world.reduce_gradients(self.params)  # ddp: sum over ranks; fsdp did it in the last backward
        world.release_weights(model)
        out = {"loss": world.sum(total_loss), **{k: world.sum(v) for k, v in sorted(sums.items())}}
        if sampler is not None and not sampler.complete:
            sampler.complete = True
            out.update(sampler.correction.metrics(sampler.sums, world))
        if self.off_policy.active:
            out.update(self.off_policy.metrics(masked_parts, world))
        if batch.aux is not None:
            out.update({**batch.aux.metrics, **{k: world.sum(v) for k, v in aux_totals.items()}})
        return out

    def _micro_batch(self, batch: UpdateBatch, rows: torch.Tensor, prompts: PromptCache | None, num_items: float,
                     with_entropy: bool, masked_parts: list[dict[str, torch.Tensor]],
                     aux_totals: dict[str, float]) -> tuple[float, dict[str, torch.Tensor], float]:
        """Forward and backward of one micro-batch: (its loss, its metrics, its loss-masked tokens)."""
        trajectory, device, temperature = batch.trajectory, self.settings.device, self.settings.temperature
        mb = make_micro_batch(trajectory, rows, device)
        bonus = batch.entropy_coef > 0  # the bonus needs the entropy's gradient; the metric does not
        # Under a truncating sampler the correction (on its first update) and the off-policy mask
        # compare with pi under the sampler's distribution: computed from the same chunks of logits.
        truncation = (batch.sampler.truncation if batch.sampler is not None else None) or self.off_policy.truncation
        spec = StatsSpec(temperature, "grad" if bonus else "metric" if with_entropy else None, truncation)
        logprobs, entropy, truncated = completion_stats(self.model, trajectory, mb, prompts, spec)  # [b, C'] each
        behaviour = logprobs.detach() if truncated is None else truncated  # log-probs under the sampler's distribution
        C = logprobs.shape[1]
        old = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs[mb.rows, :C].to(device)
        ref = None if batch.ref_logprobs is None else batch.ref_logprobs[mb.rows, :C].to(device)
        weights = None if batch.sampler is None else batch.sampler.for_micro_batch(trajectory, mb, behaviour)
        if batch.selected is not None:  # the surrogate of the other tokens weighs 0
            chosen = batch.selected[mb.rows, :C].to(device)
            weights = chosen if weights is None else weights * chosen
        advantages = batch.advantages
        adv = advantages[mb.rows] if advantages.dim() == 1 else advantages[mb.rows, :C]  # [b] or [b, C']
        if self.off_policy.active:  # negative completions the policy drifted from leave the surrogate
            sampler_logprobs = trajectory.sampler_logprobs[mb.rows, :C]
            keep, masked = self.off_policy.keep(behaviour, sampler_logprobs, adv, mb.loss_mask)  # [b, 1] or [b, C']
            weights = keep.expand_as(logprobs) if weights is None else weights * keep
            masked_parts.append(masked)
        value, metrics = self.loss(logprobs, old, adv.to(device), mb.loss_mask, ref, num_items, weights)
        if bonus:
            value = value + self.loss.entropy_term(entropy, mb.loss_mask, num_items, batch.entropy_coef)
        if batch.aux is not None:  # DPO's reference: the KL reference where one is loaded, else pi_old
            aux, parts = batch.aux(logprobs, old if ref is None else ref, mb.loss_mask, mb.rows)
            value = value + aux
            for key, v in parts.items():
                aux_totals[key] = aux_totals.get(key, 0.0) + v
        # scaled: the prompt cache's leaves accumulate scaled gradients, so its backward is scaled too
        (value if self.scaler is None else self.scaler.scale(value)).backward()
        if with_entropy:
            metrics["entropy"] = algorithm.masked_mean(entropy.detach(), mb.loss_mask)
        return value.item(), metrics, mb.loss_mask.sum().item()


    def _gold_micro_batch(self, batch: UpdateBatch, gold: DemonstrationBatch, rows: torch.Tensor,
                          prompts: PromptCache | None, aux_totals: dict[str, float]) -> float:
        """Forward and backward of some gold demonstrations (gold_sft): each read after its group's prompt, the
        trajectory's own (the prompt cache's entry, or the plain path's prompt ids, of row prompt_rows[j])."""
        mb = make_micro_batch(gold, rows, self.settings.device)  # every demonstration token is trained
        mb = replace(mb, rows=gold.prompt_rows[rows])
        spec = StatsSpec(self.settings.temperature, None, None)  # as the samples' log-probs: logits / temperature
        logprobs, _, _ = completion_stats(self.model, batch.trajectory, mb, prompts, spec)  # [b, D']
        value, parts = batch.aux.gold_loss(logprobs, mb.loss_mask)
        (value if self.scaler is None else self.scaler.scale(value)).backward()
        for key, v in parts.items():
            aux_totals[key] = aux_totals.get(key, 0.0) + v
        return value.item()


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_updates: int):
    """Linear warmup, then constant or cosine decay to 0 over the remaining updates."""
    warmup, kind = cfg.train.warmup_steps, cfg.train.lr_schedule

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (update - warmup) / max(1, total_updates - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, params: list[torch.nn.Parameter],
                   max_grad_norm: float, loss: float, scaler: torch.amp.GradScaler | None = None) -> tuple[float, bool]:
    """Clip the gradient norm (0 = no clipping), step unless the loss or the norm is not
    finite (a poisoned update is skipped, not written into the weights), advance the
    schedule (it counts updates made), clear the gradients. Returns (norm before clipping, applied).
    With a loss scaler (float16) the gradients are unscaled first, so clipping and the norm see
    the true ones, and the scaler then adjusts its scale to what its unscale found."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # fsdp: a DTensor
    applied = math.isfinite(grad_norm) and math.isfinite(loss)
    if applied:
        optimizer.step()
        scheduler.step()
    if scaler is not None:
        scaler.update()  # an overflow halves the scale; growth_interval clean updates double it
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied


def mean_over_iterations(per_iteration: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's plain mean over the updates of a step (a key missing in some: over the rest)."""
    keys = dict.fromkeys(k for m in per_iteration for k in m)
    return {k: sum(m[k] for m in per_iteration if k in m) / sum(k in m for m in per_iteration) for k in keys}
