"""How grpo's step time grows with the group size, the completion length and the prompts per step.

    .venv/bin/python bench/scaling.py --steps 2        # writes bench/SCALING.md and bench/scaling.json

The work of bench/compare_trl.py (bundled model, fp32 CPU, bench/prompts.jsonl, beta 0.04),
changing one knob at a time from the base point G=8, 2 prompts per step, 128 new tokens:
G in 4, 8, 16; max new tokens in 64, 128, 256; prompts per step in 1, 2, 4. Each point runs
in its own process (bench/systems.py), one warm-up step then `--steps` timed steps; the table
gives the medians per phase and, to judge linearity, the seconds per generated token
(generation) and per completion token (log-probs, update).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = {"group_size": 8, "prompts_per_step": 2, "max_new_tokens": 128}
POINTS = [
    {"group_size": 4}, {}, {"group_size": 16},
    {"max_new_tokens": 64}, {"max_new_tokens": 256},
    {"prompts_per_step": 1}, {"prompts_per_step": 4},
]


def run_point(work: dict, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        subprocess.run([sys.executable, str(HERE / "systems.py"), "grpo", "--steps", str(steps), "--out", str(out),
                        "--work", json.dumps(work)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return json.loads(out.read_text())


def summarize(work: dict, result: dict) -> dict:
    steps = result["steps"]
    med = {k: statistics.median(s[k] for s in steps) for k in ("step", "generation", "logprobs", "update")}
    tokens = sum(s["completion_tokens"] for s in steps)
    return {**work, **med, "completion_tokens": tokens / len(steps),
            "max_completion": statistics.median(s["max_completion"] for s in steps),
            "gen_s_per_token": sum(s["generation"] for s in steps) / tokens,
            "update_ms_per_token": 1000 * sum(s["update"] for s in steps) / tokens,
            "logprobs_ms_per_token": 1000 * sum(s["logprobs"] for s in steps) / tokens}


def write(rows: list[dict], steps: int, path: Path) -> None:
    lines = [
        "# grpo step time vs group size, completion length and prompts per step", "",
        f"Measured {date.today().isoformat()} on this machine (2 cores, fp32). Command: "
        f"`.venv/bin/python bench/scaling.py --steps {steps}` (each point: 1 warm-up + {steps} timed steps; "
        "medians). Base point G=8, 2 prompts/step, 128 new tokens; one knob changed per row.", "",
        "| G | prompts | max new | step s | generation s | ref log-probs s | update s | completion tokens "
        "| longest | update ms/token | log-probs ms/token |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group_size']} | {r['prompts_per_step']} | {r['max_new_tokens']} | {r['step']:.1f} | "
            f"{r['generation']:.1f} | {r['logprobs']:.1f} | {r['update']:.1f} | {r['completion_tokens']:.0f} | "
            f"{r['max_completion']:.0f} | {r['update_ms_per_token']:.1f} | {r['logprobs_ms_per_token']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for point in POINTS:
        work = {**BASE, **point}
        print(f"point {work}", flush=True)
        rows.append(summarize(work, run_point(work, args.steps)))
        (HERE / "scaling.json").write_text(json.dumps(rows, indent=1))
        write(rows, args.steps, HERE / "SCALING.md")


if __name__ == "__main__":
    main()
