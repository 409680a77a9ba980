"""The training loop on a tiny random Llama: outputs, accumulation, reproducibility, resume."""

import gc
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo import rewards
from grpo.training.logprobs import batch_logprobs
from grpo.training.trainer import Trainer, train
from grpo.training.update import UpdateBatch, Updater, UpdateSettings
from tests.support import REWARDS_FILE
from tests.support.runs import LENGTH_REWARD, assert_same_final_weights, read_metrics, tiny_config


def test_loop_writes_metrics_samples_checkpoints_and_a_plain_hf_model(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "log.tensorboard=true")
    results = train(cfg)
    run = Path(cfg.output_dir)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for key in ("reward/mean", "reward/std", "frac_reward_zero_std", "clip/region", "ratio_mean", "entropy",
                "grad_norm", "learning_rate", "completion_length/mean", "truncation_rate", "tokens_generated",
                "time/generation", "time/rewards", "time/logprobs", "time/update", "memory/peak_gb",
                "format", f"reward/{LENGTH_REWARD}/errors"):
        assert key in metrics[0], key
    assert (run / "samples.jsonl").read_text().count("\n") == 2 * cfg.log.num_samples
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-000002"]
    assert list(run.glob("tensorboard/events.*"))
    assert (run / "config.yaml").is_file()
    assert set(results["after"]) >= {"accuracy", "format", "mean_length"}
    model = AutoModelForCausalLM.from_pretrained(run / "final")  # loads without grpo
    assert model.config.vocab_size > 0


def test_keep_last_rotates_checkpoints(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "train.num_steps=3", "checkpoint.keep_last=2",
                      "eval.num_examples=0")
    train(cfg)
    assert sorted(p.name for p in Path(cfg.output_dir).glob("checkpoint-*")) == [
        "checkpoint-000002", "checkpoint-000003"]


def test_two_runs_with_the_same_seed_agree(tmp_path, tiny_model_dir, data_file):
    a = tiny_config(tmp_path / "a", tiny_model_dir, data_file, "eval.num_examples=0")
    b = tiny_config(tmp_path / "b", tiny_model_dir, data_file, "eval.num_examples=0")
    train(a)
    train(b)
    assert read_metrics(a.output_dir) == read_metrics(b.output_dir)


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, data_file):
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, "train.num_steps=4", "eval.num_examples=0")
    train(full)
    half = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=2", "eval.num_examples=0")
    train(half)
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=4",
                          "eval.num_examples=0", "resume=true")
    train(resumed)
    assert read_metrics(full.output_dir) == read_metrics(resumed.output_dir)
    assert_same_final_weights(full.output_dir, resumed.output_dir)


def test_gradient_accumulation_gives_the_big_batch_update(tmp_path, tiny_model_dir, data_file):
    for loss_type in ("grpo", "dapo", "dr_grpo", "bnpo"):
        params = []
        for micro in (8, 2):
            cfg = tiny_config(tmp_path, tiny_model_dir, data_file, f"train.micro_batch_size={micro}",
                              f"algorithm.loss_type={loss_type}", "algorithm.beta=0.1", "train.max_grad_norm=0")
            trainer = Trainer.build(cfg)
            torch.manual_seed(0)
            batch = trainer.engine.generate(["Hi there", "What is 2 + 3?"], trainer.sampling_params())
            advantages = torch.linspace(-1, 1, 8)
            ref = torch.randn(batch.completion_ids.shape) * 0.1 - 3
            trainer.update(batch, advantages, None, ref)
            params.append([p.detach().clone() for p in trainer.model.parameters()])
        for a, b in zip(*params, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=loss_type)


def count_models():
    gc.collect()
    # type() first: isinstance() on some lazy torch proxies emits deprecation warnings
    return sum(type(o).__name__.endswith("ForCausalLM") and isinstance(o, torch.nn.Module) for o in gc.get_objects())


def test_beta_zero_loads_no_reference_model(tmp_path, tiny_model_dir, data_file):
    before = count_models()
    trainer = Trainer.build(tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.beta=0"))
    assert trainer.reference is None
    assert count_models() - before == 1
    del trainer
    before = count_models()
    trainer = Trainer.build(tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.beta=0.04"))
    assert trainer.reference is not None
    assert count_models() - before == 2
    assert not any(p.requires_grad for p in trainer.reference.model.parameters())
    metrics, _ = trainer.train_step()
    assert metrics["kl"] >= 0


def test_num_iterations_reuses_the_batch(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.num_iterations=3", "train.num_steps=1",
                      "eval.num_examples=0")
    trainer = Trainer.build(cfg)
    metrics, _ = trainer.train_step()
    # three optimizer updates on one generated batch
    assert trainer.optimizer.state[next(iter(trainer.optimizer.state))]["step"].item() == 3
    # the logged ratio is the mean over the three updates; the later two moved away from 1
    assert metrics["ratio_mean"] != pytest.approx(1.0, abs=1e-5)
    # the first update's old log-probs are the current policy's: its ratio is 1
    trajectory = trainer.engine.generate(["Hi there", "What is 2 + 3?"], trainer.sampling_params())
    old = batch_logprobs(trainer.model, trajectory, 8, trainer.device, cfg.rollout.temperature)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    updater = Updater(trainer.model, params, trainer.updater.loss, trainer.world,
                      UpdateSettings(8, cfg.rollout.temperature, trainer.device))
    first = updater.accumulate_gradients(UpdateBatch(trajectory, torch.linspace(-1, 1, 8), old))
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_clip_fractions_are_logged_over_every_iteration(tmp_path, tiny_model_dir, data_file):
    # a large step between the two updates moves the ratio out of [0.8, 1.2] on the second one
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "algorithm.num_iterations=2", "train.num_steps=1",
                      "eval.num_examples=0", "train.learning_rate=0.05", "train.max_grad_norm=0")
    metrics, _ = Trainer.build(cfg).train_step()
    assert metrics["clip/region"] > 0
    assert metrics["clip/region"] == pytest.approx(metrics["clip/low"] + metrics["clip/high"])


def test_the_engine_is_told_of_every_update_and_trajectories_carry_the_version(tmp_path, tiny_model_dir, data_file):
    # explicit engine.sync_weights(model, version) after the optimizer steps of a train step
    trainer = Trainer.build(tiny_config(tmp_path, tiny_model_dir, data_file, "eval.num_examples=0",
                                        "algorithm.num_iterations=2"))
    calls, generated, engine = [], [], trainer.engine
    sync, generate = engine.sync_weights, engine.generate
    engine.sync_weights = lambda model, version: (calls.append(version), sync(model, version))
    engine.generate = lambda *a: generated.append(generate(*a)) or generated[-1]
    trainer.train_step()
    trainer.train_step()
    assert calls == [2, 4]  # two updates per step, one sync after them
    assert trainer.state.num_updates == 4 == trainer.scheduler.last_epoch
    assert [t.policy_version.unique().tolist() for t in generated] == [[0], [2]]


def test_failing_reward_is_contained_and_counted(tmp_path, tiny_model_dir, data_file):
    broken = f"{REWARDS_FILE}:broken_reward"
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "train.num_steps=1", "eval.num_examples=0",
                      f"rewards=[{{name: '{LENGTH_REWARD}'}}, {{name: '{broken}'}}]")
    metrics, _ = Trainer.build(cfg).train_step()
    assert metrics[f"reward/{broken}/errors"] == 8
    assert rewards.get(LENGTH_REWARD) is not None


def test_the_data_stream_shuffles_once_per_epoch(monkeypatch):
    from grpo.tasks.base import DataStream

    calls = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **kw: calls.append(a) or randperm(*a, **kw))
    stream = DataStream(list(range(10)), seed=3)
    taken = stream.take(25)
    assert len(calls) == 3  # epochs 0, 1 and half of 2
    assert sorted(taken[:10]) == sorted(taken[10:20]) == list(range(10)) and taken[:10] != taken[10:20]
    resumed = DataStream(list(range(10)), seed=3, position=7)  # a resumed stream continues the same order
    assert resumed.take(8) == taken[7:15]


def test_a_resumed_run_keeps_the_split_it_started_with(tmp_path, tiny_model_dir, data_file, capsys):
    # a run written before a data task without evaluation held nothing out recorded task.num_eval 4
    from grpo.config import save_config
    from grpo.training.checkpoint import keep_recorded_split

    old = tiny_config(tmp_path, tiny_model_dir, data_file, "eval.num_examples=2")
    (tmp_path / "run" / "checkpoint-000001").mkdir(parents=True)
    save_config(old, tmp_path / "run" / "config.yaml")
    resumed = tiny_config(tmp_path, tiny_model_dir, data_file, "eval.num_examples=0", "resume=true")
    assert (old.task.num_eval, resumed.task.num_eval) == (4, 0)
    keep_recorded_split(resumed)
    assert resumed.task.num_eval == 4 and "task.num_eval = 4 as this run started with" in capsys.readouterr().out
    fresh = tiny_config(tmp_path / "other", tiny_model_dir, data_file, "eval.num_examples=0")
    keep_recorded_split(fresh)  # no checkpoint there: nothing recorded to keep
    assert fresh.task.num_eval == 0
