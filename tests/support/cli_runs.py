"""Helpers for tests that drive the real CLI (`grpo.cli.main`) on the tiny model in-process."""

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from grpo.cli import main
from tests.support import REWARDS_FILE

REWARDS = REWARDS_FILE
LENGTH = f"{REWARDS}:length_reward"


def write_sums(path: Path) -> Path:
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_args(tmp_path: Path, model_dir: Path) -> list[str]:
    """Overrides for a 1-step tiny run into tmp_path/run that is fine as it is (a case adds the
    one thing it breaks). No system prompt: ~20-token prompts keep a step well under a second."""
    data = write_sums(tmp_path / "sums.jsonl")
    return [
        f"model.path={model_dir}", "task.source=file", f"task.path={data}", "task.num_eval=4",
        "task.system_prompt=''", f"rewards=[{{name: '{LENGTH}'}}, {{name: format}}]", "rollout.group_size=4",
        "rollout.max_new_tokens=4", "train.prompts_per_step=2", "train.micro_batch_size=8",
        "train.num_steps=1", "train.learning_rate=1e-3", "eval.num_examples=0", "log.progress=false",
        "model.precision=float32",  # a subprocess: conftest's pin of `auto` does not reach it
        "log.tensorboard=false", "checkpoint.every=1", f"output_dir={tmp_path / 'run'}",
    ]


@contextmanager
def quick(monkeypatch):
    """One torch thread (on a shared 2-core machine a tiny model's step is ~10x faster than
    with threads fighting over the cores) and no HTML report (matplotlib; not under test)."""
    import grpo.record.report

    monkeypatch.setattr(grpo.record.report, "write_report", lambda run_dir: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cli(capsys, *argv):
    """(exit status, the `grpo ...:` lines of stderr, all of stderr); never a traceback."""
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, [line for line in err.splitlines() if line.startswith("grpo ")], err


def fails(capsys, status, *argv, says=()):
    """The command exits with `status` and one stderr line that contains every string in `says`."""
    got, lines, err = run_cli(capsys, *argv)
    assert got == status, err
    assert len(lines) == 1, err
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


def metrics(run_dir, drop_times: bool = False):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    if drop_times:
        rows = [{k: v for k, v in r.items() if not k.startswith(("time", "memory/"))} for r in rows]
    return rows
