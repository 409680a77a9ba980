"""Where grpo's peak memory is: resident memory by phase of a training step, and what it holds.

    PYTHONPATH=. .venv/bin/python bench/memory_phases.py --model qwen2.5-0.5b

The work of bench/compare_trl.py's grpo system (bench/systems.py WORK, precision auto, one
micro-batch of 16 rows). Around each phase of the last step the kernel's peak-RSS mark is reset
(`echo 5 > /proc/self/clear_refs`) and read back (VmHWM), so each line is that phase's own peak;
the first step is a warm-up (AdamW allocates its moments in its first step). The second table
is what the process holds by then: tensors of the policy, its gradients, AdamW's moments and the
frozen reference, counted from their storage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import systems  # noqa: E402  (bench/systems.py: the shared work and model shapes)

GiB = 2**30


def status(field: str) -> float:
    """A field of /proc/self/status in GiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GiB
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Phases:
    def __init__(self):
        self.rows: list[tuple[str, float, float, float]] = []
        self.recording = False

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            if not self.recording:
                return fn(*args, **kwargs)
            start = status("VmRSS")
            reset_peak()
            out = fn(*args, **kwargs)
            self.rows.append((name, start, status("VmHWM"), status("VmRSS")))
            return out

        return wrapped


def tensor_bytes(tensors) -> float:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.device.type == "cpu":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b", help="bundled or a shape of bench/systems.py SHAPES")
    args = parser.parse_args()
    from grpo.training.trainer import Trainer

    w = {**systems.WORK, "precision": "auto", "micro_batch_size": 16, "model": args.model}
    trainer = Trainer.build(systems.grpo_config(w, "eval.num_examples=0"))
    trainer.data = systems.in_order(systems.load_prompts())
    phases = Phases()
    for owner, method, name in ((trainer.collector, "collect", "generation + rewards"),
                                (trainer.reference, "logprobs", "reference log-probs"),
                                (trainer.updater, "accumulate_gradients", "update: forward + backward"),
                                (trainer.optimizer, "step", "update: AdamW step")):
        if owner is not None:  # frozen dataclasses too: an instance attribute shadows the method
            object.__setattr__(owner, method, phases.wrap(name, getattr(owner, method)))
    after_build = status("VmRSS")
    trainer.train_step()  # warm-up: AdamW's moments appear here
    phases.recording = True
    metrics, _ = trainer.train_step()
    model = trainer.model
    params = [p for p in model.parameters()]
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if hasattr(t, "untyped_storage")]
    reference = getattr(trainer.reference, "model", None)
    held = {
        "policy weights": tensor_bytes(params),
        "AdamW moments": tensor_bytes(state),
        "frozen reference": tensor_bytes(reference.parameters()) if reference is not None else 0.0,
    }
    print(f"model {args.model}, {sum(p.numel() for p in params) / 1e6:.1f} M parameters, "
          f"weights {next(iter(params)).dtype}, {metrics['completion_length/mean']:.0f} mean completion tokens, "
          f"RSS after loading {after_build:.2f} GiB, process peak {metrics['memory/peak_gb']:.2f} GiB")
    print("\n| phase (step 2) | RSS at start GiB | peak GiB | RSS at end GiB |\n|---|---|---|---|")
    for name, start, peak, end in phases.rows:
        print(f"| {name} | {start:.2f} | {peak:.2f} | {end:.2f} |")
    print("\n| held at the end of step 2 | GiB |\n|---|---|")
    for name, value in held.items():
        print(f"| {name} | {value:.2f} |")
    print(json.dumps({"rows": phases.rows, "held": held}))


if __name__ == "__main__":
    main()
