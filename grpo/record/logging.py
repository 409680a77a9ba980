"""Where metrics go: metrics.jsonl, samples.jsonl, the trackers of log.report_to and a progress bar.

The JSONL files are the record of a run (the report reads them); the trackers (TensorBoard,
W&B, MLflow: grpo.record.trackers) and the terminal are views of the same numbers. On resume the JSONL files are cut back to the
checkpoint's step, so a resumed run's history equals an uninterrupted one's; a line torn by
a kill mid-append (or anything else that is not a JSON object) is dropped there too.

A failed append (disk full, I/O error) is handled per sink, by what depends on it:
- metrics.jsonl and eval.jsonl are the record that resume and the report rely on: the run
  stops with RecordWriteError (exit 1) before the step's checkpoint, so `resume=true`
  redoes that step and the record has no gap;
- samples.jsonl (a sample of completions) and the trackers (views) are not: the run goes
  on, the failures are counted in the metric `log/write_errors` (from the next logged step)
  and warned about once per sink; a tracker is switched off after its first failure (at its
  start, too: an unreachable W&B server or a locked MLflow store costs the view, not the run).
A failed append is cut back to where it started, so no torn line is left in the middle of
a file for the next record to be glued onto.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from grpo.record.progress import ProgressDisplay
from grpo.record.trackers import start_tracker


def truncate_jsonl(path: Path, max_step: int, keep_max_step: bool = True) -> None:
    """Keep only records with step <= max_step (< max_step when not keep_max_step): drops
    what a killed run wrote after its checkpoint. Rewritten atomically (temp file + rename):
    a kill during the rewrite must not cost the history it was trimming."""
    if not path.exists():
        return
    keep = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if not isinstance(record, dict):
            continue  # not a record grpo writes (damage): dropped like a torn line
        step = record.get("step", 0)
        if step < max_step or (keep_max_step and step == max_step):
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


class RecordWriteError(OSError):
    """An append to the run's record (metrics.jsonl, eval.jsonl) failed; the run stops."""


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_lines(path: Path, text: str, start_on_new_line: bool = False) -> None:
    """Append `text` to `path`; on failure cut the file back to where the append began (so no
    torn line stays behind), then raise, with `cut_back` set on the error. start_on_new_line:
    a newline first, for a file whose earlier cut-back failed and so may end in a torn line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, (("\n" if start_on_new_line else "") + text).encode("utf-8"))
        except OSError as e:
            try:
                os.ftruncate(fd, start)
                e.cut_back = True
            except OSError:
                e.cut_back = False  # the caller starts the next append on a new line
            raise
    finally:
        os.close(fd)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than produce invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, *, start_step: int = 0,
                 report_to: list[str] | tuple[str, ...] = (), config: Any = None, progress: bool = True):
        """report_to: tracker names (log.report_to); config: the run's Config, which they record."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        self.rollouts_path = self.dir / "rollouts.jsonl"  # asynchronous runs: what each step trained on
        for path in (self.metrics_path, self.samples_path, self.rollouts_path):
            truncate_jsonl(path, start_step)
        # An evaluation at the resume step is redone when it is the one before training (step 0)
        # or the one after it (step total_steps); one in between preceded its checkpoint and stays.
        truncate_jsonl(self.dir / "eval.jsonl", start_step, keep_max_step=0 < start_step < total_steps)
        self.console = Console(stderr=True)
        self.write_errors = 0  # failed appends to the sinks the run goes on without
        self.warned_sinks: set[str] = set()
        self.maybe_torn: set[Path] = set()  # files whose failed append could not be cut back
        self.trackers: dict[str, Any] = {}
        for name in report_to:
            try:
                self.trackers[name] = start_tracker(name, config, self.dir, start_step)
            except Exception as e:  # noqa: BLE001 - as in _to_trackers: the run goes on without it
                self.sink_failed(name, e)
        self.progress = ProgressDisplay(self.console, total_steps, start_step) if progress else None

    def _append(self, path: Path, records: list[dict[str, Any]], essential: bool) -> None:
        """Append records as JSON lines. essential (the run's record): a failure stops the run;
        otherwise it is counted and warned about once, and the run goes on."""
        text = "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in records)
        try:
            append_lines(path, text, start_on_new_line=path in self.maybe_torn)
            self.maybe_torn.discard(path)
        except OSError as e:
            if not getattr(e, "cut_back", True):
                self.maybe_torn.add(path)
            if essential:
                raise RecordWriteError(
                    f"could not append to {str(path)!r} ({type(e).__name__}: {e}); the run stopped: fix the "
                    "cause, then resume=true continues from the newest checkpoint, redoing what came after "
                    "it (the record is cut back to it)") from e
            self.sink_failed(path.name, e)

    def sink_failed(self, sink: str, e: Exception) -> None:
        self.write_errors += 1
        if sink not in self.warned_sinks:
            self.warned_sinks.add(sink)
            self.print(f"warning: could not write to {sink} ({type(e).__name__}: {e}); the run goes on without "
                       "those records, counted in the metric log/write_errors. Reported once per run.")

    def _to_trackers(self, method: str, *args: Any) -> None:
        """tracker.<method>(*args) on every tracker still on; one that raises is dropped."""
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001 - OSError or a tracker library's own types: a view, not the record
                self._drop_tracker(name, e)

    def _drop_tracker(self, name: str, e: Exception) -> None:
        """After a failure a tracker's state is unknown: it is closed (quietly) and not used again."""
        tracker = self.trackers.pop(name)
        self.sink_failed(name, e)
        try:
            tracker.close()
        except Exception:  # noqa: BLE001 - the failure is already counted
            pass

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.write_errors:
            metrics = {**metrics, "log/write_errors": self.write_errors}
        self._append(self.metrics_path, [{"step": step, "time": time.time(), **metrics}], essential=True)
        self._to_trackers("log", metrics, step)
        if self.progress is not None:
            self.progress.update(step, metrics)

    def evaluating(self, done: int, total: int) -> None:
        """Held-out examples scored so far in a running evaluation (shown with the progress)."""
        if self.progress is not None:
            self.progress.evaluating(done, total)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if samples:
            self._append(self.samples_path, [{"step": step, **sample} for sample in samples], essential=False)
            self._to_trackers("log_samples", step, samples)

    def log_rollouts(self, step: int, order: dict[str, Any]) -> None:
        """The data order: a step's example ids and the policy version of each of its samples."""
        self._append(self.rollouts_path, [{"step": step, **order}], essential=True)

    def log_eval(self, step: int, results: dict[str, Any]) -> None:
        self._append(self.dir / "eval.jsonl", [{"step": step, **results}], essential=True)
        self._to_trackers("log", {f"eval/{k}": v for k, v in results.items()}, step)
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
        for name, tracker in list(self.trackers.items()):
            del self.trackers[name]
            try:
                tracker.close()  # flushes: a failure of a background writer surfaces here
            except Exception as e:  # noqa: BLE001 - as in _to_trackers
                self.sink_failed(name, e)


class NullLogger:
    """The logger of ranks other than 0 in a multi-process run: rank 0 writes the record."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
