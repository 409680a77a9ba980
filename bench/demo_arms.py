"""Run the demo recipe under several arms and seeds, one after another, and tabulate them.

    .venv/bin/python bench/demo_arms.py --arms grpo,sft,dpo,self_distill --seeds 0,1
    .venv/bin/python bench/demo_arms.py --arms pool16_fixed,pool16_adaptive --seeds 0,1
    .venv/bin/python bench/demo_arms.py --summary            # the table of every finished run

Each arm is `configs/demo.yaml` with the dotted overrides of ARMS, every run with
`eval.before_training=false` (the untrained model's figures do not depend on the arm; skipping
them saves each run one evaluation). Runs go to runs/arms/<arm>-s<seed>; a finished run (its
eval.jsonl holds the last step) is not run again, so the command resumes a killed queue. Runs
are sequential: on a 2-core host two at once would time each other. The table reads each run's
eval.jsonl (held-out accuracy), metrics.jsonl (the zero-signal fraction, tokens generated,
seconds per step) and the wall time this script measured (runs/arms/<run>/wall_s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "arms"

# A pool small enough that the 24 steps x 2 prompts revisit each prompt three times: with the
# recipe's 2000 prompts no prompt comes back in 24 steps, every estimate stays the prior, and the
# difficulty pool and the adaptive split have nothing to act on.
POOL16 = ["task.num_train=16"]
ADAPTIVE = ["rollout.group_policy.name=adaptive"]
DIFFICULTY_POOL = ["task.sampler=difficulty_pool"]
# The hybrid terms at weight 0.5: at 0.1 (the field's default) a term's gradient per token is a small
# fraction of the policy loss's (|A| ~ 1 over a completion's tokens), too little to tell apart in 24 steps.
ARMS: dict[str, list[str]] = {
    "grpo": [],
    "sft": ["algorithm.aux_losses=[{name: sft, weight: 0.5, min_reward: 2.0}]"],
    "gold_sft": ["algorithm.aux_losses=[{name: gold_sft, weight: 0.5}]"],
    "dpo": ["algorithm.aux_losses=[{name: dpo, weight: 0.5}]"],
    "self_distill": ["algorithm.aux_losses=[{name: self_distill, weight: 0.5, min_reward: 2.0}]"],
    "pool16_fixed": POOL16,
    "pool16_adaptive": POOL16 + ADAPTIVE,
    "pool16_difficulty": POOL16 + DIFFICULTY_POOL,
    "pool16_both": POOL16 + ADAPTIVE + DIFFICULTY_POOL,
}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(run: Path, steps: int = 24) -> bool:
    return any(r.get("step") == steps for r in _rows(run / "eval.jsonl"))


def run_arm(arm: str, seed: int) -> None:
    run = OUT / f"{arm}-s{seed}"
    if finished(run):
        print(f"{run.name}: done already", flush=True)
        return
    cmd = [str(ROOT / ".venv" / "bin" / "grpo"), "train", "configs/demo.yaml", f"seed={seed}",
           f"output_dir={run}", "eval.before_training=false", "log.progress=false", *ARMS[arm]]
    print(" ".join(cmd), flush=True)
    start = time.monotonic()
    with open(OUT / f"{run.name}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    if rc == 0:
        (run / "wall_s").write_text(f"{wall:.1f}\n")
    print(f"{run.name}: rc {rc}, {wall / 60:.1f} min", flush=True)


def summarize(run: Path) -> dict | None:
    evals = [r for r in _rows(run / "eval.jsonl") if r.get("step") == 24]
    if not evals:
        return None
    metrics = [r for r in _rows(run / "metrics.jsonl") if "frac_reward_zero_std" in r]
    wall = run / "wall_s"
    e = evals[-1]
    return {
        "greedy": 100 * e["accuracy"], "greedy_strict": 100 * e["strict_accuracy"],
        "sampled": 100 * e["sampled_accuracy"], "sampled_strict": 100 * e["sampled_strict_accuracy"],
        "zero_signal": statistics.mean(r["frac_reward_zero_std"] for r in metrics),
        "tokens": sum(r.get("tokens_generated", 0) for r in metrics),
        "step_s": statistics.median(r["time/step"] for r in metrics if "time/step" in r),
        "wall_min": float(wall.read_text()) / 60 if wall.exists() else float("nan"),
    }


def table() -> str:
    lines = ["| run | greedy (strict) | sampled (strict) | zero-signal groups | tokens generated | s/step | wall min |",
             "|---|---|---|---|---|---|---|"]
    for run in sorted(p for p in OUT.iterdir() if p.is_dir()) if OUT.exists() else []:
        s = summarize(run)
        if s:
            lines.append(f"| {run.name} | {s['greedy']:.0f}% ({s['greedy_strict']:.0f}%) | {s['sampled']:.1f}% "
                         f"({s['sampled_strict']:.1f}%) | {s['zero_signal']:.2f} | {s['tokens']:,} | "
                         f"{s['step_s']:.1f} | {s['wall_min']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="", help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--summary", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if not args.summary:
        OUT.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                run_arm(arm, seed)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
