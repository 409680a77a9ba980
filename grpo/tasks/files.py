"""Tasks from local data files: question/answer rows in JSONL, JSON, CSV or Parquet.

    task = build_file_task(TaskConfig(source="file", path="data/gsm8k_train.jsonl"))

Column names come from task.question_field / answer_field / id_field. A GSM8K-style answer
("reasoning ... #### 1,234") is split: the gold answer is what follows the last `####`, with
thousands commas removed ("1234"); the reasoning before it goes to metadata["reasoning"] and
becomes the <think> text when the row is used as a worked example.

The split: with task.eval_path, its first num_eval distinct questions are held out (in file
order, so the same rows every run); without it, num_eval distinct questions are drawn from
the training file in an order seeded by task.seed (none without evaluation: Config.validate
sets num_eval 0 when eval.num_examples is 0, so no row is lost to training for nothing;
grpo.config.rules.held_out_for_evaluation). Few-shot examples
come next from the training file in the seeded order. Training keeps every other row of the
training file, in file order, minus any row whose question is held out or used as a worked
example. A split that leaves no training row is one ValueError naming task.num_eval, the row
count and what to set.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from grpo.config import TaskConfig
from grpo.tasks.base import (
    Example,
    Task,
    attach_prompts,
    generic_think,
    question_key,
    take_distinct,
)
from grpo.tasks.prompts import default_system_prompt
from grpo.tasks.readers import Table, read_table, shown

_KINDS = {list: "a list", dict: "an object (a mapping)", bytes: "binary data"}
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" calculator annotations


def build_file_task(cfg: TaskConfig) -> Task:
    """Load `cfg.path` (and `cfg.eval_path`), or with source=hub the cached dataset `cfg.name`
    (grpo.tasks.hub: its test or validation split held out), split, and attach prompts."""
    held_out = None
    if cfg.source == "hub":
        from grpo.tasks.hub import read_cached

        table, held_out = read_cached(cfg.name, cfg.subset)
        name = cfg.name
    elif cfg.path is None:
        raise ValueError(
            "config field `task.path` is null: a data file is needed when task.source=file"
        )
    else:
        table, name = read_table(cfg.path, "task.path"), Path(cfg.path).name
    if cfg.eval_path is not None:
        held_out = read_table(cfg.eval_path, "task.eval_path")
    train_rows = read_examples(table, cfg)
    order = list(range(len(train_rows)))
    random.Random(cfg.seed).shuffle(order)
    shuffled = iter([train_rows[i] for i in order])

    seen: set[str] = set()
    if held_out is not None:
        eval_ = take_distinct(iter(read_examples(held_out, cfg)), cfg.num_eval, seen)
    else:
        eval_ = take_distinct(shuffled, cfg.num_eval, seen)
    shots = take_distinct(shuffled, cfg.few_shot, seen)
    train = [ex for ex in train_rows if question_key(ex.question) not in seen]

    if len(shots) < cfg.few_shot or not train:
        raise ValueError(_too_few(table, train_rows, cfg, from_training=held_out is None))
    attach_prompts(eval_ + train, default_system_prompt(cfg), shots, file_think)
    return Task(name=name, train=train, eval=eval_, few_shot=shots)


def _too_few(table: Table, rows: list[Example], cfg: TaskConfig, from_training: bool) -> str:
    """The one message for a split that leaves no training row, naming the fields to set."""
    distinct = len({question_key(ex.question) for ex in rows})
    head = f"data {str(table.path)!r} has {len(rows)} rows ({distinct} distinct questions)"
    if not (from_training and cfg.num_eval):
        return (f"{head}: too few for {cfg.few_shot} worked examples (task.few_shot) plus at least one training "
                "row once the held-out questions are dropped; lower task.few_shot or add rows")
    fits = max(1, distinct // 5)  # a fifth held out, as a train/test split of a small set often is
    advice = f"task.num_eval={fits} (a fifth of the questions), " if distinct - cfg.few_shot > fits else ""
    return (f"{head}: too few for {cfg.num_eval} held out for evaluation (task.num_eval = {cfg.num_eval}) plus {cfg.few_shot} worked examples (task.few_shot) plus at least one training "
            f"row; set {advice}eval.num_examples=0 (no evaluation: nothing is held out), or give the held-out rows "
            "apart (task.eval_path; grpo.train(dataset=...) a DatasetDict with a test split)")


def read_examples(table: Table, cfg: TaskConfig) -> list[Example]:
    """Every row of `table` as an Example (prompt attached later); errors name file and row."""
    examples, ids = [], {}
    for i, row in enumerate(table.rows):
        question = _text(row, cfg.question_field, "task.question_field", table, i)
        raw_answer = _text(row, cfg.answer_field, "task.answer_field", table, i)
        answer, reasoning = parse_answer(raw_answer)
        if not answer:
            raise ValueError(
                f"data file {str(table.path)!r} {table.where(i)}: field {cfg.answer_field!r} has "
                f"nothing after '####' ({raw_answer[-60:]!r})"
            )
        if cfg.id_field is not None:
            ex_id = _text(row, cfg.id_field, "task.id_field", table, i)
            if ex_id in ids:
                raise ValueError(
                    f"data file {str(table.path)!r} {table.where(i)}: id {ex_id!r} (field "
                    f"{cfg.id_field!r}) repeats the one at {table.where(ids[ex_id])}"
                )
            ids[ex_id] = i
        else:
            ex_id = f"{table.path.name}:{i}"
        meta: dict[str, Any] = {"question": question, "source": str(table.path), "row": i}
        if reasoning:
            meta["reasoning"] = reasoning
        examples.append(Example(id=ex_id, prompt=[], answer=answer, metadata=meta))
    return examples


def parse_answer(raw: str) -> tuple[str, str | None]:
    """GSM8K '... #### 1,234' -> ('1234', '...'); any other answer -> (stripped, None)."""
    if "####" not in raw:
        return raw.strip(), None
    reasoning, final = raw.rsplit("####", 1)
    return final.strip().replace(",", ""), reasoning.strip() or None


def file_think(ex: Example) -> str:
    """The row's own reasoning (calculator annotations removed), else a generic sentence."""
    reasoning = ex.metadata.get("reasoning")
    return _CALCULATOR.sub("", reasoning).strip() if reasoning else generic_think(ex.answer)


def _text(row: dict[str, Any], name: str, field: str, table: Table, i: int) -> str:
    """Field `name` of row i as text; missing or empty is an error naming file, row, columns."""
    value = row.get(name)
    if isinstance(value, list | dict | bytes):  # a nested or binary column: the wrong schema
        raise ValueError(
            f"data file {str(table.path)!r} {table.where(i)}: field {name!r} ({field}) holds "
            f"{_KINDS.get(type(value), type(value).__name__)}; expected text or a number"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Arrow promotes int columns with a float among them: 42.0 -> 42
    text = "" if value is None else str(value).strip()
    if not text:
        if name not in table.columns:
            state = "is missing (no such column)"
        else:
            state = "is missing (null)" if value is None else "is empty"
        raise ValueError(
            f"data file {str(table.path)!r} {table.where(i)}: field {name!r} ({field}) {state}; "
            f"columns: {shown(table.columns)}"
        )
    return text
