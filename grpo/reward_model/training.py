"""Train an outcome reward model from the policy's own samples (DeepSeekMath section 4.1.4).

    grpo train-rm runs/demo --base models/rm-base --out runs/rm    # from a finished run
    rewards: [{name: reward_model, options: {path: runs/rm}}]      # then a run scores with it

The labels are a rule-based reward the run already computed for each sample (`--label
accuracy` by default: a completion is positive when that reward is >= 0.5). The model is an
AutoModelForSequenceClassification with one logit trained with a logistic loss, so its logit
is the log-odds that a completion is right: exactly what the `reward_model` reward reads, on
exactly the text it reads it from (grpo.rewards.model_rewards.reward_model_text: the chat template
over the prompt plus the completion). Training uses transformers' Trainer; the result is a
plain Hugging Face directory (model, tokenizer, and rm_metrics.json with the held-out
accuracy before and after).

Samples: <run>/samples.jsonl holds the first `log.num_samples` completions of every step (set
it to prompts_per_step x group_size to keep them all); the prompts come back from the run's
config.yaml (the task is rebuilt, offline, and each sample found by its example_id).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LabelledSample", "RewardModelTraining", "accuracy_of", "fit", "samples_from_run", "train_reward_model"]


@dataclass
class LabelledSample:
    prompt: list[dict[str, str]]  # the chat messages the policy answered
    completion: str
    label: float  # 1.0 right, 0.0 wrong


@dataclass
class RewardModelTraining:
    """How the reward model is trained (the `grpo train-rm` flags, and the loop's iterative RL)."""

    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    max_length: int = 1024
    seed: int = 0


def samples_from_run(run_dir: str | Path, label: str = "accuracy") -> list[LabelledSample]:
    """The labelled samples of a run directory: samples.jsonl joined with the run's task."""
    from grpo.config import load_config
    from grpo.tasks import build_task

    run = Path(run_dir)
    path = run / "samples.jsonl"
    if not (run / "config.yaml").is_file() or not path.is_file():
        raise ValueError(f"{str(run)!r} is not a run directory: it needs config.yaml and samples.jsonl")
    task = build_task(load_config(str(run / "config.yaml")).task)
    by_id = {ex.id: ex for ex in [*task.train, *task.eval, *task.few_shot]}
    out = []
    for number, record in read_records(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict) or not isinstance(record.get("completion"), str):
            raise ValueError(f"{where}: a sample needs a string `completion`")
        value = (record.get("rewards") or {}).get(label)
        if value is None:  # that reward failed on this sample: no label, not a wrong answer
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where}: rewards.{label} is {value!r}, not a number")
        example = by_id.get(record.get("example_id"))
        if example is None:
            raise ValueError(f"{where}: example_id {record.get('example_id')!r} is not in the run's task "
                             "(was config.yaml changed after the run?)")
        out.append(LabelledSample(example.prompt, record["completion"], float(value >= 0.5)))
    if not out:
        raise ValueError(f"{path}: no sample has a `{label}` reward to learn from (--label names one of "
                         "the run's rewards)")
    return out


def read_records(path: Path):
    """(line number, JSON value) of each non-blank line; a line that is not JSON names file:line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}:{number}: not a JSON record ({type(e).__name__})") from None


def accuracy_of(model: Any, tokenizer: Any, samples: list[LabelledSample], settings: RewardModelTraining) -> float:
    """The fraction of samples whose logit has the label's sign (logit > 0: predicted right)."""
    from grpo.rewards.model_rewards import reward_model_text

    if not samples:
        return float("nan")
    model.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(samples), settings.batch_size):
            chunk = samples[s : s + settings.batch_size]
            enc = tokenizer([reward_model_text(tokenizer, x.prompt, x.completion) for x in chunk], padding=True,
                            truncation=True, max_length=settings.max_length, add_special_tokens=False,
                            return_tensors="pt").to(model.device)
            logits = model(**enc).logits[:, 0]
            right += sum(int((logit > 0) == (x.label > 0.5)) for logit, x in zip(logits.tolist(), chunk, strict=True))
    return right / len(samples)


def fit(model: Any, tokenizer: Any, samples: list[LabelledSample], settings: RewardModelTraining) -> None:
    """Train `model` in place on `samples` with transformers' Trainer (logistic loss on its one
    logit). The global RNG streams are left as they were: the policy's sampling, which shares
    them, continues as if nothing had run (iterative RL resumes exactly)."""
    from datasets import Dataset

    from grpo.rewards.model_rewards import reward_model_text

    texts = [reward_model_text(tokenizer, x.prompt, x.completion) for x in samples]
    enc = tokenizer(texts, truncation=True, max_length=settings.max_length, add_special_tokens=False)
    model.config.problem_type = "multi_label_classification"  # one logit: BCE-with-logits
    train_with_trainer(model, tokenizer, Dataset.from_dict({**enc, "labels": [[x.label] for x in samples]}), settings)


def train_with_trainer(model: Any, tokenizer: Any, data: Any, settings: RewardModelTraining,
                       collator: Any = None) -> None:
    """transformers' Trainer over `data`, the global RNG streams restored afterwards."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from grpo.training.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    try:
        with tempfile.TemporaryDirectory(prefix="grpo-rm-") as scratch:
            args = TrainingArguments(
                output_dir=scratch, num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
                per_device_train_batch_size=settings.batch_size, seed=settings.seed, data_seed=settings.seed,
                save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                use_cpu=model.device.type == "cpu", dataloader_num_workers=0)
            trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              data_collator=collator)
            trainer.remove_callback(PrinterCallback)  # its end-of-training dict would land in the run's output
            trainer.train()
    finally:
        set_rng_state(saved)
    model.eval()


def split_held_out(samples: list[LabelledSample], fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, `fraction` of the samples held out."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(samples) * fraction))
    return [samples[i] for i in order[cut:]], [samples[i] for i in order[:cut]]


def with_seeded_head(load: Any, seed: int) -> Any:
    """`load()`, a from_pretrained that adds a freshly initialized head, with that head drawn from
    `seed` whatever the global RNG state: the same base and seed give the same reward model (its
    accuracy no longer depends on what ran before in the process); the global streams are left
    as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load()


def load_for_training(base: str | Path, seed: int = 0) -> tuple[Any, Any]:
    """A one-logit sequence classifier from a local directory (a causal LM's gets a new head, seeded)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (Path(base) / "config.json").is_file():
        raise ValueError(f"--base {str(base)!r} is not a local model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if not tokenizer.chat_template:
        raise ValueError(f"--base {str(base)!r}: its tokenizer has no chat template (the reward_model reward "
                         "renders prompt + completion with it)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = with_seeded_head(
        lambda: AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32), seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_reward_model(samples: list[LabelledSample], base: str | Path, out: str | Path,
                       settings: RewardModelTraining, held_out: float = 0.2) -> dict[str, Any]:
    """Train from `base` on `samples` (held_out of them kept aside), save into `out`; the metrics."""
    if not samples:
        raise ValueError("no labelled samples to train the reward model on")
    model, tokenizer = load_for_training(base, settings.seed)
    train, test = split_held_out(samples, held_out, settings.seed)
    metrics: dict[str, Any] = {"num_train": len(train), "num_held_out": len(test),
                               "positive_fraction": sum(x.label for x in samples) / len(samples),
                               "held_out_accuracy_before": accuracy_of(model, tokenizer, test, settings)}
    fit(model, tokenizer, train, settings)
    metrics["held_out_accuracy_after"] = accuracy_of(model, tokenizer, test, settings)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rm_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
