"""Training progress a person can read, in a terminal, a notebook or a log file.

In a terminal or notebook: two live lines, so nothing is cut at 80 columns (one line of bar,
step, elapsed and ETA; one of the step's numbers), and a third while an evaluation runs
(`evaluating 50/100`). Elsewhere (a log file, a pipe): one plain line per logged step and
per finished evaluation chunk, never a redrawn bar that leaves a single cut line behind.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

# The numbers shown, in order, with their short labels.
PROGRESS_KEYS = (("reward/mean", "reward"), ("accuracy", "acc"), ("format", "fmt"), ("kl", "kl"),
                 ("time/step", "s/step"))


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    def __init__(self, console: Console, total_steps: int, start_step: int = 0):
        self.console, self.total, self.start = console, total_steps, start_step
        self.step, self.info, self.eval_line = start_step, "", ""
        self.began = time.monotonic()
        self.live = None
        if console.is_terminal or console.is_jupyter:
            self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
            self.live.start()

    def _times(self) -> tuple[float, float | None]:
        elapsed = time.monotonic() - self.began
        done = self.step - self.start
        eta = elapsed / done * (self.total - self.step) if done > 0 else None
        return elapsed, eta

    def _render(self) -> Group:
        elapsed, eta = self._times()
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True)
        head.add_column(ratio=1)
        head.add_column(no_wrap=True)
        head.add_row(Text(f"step {self.step}/{self.total}", style="bold"),
                     ProgressBar(total=self.total, completed=self.step),
                     Text(f"{clock(elapsed)} eta {clock(eta)}"))
        lines: list[Any] = [head, Text(self.info or " ", overflow="fold")]
        if self.eval_line:
            lines.append(Text(self.eval_line, overflow="fold"))
        return Group(*lines)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        self.info = "  ".join(f"{label} {metrics[k]:.3g}" for k, label in PROGRESS_KEYS
                              if isinstance(metrics.get(k), (int, float)))
        if self.live is not None:
            self._refresh()
            return
        elapsed, eta = self._times()
        self.console.print(f"step {step}/{self.total}  {clock(elapsed)} eta {clock(eta)}  {self.info}",
                           highlight=False, soft_wrap=True)

    def evaluating(self, done: int, total: int) -> None:
        """An evaluation's progress: `done` of `total` held-out examples scored (done == total ends it)."""
        self.eval_line = "" if done >= total else f"evaluating {done}/{total} held-out examples"
        if self.live is not None:
            self._refresh()
        elif done < total or total == 0:
            self.console.print(f"evaluating {done}/{total} held-out examples", highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.live is not None:
            self.eval_line = ""
            self._refresh()
            self.live.stop()
