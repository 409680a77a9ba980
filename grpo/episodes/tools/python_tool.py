"""The built-in `python` tool: run a program in a separate, limited process; return its output.

    function = make_python_tool(timeout=5)     # options: the fields of PythonLimits
    function("print(2 + 3)")                   # "5\n"

The model's code never runs in the trainer process. Each call gets a child process (under
bubblewrap where it works, see grpo.episodes.tools.sandbox) with an empty environment, a fresh
temporary working directory, and these limits (PythonLimits, all options):

    timeout           10 s     wall clock; then the whole process group is killed (SIGKILL)
    cpu_seconds        5 s     RLIMIT_CPU of each process (SIGXCPU, then SIGKILL)
    memory_mib       512 MiB   RLIMIT_AS of each process (a large allocation: MemoryError)
    max_output_bytes  64 KiB   stdout + stderr, read as it comes; more stops the program
    max_file_mib      16 MiB   RLIMIT_FSIZE per file; under bubblewrap also the tmpfs total
    max_processes     32       RLIMIT_NPROC (tasks) above what the sandbox user already runs
    max_code_chars    64 Ki    the program travels in argv (128 KiB per argument on Linux)
    isolation       "auto"     "bubblewrap" (required), "process" (never), "auto" (when it works)

A failure (the program raised, a limit was hit) raises ToolError, so `call_tool` counts it and
shows the model `error: ...` with the end of the output (where a traceback's last line is).
Whatever happens, every process the call started is killed before it returns. stdout and
stderr share one pipe, in the order they were written, as in a terminal.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from grpo.episodes.tools.errors import ToolError
from grpo.episodes.tools.sandbox import (
    child_command,
    child_identity,
    child_user,
    plain_environment,
    python_isolation,
)

__all__ = ["PythonLimits", "kill_process_group", "make_python_tool", "python_isolation", "run_python"]

_ISOLATIONS = ("auto", "bubblewrap", "process")
_ERROR_TAIL_CHARS = 2000  # a failed run shows the end of its output: the traceback's last lines


@dataclass(frozen=True)
class PythonLimits:
    timeout: float = 10.0
    cpu_seconds: int = 5
    memory_mib: int = 512
    max_output_bytes: int = 64 * 1024
    max_file_mib: int = 16
    max_processes: int = 32
    max_code_chars: int = 64 * 1024
    isolation: str = "auto"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "isolation":
                if value not in _ISOLATIONS:
                    raise ValueError(f"tool `python` option `isolation` = {value!r} is invalid: "
                                     f"expected one of {', '.join(_ISOLATIONS)}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"tool `python` option `{field.name}` = {value!r} is invalid: expected a number > 0")


def make_python_tool(**options) -> Callable[[str], str]:
    """The `python` tool function with these limits (ValueError for an unknown or bad option)."""
    names = [f.name for f in fields(PythonLimits)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"tool `python` has no option `{unknown[0]}`; options: {', '.join(names)}")
    limits = PythonLimits(**options)
    if python_isolation() == "none":  # refuse when loaded, not as an error in every episode
        raise ValueError(f"tool `python` needs POSIX resource limits (Linux, macOS); unavailable on {sys.platform}")
    if limits.isolation == "bubblewrap" and python_isolation() != "bubblewrap":
        raise ValueError("tool `python` option `isolation` = 'bubblewrap' but bubblewrap does not work here "
                         "(install it, e.g. `apt-get install bubblewrap`, or use isolation: auto)")

    def python(code: str) -> str:
        """Run a Python program in a fresh sandboxed process and return what it prints.

        Args:
            code: a complete Python program (standard library only); print the values you want to see
        """
        return run_python(code, limits)

    python.wall_seconds = limits.timeout  # it kills its own program: callers wait at least this long
    return python


def run_python(code: str, limits: PythonLimits) -> str:
    """The program's output; ToolError when it fails, overruns a limit, or cannot run here."""
    isolation = "process" if limits.isolation == "process" else python_isolation()
    if isolation == "none":
        raise ToolError(f"the python tool needs POSIX resource limits (Linux, macOS); unavailable on {sys.platform}")
    if not isinstance(code, str):
        raise ToolError(f"code must be a string, not {type(code).__name__}")
    if len(code) > limits.max_code_chars or "\0" in code:
        raise ToolError(f"code must be at most {limits.max_code_chars} characters, without NUL bytes")
    with tempfile.TemporaryDirectory(prefix="grpo-python-", ignore_cleanup_errors=True) as workdir:
        if child_user() is not None:
            os.chown(workdir, child_user(), child_user())
        command = child_command(code, _rlimits(limits), limits.max_file_mib << 20, isolation)
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, cwd=workdir, env=plain_environment(workdir),
                                 start_new_session=True, **child_identity())
        try:
            output, stopped = _read_output(child, limits)
        finally:
            kill_process_group(child)
    return _outcome(output.decode("utf-8", errors="replace"), stopped, child.returncode, limits)


def _rlimits(limits: PythonLimits) -> dict[str, tuple[int, int]]:
    out = {
        "RLIMIT_CPU": (int(limits.cpu_seconds), int(limits.cpu_seconds) + 1),  # SIGXCPU, then SIGKILL
        "RLIMIT_FSIZE": (limits.max_file_mib << 20,) * 2,
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NOFILE": (256, 256),
    }
    if sys.platform.startswith("linux"):  # macOS ignores RLIMIT_AS and counts NPROC differently
        out["RLIMIT_AS"] = (limits.memory_mib << 20,) * 2
        nproc = _tasks_of(child_user() if child_user() is not None else os.getuid()) + limits.max_processes
        out["RLIMIT_NPROC"] = (nproc, nproc)
    return out


def _tasks_of(uid: int) -> int:
    """Tasks (threads count) the uid runs now: RLIMIT_NPROC counts them all, ours included."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(lines["Uid"].split()[0]) == uid:
                count += int(lines["Threads"])
        except (OSError, KeyError, ValueError):  # the process ended while we read it
            continue
    return count


def _read_output(child: subprocess.Popen, limits: PythonLimits) -> tuple[bytes, str | None]:
    """(output, why it was stopped: "timeout" / "output" / None), never over the byte limit."""
    deadline = time.monotonic() + limits.timeout
    output = bytearray()
    fd = child.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(output), "timeout"
            if not selector.select(left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # every process holding the pipe has closed it
                break
            output += chunk
            if len(output) > limits.max_output_bytes:
                return bytes(output[: limits.max_output_bytes]), "output"
    try:
        child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return bytes(output), "timeout"
    return bytes(output), None


def kill_process_group(child: subprocess.Popen) -> None:
    """SIGKILL the child's process group until no member runs (or 5 s pass); reap the child.

    Repeated because a process forking at the moment of the first kill can leave a new member.
    Members that are already zombies do not count: they hold nothing, and their reaper is init
    (which, in some containers, reaps only every second or so).
    """
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        if child.poll() is None:
            child.wait()
        if not _group_running(child.pid):
            break
        time.sleep(0.01)
    child.wait()
    child.stdout.close()


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` is alive and not a zombie (always True without /proc)."""
    if not os.path.isdir("/proc/self"):
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # ended while we read it
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def _outcome(output: str, stopped: str | None, returncode: int | None, limits: PythonLimits) -> str:
    if stopped == "timeout":
        raise ToolError(f"timed out after {limits.timeout:g} s; the program was killed", kind="timeout")
    if stopped == "output":
        raise ToolError(f"the program printed more than {limits.max_output_bytes} bytes and was stopped")
    if returncode == 0:
        return output or "(no output)"
    tail = output[-_ERROR_TAIL_CHARS:].strip()
    raise ToolError(f"the program failed ({_exit_reason(returncode, limits)})" + (f":\n{tail}" if tail else ""))


def _exit_reason(returncode: int | None, limits: PythonLimits) -> str:
    # bwrap reports a child killed by signal N as exit status 128 + N, a plain child as -N.
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number in (signal.SIGXCPU, signal.SIGKILL):
        return f"killed: CPU time limit of {limits.cpu_seconds} s, or out of memory"
    if number == signal.SIGXFSZ:
        return f"killed: a file grew past {limits.max_file_mib} MiB"
    if number:
        try:
            return f"killed by signal {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {returncode}"

