"""SIGINT / SIGTERM during training: finish the step, save a checkpoint, exit 130 / 143.

The signal comes from a reward function (tests/support/rewards_for_tests.py:signalling) on a given
call, so it lands in the middle of a known step, in-process and deterministically. A real
signal from outside to a separate process is exercised by bench/chaos.py --sigint (see
tests/e2e/test_chaos.py).
"""

import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

from grpo.training.interrupt import StopSignals
from tests.support.cli_runs import REWARDS, fails, metrics, quick, run_cli, tiny_args

SIGNALLING = f"{REWARDS}:signalling"


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    with quick(monkeypatch):
        yield


def signalled_run(tmp_path, tiny_model_dir, run, at_calls, signum=signal.SIGINT, *more):
    # 2 prompts * G=4: calls 1-8 score step 1, calls 9-16 step 2... (no first-run check: its
    # probe would score 8 more calls before step 1)
    args = tiny_args(tmp_path, tiny_model_dir) + ["train.first_run_check=false"]
    return ["train", *args, f"output_dir={tmp_path / run}", "train.num_steps=3",
            f"rewards=[{{name: '{SIGNALLING}', options: {{at_calls: {list(at_calls)}, signum: {int(signum)}}}}}]",
            *more]


def test_sigint_saves_the_current_step_and_resume_equals_an_uninterrupted_run(capsys, tmp_path, tiny_model_dir):
    status, _, err = run_cli(capsys, *signalled_run(tmp_path, tiny_model_dir, "full", []))
    assert status == 0, err
    fails(capsys, 130, *signalled_run(tmp_path, tiny_model_dir, "cut", [10]),  # during step 2
          says=("stopped by SIGINT after step 2", "checkpoint-000002", "resume=true"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    cut = tmp_path / "cut"
    assert sorted(p.name for p in cut.glob("checkpoint-*"))[-1] == "checkpoint-000002"
    assert [r["step"] for r in metrics(cut)] == [1, 2] and not (cut / "final").exists()
    status, _, err = run_cli(capsys, *signalled_run(tmp_path, tiny_model_dir, "cut", [], signal.SIGINT,
                                                    "resume=true"))
    assert status == 0, err
    assert metrics(cut, drop_times=True) == metrics(tmp_path / "full", drop_times=True)
    full, resumed = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("full", "cut"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_sigterm_exits_143_with_a_checkpoint(capsys, tmp_path, tiny_model_dir):
    fails(capsys, 143, *signalled_run(tmp_path, tiny_model_dir, "run", [3], signal.SIGTERM),
          says=("stopped by SIGTERM after step 1", "checkpoint-000001"))
    assert (tmp_path / "run" / "checkpoint-000001" / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_sigint_stops_at_once(capsys, tmp_path, tiny_model_dir):
    fails(capsys, 130, *signalled_run(tmp_path, tiny_model_dir, "run", [2, 4]),  # both within step 1
          says=("interrupted at once", "checkpoints on disk are intact"))
    run = tmp_path / "run"
    assert not list(run.glob("checkpoint-*")) and not list(run.glob(".tmp-*"))  # step 1 was abandoned


def test_handlers_are_only_installed_from_the_main_thread():
    seen = []

    def body():
        with StopSignals() as stop:
            seen.append((stop.requested, signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, signal.default_int_handler)]
    with StopSignals():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ignored_signals_stay_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
