"""One policy update on a trajectory: gradients over micro-batches, then the optimizer step.

    metrics = accumulate_gradients(model, params, trajectory, advantages, old, ref, loss, world, settings)
    grad_norm, applied = optimizer_step(optimizer, scheduler, params, max_grad_norm, metrics["loss"])

`accumulate_gradients` owns the micro-batch loop: rows cut by completion length
(`length_sorted_rows`), each distinct prompt run once per update with its share of the
gradient pushed through in a second stage (`PromptCache.backward`), and the World's hooks
that make the last backward (and only it) reduce gradients across ranks. The normalizers
are global (every micro-batch of every rank), so the gradients add up to the gradient of
the whole batch in one process. `optimizer_step` clips, refuses a non-finite update, steps
and advances the schedule. `SamplerWeights` holds the sampler correction's weights of a
step. Neither knows a loss type by name (grpo.training.loss) or touches an engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from grpo import algorithm
from grpo.compute.distributed import World
from grpo.training.logprobs import (
    MicroBatch,
    completion_logits,
    length_sorted_rows,
    make_micro_batch,
    prompt_cache,
)
from grpo.training.loss import PolicyLoss, SamplerCorrection
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

    def for_micro_batch(self, trajectory: Trajectory, mb: MicroBatch, logits: torch.Tensor,
                        logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
        C = logprobs.shape[1]
        if self.complete:
            return self.values[mb.rows, :C].to(logprobs.device)
        truncated = self.top_k > 0 or self.top_p < 1
        behaviour = (algorithm.token_logprobs(logits.detach(), mb.completion_ids, temperature, self.top_k, self.top_p)
                     if truncated else logprobs.detach())  # [b, C]
        weights, sums = self.correction.weights(behaviour, trajectory.sampler_logprobs[mb.rows, :C], mb.loss_mask)
        if self.values is None:
            self.values = torch.zeros(trajectory.completion_ids.shape)
        self.values[mb.rows, :C] = weights.cpu()
        self.sums.append(sums)
        return weights


def accumulate_gradients(
    model: torch.nn.Module, params: list[torch.nn.Parameter], trajectory: Trajectory, advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None, loss: PolicyLoss, world: World,
    settings: UpdateSettings, with_entropy: bool = False, sampler: SamplerWeights | None = None,
) -> dict[str, float]:
    """Backward of the whole trajectory's loss into the .grad of `params` (the optimizer's:
    under fsdp the shards), summed over ranks.

    advantages [N] (or [N, C] per token: process supervision); old_logprobs, ref_logprobs [N, C] or None (None old: the current policy,
    detached, i.e. ratio 1); sampler: the sampler correction's weights of this step (filled
    on its first update), or None. Returns, over all ranks: `loss` (the batch loss) and the
    loss metrics as means over loss-masked tokens (each micro-batch weighted by its share of
    them), plus `entropy` when asked and the correction's metrics on the update that filled
    its weights.
    """
    # One autocast region over every micro-batch: its cache keeps each weight's bf16 cast for the
    # whole update (a region per micro-batch would cast all weights again for each).
    with settings.autocast():
        device = settings.device
        # Global normalizers: the micro-batch losses of every rank add up to the whole batch's.
        num_items = world.sum(loss.local_items(trajectory.loss_mask))
        num_tokens = max(world.sum(float(trajectory.loss_mask.sum().item())), 1.0)
        sums: dict[str, float] = {}
        total_loss = 0.0
        world.gather_weights(model)
        prompts = prompt_cache(model, trajectory, device)  # each distinct prompt once per update
        chunks = length_sorted_rows(trajectory, settings.micro_batch_size)
        for i, rows in enumerate(chunks):
            world.gradient_sync(model, prompts is None and i == len(chunks) - 1)  # the last backward
            mb = make_micro_batch(trajectory, rows, device)
            logits = completion_logits(model, trajectory, mb, prompts)  # [b, C', V]
            logprobs = algorithm.token_logprobs(logits, mb.completion_ids, settings.temperature)  # float32
            entropy = algorithm.token_entropy(logits.detach(), settings.temperature) if with_entropy else None
            C = logprobs.shape[1]
            old = logprobs.detach() if old_logprobs is None else old_logprobs[mb.rows, :C].to(device)
            ref = None if ref_logprobs is None else ref_logprobs[mb.rows, :C].to(device)
            weights = (None if sampler is None else
                       sampler.for_micro_batch(trajectory, mb, logits, logprobs, settings.temperature))
            del logits
            adv = advantages[mb.rows] if advantages.dim() == 1 else advantages[mb.rows, :C]  # [b] or [b, C']
            value, metrics = loss(logprobs, old, adv.to(device), mb.loss_mask, ref, num_items, weights)
            value.backward()
            total_loss += value.item()
            share = mb.loss_mask.sum().item() / num_tokens  # token-weighted means of the micro-batch metrics
            if entropy is not None:
                metrics["entropy"] = algorithm.masked_mean(entropy, mb.loss_mask)
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + v.item() * share
        if prompts is not None:
            world.gradient_sync(model, True)
            prompts.backward()  # the prompts' share of the gradient, summed over micro-batches
    world.reduce_gradients(params)  # ddp: sum over ranks; fsdp did it in the last backward
    world.release_weights(model)
    out = {"loss": world.sum(total_loss), **{k: world.sum(v) for k, v in sorted(sums.items())}}
    if sampler is not None and not sampler.complete:
        sampler.complete = True
        out.update(sampler.correction.metrics(sampler.sums, world))
    return out


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, params: list[torch.nn.Parameter],
                   max_grad_norm: float, loss: float) -> tuple[float, bool]:
    """Clip the gradient norm (0 = no clipping), step unless the loss or the norm is not
    finite (a poisoned update is skipped, not written into the weights), advance the
    schedule (it counts updates made), clear the gradients. Returns (norm before clipping, applied)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # fsdp: a DTensor
    applied = math.isfinite(grad_norm) and math.isfinite(loss)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied


def mean_over_iterations(per_iteration: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's plain mean over the updates of a step (a key missing in some: over the rest)."""
    keys = dict.fromkeys(k for m in per_iteration for k in m)
    return {k: sum(m[k] for m in per_iteration if k in m) / sum(k in m for m in per_iteration) for k in keys}
