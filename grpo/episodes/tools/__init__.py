"""Tools the policy can call in an episode: plain functions with a JSON schema.

    tool = load_tool("calculator")                          # a built-in
    tool = load_tool("python", {"timeout": 5})              # a built-in with options
    tool = load_tool("tools.py:lookup")                     # a user function by import path
    tool.schema        # {"type": "function", "function": {"name", "description", "parameters"}}
    result = call_tool(tool, {"expression": "2 ** 10"}, timeout=10.0)
    result.text, result.error                               # "1024", None

A user tool is a function with type hints on every argument and a Google-style docstring
(a description, then `Args:` with one `name: description` line per argument); its schema is
`transformers.utils.get_json_schema(function)`, the layout chat templates take as `tools=`.
With options, the named attribute is a factory called as `attr(**options)` that returns the
function (as for rewards). The tool's name is the function's `__name__`.

Built-ins (factories in BUILTIN_TOOLS, a grpo.plugins.registry table; their names in TOOL_NAMES):
- `calculator` (grpo.episodes.tools.calculator): exact arithmetic, no options.
- `python` (grpo.episodes.tools.python_tool): runs a program in a separate, limited process (under
  bubblewrap where it works); options are the fields of `PythonLimits`.

`call_tool` never raises: bad arguments, a raise, a timeout or an unprintable result become a
ToolResult whose `error` is the kind and whose `text` is the message the model sees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpo.episodes.tools.calculator import calculator
from grpo.episodes.tools.calling import ERROR_KINDS, ToolResult, call_tool
from grpo.episodes.tools.errors import ToolError
from grpo.episodes.tools.python_tool import PythonLimits, make_python_tool, python_isolation
from grpo.plugins.importing import Registered, import_function
from grpo.plugins.registry import Registry

__all__ = [
    "BUILTIN_TOOLS", "ERROR_KINDS", "TOOL_NAMES", "PythonLimits", "Tool", "ToolError", "ToolResult",
    "call_tool", "load_tool", "python_isolation",
]


@dataclass(frozen=True)
class Tool:
    name: str  # what the model calls it: the schema's function name
    function: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters", ...}}


# name -> factory (**options) -> function; factories so a built-in takes options like a reward.
BUILTIN_TOOLS: Registry[Callable[..., Callable[..., Any]]] = Registry("tool", "rollout.tools")


@BUILTIN_TOOLS.register("calculator")
def _calculator_tool() -> Callable[[str], str]:
    return calculator


BUILTIN_TOOLS.register("python", make_python_tool)
TOOL_NAMES = tuple(BUILTIN_TOOLS)


_REGISTERED = Registered()  # tool functions handed over as objects (grpo.api)


def register_function(fn: Callable[..., Any]) -> str:
    """The name under which `fn` (a Python function given to grpo.train) is found by `load_tool`."""
    return _REGISTERED.register(fn)


def load_tool(spec: str, options: dict[str, Any] | None = None) -> Tool:
    """The Tool for a built-in name or a `module.path:function` / `path/to/file.py:function`."""
    options = dict(options or {})
    given = _REGISTERED.get(spec)
    if given is not None:
        function = given
    elif ":" in spec:
        function = _user_tool(spec, options)
    elif spec in BUILTIN_TOOLS:
        function = _builtin_tool(spec, options)
    else:
        raise ValueError(
            f"unknown tool {spec!r}; built-in: {', '.join(TOOL_NAMES)}; or a user function given "
            "as `module.path:function` or `path/to/file.py:function`"
        )
    schema = tool_schema(spec, function)
    return Tool(name=schema["function"]["name"], function=function, schema=schema)


def _builtin_tool(name: str, options: dict[str, Any]) -> Callable[..., Any]:
    factory = BUILTIN_TOOLS.get(name)
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**options)  # it checks its own options (python: the PythonLimits fields)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"tool `{name}` has no option `{unknown[0]}`; options: {', '.join(params) or 'none'}")
    return factory(**options)


def _user_tool(spec: str, options: dict[str, Any]) -> Callable[..., Any]:
    obj = import_function(spec, "tool", options)
    attr = spec.rpartition(":")[2]
    if not inspect.isfunction(obj) and not inspect.ismethod(obj):
        # get_json_schema reads a function's own signature and docstring; a callable object's
        # docstring describes the class, so the schema would be wrong: ask for a function.
        raise ValueError(f"tool {spec!r}: {attr} is a {type(obj).__name__}, not a function")
    return obj


def tool_schema(spec: str, function: Callable[..., Any]) -> dict:
    """The function's JSON schema; ValueError saying what to fix when it cannot be built."""
    from transformers.utils import get_json_schema  # slow to import: only when a tool is loaded

    try:
        return get_json_schema(function)
    except Exception as e:
        raise ValueError(
            f"tool {spec!r}: cannot build its JSON schema: {e}. A tool needs a type hint on every "
            "argument and a Google-style docstring: a description, then `Args:` with one "
            "`name: description` line per argument"
        ) from None
