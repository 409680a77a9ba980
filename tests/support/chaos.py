"""Kill a training run at random moments and check that nothing is ever lost.

    .venv/bin/python bench/chaos.py --kills 10          # the full version (tests/e2e/test_chaos.py, slow)
    .venv/bin/python bench/chaos.py --kills 3 --sigint  # the short version run with the test suite

The harness lives in tests/support so that the suite and bench/chaos.py (its command line) share it.
The asynchronous path (rollout.max_staleness > 0 through a real rollout server, trainer and server
killed) has its own driver beside it: tests/support/chaos_async.py.
    ... --override algorithm.dynamic_sampling=true      # any extra config for every run

1. A tiny random Llama (tests/support/tiny.py) trains for --steps steps, uninterrupted: the reference.
2. The same run (same seed, checkpoint.every=1, resume=true) is started again and again and
   killed with SIGKILL --kills times, at moments of three kinds in turn, each found by
   watching the run directory rather than by the clock, so every kill lands on a fast or a
   slow machine alike:
   - checkpoint-write: once the first or the second new step's metrics line appears (the
     first's checkpoint then complete, with its rotation), at the moment that step's
     checkpoint temporary directory appears, plus 0-4 ms (inside the write or the rotation);
   - mid-step: once a new step's checkpoint is saved, after a random fraction of that step's
     own `time/step` (as measured now, on this machine), or at once if the next step's
     metrics line appears first;
   - startup, its three phases in turn: a random moment while loading (up to the startup
     time the latest child took), the moment config.yaml is rewritten (the model and the
     checkpoint are loaded), or the moment metrics.jsonl is cut back to the checkpoint;
     always by the time the child's first new step is logged.
   So a kill costs at most two steps of progress (three for mid-step if a poll misses a
   whole step; about one on average), and --steps defaults to 2 * kills + 4: the run cannot
   end before every kill has landed, however fast or slow the machine is. After every kill,
   every checkpoint-* directory must load completely (safetensors + training_state.pt, read
   as a resume reads it, + trainer_state.json naming its own step) and the newest checkpoint
   must never go back.
3. Once the kills are spent, the run is resumed to the end. Its metrics.jsonl (time and
   memory fields aside), samples.jsonl, eval.jsonl and final weights must equal the
   reference's exactly.
4. With --sigint, a third copy gets a SIGINT after step 2: it must exit with status 130
   leaving a checkpoint at the last logged step, and resuming it must again give the
   reference's results.

Runs are forked from a multiprocessing forkserver that has imported grpo once, so a restart
costs a model load, not ten seconds of imports; each is a separate process that calls
`grpo.cli.main`, killed by a real signal. Every child uses one torch thread, so the runs
are bit-for-bit comparable. Prints a JSON summary; exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script (bench/chaos.py): the checkout's tests.support
    sys.path.insert(0, str(ROOT))
from tests.support import REWARDS_FILE  # noqa: E402

STARTUP_PHASES = ("startup-loading", "startup-built", "startup-record-cut")  # in turn


# --------------------------------------------------------------------------- children


def _redirect(log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def child_train(argv: list[str], log: str) -> None:
    _redirect(log)
    import torch

    torch.set_num_threads(1)
    from grpo.cli import main

    sys.exit(main(argv))


def child_tiny_model(path: str, log: str) -> None:
    _redirect(log)
    from tests.support.tiny import make_tiny_model_dir

    make_tiny_model_dir(path)


# --------------------------------------------------------------------------- checks


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError):
                pass  # a line cut by the kill: cut back on resume
    return steps


def checkpoint_problems(run: Path) -> list[str]:
    """Why any checkpoint-* directory would not load; [] when all of them load completely."""
    from safetensors.torch import load_file

    from grpo.training.checkpoint import read_training_state

    problems = []
    for ckpt in sorted(run.glob("checkpoint-*")):
        try:
            load_file(ckpt / "model.safetensors")
            blob = read_training_state(ckpt)  # as a resume reads it: weights_only
            assert {"optimizer", "scheduler", "rng"} <= set(blob), "training_state.pt lacks a part"
            state = json.loads((ckpt / "trainer_state.json").read_text())
            assert f"checkpoint-{state['step']:06d}" == ckpt.name, f"holds step {state['step']}"
        except Exception as e:  # noqa: BLE001 - any failure to load is what we look for
            problems.append(f"{ckpt.name}: {type(e).__name__}: {e}")
    return problems


def latest_step(run: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")]
    return max(steps, default=0)


def last_step_seconds(run: Path) -> float:
    """The `time/step` of the newest complete metrics line: how long this machine takes for a
    step right now (a fixed wait let a fast machine finish the run before the kills were spent)."""
    for line in reversed((run / "metrics.jsonl").read_text().splitlines()):
        try:
            return float(json.loads(line)["time/step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return 0.0


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time", "memory/"))} for r in rows]


def differences(run: Path, reference: Path) -> list[str]:
    """What differs between a run's record and final weights and the reference's."""
    import torch
    from safetensors.torch import load_file

    out = [f"{name} differs" for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl")
           if records(run / name) != records(reference / name)]
    if not (run / "final" / "model.safetensors").exists():
        return [*out, "no final model"]
    a, b = (load_file(d / "final" / "model.safetensors") for d in (run, reference))
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        out.append("final weights differ")
    return out


# --------------------------------------------------------------------------- driver


class Chaos:
    def __init__(self, work: Path, steps: int, seed: int, overrides: tuple[str, ...] = ()):
        self.work, self.rng = work, random.Random(seed)
        # how long a child takes to its first step: the reference run's estimate, then each child's own
        self.startup_seconds = 3.0
        self.ctx = mp.get_context("forkserver")
        # imported once in the forkserver, so no child pays for them (matplotlib: the report)
        self.ctx.set_forkserver_preload(["grpo.cli", "grpo.training.trainer", "grpo.record.report", "safetensors.torch",
                                         "matplotlib.backends.backend_agg", "matplotlib.figure"])
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.num_starts = 0
        self.num_startup_kills = 0
        model = work / "tiny"
        if not model.exists():
            self.wait(self.start(child_tiny_model, str(model)), 300, expect=None)
        data = work / "sums.jsonl"
        data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                                for a in range(8) for b in range(6)))
        self.base = [
            f"model.path={model}", "task.source=file", f"task.path={data}", "task.num_eval=4",
            "task.system_prompt=''", f"rewards=[{{name: '{REWARDS_FILE}:length_reward'}}, "
            "{name: format}]", "rollout.group_size=4", "rollout.max_new_tokens=6", "train.prompts_per_step=2",
            "train.micro_batch_size=4", f"train.num_steps={steps}", "train.learning_rate=1e-3",
            "eval.num_examples=2", "eval.every=3", "checkpoint.every=1", "checkpoint.keep_last=2",
            "log.progress=false", "log.tensorboard=false", "seed=7", "resume=true", *overrides,
        ]

    def start(self, target, *args):
        self.num_starts += 1
        log = str(self.logs / f"{self.num_starts:03d}.log")
        proc = self.ctx.Process(target=target, args=(*args, log))
        proc.start()
        proc.log = log
        return proc

    def train(self, run: Path):
        return self.start(child_train, ["train", *self.base, f"output_dir={run}"])

    def wait(self, proc, timeout: float, expect: int | None = 0) -> int:
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise RuntimeError(f"a child did not finish in {timeout:g} s; see {proc.log}")
        if expect is not None and proc.exitcode != expect:
            raise RuntimeError(f"a child exited with {proc.exitcode}, expected {expect}; see {proc.log}")
        return proc.exitcode

    def wait_for(self, proc, event, delay: float | None = None, timeout: float = 300.0) -> bool:
        """Until `event()` holds (True), `delay` seconds pass or the child exits (False)."""
        began = time.monotonic()
        while True:
            if event():
                return True
            waited = time.monotonic() - began
            if not proc.is_alive() or (delay is not None and waited >= delay):
                return False
            if waited > timeout:
                raise RuntimeError(f"no progress in {timeout:g} s; see {proc.log}")
            time.sleep(0.001)

    @staticmethod
    def stepped(run: Path, after: int, old_inode: int | None) -> bool:
        """This child has logged a step > after. A killed run may have logged steps past its
        last checkpoint: they count only once the child has cut metrics.jsonl back (it
        rewrites the file by rename, so the inode changes)."""
        return inode(run / "metrics.jsonl") != old_inode and any(s > after for s in logged_steps(run))

    def kill_once(self, run: Path, kind: str) -> dict:
        before, temps = latest_step(run), set(run.glob(".tmp-*"))
        old = {name: inode(run / name) for name in ("metrics.jsonl", "config.yaml")}
        proc = self.train(run)
        started = time.monotonic()

        def stepped() -> bool:
            return self.stepped(run, before, old["metrics.jsonl"])

        phase = kind
        if kind == "startup":
            phase = STARTUP_PHASES[self.num_startup_kills % len(STARTUP_PHASES)]
            self.num_startup_kills += 1
            if phase == "startup-loading":
                self.wait_for(proc, stepped, delay=self.rng.uniform(0.0, self.startup_seconds))
            else:
                changed = "config.yaml" if phase == "startup-built" else "metrics.jsonl"
                self.wait_for(proc, lambda: inode(run / changed) != old[changed] or stepped())
        elif self.wait_for(proc, stepped):
            self.startup_seconds = time.monotonic() - started  # the latest child's, for startup kills
            if kind == "checkpoint-write":  # in the write of the first or the second new checkpoint
                target = before + self.rng.choice([1, 2])
                self.wait_for(proc, lambda: latest_step(run) >= target - 1
                              and max(logged_steps(run), default=0) >= target)
                # a temp dir not there before this child: that write (or the rotation after the one before)
                self.wait_for(proc, lambda: bool(set(run.glob(".tmp-*")) - temps) or latest_step(run) >= target)
                time.sleep(self.rng.uniform(0.0, 0.004))
            else:  # within the next step once this one's checkpoint is saved, timed by this step's own time
                self.wait_for(proc, lambda: latest_step(run) > before)
                last = max(logged_steps(run))
                self.wait_for(proc, lambda: max(logged_steps(run), default=0) > last,
                              delay=self.rng.uniform(0.0, last_step_seconds(run)))
        alive = proc.is_alive()
        proc.kill()
        proc.join()
        after = latest_step(run)
        return {
            "kind": phase, "at_s": round(time.monotonic() - started, 3), "killed": alive,
            "exitcode": proc.exitcode, "checkpoint_before": before, "checkpoint_after": after,
            # a temp dir this child left: killed while writing (or rotating out) a checkpoint
            "mid_write": bool(set(run.glob(".tmp-*")) - temps),
            "problems": checkpoint_problems(run) + ([] if after >= before else ["newest checkpoint went back"])
            + ([] if alive or proc.exitcode == 0 else [f"child failed with exit status {proc.exitcode}"]),
        }

    def sigint(self, run: Path, reference: Path) -> dict:
        proc = self.train(run)
        self.wait_for(proc, lambda: self.stepped(run, 1, None))
        os.kill(proc.pid, signal.SIGINT)
        status = self.wait(proc, 120, expect=None)
        logged = max(logged_steps(run), default=0)
        out = {"exitcode": status, "last_logged_step": logged, "checkpoint": latest_step(run),
               "problems": checkpoint_problems(run)}
        if status != 130:
            out["problems"].append(f"exit status {status}, expected 130")
        if latest_step(run) != logged:
            out["problems"].append(f"newest checkpoint is step {latest_step(run)}, the last logged step {logged}")
        self.wait(self.train(run), 300)
        out["problems"] += differences(run, reference)
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs to land (default 10)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2 * kills + 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--sigint", action="store_true", help="also check a SIGINT stop and its resume")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra config override for every run (repeatable), e.g. algorithm.dynamic_sampling=true")
    ns = parser.parse_args(argv)
    steps = ns.steps or 2 * ns.kills + 4
    with tempfile.TemporaryDirectory(prefix="grpo-chaos-") as tmp:
        work = ns.workdir or Path(tmp)
        began = time.monotonic()
        chaos = Chaos(work, steps, ns.seed, tuple(ns.override))
        reference, run = work / "reference", work / "chaos"
        t0 = time.monotonic()
        chaos.wait(chaos.train(reference), 600)
        # before the first step: imports (preloaded), model load, first eval (refined by every child)
        step_times = [r["time/step"] for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())]
        chaos.startup_seconds = max(0.05, time.monotonic() - t0 - sum(step_times))
        kinds = ["checkpoint-write", "mid-step", "startup"]
        kills = []
        while (sum(k["killed"] for k in kills) < ns.kills and latest_step(run) < steps
               and len(kills) < 3 * ns.kills + 5):
            kills.append(chaos.kill_once(run, kinds[len(kills) % len(kinds)]))
        chaos.wait(chaos.train(run), 600)  # resume to the end
        summary = {
            "steps": steps, "kills": sum(k["killed"] for k in kills), "kills_requested": ns.kills,
            "kills_mid_checkpoint_write": sum(k["mid_write"] for k in kills),
            "all_resumed": all(not k["problems"] for k in kills),
            "final_problems": checkpoint_problems(run) + differences(run, reference),
            "kill_log": kills,
        }
        if ns.sigint:
            summary["sigint"] = chaos.sigint(work / "sigint", reference)
        summary["ok"] = (summary["kills"] >= ns.kills and summary["all_resumed"] and not summary["final_problems"]
                         and not summary.get("sigint", {}).get("problems"))
        summary["seconds"] = round(time.monotonic() - began, 1)
    return report(summary, ns.json)


def report(summary: dict, path: Path | None) -> int:
    """Print the JSON summary (and write it to `path`); the exit status: 0 when every check passed."""
    text = json.dumps(summary, indent=1)
    print(text)
    if path:
        path.write_text(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
