"""What a task hands the trainer: examples with chat prompts and checkable answers.

Also the pieces every source shares, so procedural and file tasks split and prompt the same
way: `take_distinct` carves disjoint eval / few-shot pieces out of one stream of examples,
and `attach_prompts` writes the chat (system prompt, worked examples, question).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the problem step by step inside "
    "<think> </think> tags, then give only the final answer inside <answer> </answer> tags, "
    "for example: <think> reasoning here </think> <answer> 42 </answer>"
)


@dataclass
class Example:
    """One prompt with its checkable answer.

    id: stable identifier (used in warnings and logs); prompt: chat messages
    [{"role": ..., "content": ...}], system prompt included; answer: the gold answer as a
    string; metadata: anything the task or a reward needs (the raw question, difficulty, its gold
    demonstration...).
    """

    id: str
    prompt: list[dict[str, str]]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The last user message: the question itself, without template or examples."""
        return self.metadata.get("question") or next(
            (m["content"] for m in reversed(self.prompt) if m["role"] == "user"), ""
        )

    @property
    def demonstration(self) -> str | None:
        """A gold completion of this prompt in the rewarded layout (attach_prompts writes it: the worked-example
        text of the task's source), or None where the example has none (one built by hand)."""
        return self.metadata.get("demonstration")


@dataclass
class Task:
    """What `build_task` returns: a name for logs, training and held-out examples.

    No question appears in more than one of `train`, `eval` and `few_shot`; `eval` holds
    distinct questions (a repeated held-out question would count twice in accuracy), while
    `train` may repeat one when the generator does, so its difficulty mix is left as drawn.
    `few_shot` lists the worked examples whose turns precede every prompt (kept so a run can
    show exactly what the model was shown).
    """

    name: str
    train: list[Example]
    eval: list[Example]
    few_shot: list[Example] = field(default_factory=list)


def question_key(question: str) -> str:
    """The form in which questions are compared for overlap: whitespace runs collapsed."""
    return " ".join(question.split())


def take_distinct(rows: Iterator[Example], k: int, seen: set[str]) -> list[Example]:
    """The next `k` rows of `rows` whose question is not in `seen` (which then gets them).

    Consumes `rows` only as far as needed, so several calls on one iterator carve
    consecutive, disjoint pieces out of one stream: eval first, then the few-shot pool.
    """
    out: list[Example] = []
    if k <= 0:
        return out
    for ex in rows:
        key = question_key(ex.question)
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
        if len(out) == k:
            break
    return out


def worked_answer(think: str, answer: str) -> str:
    """The completion layout the default system prompt asks for, and the rewards check."""
    return f"<think> {think.strip()} </think> <answer> {answer.strip()} </answer>"


def generic_think(answer: str) -> str:
    """Reasoning text for a worked example when the source gives none of its own."""
    return f"Working through the problem step by step, the result is {answer}."


def attach_prompts(
    examples: list[Example],
    system_prompt: str,
    shots: list[Example],
    think: Callable[[Example], str],
) -> None:
    """Fill each example's chat prompt: system, then the worked examples, then its question.

    system_prompt "" means no system turn at all (for chat templates without a system role;
    prompts.default_system_prompt resolves a null task.system_prompt). Each worked example is a user turn with its
    question and an assistant turn in the exact <think>/<answer> layout: a 135M model
    copies the format from one such turn far more reliably than from the instruction alone.
    The few-shot examples themselves get the prompt without shots. Every example also gets its gold
    demonstration (metadata["demonstration"]): the same worked-answer text a worked example shows, which
    algorithm.aux_losses gold_sft trains on.
    """
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns: list[dict[str, str]] = []
    for shot in shots:
        turns.append({"role": "user", "content": shot.question})
        turns.append({"role": "assistant", "content": worked_answer(think(shot), shot.answer)})
    for ex in examples:
        ex.prompt = [dict(m) for m in head + turns] + [{"role": "user", "content": ex.question}]
        ex.metadata["demonstration"] = worked_answer(think(ex), ex.answer)
    for shot in shots:
        shot.prompt = [dict(m) for m in head] + [{"role": "user", "content": shot.question}]


class DataStream:
    """Training examples in a seeded order, reshuffled each epoch; resumable from a count."""

    def __init__(self, examples: list[Example], seed: int, position: int = 0):
        if not examples:
            raise ValueError("the task has no training examples")
        self.examples, self.seed, self.position = examples, seed, position
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its permutation), built once per epoch

    def take(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            epoch, index = divmod(self.position, len(self.examples))
            if self._order[0] != epoch:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                self._order = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
            out.append(self.examples[self._order[1][index]])
            self.position += 1
        return out
