"""Iterative RL: the reward model retrained every K steps from the run's samples (with replay),
the reference reset, and an exact resume in the middle of it."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForSequenceClassification

from grpo.config import load_config
from grpo.reward_model.iterative import RM_FILE, SAMPLES_FILE
from grpo.training.checkpoint import checkpoint_name
from grpo.training.trainer import train
from tests.support.runs import LENGTH_REWARD, read_metrics, tiny_config
from tests.support.tiny import make_tiny_reward_model_dir


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return make_tiny_reward_model_dir(tmp_path_factory.mktemp("rm"))


def iterative_config(tmp_path, tiny_model_dir, data_file, rm_dir, *overrides):
    # the length reward labels the samples (>= 0.5: 5 characters or more) and trains nothing (weight 0)
    return tiny_config(tmp_path, tiny_model_dir, data_file,
                       f"rewards=[{{name: '{LENGTH_REWARD}', weight: 0}}, "
                       f"{{name: reward_model, options: {{path: '{rm_dir}'}}}}]",
                       "iterative.retrain_every=2", f"iterative.label={LENGTH_REWARD}", "iterative.held_out=0.25",
                       "iterative.learning_rate=1e-3", "algorithm.beta=0.1", "eval.num_examples=0", *overrides)


def test_the_reward_model_is_retrained_and_the_reference_reset(tmp_path, tiny_model_dir, data_file, rm_dir):
    cfg = iterative_config(tmp_path, tiny_model_dir, data_file, rm_dir, "train.num_steps=4")
    train(cfg)
    metrics = read_metrics(cfg.output_dir)
    retrained = [m for m in metrics if "iterative/rm_samples" in m]
    assert [metrics.index(m) + 1 for m in retrained] == [2, 4]
    # 2 steps x 8 samples: 4 held out, 12 trained on; the second retraining replays 10% of its mix
    assert retrained[0]["iterative/held_out"] == 4 and retrained[0]["iterative/rm_samples"] == 12
    assert retrained[0]["iterative/replayed"] == 0 and retrained[1]["iterative/replayed"] == 1  # 12 * 0.1 / 0.9
    assert all(0 <= m["iterative/rm_accuracy_after"] <= 1 for m in retrained)
    assert metrics[2]["kl"] == 0.0 and metrics[1]["kl"] > 0  # step 3 samples from the reset reference
    ckpt = Path(cfg.output_dir) / checkpoint_name(4)
    start = {n: p for n, p in LlamaForSequenceClassification.from_pretrained(rm_dir).named_parameters()}
    trained = load_file(ckpt / RM_FILE)
    assert any(not torch.equal(trained[n], start[n]) for n in start)  # the reward model did learn
    assert (ckpt / SAMPLES_FILE).is_file() and (ckpt / "reference.safetensors").is_file()
    # the rewards of the steps after a retraining come from the new model
    assert metrics[2]["reward/reward_model/mean"] != pytest.approx(metrics[0]["reward/reward_model/mean"])


def test_resume_in_the_middle_of_iterative_rl_is_exact(tmp_path, tiny_model_dir, data_file, rm_dir):
    full = iterative_config(tmp_path / "full", tiny_model_dir, data_file, rm_dir, "train.num_steps=5")
    train(full)
    half = iterative_config(tmp_path / "half", tiny_model_dir, data_file, rm_dir, "train.num_steps=3")
    train(half)  # checkpoint 3: one retraining behind it, step 3's samples waiting for the next
    resumed = iterative_config(tmp_path / "half", tiny_model_dir, data_file, rm_dir, "train.num_steps=5",
                               "resume=true")
    train(resumed)
    assert read_metrics(full.output_dir) == read_metrics(resumed.output_dir)
    a = load_file(Path(full.output_dir) / checkpoint_name(5) / RM_FILE)
    b = load_file(Path(resumed.output_dir) / checkpoint_name(5) / RM_FILE)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("override, field", [
    (["iterative.reward=format"], "iterative.reward"),
    (["rewards=[{name: format}, {name: reward_model, options: {path: x}}]", "iterative.label=accuracy"],
     "iterative.label"),
    (["iterative.replay=1"], "iterative.replay"),
])
def test_iterative_config_errors_name_the_field(override, field):
    base = ["rewards=[{name: accuracy}, {name: reward_model, options: {path: x}}]", "iterative.retrain_every=2"]
    with pytest.raises(ValueError, match=f"`{field}`"):
        load_config(None, [*base, *override])
