"""Kill an asynchronous run (rollout.max_staleness > 0) and its real `grpo serve-rollout` server
with SIGKILL, resume, and check that nothing is lost or trained twice.

    .venv/bin/python -m tests.support.chaos_async            # 4 kills, one of each kind (tests/e2e/test_chaos.py)
    .venv/bin/python -m tests.support.chaos_async --rounds 3 # each kind 3 times (slow)

1. A tiny random Llama trains --steps steps through the server uninterrupted: the reference.
2. The same run (checkpoint.every=1, resume=true) is killed, the kinds in turn, each timed by an
   event, never by the clock (the server leaves a marker file as each generation and each weight
   push begins: tests/support/marked_server.py; the trainer's record is tests/support/chaos.py's):
   - trainer-mid-push: once the trainer has logged a new step, at the next push's marker (the
     trainer is inside its broadcast of the new weights); the trainer is started again;
   - trainer-mid-step: once it has logged a new step, at the next generation's marker (the
     pipeline generating ahead while the loop trains); the trainer is started again;
   - server-mid-generation / server-mid-push: the same events, but the server is killed and a
     new one started on the same port; the trainer must find it and push its weights again.
3. The run then goes on to the end. Its <run>/rollouts.jsonl must hold every step once, each
   step's example ids in the reference's order, and every trained row sampled at most
   rollout.max_staleness updates before the update that trained it.
Prints a JSON summary; exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.support import REWARDS_FILE, free_port  # noqa: E402
from tests.support.chaos import logged_steps, report  # noqa: E402

TOKEN = "chaos-async-token-0123456789"
KINDS = ("trainer-mid-push", "trainer-mid-step", "server-mid-generation", "server-mid-push")
STALENESS = 1


def rows(run: Path) -> list[dict]:
    path = run / "rollouts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def problems(run: Path, reference: list[dict], steps: int) -> list[str]:
    got = rows(run)
    out = []
    if [r["step"] for r in got] != list(range(1, steps + 1)):
        out.append(f"steps recorded {[r['step'] for r in got]}, expected 1..{steps} once each")
    if [r["example_ids"] for r in got] != [r["example_ids"] for r in reference]:
        out.append("the example order differs from the reference's")
    ages = [r["trained_version"] - v for r in got for v in r["policy_versions"]]
    if ages and not 0 <= min(ages) <= max(ages) <= STALENESS:
        out.append(f"staleness {min(ages)}..{max(ages)} outside 0..{STALENESS}")
    if not (run / "final" / "model.safetensors").exists():
        out.append("no final model")
    return out


class AsyncChaos:
    def __init__(self, work: Path, steps: int):
        self.work, self.steps = work, steps
        self.marks, self.logs = work / "marks", work / "logs"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.num_starts = 0
        self.env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        model = work / "tiny"
        if not model.exists():
            from tests.support.tiny import make_tiny_model_dir

            make_tiny_model_dir(model)
        self.model, self.port = model, free_port()
        data = work / "sums.jsonl"
        data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                                for a in range(8) for b in range(6)))
        self.base = [
            f"model.path={model}", "task.source=file", f"task.path={data}", "task.num_eval=4",
            "task.system_prompt=''", f"rewards=[{{name: '{REWARDS_FILE}:length_reward'}}, {{name: format}}]",
            "rollout.group_size=4", "rollout.max_new_tokens=6", "train.prompts_per_step=2",
            "train.micro_batch_size=4", f"train.num_steps={steps}", "train.learning_rate=1e-3",
            "eval.num_examples=0", "checkpoint.every=1", "checkpoint.keep_last=2", "log.progress=false",
            "log.tensorboard=false", "seed=7", "resume=true", "model.precision=float32",
            "train.first_run_check=false", "rollout.engine=server", f"rollout.url=http://127.0.0.1:{self.port}",
            f"rollout.max_staleness={STALENESS}", "rollout.server_timeout=120",
        ]
        self.server = self.start_server()

    def popen(self, args: list[str]) -> subprocess.Popen:
        self.num_starts += 1
        log = open(self.logs / f"{self.num_starts:03d}.log", "wb")  # noqa: SIM115 - the child's to the end
        proc = subprocess.Popen([sys.executable, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        proc.log = log.name
        return proc

    def start_server(self) -> subprocess.Popen:
        proc = self.popen(["-m", "tests.support.marked_server", str(self.marks), "--model", str(self.model),
                           "--port", str(self.port), "--engine", "shared_prefix",
                           "--seed", "0", "--group-timeout", "15"])
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).read()
                return proc
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}; see {proc.log}") from None
                time.sleep(0.05)

    def train(self, run: Path) -> subprocess.Popen:
        return self.popen(["-m", "grpo", "train", *self.base, f"output_dir={run}"])

    def wait_for(self, proc: subprocess.Popen, event, timeout: float = 300.0) -> bool:
        """Until `event()` holds (True) or the trainer exits (False)."""
        began = time.monotonic()
        while not event():
            if proc.poll() is not None:
                return False
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"no progress in {timeout:g} s; see {proc.log}")
            time.sleep(0.001)
        return True

    def marks_of(self, kind: str) -> set[str]:
        return {p.name for p in self.marks.glob(f"{kind}-*")}

    def kill_once(self, run: Path, trainer: subprocess.Popen | None, kind: str) -> tuple[dict, subprocess.Popen]:
        """Land one kill of `kind`; returns what happened and the trainer running after it."""
        after = max(logged_steps(run), default=0)
        if trainer is None or trainer.poll() is not None:
            trainer = self.train(run)
        # a step past every one logged so far: this trainer's (a killed one's lines end at `after`)
        self.wait_for(trainer, lambda: any(s > after for s in logged_steps(run)))
        mark = "push" if kind.endswith("push") else "generate"
        seen = self.marks_of(mark)
        landed = self.wait_for(trainer, lambda: bool(self.marks_of(mark) - seen))
        victim = self.server if kind.startswith("server") else trainer
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        record = {"kind": kind, "landed": landed, "step_logged": max(logged_steps(run), default=0)}
        if kind.startswith("server"):
            self.server = self.start_server()
        else:
            trainer = self.train(run)
        return record, trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="kills of each kind (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2 * kills + 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    ns = parser.parse_args(argv)
    kills = ns.rounds * len(KINDS)
    steps = ns.steps or 2 * kills + 1  # each kill waits for a new step and costs at most two: all land
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grpo-chaos-async-") as tmp:
        work = ns.workdir or Path(tmp)
        chaos = AsyncChaos(work, steps)
        try:
            reference_run, run = work / "reference", work / "chaos"
            ref = chaos.train(reference_run)
            if ref.wait(600) != 0:
                raise RuntimeError(f"the reference run failed; see {ref.log}")
            reference = rows(reference_run)
            log, trainer = [], None
            for i in range(kills):
                record, trainer = chaos.kill_once(run, trainer, KINDS[i % len(KINDS)])
                log.append(record)
            status = trainer.wait(600)
            texts = [p.read_text(errors="replace") for p in chaos.logs.glob("*.log")]
            summary = {"steps": steps, "kills": sum(k["landed"] for k in log), "kills_requested": kills,
                       "exit_status": status, "kill_log": log,
                       # the pushes a kill cut (the server's side, the trainer's side): "mid-push" landed inside
                       "pushes_cut": {"server": sum(t.count("weight push for version") for t in texts),
                                      "trainer": sum(t.count("the weight broadcast failed") for t in texts)},
                       "problems": problems(reference_run, reference, steps) + problems(run, reference, steps)
                       + ([] if status == 0 else [f"the last trainer exited with {status}"])}
        finally:
            chaos.server.kill()
            chaos.server.wait()
        summary["ok"] = summary["kills"] == kills and not summary["problems"]
        summary["seconds"] = round(time.monotonic() - began, 1)
    return report(summary, ns.json)


if __name__ == "__main__":
    sys.exit(main())
