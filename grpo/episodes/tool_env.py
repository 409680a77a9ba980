"""Tool calls in the model's text, and the environment that answers them.

The call layout is Hermes / Qwen's: `<tool_call>{"name": "calculator", "arguments":
{"expression": "12 * 7"}}</tool_call>` (the episode runner stops a turn at `</tool_call>`).
Every result, failure included, goes back to the model as a `tool` message:
  - a call that is not valid JSON, has no name, names no known tool, or an unclosed
    `<tool_call>`: counted as `invalid` (its own name is unknown or untrusted);
  - wrong arguments, a tool that raises, times out or returns something unprintable:
    counted under the tool's name (grpo.episodes.tools.call_tool contains every case).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from grpo.episodes.tools import Tool, call_tool

CALL_END = "</tool_call>"
_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
INVALID = "invalid"  # the counter of calls that name no usable tool


@dataclass(frozen=True)
class ParsedCall:
    """One `<tool_call>` of a turn: a name and arguments, or `problem` saying why it is unusable."""

    name: str | None
    arguments: Any
    problem: str | None = None


def parse_tool_calls(text: str) -> list[ParsedCall]:
    """The tool calls in `text`, in order (an unclosed last one included, as a problem)."""
    calls = []
    for match in _CALL.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        if not closed:
            calls.append(ParsedCall(None, None, f"the tool call is not closed with {CALL_END}"))
            continue
        try:
            call = json.loads(body)
        except ValueError as e:
            calls.append(ParsedCall(None, None, f"the tool call is not valid JSON ({e})"))
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            calls.append(ParsedCall(None, None, 'a tool call is a JSON object {"name": ..., "arguments": {...}}'))
            continue
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass  # call_tool reports arguments that are not an object
        calls.append(ParsedCall(call["name"], arguments))
    return calls


class ToolEnvironment:
    """The built-in environment: answer each tool call of a turn; a turn without one ends the episode.

    tools: the tools the model may call; timeout: seconds per call; max_calls: calls answered
    per turn (more are answered with an error, so one turn cannot run a tool a thousand times).
    """

    def __init__(self, tools: list[Tool], timeout: float, max_calls: int = 8):
        self.by_name = {t.name: t for t in tools}
        self.timeout, self.max_calls = timeout, max_calls
        self.schemas = [t.schema for t in tools]  # what the prompt shows the model

    def reset(self, example: Any) -> list[dict]:
        return [dict(m) for m in example.prompt]

    def step(self, assistant_text: str) -> tuple[list[dict], bool]:
        calls = parse_tool_calls(assistant_text)
        if not calls:
            return [], True
        return [self._answer(call, k) for k, call in enumerate(calls)], False

    def _answer(self, call: ParsedCall, k: int) -> dict:
        if call.problem is not None:
            return _reply(INVALID, f"error: {call.problem}", "malformed")
        tool = self.by_name.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.by_name))
            return _reply(INVALID, f"error: there is no tool {call.name!r}; the tools are: {known}", "unknown_tool")
        if k >= self.max_calls:
            return _reply(tool.name, f"error: at most {self.max_calls} tool calls per turn", "too_many_calls")
        # a tool with its own wall clock (python) gets the time to enforce it and clean up
        own = getattr(tool.function, "wall_seconds", None)
        timeout = self.timeout if own is None else max(self.timeout, own + 5)
        result = call_tool(tool, call.arguments, timeout)
        return _reply(tool.name, result.text, result.error)


def _reply(name: str, content: str, error: str | None) -> dict:
    return {"role": "tool", "name": name, "content": content, "error": error}
