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

from importlib import import_module

from grpo.config import TaskConfig
from grpo.tasks.base import DEFAULT_SYSTEM_PROMPT, Example, Task
from grpo.tasks.prompts import PromptFormat

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Example", "PromptFormat", "SOURCES", "Task", "build_task"]

# task.source -> (module, builder): imported when a task is built (reasoning-gym is heavy)
SOURCES = {
    "reasoning_gym": ("grpo.tasks.procedural", "build_procedural_task"),
    "file": ("grpo.tasks.files", "build_file_task"),
    "hub": ("grpo.tasks.files", "build_file_task"),  # a cached dataset is read as its files are
}


def build_task(cfg: TaskConfig) -> Task:
    """The task `cfg` describes (validated by Config.validate); ValueError for bad data."""
    if cfg.source in SOURCES:
        module, builder = SOURCES[cfg.source]
        return getattr(import_module(module), builder)(cfg)
    raise ValueError(
        f"config field `task.source` = {cfg.source!r} is invalid; allowed: reasoning_gym, file, hub"
    )
