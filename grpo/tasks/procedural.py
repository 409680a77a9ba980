"""Procedural tasks from reasoning-gym: endless fresh questions with exact answers.

    task = build_procedural_task(TaskConfig(name="chain_sum", params={"max_terms": 3}))

All examples come from ONE generator stream (one seed), cut in order: the first `num_eval`
distinct questions are held out, the next `few_shot` distinct ones become worked examples,
and the rest, minus any question already used, is the training set. One stream rather than
one seed per split because reasoning-gym seeds item i with `seed + i`, so "seed 1234" and
"seed 1235" share all but one item: separate seeds would leak eval questions into training.

Each example keeps reasoning-gym's own metadata under `metadata["reasoning_gym"]`;
`reasoning_gym_entry` turns an example back into the entry its `score_answer` expects, for
tasks whose answers are not single numbers (countdown's answer is any expression that works).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator
from itertools import islice
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

# Tries with a doubled stream before concluding the generator has too few distinct questions.
_MAX_DOUBLINGS = 4


def build_procedural_task(cfg: TaskConfig) -> Task:
    """Generate eval, few-shot and train examples for reasoning-gym dataset `cfg.name`."""
    registry = _registry()
    if cfg.name not in registry:
        close = difflib.get_close_matches(cfg.name, list(registry), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"config field `task.name` = {cfg.name!r} is not a reasoning-gym dataset; {hint}"
            f"available include: {', '.join(sorted(registry)[:15])}, ... ({len(registry)} in all)"
        )
    params = dict(cfg.params)
    accepted = _accepted_params(registry[cfg.name][1])
    reserved = sorted({"seed", "size"} & set(params))
    if reserved:
        raise ValueError(
            f"config field `task.params` sets {', '.join(reserved)}: use task.seed and "
            "task.num_train / task.num_eval instead"
        )
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"config field `task.params` has unknown key(s) {', '.join(unknown)} for "
            f"reasoning-gym dataset {cfg.name!r}; accepted: {', '.join(accepted)}"
        )

    needed = cfg.num_eval + cfg.few_shot + cfg.num_train
    size = max(needed, 1)
    for _ in range(_MAX_DOUBLINGS + 1):
        rows = _stream(cfg.name, params, cfg.seed, size)
        seen: set[str] = set()
        eval_ = take_distinct(rows, cfg.num_eval, seen)
        shots = take_distinct(rows, cfg.few_shot, seen)
        train = list(
            islice((ex for ex in rows if question_key(ex.question) not in seen), cfg.num_train)
        )
        if (len(eval_), len(shots), len(train)) == (cfg.num_eval, cfg.few_shot, cfg.num_train):
            break
        size *= 2  # repeated questions used up the stream; a longer one may still fill it
    else:
        raise ValueError(
            f"reasoning-gym dataset {cfg.name!r} with task.params = {params!r} gave only "
            f"{len(eval_)} distinct held-out, {len(shots)} few-shot and {len(train)} training "
            f"questions (wanted {cfg.num_eval}, {cfg.few_shot}, {cfg.num_train}) in {size // 2} "
            "draws: it has too few distinct questions; lower task.num_eval / task.few_shot / "
            "task.num_train or widen task.params"
        )
    think = calculator_think if cfg.few_shot_calculator else worked_think
    attach_prompts(eval_ + train, default_system_prompt(cfg), shots, think)
    return Task(name=cfg.name, train=train, eval=eval_, few_shot=shots)


def worked_think(ex: Example) -> str:
    """Short reasoning for a worked example, built from the generator's metadata.

    chain_sum gets its running sums ("3 + 45 = 48, 48 - 2 = 46"), gsm_symbolic its own
    chain of thought, other tasks with an expression "expression = value"; the rest a
    generic sentence. It only has to show the layout, not teach the task.
    """
    meta = ex.metadata.get("reasoning_gym") or {}
    expression = str(meta.get("expression") or "")
    if meta.get("source_dataset") == "chain_sum" and expression:
        steps = _running_sums(expression, ex.answer)
        if steps:
            return steps
    if meta.get("answer_cot"):
        cot = "\n".join(
            ln for ln in str(meta["answer_cot"]).splitlines() if not ln.startswith("####")
        )
        return cot.strip()
    if expression and expression != ex.answer:
        return f"{expression} = {ex.answer}"
    if expression and meta.get("target") is not None:  # countdown: the answer is the expression
        return f"{expression} = {meta['target']}"
    return generic_think(ex.answer)


def calculator_think(ex: Example) -> str:
    """A worked example that calls the calculator on its expression, its reply inline (the
    `inline` tool format), then states the result: a small model copies a call from one."""
    expression = str((ex.metadata.get("reasoning_gym") or {}).get("expression") or "")
    if not expression:
        return worked_think(ex)
    call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return (f"I use the calculator. <tool_call>{call}</tool_call>\n<tool_response>\n{ex.answer}\n"
            f"</tool_response>\nSo {expression} = {ex.answer}.")


def reasoning_gym_entry(ex: Example) -> dict[str, Any]:
    """The reasoning-gym entry of `ex`, for `get_score_answer_fn(name)(answer, entry)`."""
    return {
        "question": ex.question,
        "answer": ex.answer,
        "metadata": ex.metadata.get("reasoning_gym", {}),
    }


def _running_sums(expression: str, answer: str) -> str | None:
    """'3 + 45 - 2' -> '3 + 45 = 48, 48 - 2 = 46'; None if it does not parse or disagree."""
    tokens = expression.split()
    try:
        total = int(tokens[0])
        steps = []
        for op, term in zip(tokens[1::2], tokens[2::2], strict=True):
            new = total + int(term) if op == "+" else total - int(term) if op == "-" else None
            if new is None:
                return None
            steps.append(f"{total} {op} {term} = {new}")
            total = new
    except (ValueError, IndexError):
        return None
    return ", ".join(steps) if steps and str(total) == answer.strip() else None


def _stream(name: str, params: dict[str, Any], seed: int, size: int) -> Iterator[Example]:
    """Items 0..size-1 of the generator as examples (prompts are attached later)."""
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **params)
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(
            f"config field `task.params` = {params!r} is invalid for reasoning-gym dataset "
            f"{name!r}: {e or type(e).__name__}"
        ) from None
    for i in range(size):
        entry = dataset[i]
        question = str(entry["question"])
        answer = "" if entry.get("answer") is None else str(entry["answer"])
        meta = {"question": question, "task": name, "reasoning_gym": entry.get("metadata", {})}
        yield Example(id=f"{name}:{seed}:{i}", prompt=[], answer=answer, metadata=meta)


def _registry() -> dict[str, tuple[type, type]]:
    """reasoning-gym's name -> (dataset class, config dataclass); importing fills it."""
    import reasoning_gym  # noqa: F401  (registers the datasets)
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _accepted_params(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]


def curriculum_max_level(name: str) -> int:
    """The last level of reasoning-gym's curriculum for `name` (its longest attribute's)."""
    return max(len(a.levels) for a in _curriculum(name).attributes.values()) - 1


def curriculum_examples(cfg: TaskConfig, task: Task, level: int) -> list[Example]:
    """task.num_train training examples of `cfg.name` at curriculum `level` (task.sampler=curriculum).

    Every attribute of reasoning-gym's curriculum is set to `level` (its own last level where
    it has fewer: BaseCurriculum.set_global_level), its range fields override task.params, the
    rest of task.params stays. No question of the task's held-out or worked examples is used
    (those stay at task.params: evaluation measures the target difficulty), and the prompts
    carry the same worked examples. Ids name the level: a prompt's estimate is its own."""
    curriculum = _curriculum(cfg.name)
    curriculum.set_global_level(level)
    config = curriculum.generate_configuration(defaults=dict(cfg.params))
    params = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("seed", "size")}
    seen = {question_key(ex.question) for ex in task.eval + task.few_shot}
    size = cfg.num_train + len(seen)
    rows = (ex for ex in _stream(cfg.name, params, cfg.seed, size) if question_key(ex.question) not in seen)
    train = [dataclasses.replace(ex, id=f"{cfg.name}:level{level}:{ex.id.split(':')[-1]}")
             for ex in islice(rows, cfg.num_train)]
    if not train:
        raise ValueError(f"reasoning-gym dataset {cfg.name!r} at curriculum level {level} gave no question that is "
                         "not held out; lower task.num_eval / task.few_shot")
    think = calculator_think if cfg.few_shot_calculator else worked_think
    attach_prompts(train, default_system_prompt(cfg), task.few_shot, think)  # the shots' own prompts come out as they were
    return train


def _curriculum(name: str) -> Any:
    from reasoning_gym.factory import create_curriculum, has_curriculum

    if not has_curriculum(name):
        raise ValueError(f"config field `task.sampler` = 'curriculum' needs a reasoning-gym task with a curriculum; "
                         f"{name!r} has none (chain_sum, basic_arithmetic, ... do): use task.sampler=difficulty_pool")
    return create_curriculum(name)
