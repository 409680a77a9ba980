"""Where prompts and answers come from.

    task = build_task(cfg.task)   # -> Task(name, train, eval, few_shot)

Three sources: procedural reasoning-gym generators (`procedural.py`), local data files
(`files.py`, read by `readers.py`) and datasets by name from the local Hugging Face cache
(`hub.py`, then read as files are). Both split the same way (base.take_distinct: no question
in two of train / eval / few-shot) and prompt the same way (base.attach_prompts: system
prompt, `few_shot` worked examples as prior chat turns, then the question); `prompts.py`
turns those messages into the text the model continues (chat or plain-text template).
"""

from __future__ import annotations

from collections.abc import Callable

from grpo.config import TaskConfig
from grpo.plugins.registry import Registry
from grpo.tasks.base import DEFAULT_SYSTEM_PROMPT, Example, Task
from grpo.tasks.prompts import PromptFormat

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Example", "PromptFormat", "SOURCES", "Task", "build_task"]

# task.source -> builder (TaskConfig) -> Task, imported when a task is built (reasoning-gym is heavy).
SOURCES: Registry[Callable[[TaskConfig], Task]] = Registry("task source", "task.source")
SOURCES.register("reasoning_gym", "grpo.tasks.procedural:build_procedural_task")
SOURCES.register("file", "grpo.tasks.files:build_file_task")
SOURCES.register("hub", "grpo.tasks.files:build_file_task")  # a cached dataset, read as files are


def build_task(cfg: TaskConfig) -> Task:
    """The task `cfg` describes (validated by Config.validate); ValueError for bad data."""
    return SOURCES.get(cfg.source)(cfg)
