"""Tools: the calculator's arithmetic and refusals, schemas and loading by import path,
call_tool's failure kinds, and the python tool's limits (each ends in a counted error and
leaves no process behind)."""

from __future__ import annotations

import ast
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from grpo.episodes.tools import (
    BUILTIN_TOOLS,
    TOOL_NAMES,
    Tool,
    ToolError,
    call_tool,
    load_tool,
    python_isolation,
)
from grpo.episodes.tools.calculator import calculator
from grpo.plugins import abandoned
from grpo.plugins.importing import import_object

# --------------------------------------------------------------------------- calculator


@pytest.mark.parametrize("expression, expected", [
    ("2 + 3", "5"),
    ("12345678901234567890 * 98765432109876543210", str(12345678901234567890 * 98765432109876543210)),
    ("0.1 + 0.2", "0.3"),  # exact: decimal literals are read from their text
    ("1.5 * 4", "6"),
    ("-3 - -4", "1"),
    ("−7 + 2", "-5"),  # unicode minus
    ("3 × 4 ÷ 8", "1.5"),
    ("((1 + 2) * (3 + 4)) / (2 - (1 - 1))", "10.5"),
    ("2**10", "1024"),
    ("2 ** -2", "0.25"),
    ("-2 ** 2", "-4"),  # Python's precedence: -(2 ** 2)
    ("7/4", "1.75"),
    ("1/3", "1/3"),  # no exact decimal: a fraction in lowest terms
    ("-2/6", "-1/3"),
    ("1/8000", "0.000125"),
    ("2.5e3 + 1_000", "3500"),
    ("+5", "5"),
])
def test_calculator_is_exact(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, says", [
    ("x + 1", "unsupported: 'x'"),
    ("abs(-1)", r"unsupported: 'abs\(-1\)'"),
    ("(1).real", "unsupported"),
    ("__import__('os').system('true')", "unsupported"),
    ("'a' * 3", "not a number"),
    ("True + 1", "not a number"),
    ("1j * 2", "not a number"),
    ("[1, 2]", "unsupported"),
    ("1, 2", "unsupported"),  # a comma makes a tuple: no thousands separators
    ("2 ^ 3", "use \\*\\* for powers"),
    ("7 // 2", "unsupported"),
    ("9**9**9", "exponent 387420489 is too large"),
    ("10 ** 101", "exponent 101 is too large"),
    ("(10 ** 100) ** 100", "result too large"),
    ("(10 ** 60) ** 20", "result too large"),
    ("4 ** 0.5", "fractional exponents"),
    ("1e999999999", "too large"),
    ("1 / 0", "division by zero"),
    ("1 / (2 - 2)", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("1 +", "cannot parse"),
    ("1" + " + 1" * 200, "too long"),
])
def test_calculator_refuses(expression, says):
    with pytest.raises(ToolError, match=says):
        calculator(expression)


def test_calculator_bounds_intermediate_numbers():
    # each factor is fine, the product of many is not: every intermediate value is checked
    with pytest.raises(ToolError, match="too large"):
        calculator(" * ".join(["10 ** 100"] * 11))
    assert calculator(" * ".join(["10 ** 90"] * 11)) == "1" + "0" * 990


def test_calculator_refusals_are_value_errors():
    # ToolError is a ValueError: the model's input was wrong
    with pytest.raises(ValueError):
        calculator("import os")


# --------------------------------------------------------------------------- schemas and loading

USER_TOOLS = '''
def lookup(key: str, limit: int = 3) -> str:
    """Look a key up in the table.

    Args:
        key: the key to look up
        limit: how many rows to return
    """
    return f"{key}:{limit}"

def make_lookup(prefix: str):
    def prefixed(key: str) -> str:
        """Look a key up with a prefix.

        Args:
            key: the key to look up
        """
        return prefix + key
    return prefixed

def no_docs(key: str) -> str:
    return key

def no_hints(key):
    """Look.

    Args:
        key: the key
    """
    return key

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_tools(tmp_path, monkeypatch):
    name = f"user_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, tmp_path / f"{name}.py"


def test_builtin_schemas():
    assert TOOL_NAMES == ("calculator", "python") == tuple(BUILTIN_TOOLS)
    with pytest.raises(ValueError, match=r"unknown tool 'abacus'; built-in: calculator, python; or a user function"):
        load_tool("abacus")
    calc = load_tool("calculator").schema
    assert calc["type"] == "function"
    assert calc["function"]["name"] == "calculator"
    assert calc["function"]["parameters"] == {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": calc["function"]["parameters"]
                                      ["properties"]["expression"]["description"]}},
        "required": ["expression"],
    }
    python = load_tool("python", {"timeout": 3}).schema["function"]
    assert python["name"] == "python"
    assert list(python["parameters"]["properties"]) == ["code"]  # the limits are not model-visible
    assert python["parameters"]["required"] == ["code"]


def test_user_tool_by_file_and_module_path(user_tools):
    name, path = user_tools
    for target in (str(path), name):
        tool = load_tool(f"{target}:lookup")
        assert tool.name == "lookup"
        params = tool.schema["function"]["parameters"]
        assert params["properties"]["key"] == {"type": "string", "description": "the key to look up"}
        assert params["properties"]["limit"]["type"] == "integer"
        assert params["required"] == ["key"]
        assert tool.schema["function"]["description"] == "Look a key up in the table."
        assert call_tool(tool, {"key": "a"}, timeout=5).text == "a:3"
    factory_made = load_tool(f"{path}:make_lookup", {"prefix": "p-"})  # options: a factory
    assert factory_made.name == "prefixed"
    assert call_tool(factory_made, {"key": "k"}, timeout=5).text == "p-k"


def test_user_tool_errors_name_the_tool_and_the_fix(user_tools, tmp_path):
    name, path = user_tools
    with pytest.raises(ValueError, match=r"tool .*:no_docs.*: cannot build its JSON schema.*Google-style docstring"):
        load_tool(f"{path}:no_docs")
    with pytest.raises(ValueError, match=r"tool .*:no_hints.*: cannot build its JSON schema.*type hint"):
        load_tool(f"{name}:no_hints")
    with pytest.raises(ValueError, match="is a int, not a function"):
        load_tool(f"{path}:NOT_A_FUNCTION")
    with pytest.raises(ValueError, match=r"^tool .*has no attribute 'nope'"):
        load_tool(f"{path}:nope")
    with pytest.raises(ValueError, match=r"^tool .*does not exist"):
        load_tool(f"{tmp_path / 'missing.py'}:lookup")
    with pytest.raises(ValueError, match=r"^tool 'no_such_module_xyz:f': cannot import module"):
        load_tool("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="unknown tool 'calc'; built-in: calculator, python"):
        load_tool("calc")
    with pytest.raises(ValueError, match="tool `calculator` has no option `precision`"):
        load_tool("calculator", {"precision": 3})
    with pytest.raises(ValueError, match="tool `python` has no option `memory`; options: timeout"):
        load_tool("python", {"memory": 3})
    with pytest.raises(ValueError, match="option `timeout` = -1 is invalid"):
        load_tool("python", {"timeout": -1})


def test_import_object_is_shared_and_names_what(user_tools):
    _, path = user_tools
    assert import_object(f"{path}:lookup", "tool") is import_object(f"{path}:lookup", "reward")
    with pytest.raises(ValueError, match=r"^environment 'x': expected `module.path:function`"):
        import_object("x", "environment")


# --------------------------------------------------------------------------- call_tool


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")


def _tool(function):
    """A Tool around a function without a schema (call_tool needs only name and function)."""
    return Tool(name=function.__name__, function=function, schema={})


def add(a: int, b: int = 0) -> int:
    return a + b


def test_call_tool_success_and_truncation():
    calc = load_tool("calculator")
    assert call_tool(calc, {"expression": "6 * 7"}, timeout=5).text == "42"
    assert call_tool(calc, {"expression": "6 * 7"}, timeout=5).error is None
    long = call_tool(_tool(lambda: "x" * 5000), {}, timeout=5, max_chars=100)
    assert long.error is None  # cut, not an error
    assert long.text.startswith("x" * 100) and "[output truncated: 4900 more characters]" in long.text


@pytest.mark.parametrize("arguments, says", [
    ([1, 2], "expected a JSON object of named arguments, got list"),
    ("a=1", "got str"),
    ({}, "missing a required argument: 'a'; expected a, b \\(optional\\)"),
    ({"a": 1, "c": 2}, "unexpected keyword argument 'c'"),
])
def test_call_tool_bad_arguments(arguments, says):
    result = call_tool(_tool(add), arguments, timeout=5)
    assert result.error == "bad_arguments"
    assert result.text.startswith("error: bad arguments for add: ")
    assert re.search(says, result.text)


def test_call_tool_failures_become_observations():
    def divide(a: int) -> float:
        return a / 0

    def sleepy() -> str:
        import time

        time.sleep(30)
        return "late"

    def exits() -> str:
        raise SystemExit(3)

    raised = call_tool(_tool(divide), {"a": 1}, timeout=5)
    assert (raised.error, raised.text) == ("raised", "error: ZeroDivisionError: division by zero")
    refused = call_tool(load_tool("calculator"), {"expression": "1/0"}, timeout=5)
    assert (refused.error, refused.text) == ("raised", "error: division by zero")  # a ToolError: no type name
    assert call_tool(_tool(exits), {}, timeout=5).error == "raised"  # even SystemExit is contained
    running_before = abandoned.running()
    timed_out = call_tool(_tool(sleepy), {}, timeout=0.2)
    assert (timed_out.error, timed_out.text) == ("timeout", "error: sleepy timed out after 0.2 s")
    assert abandoned.running() == running_before + 1  # recorded, so the program's exit cannot crash under it
    unprintable = call_tool(_tool(lambda: Unprintable()), {}, timeout=5)
    assert unprintable.error == "bad_output"
    assert "Unprintable whose str() raised RuntimeError" in unprintable.text
    surrogate = call_tool(_tool(lambda: "bad \udc80 text"), {}, timeout=5)
    assert surrogate.error == "bad_output"


# --------------------------------------------------------------------------- the python tool
# Limits are tightened where that keeps the test short; the behaviour is the same at the defaults.
# Generous clock bounds only: "within the limit + 10 s" on a loaded 2-core machine.

ISOLATIONS = ["process"] + (["bubblewrap"] if python_isolation() == "bubblewrap" else [])


def _run(code: str, **limits) -> tuple[object, float, str]:
    """(ToolResult, seconds, marker): the code is tagged so its processes can be found after."""
    marker = f"grpo_test_marker_{uuid.uuid4().hex}"
    tool = load_tool("python", limits)
    started = time.monotonic()
    result = call_tool(tool, {"code": f"# {marker}\n{code}"}, timeout=120, max_chars=100_000)
    return result, time.monotonic() - started, marker


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (the code travels in argv)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def _assert_nothing_left(marker: str) -> None:
    assert _processes_with(marker) == []


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="scans /proc")


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_runs_a_program(isolation):
    result, _, marker = _run("print(2 + 3)", isolation=isolation)
    assert (result.error, result.text) == (None, "5\n")
    failed, _, _ = _run("1 / 0", isolation=isolation)
    assert failed.error == "raised"
    assert failed.text.startswith("error: the program failed (exit status 1)")
    assert failed.text.endswith("ZeroDivisionError: division by zero")  # the traceback's last line
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_environment_is_empty_and_workdir_fresh(isolation, monkeypatch):
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    code = "import os\nprint(sorted(os.environ))\nprint(os.listdir('.'))\nopen('f', 'w').write('x')"
    result, _, _ = _run(code, isolation=isolation)
    assert result.error is None
    names, files = result.text.splitlines()
    assert "GRPO_TEST_SECRET" not in names and set(ast.literal_eval(names)) <= {"PATH", "LANG", "HOME", "PWD"}
    assert files == "[]"


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_infinite_loop_is_stopped_by_the_cpu_limit(isolation):
    result, seconds, marker = _run("while True: pass", cpu_seconds=1, isolation=isolation)
    assert result.error == "raised" and "CPU time limit of 1 s" in result.text
    assert seconds < 10 + 1
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_wall_clock_timeout_kills_the_group(isolation):
    # a sleeping parent and a sleeping child use no CPU: only the wall clock stops them
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)"
    result, seconds, marker = _run(code, timeout=1, isolation=isolation)
    assert (result.error, result.text) == ("timeout", "error: timed out after 1 s; the program was killed")
    assert seconds < 1 + 10
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_fork_loop_is_contained(isolation):
    result, seconds, marker = _run("import os\nwhile True: os.fork()", max_processes=16, isolation=isolation)
    assert result.error is not None  # fork fails at the process limit: BlockingIOError
    assert seconds < 10 + 10
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_fork_loop_that_ignores_errors_is_killed(isolation):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result, seconds, marker = _run(code, timeout=3, cpu_seconds=2, max_processes=8, isolation=isolation)
    assert result.error is not None
    assert seconds < 3 + 10
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_1gb_allocation_fails(isolation):
    result, seconds, marker = _run("x = bytearray(1 << 30)\nprint(len(x))", isolation=isolation)
    assert result.error == "raised" and result.text.endswith("MemoryError")
    assert seconds < 10 + 10
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("code", ["print('x' * 100_000_000)", "while True: print('x' * 1000)"])
def test_python_100mb_of_output_is_cut_off(isolation, code):
    result, seconds, marker = _run(code, isolation=isolation)
    assert (result.error, result.text) == ("raised", "error: the program printed more than 65536 bytes and was stopped")
    assert seconds < 10 + 10
    _assert_nothing_left(marker)


@needs_proc
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_python_file_size_is_limited(isolation):
    result, _, _ = _run("open('big', 'wb').write(b'x' * (3 << 20))", max_file_mib=1, isolation=isolation)
    assert result.error == "raised" and "File too large" in result.text


@pytest.mark.skipif(python_isolation() != "bubblewrap", reason="bubblewrap does not work here")
def test_python_under_bubblewrap_has_no_network_and_a_read_only_system():
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
            "except OSError as e:\n    print(e.errno)\n"
            "import os\nprint(sorted(os.listdir('/')))\n"
            "try:\n    open('/usr/x', 'w')\nexcept OSError as e:\n    print(e.errno)")
    result, _, _ = _run(code, isolation="bubblewrap")
    assert result.error is None
    unreachable, top, read_only = result.text.splitlines()
    assert unreachable == "101"  # ENETUNREACH: its own network namespace has only loopback
    assert "work" not in top and "root" not in top and "home" not in top
    assert read_only == "30"  # EROFS
