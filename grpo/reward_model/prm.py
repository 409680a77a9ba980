"""`grpo train-rm --prm`: a step-level (process) reward model from a run's scored steps.

    grpo train-rm runs/x --prm --split newline --base DIR --out runs/prm
    rewards: [{name: process_reward_model, options: {path: runs/prm, mode: token_classification, split: newline}}]

The run's samples carry the steps its step rewards scored (`steps` in samples.jsonl: [end
offset, score]). Each completion is laid out as `process_reward_model` reads it
(grpo.rewards.process.prm_layout: the question, then the steps of `split`); a step of that
split is labelled right (1) when every scored step ending inside it scored >= 0.5, wrong (0)
when one did not, and is left out of the loss when none ends inside it. The model is an
AutoModelForTokenClassification with two labels trained at each step's last token (label 1 =
right: the reward's default `label`), with transformers' Trainer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from grpo.reward_model.training import (
    RewardModelTraining,
    read_records,
    train_with_trainer,
    with_seeded_head,
)
from grpo.rewards.process import prm_layout

IGNORE = -100  # tokens without a step label: out of the loss


def step_samples_from_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """{question, completion, steps} of every sample of a run that has scored steps."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a run directory: it needs samples.jsonl")
    out = []
    for number, record in read_records(path):
        steps = record.get("steps") if isinstance(record, dict) else None
        if not steps:
            continue
        if not (isinstance(record.get("completion"), str) and isinstance(record.get("question"), str)
                and all(isinstance(s, list) and len(s) == 2 for s in steps)):
            raise ValueError(f"{path}:{number}: a sample with steps needs `question`, `completion` and "
                             "[end, score] steps")
        out.append({"question": record["question"], "completion": record["completion"], "steps": steps})
    if not out:
        raise ValueError(f"{path}: no sample has scored steps (the run needs a step reward: rewards[i].steps, "
                         "arithmetic_steps, process_reward_model)")
    return out


def labelled_layout(tokenizer: Any, sample: dict[str, Any], split: str, max_length: int) -> dict | None:
    """input_ids and labels (IGNORE except at each labelled step's last token), or None if
    no step of `split` has a label or the input is over max_length tokens."""
    ids, positions, ends = prm_layout(tokenizer, sample["question"], sample["completion"], split)
    labels, start, any_label = [IGNORE] * len(ids), 0, False
    for position, end in zip(positions, ends, strict=True):
        inside = [score for step_end, score in sample["steps"] if start < step_end <= end]
        if inside:
            labels[position], any_label = int(all(score >= 0.5 for score in inside)), True
        start = end
    return {"input_ids": ids, "labels": labels} if any_label and len(ids) <= max_length else None


def step_accuracy(model: Any, rows: list[dict], batch_size: int) -> float:
    """The fraction of labelled steps whose predicted label (argmax) is the label."""
    right = total = 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            for row in rows[s : s + batch_size]:
                logits = model(input_ids=torch.tensor([row["input_ids"]], device=model.device)).logits[0]
                labels = torch.tensor(row["labels"], device=model.device)
                keep = labels != IGNORE
                right += int((logits[keep].argmax(-1) == labels[keep]).sum())
                total += int(keep.sum())
    return right / total if total else float("nan")


def train_process_reward_model(samples: list[dict[str, Any]], base: str | Path, out: str | Path, split: str,
                               settings: RewardModelTraining, held_out: float = 0.2) -> dict[str, Any]:
    """Train a two-label token classifier from `base` on the samples' steps, save it into `out`."""
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    from grpo.rewards import steps as step_splits

    problem = step_splits.check_split(split)
    if problem or split == "offsets":
        raise ValueError(f"--split: {problem or 'offsets is not a delimiter'} (newline, sentence or tag:<text>)")
    if not (Path(base) / "config.json").is_file():
        raise ValueError(f"--base {str(base)!r} is not a local model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [r for s in samples if (r := labelled_layout(tokenizer, s, split, settings.max_length)) is not None]
    if not rows:
        raise ValueError(f"no sample has a scored step inside a step of split {split!r}")
    random.Random(settings.seed).shuffle(rows)
    cut = int(round(len(rows) * held_out))
    test, train = rows[:cut], rows[cut:]
    model = with_seeded_head(
        lambda: AutoModelForTokenClassification.from_pretrained(base, num_labels=2, dtype=torch.float32), settings.seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    steps = [label for r in rows for label in r["labels"] if label != IGNORE]
    metrics: dict[str, Any] = {"num_train": len(train), "num_held_out": len(test), "steps": len(steps),
                               "right_step_fraction": sum(steps) / len(steps),
                               "held_out_step_accuracy_before": step_accuracy(model, test, settings.batch_size)}
    collator = DataCollatorForTokenClassification(tokenizer)  # pads the labels with IGNORE
    train_with_trainer(model, tokenizer, Dataset.from_list(train), settings, collator)
    metrics["held_out_step_accuracy_after"] = step_accuracy(model, test, settings.batch_size)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
