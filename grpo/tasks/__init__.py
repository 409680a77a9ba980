"""Where prompts and answers come from.

    task = build_task(cfg.task)   # -> Task(name, train, eval, few_shot)

Two sources: procedural reasoning-gym generators (`procedural.py`) and local data files
(`files.py`, read by `readers.py`). Both split the same way (base.take_distinct: no question
in two of train / eval / few-shot) and prompt the same way (base.attach_prompts: system
prompt, `few_shot` worked examples as prior chat turns, then the question).
"""

from __future__ import annotations

from grpo.config import TaskConfig
from grpo.tasks.base import DEFAULT_SYSTEM_PROMPT, Example, Task, render_prompt

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Example", "Task", "build_task", "render_prompt"]


def build_task(cfg: TaskConfig) -> Task:
    """The task `cfg` describes (validated by Config.validate); ValueError for bad data."""
    if cfg.source == "reasoning_gym":
        from grpo.tasks.procedural import build_procedural_task

        return build_procedural_task(cfg)
    if cfg.source == "file":
        from grpo.tasks.files import build_file_task

        return build_file_task(cfg)
    raise ValueError(
        f"config field `task.source` = {cfg.source!r} is invalid; allowed: reasoning_gym, file"
    )
