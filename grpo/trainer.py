"""The GRPO training loop.

One step, as numbered in `train_step` below:
  1. take the next prompts from the data stream (resumable by position)
  2. generate G completions per prompt (rollout engine)
  3. score them with the reward functions (contained: a failing function never ends the run)
  4. group-relative advantages (algorithm.group_advantages)
  5. old log-probs (only when num_iterations > 1) and reference log-probs (only when beta > 0)
  6. for each iteration and micro-batch: policy_loss, backward; then clip grads, AdamW step,
     LR schedule. A non-finite gradient skips the update and is counted.
  7. metrics and sample completions to the run directory
and, at their intervals, held-out evaluation and an atomic checkpoint. Under torchrun each
process runs this same loop on its share of the prompts (grpo.distributed: `self.world`).
"""

from __future__ import annotations

import math
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo import algorithm, models, resources, rewards
from grpo.allocator import keep_freed_memory
from grpo.checkpoint import (
    TrainerState,
    check_run_dir,
    checkpoint_name,
    latest_checkpoint,
    load_training_state,
    load_weights,
    save_checkpoint,
    take_snapshot,
)
from grpo.config import Config, save_config
from grpo.distributed import World
from grpo.evaluate import evaluate, merge_results
from grpo.health import StepWatch
from grpo.interrupt import Interrupted, StopSignals
from grpo.logging import NullLogger, RunLogger
from grpo.logprobs import (
    batch_logprobs,
    completion_logprobs,
    length_sorted_rows,
    make_micro_batch,
    prompt_cache,
)
from grpo.rollout import SamplingParams, build_engine
from grpo.serve.client import RemoteReference
from grpo.tasks import build_task
from grpo.tasks.base import Example, render_prompt


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. the loss stayed non-finite); a checkpoint was written."""


class DataStream:
    """Training examples in a seeded order, reshuffled each epoch; resumable from a count."""

    def __init__(self, examples: list[Example], seed: int, position: int = 0):
        if not examples:
            raise ValueError("the task has no training examples")
        self.examples, self.seed, self.position = examples, seed, position

    def take(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            epoch, index = divmod(self.position, len(self.examples))
            order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(self.examples[int(order[index])])
            self.position += 1
        return out


@dataclass
class LocalReference:
    """Reference log-probs from a model in this process (a frozen copy, or the LoRA base)."""

    model: Any
    micro_batch_size: int
    device: torch.device
    temperature: float

    def logprobs(self, batch) -> torch.Tensor:  # [N, C]
        return batch_logprobs(self.model, batch, self.micro_batch_size, self.device, self.temperature)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class Trainer:
    """Everything the loop needs, built once by `Trainer.build`."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: Any
    reference: Any  # has .logprobs(batch) -> [N, C]; None when beta = 0
    engine: Any
    reward_fns: list
    task: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    state: TrainerState
    data: DataStream
    world: World

    @classmethod
    def build(cls, cfg: Config) -> Trainer:
        check_run_dir(cfg.output_dir, cfg.resume)  # never train over another run's checkpoints
        world = World.init(cfg.train.parallel, cfg.train.prompts_per_step, cfg.model.device)
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights (LoRA too)
        task = build_task(cfg.task)
        reward_fns = rewards.build(cfg.rewards)
        model, tokenizer = models.load_policy(cfg.model)
        ckpt = latest_checkpoint(cfg.output_dir) if cfg.resume else None
        if ckpt is not None:
            load_weights(ckpt, model)
        world.prepare(model)  # ddp: rank 0's weights everywhere; fsdp: shard
        world.seed_sampling(cfg.seed)  # each rank samples its own completions
        device = next(model.parameters()).device
        if device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's tensors (grpo/allocator.py)
        # With beta = 0 the reference model is never loaded (memory and time).
        reference = None
        if cfg.algorithm.beta > 0 and cfg.reference.url:  # served by `grpo serve-ref`, elsewhere
            reference = RemoteReference.from_config(cfg.reference, cfg.rollout.temperature)
        elif cfg.algorithm.beta > 0:
            reference = LocalReference(models.load_reference(cfg.model, model), cfg.train.micro_batch_size,
                                       device, cfg.rollout.temperature)
        engine = build_engine(cfg.rollout, model, tokenizer)
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters (bundled model on CPU: 0.08 s per step against 0.29)
        optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, betas=tuple(cfg.train.adam_betas),
                                      weight_decay=cfg.train.weight_decay, fused=device.type in ("cpu", "cuda"))
        scheduler = make_scheduler(optimizer, cfg, cfg.train.num_steps * cfg.algorithm.num_iterations)
        resources.preflight(cfg, model, tokenizer, task, optimizer, device)  # prompts, memory, disk
        state = TrainerState()
        if ckpt is not None:
            state = load_training_state(ckpt, model, optimizer, scheduler, world)
        return cls(cfg, model, tokenizer, reference, engine, reward_fns, task, optimizer, scheduler,
                   device, state, DataStream(task.train, cfg.seed, state.examples_seen), world)

    # ----------------------------------------------------------------- one step

    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        cfg, G = self.cfg, self.cfg.rollout.group_size
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timings[f"time/{name}"] = now - clock
            clock = now

        # 1. prompts: every rank reads the same stream and keeps its share
        examples = self.world.shard(self.data.take(cfg.train.prompts_per_step))
        prompts = [render_prompt(self.tokenizer, ex) for ex in examples]
        self.world.gather_weights(self.model)  # fsdp: whole weights until the optimizer step
        # 2. generate G completions per prompt
        batch = self.engine.generate(prompts, self.sampling_params())
        lap("generation")
        # 3. rewards, per completion (completion i belongs to prompt i // G)
        grouped_examples = [ex for ex in examples for _ in range(G)]
        scores = rewards.score(self.reward_fns, batch.completions, grouped_examples, cfg.reward_timeout)
        lap("rewards")
        # 4. advantages
        a = cfg.algorithm
        advantages = algorithm.group_advantages(scores.total, G, a.scale_rewards, a.advantage_eps)  # [N]
        # 5. old and reference log-probs, no grad
        mbs = cfg.train.micro_batch_size
        temp = cfg.rollout.temperature
        old_logprobs = (batch_logprobs(self.model, batch, mbs, self.device, temp)
                        if a.num_iterations > 1 else None)
        ref_logprobs = self.reference.logprobs(batch) if self.reference is not None else None
        lap("logprobs")
        # 6. policy updates
        update_metrics = self.update(batch, advantages, old_logprobs, ref_logprobs)
        lap("update")
        # 7. metrics
        timings["time/step"] = sum(timings.values())
        metrics = {**self.rollout_metrics(batch, scores, advantages), **update_metrics, **timings,
                   "learning_rate": self.scheduler.get_last_lr()[0],
                   "memory/peak_gb": peak_memory_gb(self.device)}
        samples = self.samples(examples, batch, scores, advantages)
        return metrics, samples

    def sampling_params(self) -> SamplingParams:
        return SamplingParams.from_config(self.cfg.rollout)

    def update(self, batch, advantages, old_logprobs, ref_logprobs) -> dict[str, float]:
        """num_iterations optimizer steps on one generated batch, micro-batched."""
        cfg, a, world = self.cfg, self.cfg.algorithm, self.world
        mask = batch.completion_mask.float()  # [N, C]
        # Global normalizers (all micro-batches of all ranks), so the micro-batch losses of
        # every rank add up to the loss of the whole batch, and so do their gradients.
        num_tokens = world.sum(mask.sum().item())
        num_items = num_tokens if a.loss_type in ("bnpo", "dapo") else world.sum(mask.shape[0])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # fsdp: the shards
        sums: dict[str, float] = {}
        num_tokens = max(num_tokens, 1.0)
        self.model.train()
        for iteration in range(a.num_iterations):
            total_loss = 0.0
            world.gather_weights(self.model)
            prompts = prompt_cache(self.model, batch, self.device)  # each distinct prompt once per update
            chunks = length_sorted_rows(batch, cfg.train.micro_batch_size)
            for i, rows in enumerate(chunks):
                world.gradient_sync(self.model, prompts is None and i == len(chunks) - 1)  # the last backward
                mb = make_micro_batch(batch, rows, self.device)
                want_entropy = iteration == 0
                logprobs, entropy = completion_logprobs(self.model, batch, mb, prompts, cfg.rollout.temperature,
                                                        want_entropy)
                C = logprobs.shape[1]
                old = logprobs.detach() if old_logprobs is None else old_logprobs[mb.rows, :C].to(self.device)
                ref = None if ref_logprobs is None else ref_logprobs[mb.rows, :C].to(self.device)
                loss, m = algorithm.policy_loss(
                    logprobs, old, advantages[mb.rows].to(self.device), mb.completion_mask,
                    ref_logprobs=ref, beta=a.beta, epsilon=a.epsilon, epsilon_high=a.epsilon_high,
                    loss_type=a.loss_type, max_completion_length=cfg.rollout.max_new_tokens,
                    kl_estimator=a.kl_estimator, num_items=num_items,
                )
                loss.backward()
                total_loss += loss.item()
                if iteration == 0:  # token-weighted averages of the micro-batch metrics
                    share = mb.completion_mask.sum().item() / num_tokens
                    for key, value in m.items():
                        sums[key] = sums.get(key, 0.0) + value.item() * share
                    ent = algorithm.masked_mean(entropy, mb.completion_mask).item()
                    sums["entropy"] = sums.get("entropy", 0.0) + ent * share
            if prompts is not None:
                world.gradient_sync(self.model, True)
                prompts.backward()  # the prompts' share of the gradient, summed over micro-batches
            world.reduce_gradients(params)  # ddp: sum over ranks; fsdp did it in the last backward
            world.release_weights(self.model)
            total_loss = world.sum(total_loss)
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # fsdp: a DTensor
            if math.isfinite(grad_norm) and math.isfinite(total_loss):
                self.optimizer.step()
                # fused AdamW writes the weights without bumping their in-place version
                # counters; the vllm engine reads those to know when to push new weights
                torch.autograd.graph.increment_version(params)
                self.scheduler.step()  # the schedule counts updates made, not skipped ones
                self.state.bad_steps_in_a_row = 0
            else:  # skip a poisoned update rather than write NaN into the weights
                self.state.bad_steps_in_a_row += 1
                self.state.num_skipped_updates += 1
            self.optimizer.zero_grad(set_to_none=True)
        sums = {k: world.sum(v) for k, v in sorted(sums.items())}  # token-weighted shares of all ranks
        return {"loss": total_loss, "grad_norm": grad_norm, "skipped_updates": self.state.num_skipped_updates,
                **{("clip/" + k[5:] if k.startswith("clip_") else k): v for k, v in sums.items()}}

    def rollout_metrics(self, batch, scores, advantages) -> dict[str, float]:
        """Over the whole batch: every rank's rows, gathered in rank order."""
        G, gather = self.cfg.rollout.group_size, self.world.gather
        lengths = gather(batch.completion_mask.sum(1).float())  # [N]
        truncated = gather(torch.tensor([r == "length" for r in batch.finish_reasons], dtype=torch.float32))
        total, advantages = gather(scores.total), gather(advantages)
        out = {
            "reward/mean": total.mean().item(),
            "reward/std": total.std().item() if total.numel() > 1 else 0.0,
            "frac_reward_zero_std": (total.view(-1, G).std(1) == 0).float().mean().item(),
            "advantage/abs_mean": advantages.abs().mean().item(),
            "completion_length/mean": lengths.mean().item(),
            "completion_length/min": lengths.min().item(),
            "completion_length/max": lengths.max().item(),
            "truncation_rate": truncated.mean().item(),
            "tokens_generated": int(lengths.sum().item()),
        }
        for name, values in scores.per_function.items():
            values = gather(values)
            ok = values[~torch.isnan(values)]
            out[f"reward/{name}/mean"] = ok.mean().item() if ok.numel() else float("nan")
            out[f"rewards/{name}/errors"] = int(self.world.sum(scores.errors.get(name, 0)))
            if name in ("accuracy", "format"):
                out[name] = out[f"reward/{name}/mean"]
        return out

    def samples(self, examples, batch, scores, advantages) -> list[dict[str, Any]]:
        G, n = self.cfg.rollout.group_size, self.cfg.log.num_samples
        out = []
        for i in range(min(n, len(batch.completions))):
            ex = examples[i // G]
            out.append({
                "example_id": ex.id, "question": ex.question, "answer": ex.answer,
                "completion": batch.completions[i], "finish_reason": batch.finish_reasons[i],
                "reward": scores.total[i].item(), "advantage": advantages[i].item(),
                "rewards": {k: (None if math.isnan(v[i].item()) else v[i].item())
                            for k, v in scores.per_function.items()},
            })
        return out

    # ----------------------------------------------------------------- the run

    def evaluate(self) -> dict[str, Any]:
        """Held-out evaluation; in a multi-process run each rank scores its share of the examples."""
        examples = self.task.eval[: self.cfg.eval.num_examples]
        mine = examples[self.world.rank :: self.world.size]
        with self.world.full_weights(self.model):  # fsdp: generation runs no collectives
            results = evaluate(self.engine, self.tokenizer, mine, self.cfg) if mine else None
        return merge_results([r for r in self.world.gather_objects(results) if r is not None])

    def save(self) -> Path | None:
        """A checkpoint of this step: every rank gathers, rank 0 writes (and returns its path)."""
        self.state.examples_seen = self.data.position
        snapshot = take_snapshot(self.model, self.optimizer, self.scheduler, self.world)
        self.last_saved = self.state.step
        if not self.world.is_main:
            return None
        if self.cfg.train.check_resources:  # fail with a clear message rather than midway through a write
            resources.check_disk(self.cfg.output_dir, resources.checkpoint_bytes(self.model, self.optimizer),
                                 f"checkpoint {self.state.step}")
        return save_checkpoint(self.cfg.output_dir, snapshot, self.state, self.cfg.checkpoint.keep_last)

    def run(self) -> dict[str, Any]:
        cfg, out, main = self.cfg, Path(self.cfg.output_dir), self.world.is_main
        self.last_saved = self.state.step if self.state.step > 0 else None  # resumed from that checkpoint
        if main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        log = (RunLogger(out, cfg.train.num_steps, start_step=self.state.step, tensorboard=cfg.log.tensorboard,
                         progress=cfg.log.progress) if main else NullLogger())
        watch = StepWatch(cfg)
        results: dict[str, Any] = {}
        # SIGINT / SIGTERM only set stop.requested; the loop stops between steps (grpo.interrupt),
        # on every rank once any rank got one.
        with StopSignals() as stop, log:  # the logger closes on the way out, whatever happens
            if self.state.step == 0 and cfg.eval.before_training and cfg.eval.num_examples > 0:
                results["before"] = self.evaluate()
                log.log_eval(0, results["before"])
            while self.state.step < cfg.train.num_steps and not self.world.any(stop.requested):
                metrics, samples = self.train_step()
                self.state.step += 1
                step = self.state.step
                if step % cfg.log.every == 0 or step == cfg.train.num_steps:
                    log.log_step(step, metrics)
                    log.log_samples(step, samples)
                for message in watch.observe(step, metrics):
                    log.print(message)
                if self.state.bad_steps_in_a_row >= cfg.train.max_bad_steps:
                    path = self.save()
                    raise TrainingStopped(
                        f"the loss or gradient was not finite for {self.state.bad_steps_in_a_row} updates in a row "
                        f"(train.max_bad_steps={cfg.train.max_bad_steps}); stopped with checkpoint {path}. "
                        "Lower train.learning_rate or check the reward functions."
                    )
                if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.num_steps:
                    log.log_eval(step, self.evaluate())
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                    self.save()
            if self.state.step > 0 and self.last_saved != self.state.step:
                self.save()
            if self.world.any(stop.requested):  # this rank's signal, or another rank's
                latest = out / checkpoint_name(self.state.step) if self.state.step > 0 else None
                raise Interrupted(stop.signum or signal.SIGTERM, self.state.step, latest)
            if cfg.eval.num_examples > 0:
                results["after"] = self.evaluate()
                log.log_eval(self.state.step, results["after"])
            weights = self.world.full_state_dict(self.model)  # fsdp: gathered; otherwise None
            if main:
                models.save_final(self.model, self.tokenizer, out / "final", weights)
            if main:
                from grpo.report import write_report  # imports matplotlib only when a run ends

                write_report(out)
        return results


def train(cfg: Config) -> dict[str, Any]:
    trainer = Trainer.build(cfg)
    try:
        return trainer.run()
    finally:
        trainer.world.close()
