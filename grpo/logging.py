"""Where metrics go: metrics.jsonl, TensorBoard, samples.jsonl and a progress bar.

The JSONL files are the record of a run (the report reads them); TensorBoard and the
terminal are views of the same numbers. On resume the JSONL files are cut back to the
checkpoint's step, so a resumed run's history equals an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# The numbers shown on the progress bar, in order, with their short labels.
PROGRESS_KEYS = (("reward/mean", "reward"), ("accuracy", "acc"), ("format", "fmt"), ("kl", "kl"),
                 ("time/step", "s/step"))


def truncate_jsonl(path: Path, max_step: int, keep_max_step: bool = True) -> None:
    """Keep only records with step <= max_step (< max_step when not keep_max_step): drops
    what a killed run wrote after its checkpoint. Rewritten atomically (temp file + rename):
    a kill during the rewrite must not cost the history it was trimming."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if step < max_step or (keep_max_step and step == max_step):
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than produce invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, *, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        for path in (self.metrics_path, self.samples_path):
            truncate_jsonl(path, start_step)
        # An evaluation at the resume step is redone when it is the one before training (step 0)
        # or the one after it (step total_steps); one in between preceded its checkpoint and stays.
        truncate_jsonl(self.dir / "eval.jsonl", start_step, keep_max_step=0 < start_step < total_steps)
        self.console = Console(stderr=True)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1)
        self.progress = None
        if progress:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console, transient=False,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._append(self.metrics_path, {"step": step, "time": time.time(), **metrics})
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
        if self.progress is not None:
            info = "  ".join(f"{label} {metrics[k]:.3g}" for k, label in PROGRESS_KEYS if k in metrics)
            self.progress.update(self.task, completed=step, info=info)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            self._append(self.samples_path, {"step": step, **sample})

    def log_eval(self, step: int, results: dict[str, Any]) -> None:
        self._append(self.dir / "eval.jsonl", {"step": step, **results})
        if self.tb is not None:
            for key, value in results.items():
                if isinstance(value, int | float):
                    self.tb.add_scalar(f"eval/{key}", value, step)
        self.print(f"eval @ step {step}: " + "  ".join(
            f"{k} {v:.3f}" for k, v in results.items() if isinstance(v, float)))

    def print(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)  # one line per message, even in a log file

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()


class NullLogger:
    """The logger of ranks other than 0 in a multi-process run: rank 0 writes the record."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
