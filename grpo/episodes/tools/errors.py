"""ToolError: a tool's own refusal, shown to the model as `error: <message>`."""

from __future__ import annotations

__all__ = ["ToolError"]


class ToolError(ValueError):
    """Raised by a tool for input it refuses or a run it stopped (a ValueError, as it is the
    model's input that was wrong). `kind` is the error kind `call_tool` reports: "raised" by
    default, "timeout" for a tool that enforced its own time limit (the python tool)."""

    def __init__(self, message: str, kind: str = "raised"):
        super().__init__(message)
        self.kind = kind
