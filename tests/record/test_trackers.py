"""Experiment trackers (log.report_to): W&B offline files and MLflow's local store, read back
through their own formats and clients; missing packages and failing trackers."""

import json
from pathlib import Path

import pytest

from grpo.config import load_config, rules
from grpo.record import trackers
from grpo.record.logging import RunLogger
from tests.support.tracker_files import wandb_config, wandb_history

METRICS = {"reward/mean": 0.25, "loss": 0.5, "kl": float("nan"), "time/step": 1.5,
           "reward//abs/rewards.py:length/mean": 0.75}  # a reward named by file path
SAMPLES = [{"example_id": "sums.jsonl:3", "question": "What is 1 + 2?", "answer": "3",
            "completion": "<answer>3</answer>", "finish_reason": "eos", "reward": 1.0, "advantage": 0.5}]


def a_run(tmp_path, report_to, start_step=0):
    cfg = load_config(None, ["train.num_steps=7", f"output_dir={tmp_path / 'run'}",
                             f"log.report_to=[{', '.join(report_to)}]"])
    with RunLogger(tmp_path / "run", 2, start_step=start_step, report_to=cfg.log.report_to, config=cfg,
                   progress=False) as log:
        if start_step == 0:
            log.log_eval(0, {"num_examples": 2, "strict_accuracy": 0.5})
        for step in (start_step + 1, start_step + 2):
            log.log_step(step, {**METRICS, "loss": 0.5 / step})
            log.log_samples(step, SAMPLES)
    return log


def test_wandb_offline_files_hold_every_metric_the_config_and_the_samples(offline_trackers, tmp_path):
    log = a_run(tmp_path, ["wandb"])
    assert log.write_errors == 0
    run = tmp_path / "run"
    history = wandb_history(run)
    steps = [row for row in history if "loss" in row]
    assert [(r["step"], r["loss"], r["reward/mean"], r["time/step"]) for r in steps] == [
        (1, 0.5, 0.25, 1.5), (2, 0.25, 0.25, 1.5)]
    assert all("kl" not in r for r in steps)  # NaN is no number to plot
    assert any(r.get("eval/strict_accuracy") == 0.5 and r["step"] == 0 for r in history)
    config = wandb_config(run)
    assert config["train"]["num_steps"] == 7 and config["log"]["report_to"] == ["wandb"]
    tables = list(run.glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    assert len(tables) == 2  # one per logged step
    data = json.loads(tables[0].read_text())
    assert data["columns"] == list(trackers.SAMPLE_COLUMNS)
    assert data["data"][0][data["columns"].index("completion")] == "<answer>3</answer>"
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    a_run(tmp_path, ["wandb"], start_step=2)  # resumed: the same W&B run
    assert {p.name.split("-")[3] for p in run.glob("wandb/offline-run-*")} == {run_id}  # offline-run-<time>-<id>[-n]


def test_mlflow_local_store_holds_the_metrics_and_the_config(offline_trackers, tmp_path):
    from mlflow.tracking import MlflowClient

    log = a_run(tmp_path, ["mlflow"])
    assert log.write_errors == 0
    run = tmp_path / "run"
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    got = client.get_run(run_id)
    assert got.data.params["train.num_steps"] == "7" and got.data.params["log.report_to"] == "['mlflow']"
    assert got.info.run_name == "run" and got.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5), (2, 0.25)]
    assert [m.value for m in client.get_metric_history(run_id, "eval/strict_accuracy")] == [0.5]
    assert client.get_metric_history(run_id, "kl") == []
    assert [m.value for m in client.get_metric_history(run_id, "reward/abs/rewards.py_length/mean")] == [0.75, 0.75]
    assert (run / "mlflow" / "artifacts").is_dir() and not Path("mlruns").exists()  # nothing in the cwd
    a_run(tmp_path, ["mlflow"], start_step=2)  # resumed: the same MLflow run goes on
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]


def test_a_missing_tracker_package_is_a_config_error_naming_the_extra(monkeypatch):
    real = rules.find_spec  # the config looks for the packages (Facts.here)
    monkeypatch.setattr(rules, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ValueError, match=r"`log.report_to` lists 'wandb', but wandb is not installed: "
                                         r"`pip install -e '.\[trackers\]'`"):
        load_config(None, ["log.report_to=[tensorboard, wandb]"])
    with pytest.raises(ValueError, match="allowed: tensorboard, wandb, mlflow"):
        load_config(None, ["log.report_to=[comet]"])
    # configs from before report_to keep working
    assert load_config(None, ["log.tensorboard=false"]).log.report_to == []
    assert load_config(None, ["log.report_to=[mlflow]", "log.tensorboard=true"]).log.report_to == [
        "tensorboard", "mlflow"]


def test_the_trackers_are_a_table_the_config_lists():
    import typing

    from grpo import config
    from grpo.config.values import TRACKER_PACKAGES

    report_to = typing.get_type_hints(config.LogConfig)["report_to"]  # list[Literal[...]]
    assert typing.get_args(typing.get_args(report_to)[0]) == tuple(trackers.TRACKERS)
    assert TRACKER_PACKAGES["mlflow"][0] == ("mlflow", "sqlalchemy", "alembic")  # what validation looks for
    with pytest.raises(ValueError, match=r"`log.report_to` = 'comet' is invalid; allowed: tensorboard, wandb, mlflow"):
        trackers.start_tracker("comet", None, Path("unused"), 0)


def test_a_tracker_failing_at_start_or_mid_run_is_counted_and_the_run_goes_on(offline_trackers, tmp_path, monkeypatch, capsys):
    calls = []

    def broken(self, metrics, step):
        calls.append(step)
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(trackers.MlflowTracker, "log", broken)
    monkeypatch.setattr(trackers.WandbTracker, "__init__", lambda *a: (_ for _ in ()).throw(OSError("no disk")))
    log = a_run(tmp_path, ["wandb", "mlflow", "tensorboard"])
    err = capsys.readouterr().err
    assert "could not write to wandb (OSError: no disk)" in err
    assert err.count("could not write to mlflow (ConnectionError") == 1 and calls == [0]  # then it is off
    assert log.write_errors == 2 and list((tmp_path / "run").glob("tensorboard/events.*"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["log/write_errors"] for line in lines] == [2, 2]  # the record goes on, with the count
