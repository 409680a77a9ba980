"""How the python tool's child process is started: the command line, the user, the limits.

Two modes, chosen once per process by `python_isolation()`:
- "bubblewrap": Debian's `bwrap` with every namespace unshared (no network, own PID space,
  so killing bwrap kills everything the program started), a read-only /usr (and the
  interpreter's prefix), a size-limited tmpfs as the only writable place, nothing else of
  the host filesystem. Used when `bwrap` is on PATH and a probe run of it works here.
- "process": a plain child process with the same resource limits and process-group kill,
  but it sees the host filesystem (with the sandbox user's permissions) and the network.

In both, when the trainer runs as root the child runs as `nobody` (uid 65534): root is
exempt from RLIMIT_NPROC, so as root a fork loop would otherwise fill the machine's PID table
before the timeout. Resource limits are set by a short launcher (LAUNCHER, run by the same
interpreter with -I -S) that execs the sandbox, so no `preexec_fn` runs in a forked copy of
the multi-threaded trainer.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

__all__ = ["LAUNCHER", "SANDBOX_UID", "child_command", "child_identity", "child_user", "interpreter",
           "plain_environment", "python_isolation"]

SANDBOX_UID = 65534  # nobody
# Set the limits on this process, then become the sandbox: limits survive exec.
LAUNCHER = """\
import json, os, resource, sys
for name, value in json.loads(sys.argv[1]).items():
    resource.setrlimit(getattr(resource, name), tuple(value))
os.execv(sys.argv[2], sys.argv[2:])
"""


def child_user() -> int | None:
    """The uid to run the child as: nobody when we are root (see the module docstring)."""
    return SANDBOX_UID if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def child_identity() -> dict:
    """Popen keyword arguments that start the child as `child_user()` with no groups of ours."""
    uid = child_user()
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


def interpreter() -> str:
    """The Python to run programs with: ours, unless the sandbox user cannot reach it (a
    pyenv under /root, mode 700), then the system's python3."""
    ours = os.path.realpath(sys.executable)
    if child_user() is None or _world_executable(ours):
        return ours
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and _world_executable(os.path.realpath(system)):
        return os.path.realpath(system)
    raise RuntimeError(f"no Python interpreter the sandbox user (uid {SANDBOX_UID}) can run: {ours} is private")


def _world_executable(path: str) -> bool:
    """Whether `others` may execute the file and traverse every directory above it."""
    p = Path(path)
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [p, *p.parents])


def child_command(code: str, limits: dict[str, tuple[int, int]], tmpfs_bytes: int,
                  isolation: str) -> list[str]:
    """argv that sets `limits` and runs `code` under `isolation` ("bubblewrap" or "process")."""
    python = interpreter()
    run = [python, "-I", "-S", "-c", code]
    if isolation == "bubblewrap":
        run = [shutil.which("bwrap") or "bwrap", *_bwrap_arguments(python, tmpfs_bytes), *run]
    return [python, "-I", "-S", "-c", LAUNCHER, json.dumps(limits), *run]


def _bwrap_arguments(python: str, tmpfs_bytes: int) -> list[str]:
    args = ["--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev",
            "--size", str(tmpfs_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", "/tmp"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):  # merged-/usr systems: /bin -> usr/bin
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = str(Path(python).parent.parent)  # .../bin/python3 -> ... (its stdlib is under it)
    if not prefix.startswith("/usr"):
        args += ["--ro-bind", prefix, prefix]
    return args


def plain_environment(workdir: str) -> dict[str, str]:
    """The child's whole environment in "process" mode: nothing inherited (no secrets)."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}


@functools.cache
def python_isolation() -> str:
    """"bubblewrap" when bwrap runs a program here (probed once), else "process"; "none" on
    platforms without POSIX resource limits (Windows), where the python tool refuses to run."""
    if os.name != "posix":
        return "none"
    if not shutil.which("bwrap"):
        return "process"
    command = child_command("print('ok')", {}, 1 << 20, "bubblewrap")
    try:
        done = subprocess.run(command, capture_output=True, timeout=30, env={},
                              start_new_session=True, **child_identity())
    except (OSError, subprocess.SubprocessError):
        return "process"
    # bwrap fails inside containers that forbid user namespaces: fall back, do not fail.
    return "bubblewrap" if done.returncode == 0 and done.stdout.strip() == b"ok" else "process"
