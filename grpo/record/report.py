"""`grpo report RUN_DIR`: one self-contained report.html and plots/*.png for a run directory.

    path = write_report("runs/demo")   # runs/demo/report.html, runs/demo/plots/*.png

Reads the record of a run (metrics.jsonl, eval.jsonl, samples.jsonl, config.yaml: see
grpo.record.logging); `grpo train` calls it when a run ends. The page needs no network: its CSS,
its script (a small SVG line plotter, grpo.record.report_template) and its data are inline. The data
are JSON in a `<script type="application/json">` block with `<`, `>` and `&` written as
\\u escapes, so model output holding `</script>` or markup cannot end the block, and the
page shows every string through textContent.

Plots over steps: reward (total and per function), training accuracy, held-out evaluation,
KL (when logged), clip fractions, completion length (mean/min/max), truncation rate. The same
plots go to plots/*.png (matplotlib's Agg canvas, no display needed).

Staying light for runs of thousands of steps:
- metric series keep at most `max_points` (2000) logged steps, at evenly spaced positions,
  first and last always kept. A stride, not an average: every plotted value was logged.
- the table holds at most `max_samples` (500) records of samples.jsonl: in step order they
  are cut into `max_samples` runs of equal length and one record is drawn from each run with
  random.Random(seed), seed 0 by default: spread evenly across steps, the same pick each time.
- texts longer than MAX_TEXT_CHARS are cut, saying how much was left out.
The page itself states what was kept.
"""

from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path
from typing import Any

from grpo.record.report_template import TEMPLATE

MAX_POINTS = 2000
MAX_SAMPLES = 500
MAX_TEXT_CHARS = 20_000

# (id, title, metric keys) for plots of metrics.jsonl; reward/<name>/mean keys are added to
# "reward" at run time. A plot none of whose keys were logged (KL when beta = 0) is left out.
METRIC_PLOTS = (
    ("reward", "Reward (total and per function)", ("reward/mean",)),
    ("accuracy", "Training accuracy", ("accuracy",)),
    ("kl", "KL to the reference", ("kl",)),
    ("clip", "Clipped token fraction", ("clip/region", "clip/low", "clip/high")),
    ("length", "Completion length (tokens)",
     ("completion_length/mean", "completion_length/min", "completion_length/max")),
    ("truncation", "Truncation rate (hit max_new_tokens)", ("truncation_rate",)),
    ("pass_rate", "Pass rate of the step's prompts: estimated before, observed",
     ("sampling/estimated_pass_rate", "sampling/observed_pass_rate")),
    ("pools", "Training prompts by estimated pass rate", ("sampling/easy", "sampling/learnable", "sampling/hard")),
    ("curriculum", "Curriculum level", ("curriculum/level",)),
    ("group_size", "Completions per prompt (rollout.group_policy adaptive)",
     ("group/size_mean", "group/size_min", "group/size_max")),
    ("budget", "Share of the rollout budget generated", ("group/budget_used",)),
)
# greedy (lenient, strict), sampled at T > 0 (lenient, strict), format; plus any pass@k in eval.jsonl
EVAL_KEYS = ("strict_accuracy", "accuracy", "sampled_strict_accuracy", "sampled_accuracy", "format")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; [] when it is missing. A line cut by a kill is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most k indices into range(n), evenly spaced, 0 and n-1 included when n > 0."""
    assert k >= 2, k
    if n <= k:
        return list(range(n))
    # spacing (n-1)/(k-1) > 1, so the rounded positions are distinct
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def downsample(records: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most max_points records, evenly spaced, first and last kept."""
    return [records[i] for i in evenly_spaced(len(records), max_points)]


def sample_completions(samples: list[dict[str, Any]], max_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """At most max_samples records, spread evenly over steps, the same pick for the same seed.

    Sorted by step (stably: a step's records keep their order), cut into max_samples runs of
    equal length; one record drawn from each run with random.Random(seed).
    """
    ordered = sorted(samples, key=lambda s: s.get("step") or 0)
    n = len(ordered)
    if n <= max_samples:
        return ordered
    rng = random.Random(seed)
    return [ordered[rng.randrange(i * n // max_samples, (i + 1) * n // max_samples)] for i in range(max_samples)]


def _number(value: Any) -> float | None:
    """A finite number or None (JSON has no NaN; a missing value breaks the plotted line)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def series(records: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """{name, x: steps, y: values} over the records that logged `key`; None if none has a value."""
    rows = [(r["step"], _number(r[key])) for r in records if key in r and _number(r.get("step")) is not None]
    if all(y is None for _, y in rows):
        return None
    return {"name": key, "x": [x for x, _ in rows], "y": [y for _, y in rows]}


def reward_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """`reward/<name>/mean` keys in the order first logged (the config's order)."""
    seen: dict[str, None] = {}
    for record in metrics:
        for key in record:
            if key.startswith("reward/") and key.endswith("/mean") and key != "reward/mean":
                seen.setdefault(key, None)
    return list(seen)


def plot_specs(metrics: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plots that have data: [{id, title, series: [{name, x, y}]}]."""
    specs = []
    for plot_id, title, keys in METRIC_PLOTS:
        if plot_id == "reward":
            keys = keys + tuple(reward_keys(metrics))
        found = [s for s in (series(metrics, k) for k in keys) if s is not None]
        if found:
            specs.append({"id": plot_id, "title": title, "series": found})
    eval_keys = list(EVAL_KEYS) + sorted({k for r in evals for k in r if k.startswith("pass@")})
    found = [s for s in (series(evals, k) for k in eval_keys) if s is not None]
    if found:
        for s in found:
            s["name"] = f"eval {s['name']}"
        specs.append({"id": "eval", "title": "Held-out evaluation (accuracy greedy and sampled, lenient and "
                      "strict; format; pass@k)",
                      "series": found})
    return specs


def _episode(messages: Any) -> list[dict] | None:
    """A multi-turn sample's messages (role, content, tool name, error), cut like the texts."""
    if not isinstance(messages, list):
        return None
    def optional(value: Any) -> str | None:
        return None if value is None else _cut(value, 200)

    return [{"role": str(m.get("role")), "content": _cut(m.get("content"), 2000), "name": optional(m.get("name")),
             "error": optional(m.get("error"))} for m in messages[:50] if isinstance(m, dict)]


def _cut(text: Any, limit: int = MAX_TEXT_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters cut]"


def table_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields the table shows, texts cut to MAX_TEXT_CHARS."""
    keep = []
    for s in samples:
        keep.append({
            "step": s.get("step"), "example_id": _cut(s.get("example_id"), 200),
            "question": _cut(s.get("question")), "answer": _cut(s.get("answer"), 2000),
            "completion": _cut(s.get("completion")), "finish_reason": s.get("finish_reason"),
            "reward": _number(s.get("reward")), "advantage": _number(s.get("advantage")),
            "rewards": {str(k): _number(v) for k, v in (s.get("rewards") or {}).items()},
            "episode": _episode(s.get("episode")),
        })
    return keep


def summary(metrics: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[list[str]]:
    """[label, value] chips at the top of the page."""
    out = [["steps logged", str(len(metrics))]]
    if metrics:
        last = metrics[-1]
        out.append(["last step", str(last.get("step"))])
        for key in ("reward/mean", "accuracy", "format"):
            if _number(last.get(key)) is not None:
                out.append([f"{key} at last step", f"{last[key]:.3g}"])
    for key, label in (("strict_accuracy", "held-out accuracy (strict)"), ("accuracy", "held-out accuracy (lenient)"),
                       ("sampled_strict_accuracy", "sampled accuracy (strict)"),
                       ("sampled_accuracy", "sampled accuracy (lenient)")):  # strict first: the headline
        accs = [r[key] for r in evals if _number(r.get(key)) is not None]
        if accs:
            ends = accs if len(accs) == 1 else [accs[0], accs[-1]]
            out.append([label, " -> ".join(f"{a:.1%}" for a in ends)])
    return out


def build_data(run_dir: Path, max_points: int = MAX_POINTS, max_samples: int = MAX_SAMPLES,
               seed: int = 0) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able values."""
    all_metrics = read_jsonl(run_dir / "metrics.jsonl")
    metrics = downsample(all_metrics, max_points)
    evals = downsample(read_jsonl(run_dir / "eval.jsonl"), max_points)
    all_samples = read_jsonl(run_dir / "samples.jsonl")
    samples = table_rows(sample_completions(all_samples, max_samples, seed))
    names: dict[str, None] = {}
    for s in samples:
        for name in s["rewards"]:
            names.setdefault(name, None)
    notes = [
        f"Metrics: {len(all_metrics)} logged steps; plotted at {len(metrics)} of them "
        f"(at most {max_points} per series: evenly spaced, first and last kept, values as logged). "
        "Hover a plot to read the values at a step.",
        f"Completions: {len(samples)} of the {len(all_samples)} in samples.jsonl"
        + ("." if len(samples) == len(all_samples) else
           f" (at most {max_samples}: the records in step order are cut into {max_samples} equal runs "
           f"and one is drawn from each with random seed {seed}, so they spread evenly over steps)."),
    ]
    config = run_dir / "config.yaml"
    return {
        "title": f"grpo run report: {run_dir.resolve().name}",
        "summary": summary(all_metrics, evals), "notes": notes,
        "plots": plot_specs(metrics, evals), "reward_names": list(names), "samples": samples,
        "config": _cut(config.read_text(encoding="utf-8"), 50_000) if config.is_file() else "(no config.yaml)",
    }


def embed_json(data: Any) -> str:
    """JSON safe inside <script>: ASCII only, and no `<`, `>` or `&` (so no `</script>`)."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any]) -> str:
    # Split on the data marker first, so no text inside the data is ever taken for a marker.
    head, tail = TEMPLATE.split("__DATA__")
    return head.replace("__TITLE__", html.escape(data["title"])) + embed_json(data) + tail


def write_pngs(specs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per plot. The Agg canvas directly: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        fig = Figure(figsize=(6, 3.4), dpi=100)
        fig.subplots_adjust(left=0.11, right=0.98, top=0.91, bottom=0.14)  # fixed: a layout engine is slower (bench/RESULTS.md, last section)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for s in spec["series"]:
            y = [math.nan if v is None else v for v in s["y"]]
            ax.plot(s["x"], y, label=s["name"], linewidth=1.2, marker="o" if len(y) <= 40 else None,
                    markersize=3)
        ax.set_title(spec["title"], fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"{spec['id']}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def write_report(run_dir: str | Path, *, max_points: int = MAX_POINTS, max_samples: int = MAX_SAMPLES,
                 seed: int = 0) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/plots/*.png; returns the HTML's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    if not any((run_dir / name).is_file() for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl")):
        raise ValueError(f"{str(run_dir)!r} is not a run directory: no metrics.jsonl, eval.jsonl or samples.jsonl")
    if max_points < 2 or max_samples < 1:
        raise ValueError("max_points must be >= 2 and max_samples >= 1")
    data = build_data(run_dir, max_points, max_samples, seed)
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")  # never leave a half-written report
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(path)
    write_pngs(data["plots"], run_dir / "plots")
    return path
