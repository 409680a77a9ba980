"""grpo's start-up by phase: Trainer.build with its phases wrapped in timers.

    PYTHONPATH=. .venv/bin/python bench/startup.py --model qwen2.5-0.5b

The work of bench/compare_trl.py's grpo system (precision auto, beta 0.04: a frozen reference);
each phase is the wall time of one call inside Trainer.build. Run it in a fresh process: a second
build in the same process would find the weights' pages already resident.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import systems  # noqa: E402  (bench/systems.py: the model shapes)

PHASES = {  # name in grpo.training.trainer -> label
    "build_task": "task",
    "resolve_precision": "precision (auto measures)",
    "dither_master_weights": "dither the master weights",
    "build_reference": "reference",
    "build_engine": "rollout engine",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b", help="bundled or a shape of bench/systems.py SHAPES")
    args = parser.parse_args()
    from grpo.training import trainer

    timings: dict[str, float] = {}

    def timed(label, fn):
        def wrapped(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - start
            return out

        return wrapped

    for name, label in PHASES.items():
        setattr(trainer, name, timed(label, getattr(trainer, name)))
    trainer.models.load_policy = timed("load the policy", trainer.models.load_policy)
    cfg = systems.grpo_config({**systems.WORK, "precision": "auto", "micro_batch_size": 16, "model": args.model})
    start = time.perf_counter()
    trainer.Trainer.build(cfg)
    total = time.perf_counter() - start
    print(f"{args.model}: Trainer.build {total:.2f} s")
    for label, seconds in timings.items():
        print(f"  {label:28s} {seconds:6.2f} s")
    print(f"  {'everything else':28s} {total - sum(timings.values()):6.2f} s")


if __name__ == "__main__":
    main()
