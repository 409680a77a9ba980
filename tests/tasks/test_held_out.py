"""How many rows a data task holds out (grpo.config.rules.held_out_for_evaluation).

A 50-row file or Dataset with eval.num_examples=0 trains on all 50; with evaluation on it holds
out task.num_eval as it always did, or fails with one message naming the fields to set.
"""

from __future__ import annotations

import json

import pytest

from grpo.config import load_config
from grpo.tasks import build_task
from tests.support.cli_runs import quick, run_cli, tiny_args

NUM_ROWS = 50


def write_rows(path, n=NUM_ROWS):
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def file_config(tmp_path, *overrides):
    """The defaults (task.num_eval 100, eval.num_examples 100, no worked example) on a 50-row file."""
    data = write_rows(tmp_path / "small.jsonl")
    return load_config(None, ["task.source=file", f"task.path={data}", *overrides])


def test_no_evaluation_holds_nothing_out(tmp_path):
    cfg = file_config(tmp_path, "eval.num_examples=0")
    assert cfg.task.num_eval == 0  # what config.yaml records: nothing was held out
    task = build_task(cfg.task)
    assert (len(task.eval), len(task.train)) == (0, NUM_ROWS)


def test_with_evaluation_the_split_is_the_one_it_always_was(tmp_path):
    # eval.num_examples below task.num_eval still holds out task.num_eval: a resumed run written
    # before the rule trains on the same rows
    cfg = file_config(tmp_path, "eval.num_examples=10", "task.num_eval=20")
    assert cfg.task.num_eval == 20
    task = build_task(cfg.task)
    assert (len(task.eval), len(task.train)) == (20, NUM_ROWS - 20)


def test_a_held_out_share_that_does_not_fit_is_one_message_naming_the_fields(tmp_path):
    cfg = file_config(tmp_path)  # evaluation on: 100 held-out rows wanted from 50
    with pytest.raises(ValueError) as info:
        build_task(cfg.task)
    msg = str(info.value)
    assert "50 rows" in msg and "task.num_eval = 100" in msg and "eval.num_examples" in msg
    # what to set: a number that fits (a fifth of the questions), no evaluation, or held-out data apart
    assert "task.num_eval=10" in msg and "eval.num_examples=0" in msg and "task.eval_path" in msg


def test_held_out_files_and_procedural_tasks_keep_task_num_eval(tmp_path):
    held = write_rows(tmp_path / "test.jsonl", 5)
    cfg = file_config(tmp_path, "eval.num_examples=0", f"task.eval_path={held}")
    assert cfg.task.num_eval == 100  # they cost no training row: a later `grpo eval` can use them
    assert load_config(None, ["eval.num_examples=0"]).task.num_eval == 100  # reasoning_gym, as before


def test_periodic_evaluation_without_examples_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`eval.every` = 2 .*eval.num_examples = 0"):
        file_config(tmp_path, "eval.num_examples=0", "eval.every=2")


def test_a_50_row_file_trains_from_the_cli_without_evaluation(capsys, tmp_path, tiny_model_dir, monkeypatch):
    args = [a for a in tiny_args(tmp_path, tiny_model_dir) if not a.startswith(("task.path=", "task.num_eval="))]
    data = write_rows(tmp_path / "small.jsonl")
    with quick(monkeypatch):  # the demo's task.num_eval 100 stands; eval.num_examples=0 is in tiny_args
        status, _, err = run_cli(capsys, "train", *args, f"task.path={data}")
    assert status == 0, err
    assert load_config(str(tmp_path / "run" / "config.yaml")).task.num_eval == 0
