"""Run directories for the report tests: a real tiny training run, and synthetic long ones.

    make_tiny_run(path, model_dir)             3 real GRPO steps of the tiny model (KL logged)
    make_synthetic_run(path, num_steps=5000)   metrics/eval/samples JSONL shaped like a real run

The synthetic run's completions include TRICKY texts (model output trying to end the data
block or inject markup) at fixed steps, so escaping can be checked in Python and in a browser.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from grpo.config import load_config
from grpo.training.trainer import train
from tests.support import REWARDS_FILE

LENGTH_REWARD = f"{REWARDS_FILE}:length_reward"

TRICKY = [
    "</script><script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2"> & "quotes" \'single\' <!-- comment',
    "unicode \u00e9\u00fc \u6570\u5b66 line\u2028separator </SCRIPT >",
]


def make_tiny_run(path: Path, model_dir: Path) -> Path:
    """Train the tiny model for 3 steps (format + accuracy + a length reward, beta > 0)."""
    data = path.parent / f"{path.name}-sums.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"model.path={model_dir}", "task.source=file", f"task.path={data}", "task.num_eval=4",
        f"rewards=[{{name: format}}, {{name: accuracy}}, {{name: '{LENGTH_REWARD}', weight: 0.1}}]",
        "rollout.group_size=4", "rollout.max_new_tokens=8", "train.prompts_per_step=2",
        "train.micro_batch_size=8", "train.num_steps=3", "train.learning_rate=1e-3", "algorithm.beta=0.04",
        "eval.num_examples=2", "log.num_samples=8", "log.progress=false", "log.tensorboard=false",
        "checkpoint.every=0", f"output_dir={path}",
    ])
    # One thread: a 64-wide model gains nothing from more, and loses much when test workers
    # share the cores (spinning threads); restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return path


def make_synthetic_run(path: Path, num_steps: int = 5000, samples_per_step: int = 4, seed: int = 0) -> Path:
    """metrics.jsonl (one record per step), eval.jsonl (11 evaluations), samples.jsonl."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    metrics, samples = [], []
    for step in range(1, num_steps + 1):
        progress = 1 / (1 + math.exp(-8 * (step / num_steps - 0.4)))  # a learning curve
        acc = min(1.0, max(0.0, progress * 0.8 + rng.gauss(0, 0.05)))
        fmt = min(1.0, max(0.0, 0.3 + 0.7 * progress + rng.gauss(0, 0.05)))
        length = 120 - 50 * progress + rng.gauss(0, 5)
        metrics.append({
            "step": step, "reward/mean": acc + fmt, "reward/format/mean": fmt, "reward/accuracy/mean": acc,
            "accuracy": acc, "format": fmt, "kl": 0.02 * progress + abs(rng.gauss(0, 0.002)),
            "clip/region": abs(rng.gauss(0.01, 0.005)), "clip/low": abs(rng.gauss(0.005, 0.002)),
            "clip/high": abs(rng.gauss(0.005, 0.002)), "completion_length/mean": length,
            "completion_length/min": length - 40, "completion_length/max": length + 40,
            "truncation_rate": max(0.0, 0.3 * (1 - progress) + rng.gauss(0, 0.02)),
        })
        for k in range(samples_per_step):
            correct = rng.random() < acc
            total = float(correct) + 1.0
            tricky = TRICKY[(step // 7) % len(TRICKY)] if step % 7 == 0 and k == 0 else ""
            samples.append({
                "step": step, "example_id": f"ex{step}-{k}", "question": f"What is {step} + {k}?",
                "answer": str(step + k), "finish_reason": "eos" if rng.random() > 0.1 else "length",
                "completion": f"<think> adding </think> <answer> {step + k + (0 if correct else 1)} </answer>{tricky}",
                "reward": total, "advantage": total - 1.5, "rewards": {"format": 1.0, "accuracy": float(correct)},
            })
    evals = [{"step": s, "num_examples": 100, "accuracy": 0.1 + 0.6 * s / num_steps, "format": 0.5 + 0.4 * s / num_steps}
             for s in range(0, num_steps + 1, max(1, num_steps // 10))]
    for name, records in (("metrics.jsonl", metrics), ("samples.jsonl", samples), ("eval.jsonl", evals)):
        (path / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (path / "config.yaml").write_text(f"output_dir: synthetic\ntrain:\n  num_steps: {num_steps}\n")
    return path
