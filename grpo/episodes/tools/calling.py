"""call_tool: run one tool call and turn every failure into an observation; never raises.

Error kinds (ToolResult.error; None on success), for the `tools/<name>/errors` counts:
- "bad_arguments": the arguments are not a JSON object, or miss / add argument names
- "raised": the function raised (a ToolError's message is shown as is, others with the type)
- "timeout": the call ran past `timeout`, or the tool stopped itself at its own time limit
- "bad_output": `str()` of the result failed, or the text cannot be encoded as UTF-8

Threads: like the reward harness (grpo.rewards.harness), a call runs on a daemon thread that is
abandoned when it overruns, since CPython cannot kill a thread. The harness's runner is built
for N calls of one function sharing a thread and a float result, so a single call has its own
ten-line version here rather than bending that one. Tools that start processes (the python
tool) enforce their own time limit and kill what they started, so abandoning their thread
leaks no process.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any

from grpo.episodes.tools.errors import ToolError
from grpo.plugins.abandoned import abandon

__all__ = ["ERROR_KINDS", "ToolResult", "call_tool"]

ERROR_KINDS = ("bad_arguments", "raised", "timeout", "bad_output")


@dataclass
class ToolResult:
    text: str  # the observation the model sees: the result, or `error: ...`
    error: str | None  # None on success, else one of ERROR_KINDS


def call_tool(tool: Any, arguments: Any, timeout: float, max_chars: int = 4000) -> ToolResult:
    """Call `tool.function(**arguments)` within `timeout` seconds; output over `max_chars`
    characters is cut, with a marker that says how much was cut (not an error)."""
    problem = _argument_problem(tool, arguments)
    if problem:
        return ToolResult(f"error: bad arguments for {tool.name}: {problem}", "bad_arguments")
    finished, value = _call_with_timeout(tool.function, arguments, timeout)
    if not finished:
        return ToolResult(f"error: {tool.name} timed out after {timeout:g} s", "timeout")
    if isinstance(value, _Raised):
        return ToolResult(f"error: {value.message}", value.kind)
    text, problem = _as_text(value)
    if problem:
        return ToolResult(f"error: {tool.name} returned {problem}", "bad_output")
    return ToolResult(_truncate(text, max_chars), None)


def _argument_problem(tool: Any, arguments: Any) -> str | None:
    """Why `arguments` cannot be passed to the tool's function, or None."""
    if not isinstance(arguments, dict):
        return f"expected a JSON object of named arguments, got {type(arguments).__name__}"
    if not all(isinstance(k, str) for k in arguments):
        return "argument names must be strings"
    signature = inspect.signature(tool.function)
    try:
        signature.bind(**arguments)
    except TypeError as e:
        return f"{e}; expected {_expected(signature)}"
    return None


def _expected(signature: inspect.Signature) -> str:
    names = [f"{p.name}" + ("" if p.default is inspect.Parameter.empty else " (optional)")
             for p in signature.parameters.values()]
    return ", ".join(names) or "no arguments"


class _Raised:
    """What a call raised, already turned into the model's message."""

    def __init__(self, error: BaseException):
        self.kind = error.kind if isinstance(error, ToolError) else "raised"
        shown = _safe_str(error)
        self.message = shown if isinstance(error, ToolError) else f"{type(error).__name__}: {shown}"


def _call_with_timeout(function: Any, arguments: dict, timeout: float) -> tuple[bool, Any]:
    """(finished, value or _Raised); on timeout the daemon thread is abandoned."""
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(function(**arguments))
        except BaseException as e:  # noqa: BLE001 - contained: it becomes the observation
            box.append(_Raised(e))

    thread = threading.Thread(target=work, daemon=True, name="tool-call")
    thread.start()
    thread.join(timeout)
    if not box:
        abandon(thread)  # so the program's exit does not wait for it, nor crash under it (grpo.plugins.abandoned)
        return False, None
    return True, box[0]


def _as_text(value: Any) -> tuple[str, str | None]:
    """(text, None), or ("", why the value has no text the model can read)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception as e:  # noqa: BLE001 - a user __str__ can raise anything
        return "", f"a {type(value).__name__} whose str() raised {type(e).__name__}"
    if not isinstance(text, str):
        return "", f"a {type(value).__name__} whose str() is not a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "", "text that is not valid unicode (lone surrogates)"
    return text, None


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        return "(message unavailable)"


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n... [output truncated: {len(text) - max_chars} more characters]"
