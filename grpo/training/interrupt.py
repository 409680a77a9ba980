"""Stop a run cleanly on SIGINT / SIGTERM: finish the step, save a checkpoint, exit.

    with StopSignals() as stop:
        while ...:
            if stop.requested:
                break          # then save and raise Interrupted(stop.signum, step, path)
            train_step()

The handler only sets a flag; the loop looks at it between steps, so a checkpoint is never
taken in the middle of an update (the optimizer state and the weights would disagree). The
first signal also puts the previous handlers back, so a second Ctrl-C raises
KeyboardInterrupt at once (the step in progress is lost, the checkpoints on disk are not:
they are written atomically) and a second SIGTERM terminates the process at once.

Exit status (set by the CLI from `Interrupted.exit_code`): 128 + the signal number, the
shell convention, i.e. 130 for SIGINT and 143 for SIGTERM. Not 0: a batch scheduler or a
script must be able to tell an interrupted run from a finished one.

Handlers are only installed from the main thread (Python allows no other) and only for
signals that are not ignored (a job started with `nohup` or `&` in a non-interactive shell
ignores SIGINT on purpose); elsewhere `requested` simply stays False.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after saving its state; `exit_code` is 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint: Any):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint (no step was done)"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; saved {where}; "
            "run the same command with resume=true to continue"
        )


class StopSignals:
    """Context manager: while inside, SIGINT / SIGTERM request a stop instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN or current is None:  # None: a handler set outside Python
                continue
            self._previous[sig] = current
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        # A second signal must act at once: give the previous handlers back now.
        self._restore()
        name = signal.Signals(signum).name
        sys.stderr.write(
            f"\ngrpo: {name} received: saving a checkpoint after the current step "
            f"(send it again to stop at once)\n"
        )
        sys.stderr.flush()
