"""Faults while appending to the run's files, and lines torn by a kill mid-append.

metrics.jsonl and eval.jsonl (the record resume and the report rely on) stop the run with
one line, exit 1, and resume=true then gives the uninterrupted run's record; samples.jsonl
and TensorBoard go on with the failures counted in `log/write_errors`. A failed append is
cut back, so no torn line is left for the next record to be glued onto; on resume a torn last
line is dropped and no complete record is lost. Faults are simulated (a partial write, then
ENOSPC), as tests cannot fill a real disk.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import grpo.record.logging
from tests.support.cli_runs import fails, metrics, quick, run_cli, tiny_args


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    with quick(monkeypatch):
        yield


@pytest.fixture
def args(tmp_path, tiny_model_dir):
    return [*tiny_args(tmp_path, tiny_model_dir), "train.num_steps=2"]


def lines(path):
    """Every line of a JSONL file, parsed (a torn line would fail here)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def records(path):
    return [{k: v for k, v in r.items() if not k.startswith(("time", "memory/"))} for r in lines(path)]


def disk_full_on(monkeypatch, name, appends=(1,)):
    """The given appends (1-based) to the file `name` write half their bytes, then fail as a full
    disk does; every other write goes through."""
    real, count = grpo.record.logging._write_all, [0]

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == name:
            count[0] += 1
            if count[0] in appends:
                real(fd, data[: len(data) // 2])  # a torn line on disk, cut back by the logger
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(grpo.record.logging, "_write_all", write)


def test_a_full_disk_for_samples_is_counted_and_the_run_goes_on(capsys, args, tmp_path, monkeypatch):
    disk_full_on(monkeypatch, "samples.jsonl")
    status, _, err = run_cli(capsys, "train", *args)
    assert status == 0, err
    assert err.count("warning: could not write to samples.jsonl (OSError: [Errno 28] No space left") == 1, err
    first, second = metrics(tmp_path / "run")
    assert "log/write_errors" not in first and second["log/write_errors"] == 1
    assert {r["step"] for r in lines(tmp_path / "run" / "samples.jsonl")} == {2}  # step 1's were cut back


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.jsonl"])
def test_a_full_disk_for_the_record_stops_the_run_and_resume_loses_nothing(capsys, args, tmp_path, monkeypatch,
                                                                            name):
    with_eval = [*args, "eval.num_examples=2", "eval.every=1"]
    status, _, err = run_cli(capsys, "train", *with_eval, f"output_dir={tmp_path / 'ref'}")
    assert status == 0, err
    run = tmp_path / "run"
    disk_full_on(monkeypatch, name, appends=(2,))  # step 1's metrics / the eval after step 1
    fails(capsys, 1, "train", *with_eval, says=(f"could not append to '{run / name}'", "No space left on device",
                                                "resume=true continues from the newest checkpoint"))
    lines(run / name)  # no torn line left behind
    assert not (run / "final").exists()
    monkeypatch.undo()  # space freed
    status, _, err = run_cli(capsys, "train", *with_eval, "resume=true")
    assert status == 0, err
    for record in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
        assert records(run / record) == records(tmp_path / "ref" / record), record


def test_a_failing_tensorboard_is_counted_and_switched_off(capsys, args, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    calls = [0]

    def full(self, *a, **k):
        calls[0] += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    status, _, err = run_cli(capsys, "train", *args, "log.tensorboard=true")
    assert status == 0, err
    assert err.count("warning: could not write to tensorboard") == 1, err
    first, second = metrics(tmp_path / "run")
    assert "log/write_errors" not in first and second["log/write_errors"] == 1  # once: then it is off
    assert calls[0] == 1


def test_torn_last_lines_are_dropped_on_resume_and_no_complete_record_is_lost(capsys, args, tmp_path):
    # A 3-step run killed after step 3's records were appended but before its checkpoint, in
    # the middle of appending one more line to each file.
    full = [*args, "train.num_steps=3", "eval.num_examples=2", "eval.every=1", "checkpoint.keep_last=3"]
    status, _, err = run_cli(capsys, "train", *full)
    assert status == 0, err
    run = tmp_path / "run"
    names = ("metrics.jsonl", "samples.jsonl", "eval.jsonl")
    expected = {name: records(run / name) for name in names}
    shutil.rmtree(run / "checkpoint-000003")
    torn = {"metrics.jsonl": '{"step": 4, "loss": 0.1', "samples.jsonl": '{"step": 3, "completion": "<thi',
            "eval.jsonl": '{"st'}
    for name, fragment in torn.items():
        with open(run / name, "a") as f:
            f.write(fragment)
    status, _, err = run_cli(capsys, "train", *full, "resume=true")
    assert status == 0, err
    for name in names:
        assert records(run / name) == expected[name], name


def test_truncation_drops_torn_and_foreign_lines_but_keeps_every_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\n\xff\xfe\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    grpo.record.logging.truncate_jsonl(path, 2)
    assert lines(path) == [{"step": 1}, {"step": 2}]
