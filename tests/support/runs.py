"""A tiny training run's config and its metrics, as most loop tests build and read them."""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from grpo.config import load_config
from tests.support import REWARDS_FILE

LENGTH_REWARD = f"{REWARDS_FILE}:length_reward"


def tiny_config(tmp_path, tiny_model_dir, data_file, *overrides):
    return load_config(None, [
        f"model.path={tiny_model_dir}", "task.source=file", f"task.path={data_file}", "task.num_eval=4",
        f"rewards=[{{name: '{LENGTH_REWARD}'}}, {{name: format}}]",
        "rollout.group_size=4", "rollout.max_new_tokens=6", "train.prompts_per_step=2",
        "train.micro_batch_size=8", "train.num_steps=2", "train.learning_rate=1e-3",
        "eval.num_examples=2", "eval.before_training=false", "log.progress=false", "log.tensorboard=false",
        "checkpoint.every=1", "checkpoint.keep_last=5", f"output_dir={tmp_path / 'run'}", *overrides,
    ])


def read_metrics(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time") and k not in ("memory/peak_gb",)}
            for line in lines]


def assert_same_final_weights(run_a, run_b):
    """Two runs' final weights are bit-equal, every tensor (exact resume)."""
    a = AutoModelForCausalLM.from_pretrained(Path(run_a) / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(Path(run_b) / "final").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
