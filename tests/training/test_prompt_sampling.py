"""task.sampler in the loop: short tiny-model runs with each sampler log their sampling/* metrics, the
estimates and the curriculum's level reach every checkpoint, and a run cut and resumed equals the whole run."""

import json
import math
from pathlib import Path

import pytest

from grpo.training.trainer import train
from tests.support.runs import LENGTH_REWARD, read_metrics, tiny_config

# length_reward = characters / 10: a random tiny model's completions straddle 1.0, so groups have successes and failures
SUCCESS = (f"task.difficulty.success_reward='{LENGTH_REWARD}'", "task.difficulty.success_threshold=1.0",
           "eval.num_examples=0")
POOL = ("task.sampler=difficulty_pool", *SUCCESS)
# chain_sum's curriculum; a threshold any step passes, so the level rises after every full window of 1 step
CURRICULUM = ("task.sampler=curriculum", "task.source=reasoning_gym", "task.name=chain_sum", "task.num_train=20",
              "task.difficulty.curriculum_window=1", "task.difficulty.curriculum_threshold=0.01", *SUCCESS)


def sampling_state(run, step):
    return json.loads((Path(run) / f"checkpoint-{step:06d}" / "sampling.json").read_text())


@pytest.mark.parametrize("sampler", [("task.sampler=uniform", *SUCCESS), POOL], ids=["uniform", "pool"])
def test_a_run_logs_its_prompts_estimates(tmp_path, tiny_model_dir, data_file, sampler):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, *sampler)
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    first, second = metrics
    assert first["sampling/estimated_pass_rate"] == 0.5  # every prompt unseen: the prior's mean
    assert 0 <= first["sampling/observed_pass_rate"] <= 1
    assert first["sampling/prompts_observed"] == 2 and second["sampling/prompts_observed"] in (2, 3, 4)
    assert sum(first[f"sampling/{band}"] for band in ("easy", "learnable", "hard")) == 30  # every row trains (no evaluation: none held out)
    state = sampling_state(cfg.output_dir, 2)
    assert state["sampler"] == cfg.task.sampler and len(state["counts"]) == second["sampling/prompts_observed"]
    assert all(n % 4 == 0 or n > 4 for _, n in state["counts"].values())  # whole groups of G = 4, decayed


def test_a_curriculum_run_rises_through_its_levels(tmp_path, tiny_model_dir, data_file):
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, *CURRICULUM, "train.num_steps=3")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["curriculum/level"] for m in metrics] == [0, 1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    state = sampling_state(cfg.output_dir, 3)
    assert state["curriculum"] == {"level": 3, "level_start": 6, "window": []}
    assert sorted({key.split(":")[1] for key in state["counts"]}) == ["level0", "level1", "level2"]


@pytest.mark.parametrize("sampler", [POOL, CURRICULUM], ids=["pool", "curriculum"])
def test_a_run_cut_and_resumed_equals_the_whole_run(tmp_path, tiny_model_dir, data_file, sampler):
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, "train.num_steps=4", *sampler)
    train(full)
    train(tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=2", *sampler))
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=4", "resume=true", *sampler)
    train(resumed)
    assert read_metrics(resumed.output_dir) == read_metrics(full.output_dir)
    assert sampling_state(resumed.output_dir, 4) == sampling_state(full.output_dir, 4)
    samples = [(Path(run) / "samples.jsonl").read_text() for run in (full.output_dir, resumed.output_dir)]
    assert samples[0] == samples[1]  # the same prompts, drawn from the restored estimates
