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

from typing import TYPE_CHECKING

from grpo.tasks.base import DEFAULT_SYSTEM_PROMPT, Example, Task
from grpo.tasks.prompts import PromptFormat

if TYPE_CHECKING:  # grpo.config imports grpo.tasks.prompts for its allowed templates
    from grpo.config import TaskConfig

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Example", "PromptFormat", "Task", "build_task"]


def build_task(cfg: TaskConfig) -> Task:
    """The task `cfg` describes (validated by Config.validate); ValueError for bad data."""
    if cfg.source == "reasoning_gym":
        from grpo.tasks.procedural import build_procedural_task

        return build_procedural_task(cfg)
    if cfg.source in ("file", "hub"):
        from grpo.tasks.files import build_file_task

        return build_file_task(cfg)
    raise ValueError(
        f"config field `task.source` = {cfg.source!r} is invalid; allowed: reasoning_gym, file, hub"
    )
