"""Threads of calls abandoned after their timeout (reward functions, tool calls).

CPython cannot stop a thread, so a call that overran keeps running on its daemon thread
until it returns. Daemon threads do not hold up exit, but one still inside torch (or other
native code) when the interpreter shuts down can abort it ("terminate called without an
active exception"); `grpo.cli` asks `running()` at exit and then ends the process itself.
"""

from __future__ import annotations

import threading

_threads: list[threading.Thread] = []
_lock = threading.Lock()


def abandon(thread: threading.Thread) -> None:
    """Record a thread whose call was given up on."""
    with _lock:
        _threads.append(thread)


def running() -> int:
    """How many abandoned calls are still running."""
    with _lock:
        _threads[:] = [t for t in _threads if t.is_alive()]
        return len(_threads)
