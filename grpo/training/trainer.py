"""The GRPO training loop.

One step, as numbered in `train_step` below:
  1. take the next prompts from the prompt sampler (grpo.tasks.sampling: uniform, by difficulty, a
     curriculum; resumable from the checkpoint)
  2. generate G completions per prompt: a Trajectory (rollout engine); under rollout.group_policy
     adaptive each prompt gets its own G, from a budget split by estimated pass rate (`groups`)
  3. score them with the reward functions (contained: a failing function never ends the run);
     steps 1-3 live in grpo.training.collect, in rounds under algorithm.dynamic_sampling
  4. group-relative advantages of the outcome rewards, per-token process advantages with step
     rewards (grpo.training.advantages: the aggregations of grpo.algorithm);
     truncated completions leave the loss mask when algorithm.mask_truncated_completions
  5. old log-probs (only when num_iterations > 1) and reference log-probs (only when beta > 0); with
     algorithm.top_entropy_quantile < 1 the same no-grad forward gives the entropies that pick the
     tokens the surrogate trains on (grpo.training.loss.EntropyControl); the rows the auxiliary terms
     (algorithm.aux_losses: SFT on the best completions, in-group DPO, distillation) train, from the rewards,
     the distillation teachers' log-probs and the gold demonstrations (grpo.training.teachers)
  6. num_iterations updates: gradients over micro-batches of the loss built once from the
     config (grpo.training.update.Updater, grpo.training.loss; the first update also weighs the
     sampler's tokens by pi_old / q when the correction is on; with algorithm.off_policy_mask_threshold
     each update drops the surrogate of negative completions the policy drifted from), then clip,
     finite check, AdamW step and LR schedule (grpo.training.update.optimizer_step); a non-finite update is skipped and counted
     (under float16 an overflow of the scaled gradients is counted apart: grpo.compute.loss_scale);
     then the entropy bonus's coefficient moves toward algorithm.entropy_target when one is set
  7. the engine samples from the new weights from now on (engine.sync_weights)
  8. metrics and sample completions to the run directory
and, at their intervals, held-out evaluation and an atomic checkpoint. Under torchrun each
process runs this same loop on its share of the prompts (grpo.compute.distributed: `self.world`).
With rollout.max_staleness > 0, steps 1-2 take a batch that a background thread generated
while earlier steps trained (grpo.training.collect.Ahead: at most max_staleness updates old).
"""

from __future__ import annotations

import random
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grpo import rewards
from grpo.compute import models
from grpo.compute.allocator import keep_freed_memory
from grpo.compute.distributed import World
from grpo.compute.loss_scale import build_loss_scaler, overflowed, scale_of
from grpo.compute.precision import Precision, dither_master_weights
from grpo.compute.precision import resolve as resolve_precision
from grpo.compute.precision import save as save_precision
from grpo.config import Config, save_config
from grpo.episodes.turns import EpisodeSampler, SingleTurnSampler, build_sampler
from grpo.evaluation import evaluate, merge_results
from grpo.guards import probe, resources
from grpo.guards.health import StepWatch
from grpo.record.logging import NullLogger, RunLogger
from grpo.reward_model.iterative import IterativeRL
from grpo.rewards.harness import WeightedReward
from grpo.rollout import RolloutEngine, SamplingParams, build_engine, engine_name
from grpo.serve.client import RemoteReference
from grpo.tasks import Task, build_task
from grpo.tasks.sampling import PromptSampler, build_prompt_sampler
from grpo.training.advantages import step_advantages
from grpo.training.checkpoint import (
    REFERENCE_FILE,
    TrainerState,
    check_run_dir,
    checkpoint_name,
    keep_recorded_split,
    latest_checkpoint,
    load_training_state,
    load_weights,
    parameter_state,
    save_checkpoint,
    take_snapshot,
)
from grpo.training.collect import Ahead, Rounds, build_collector
from grpo.training.interrupt import Interrupted, StopSignals
from grpo.training.logprobs import LocalReference, ReferenceModel, batch_logprobs_and_entropy
from grpo.training.loss import (
    AuxiliaryLosses,
    AuxPlan,
    EntropyControl,
    OffPolicyMask,
    PolicyLoss,
    SamplerCorrection,
)
from grpo.training.step_metrics import rollout_metrics, sample_records
from grpo.training.teachers import Teachers
from grpo.training.update import (
    SamplerWeights,
    UpdateBatch,
    Updater,
    UpdateSettings,
    make_scheduler,
    mean_over_iterations,
    optimizer_step,
)
from grpo.trajectory import FINISH_LENGTH, Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. the loss stayed non-finite); a checkpoint was written."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_reference(cfg: Config, model: torch.nn.Module, device: torch.device, precision: Precision) -> ReferenceModel:
    """The frozen reference for the KL term: served by `grpo serve-ref` elsewhere (reference.url),
    or loaded here in the compute dtype (grpo.compute.models.load_reference)."""
    if cfg.reference.url:
        return RemoteReference.from_config(cfg.reference, cfg.rollout.temperature)
    return LocalReference(models.load_reference(cfg.model, model, precision.compute), cfg.train.micro_batch_size,
                          device, cfg.rollout.temperature, precision.autocast)


@dataclass
class Trainer:
    """Everything the loop needs, built once by `Trainer.build`."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    reference: ReferenceModel | None  # None when beta = 0
    engine: RolloutEngine
    sampler: SingleTurnSampler | EpisodeSampler  # single-turn, or episodes with tools / an environment
    reward_fns: list[WeightedReward]
    task: Task
    collector: Rounds | Ahead  # steps 1-3: in lockstep (dynamic sampling's rounds) or ahead (grpo.training.collect)
    updater: Updater  # step 6's gradients, of the loss built once from the config (grpo.training.update)
    correction: SamplerCorrection
    entropy: EntropyControl  # the entropy bonus (its coefficient is self.state's) and token selection
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    state: TrainerState
    data: PromptSampler  # task.sampler: which prompts each step draws, with their pass-rate estimates
    world: World
    precision: Precision  # what forwards, backward and rollouts compute in (grpo.compute.precision)
    iterative: IterativeRL | None = None  # iterative RL: the reward model keeps learning
    aux: AuxiliaryLosses = AuxiliaryLosses()  # terms beside the policy loss (algorithm.aux_losses)
    teachers: Teachers = field(default_factory=Teachers)  # the distillation terms' (grpo.training.teachers)
    last_saved: int | None = field(default=None, init=False)  # the step of the newest checkpoint

    @classmethod
    def build(cls, cfg: Config, loaded: models.LoadedModel | None = None) -> Trainer:
        """loaded: a model object (grpo.train(model=...)); cfg.model.path is where its initial
        weights are copied (rank 0, fresh runs) for the reference, vLLM and resumes to read."""
        check_run_dir(cfg.output_dir, cfg.resume)  # never train over another run's checkpoints
        world = World.init(cfg.train.parallel, cfg.model.device)
        if loaded is not None:
            if world.is_main and not (cfg.resume and Path(cfg.model.path).is_dir()):
                models.save_loaded(loaded, Path(cfg.model.path))
            world.sum(0.0)  # a barrier: the other ranks read the copy only once it is complete
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights (LoRA too)
        if cfg.resume:
            keep_recorded_split(cfg)
        task = build_task(cfg.task)
        reward_fns = rewards.build(cfg.rewards)
        model, tokenizer = models.load_policy(cfg.model, loaded)
        ckpt = latest_checkpoint(cfg.output_dir) if cfg.resume else None
        if ckpt is not None:
            load_weights(ckpt, model)
        device = next(model.parameters()).device
        # the compute dtype (measured on this machine under auto); a resumed run keeps its choice
        precision = resolve_precision(cfg.model.precision, cfg.rollout.precision, next(model.parameters()).dtype,
                                      device, world, Path(cfg.output_dir) if ckpt is not None else None)
        if ckpt is None:  # before prepare: on plain tensors, the same random stream on every rank
            dither_master_weights(model, precision)  # bf16 compute: updates reach the forwards from the start
        world.prepare(model)  # ddp: rank 0's weights everywhere; fsdp: shard
        world.seed_sampling(cfg.seed)  # each rank samples its own completions
        if device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's tensors (grpo/allocator.py)
        loss = PolicyLoss.from_config(cfg.algorithm, cfg.rollout.episode_tokens)
        # With beta = 0 the reference model is never loaded (memory and time).
        reference = build_reference(cfg, model, device, precision) if loss.needs_reference else None
        engine = build_engine(cfg.rollout, model, tokenizer, precision.rollout)
        params = [p for p in model.parameters() if p.requires_grad]  # fsdp: the shards
        # fused: one kernel over all parameters instead of a loop of small ones (several times faster)
        optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, betas=tuple(cfg.train.adam_betas),
                                      weight_decay=cfg.train.weight_decay, fused=device.type in ("cpu", "cuda"))
        scheduler = make_scheduler(optimizer, cfg, cfg.train.num_steps * cfg.algorithm.num_iterations)
        scaler = build_loss_scaler(precision.compute, device.type, params, world, cfg.train.fp16_initial_scale,
                                   cfg.train.fp16_growth_interval)  # float16: dynamic loss scaling
        sampler = build_sampler(cfg, engine, tokenizer)  # tools and environments load: bad ones fail now
        resources.preflight(cfg, model, tokenizer, task, optimizer, device, sampler.render)  # prompts, memory, disk
        state = TrainerState()
        if ckpt is not None:
            state = load_training_state(ckpt, model, optimizer, scheduler, world)
            if scaler is not None and state.loss_scale:
                scaler.load_state_dict(state.loss_scale)  # the scale and its growth count: exact resume
            engine.sync_weights(model, state.num_updates)  # the checkpoint's weights, not model.path's
            if isinstance(reference, LocalReference) and (Path(ckpt) / REFERENCE_FILE).is_file():
                load_weights(ckpt, reference.model, REFERENCE_FILE, every_parameter=True)  # where syncs moved it
        iterative = IterativeRL.from_config(cfg, reward_fns)
        if iterative is not None and ckpt is not None:
            iterative.load(Path(ckpt))
        correction = SamplerCorrection.from_config(cfg.algorithm, engine_name(cfg.rollout), cfg.rollout.max_staleness,
                                                   precision.lowered)
        settings = UpdateSettings(cfg.train.micro_batch_size, cfg.rollout.temperature, device, precision.autocast)
        return cls(cfg=cfg, model=model, tokenizer=tokenizer, reference=reference, engine=engine, sampler=sampler,
                   reward_fns=reward_fns, task=task,
                   collector=build_collector(cfg, sampler, reward_fns, world, engine, tokenizer.pad_token_id, state),
                   updater=Updater(model, params, loss, world, settings, scaler,
                                   OffPolicyMask.from_config(cfg.algorithm, cfg.rollout)), correction=correction,
                   entropy=EntropyControl.from_config(cfg.algorithm),
                   optimizer=optimizer, scheduler=scheduler, device=device, state=state,
                   data=build_prompt_sampler(cfg, task, state.examples_seen, ckpt), world=world, precision=precision,
                   iterative=iterative,
                   aux=AuxiliaryLosses.from_config(cfg.algorithm, cfg.train.num_steps, cfg.rollout.episode_tokens),
                   teachers=Teachers.build(cfg, model, tokenizer, sampler, device, precision))

    # ----------------------------------------------------------------- one step

    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        cfg = self.cfg
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + now - clock  # summed over rounds
            clock = now

        self.world.gather_weights(self.model)  # fsdp: whole weights until the optimizer step
        # 1.-3. prompts, G completions each, rewards (several rounds with dynamic sampling; with
        # max_staleness > 0 generated ahead): grpo.training.collect
        examples, groups, trajectory, scores, collected = self.collector.collect(self.data, self.sampling_params(),
                                                                                 self.state, lap)
        collected |= self.data.settle(self.world)  # every rank's groups update the estimates (sampling/*)
        if self.iterative is not None:  # the reward model learns from these later (iterative RL)
            self.iterative.observe(groups.per_row(examples), trajectory.completions,
                                   scores.per_function[cfg.iterative.label], self.world)
        # 4. advantages (over whole groups, truncated completions included); step rewards: per token
        advantages, process = step_advantages(cfg, trajectory, groups, scores, self.reward_fns, self.tokenizer,
                                              self.world)
        a = cfg.algorithm
        trained, masked = trajectory, {}
        if a.mask_truncated_completions:
            trained = trajectory.without_truncated()
            masked = {"truncated_masked": int(self.world.sum(trajectory.finish_reasons.count(FINISH_LENGTH)))}
        # 5. old and reference log-probs, no grad
        mbs, temp = cfg.train.micro_batch_size, cfg.rollout.temperature
        old_logprobs, selected, selection = None, None, {}
        if a.num_iterations > 1 or self.entropy.selects:
            with self.precision.autocast():
                old_logprobs, entropies = batch_logprobs_and_entropy(self.model, trained, mbs, self.device, temp,
                                                                   with_entropy=self.entropy.selects)
            old_logprobs = old_logprobs if a.num_iterations > 1 else None
            if entropies is not None:  # over the whole batch of every rank: any micro-batching selects the same
                selected, fraction = self.entropy.selection(entropies, trained.loss_mask, self.world)
                selection = {"entropy/selected": fraction}
        ref_logprobs = self.reference.logprobs(trained) if self.reference is not None else None
        teachers = self.teachers.logprobs(trained, examples, scores.total, groups)  # distillation terms' teachers
        gold = self.teachers.demonstrations(trained, examples, groups)  # gold_sft's rows
        aux = self.aux.plan(scores.total, trained.loss_mask, groups, self.state.step, self.world, teachers, gold)
        lap("logprobs")
        # 6. policy updates (the first one also weighs the sampler's tokens when the correction is on)
        updates_before = self.state.num_updates
        update_metrics = {**self.update(trained, advantages, old_logprobs, ref_logprobs, selected, aux), **selection}
        # 7. the next rollout samples from the new weights; every reference.sync_every steps the
        # reference moves to them too; iterative RL retrains the reward model and resets the reference
        if self.state.num_updates != updates_before:
            self.engine.sync_weights(self.model, self.state.num_updates)
        step = self.state.step + 1
        if cfg.reference.sync_every and step % cfg.reference.sync_every == 0:
            self.move_reference(cfg.reference.sync_mix)
        retrained: dict[str, float] = {}
        if self.iterative is not None and self.iterative.due(step):
            retrained = self.iterative.retrain(step)
            if cfg.iterative.reset_reference and self.reference is not None:
                self.move_reference(1.0)
        lap("update")
        # 8. metrics
        timings["time/step"] = sum(timings.values())
        metrics = {**rollout_metrics(trajectory, scores, advantages, groups, self.world), **collected, **masked,
                   **process,
                   **retrained,
                   **update_metrics, **timings,
                   "learning_rate": self.scheduler.get_last_lr()[0],
                   "memory/peak_gb": peak_memory_gb(self.device)}
        samples = sample_records(examples, trajectory, scores, advantages, groups, cfg.log.num_samples)
        return metrics, samples

    def move_reference(self, mix: float) -> None:
        """reference <- mix * policy + (1 - mix) * reference (the whole weights, every rank)."""
        with self.world.full_weights(self.model):
            self.reference.mix_from(self.model, mix)
        self.state.reference_moved = True

    def sampling_params(self) -> SamplingParams:
        return SamplingParams.from_config(self.cfg.rollout)

    def update(self, trajectory: Trajectory, advantages: torch.Tensor, old_logprobs: torch.Tensor | None,
               ref_logprobs: torch.Tensor | None, selected: torch.Tensor | None = None,
               aux: AuxPlan | None = None) -> dict[str, float]:
        """num_iterations optimizer updates on one trajectory. Every metric (loss, grad_norm, clip
        fractions, ratio, KL) is the plain mean over the iterations; entropy is the first
        iteration's, the policy that sampled, and moves an adaptive entropy coefficient."""
        cfg, r, params = self.cfg, self.cfg.rollout, self.updater.params
        # pi_old for the correction is the policy of the first update, under the sampler's distribution
        sampler = SamplerWeights(self.correction, r.top_k, r.top_p) if self.correction.active else None
        coef = self.entropy.current(self.state.entropy_coef)
        batch = UpdateBatch(trajectory, advantages, old_logprobs, ref_logprobs, sampler, selected, coef, aux)
        per_iteration = []
        self.model.train()
        scaler = self.updater.scaler
        for iteration in range(cfg.algorithm.num_iterations):
            metrics = self.updater.accumulate_gradients(batch, with_entropy=iteration == 0)
            scale_before = scale_of(scaler)
            metrics["grad_norm"], applied = optimizer_step(self.optimizer, self.scheduler, params,
                                                           cfg.train.max_grad_norm, metrics["loss"], scaler)
            if applied:
                self.state.num_updates += 1
                self.state.bad_steps_in_a_row = 0
            elif overflowed(scale_before, metrics["loss"]):  # float16: the halved scale retries; not a bad step
                self.state.num_overflow_skips += 1
            else:  # the weights are unchanged; train.max_bad_steps of these in a row stop the run
                self.state.bad_steps_in_a_row += 1
                self.state.num_skipped_updates += 1
            per_iteration.append(metrics)
        bonus = {}
        if self.entropy.has_bonus:
            bonus = {"entropy/coef": coef}  # the coefficient this step trained with
            if self.entropy.adaptive:
                self.state.entropy_coef = self.entropy.next_coef(coef, per_iteration[0]["entropy"])
        fp16 = {} if scaler is None else {"fp16/scale": scale_of(scaler), "fp16/skipped": self.state.num_overflow_skips}
        return {**mean_over_iterations(per_iteration), **bonus, "skipped_updates": self.state.num_skipped_updates, **fp16}

    # ----------------------------------------------------------------- the run

    def evaluate(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Held-out evaluation; in a multi-process run each rank scores its share of the examples
        (progress: called with this rank's examples done and its share)."""
        examples = self.task.eval[: self.cfg.eval.num_examples]
        mine = examples[self.world.rank :: self.world.size]
        with self.world.full_weights(self.model):  # fsdp: generation runs no collectives
            results = evaluate(self.engine, self.tokenizer, mine, self.cfg, progress, self.reward_fns) if mine else None
        return merge_results([r for r in self.world.gather_objects(results) if r is not None])

    def first_run_check(self, out: Path | None) -> list[str]:
        """grpo.guards.probe on the first training prompts; the first prompt as the model sees it is
        written to <run>/prompt.txt (out: the run directory on rank 0, else None)."""
        examples = self.task.train[: probe.NUM_EXAMPLES]
        with self.world.full_weights(self.model):  # fsdp: generation runs no collectives
            report = probe.probe(self.sampler, self.reward_fns, examples, probe.probe_params(self.cfg),
                                 self.cfg.reward_timeout)
        if out is not None:
            (out / "prompt.txt").write_text(report.prompt, encoding="utf-8")
        return probe.problems(report, self.cfg)

    def save(self) -> Path | None:
        """A checkpoint of this step: every rank gathers, rank 0 writes (and returns its path)."""
        # rollouts in flight are dropped: a resumed run requests their prompts again
        self.state.examples_seen = self.data.position - self.collector.prompts_in_flight
        self.state.group_sizes_in_flight = self.collector.group_sizes_in_flight()
        snapshot = take_snapshot(self.model, self.optimizer, self.scheduler, self.world)
        if self.updater.scaler is not None:
            self.state.loss_scale = self.updater.scaler.state_dict()
        if self.state.reference_moved:
            snapshot.reference = parameter_state(self.reference.model)
        if self.iterative is not None:
            snapshot.extra.append(self.iterative.save)
        snapshot.extra.append(self.data.save)  # estimates and curriculum state (sampling.json)
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
            save_precision(self.precision, out)
        log = (RunLogger(out, cfg.train.num_steps, start_step=self.state.step, report_to=cfg.log.report_to,
                         config=cfg, progress=cfg.log.progress) if main else NullLogger())
        watch = StepWatch(cfg)
        results: dict[str, Any] = {}
        # SIGINT / SIGTERM only set stop.requested; the loop stops between steps (grpo.training.interrupt),
        # on every rank once any rank got one.
        with StopSignals() as stop, log:  # the logger closes on the way out, whatever happens
            log.print(self.precision.describe())
            if self.state.step == 0 and cfg.train.first_run_check:
                for message in self.first_run_check(out if main else None):
                    log.print(f"warning (first-run check): {message}")
            if self.state.step == 0 and cfg.eval.before_training and cfg.eval.num_examples > 0:
                results["before"] = self.evaluate(log.evaluating)
                log.log_eval(0, results["before"])
            while self.state.step < cfg.train.num_steps and not self.world.any(stop.requested):
                metrics, samples = self.train_step()
                self.state.step += 1
                step = self.state.step
                if self.collector.trained_order is not None:  # async: every step's prompts and sample versions
                    log.log_rollouts(step, self.collector.trained_order)
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
                    log.log_eval(step, self.evaluate(log.evaluating))
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                    self.save()
            if self.state.step > 0 and self.last_saved != self.state.step:
                self.save()
            if self.world.any(stop.requested):  # this rank's signal, or another rank's
                latest = out / checkpoint_name(self.state.step) if self.state.step > 0 else None
                raise Interrupted(stop.signum or signal.SIGTERM, self.state.step, latest)
            if cfg.eval.num_examples > 0:
                results["after"] = self.evaluate(log.evaluating)
                log.log_eval(self.state.step, results["after"])
            weights = self.world.full_state_dict(self.model)  # fsdp: gathered; otherwise None
            if main:
                from grpo.record.report import (
                    write_report,  # imports matplotlib only when a run ends
                )

                models.save_final(self.model, self.tokenizer, out / "final", weights)
                write_report(out)
        return results


def train(cfg: Config, loaded: models.LoadedModel | None = None) -> dict[str, Any]:
    trainer = Trainer.build(cfg, loaded)
    try:
        return trainer.run()
    finally:
        trainer.collector.close()
        trainer.engine.close()  # first: vLLM's shutdown under torchrun also ends the process group
        trainer.world.close()
