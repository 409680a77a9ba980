"""Experiment trackers: TensorBoard, Weights & Biases and MLflow views of a run's metrics.

    trackers = [start_tracker(name, cfg, run_dir, start_step) for name in cfg.log.report_to]
    tracker.log(metrics, step); tracker.log_samples(step, samples); tracker.close()

metrics.jsonl stays the record of a run (resume and the report read it); a tracker is a view
of the same numbers, so grpo.record.logging counts and drops one that fails (log/write_errors) and
the run goes on. The allowed values of `log.report_to` are the keys of TRACKERS; the config
knows the packages each needs and looks for them without importing them when it is validated
(grpo.config.rules.trackers_installed): a missing one fails before any model loads, not after
minutes of loading.

- wandb: every metric against the step (`define_metric("*", step_metric="step")`, so an
  evaluation at a training step's number and a resumed run's repeated steps are both kept),
  the resolved config, and a `samples` table of completions at every logged step. The mode
  is WANDB_MODE when set, else online only with credentials (WANDB_API_KEY or a netrc entry)
  and offline otherwise (files under <run>/wandb, `wandb sync` uploads them later): a run
  never stops to ask for a login.
- mlflow: metrics with their step, the config flattened into params (`train.num_steps`) and
  as config.json. Without MLFLOW_TRACKING_URI the store is local to the run directory:
  sqlite:///<run>/mlflow/mlflow.db with artifacts in <run>/mlflow/artifacts (MLflow 3 keeps
  its plain-file store in maintenance mode and refuses it by default; sqlite is its default).
- tensorboard: event files in <run>/tensorboard, purged past the resume step.

A resumed run continues the same W&B and MLflow runs: their ids are kept in
<run>/trackers.json. Steps a killed run reported after its last checkpoint are reported
again by the resumed one (both trackers keep both points; metrics.jsonl is cut back).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

from grpo.config import to_dict
from grpo.plugins.registry import Registry


def start_tracker(name: str, cfg: Any, run_dir: Path, start_step: int) -> Any:
    return TRACKERS[name](cfg, run_dir, start_step)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (trackers take numbers; JSON's nulls are skipped)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


SAMPLE_COLUMNS = ("step", "example_id", "reward", "advantage", "finish_reason", "prompt", "completion")


def sample_rows(step: int, samples: list[dict[str, Any]]) -> list[list[Any]]:
    """samples.jsonl records as table rows (the columns of SAMPLE_COLUMNS; missing ones empty)."""
    record = {"step": step}
    return [[{**record, **s}.get(c) for c in SAMPLE_COLUMNS] for s in samples]


class _Ids:
    """<run>/trackers.json: the tracker-side run ids, so a resumed run continues its runs."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "trackers.json"

    def get(self, name: str) -> str | None:
        try:
            return json.loads(self.path.read_text()).get(name)
        except (OSError, ValueError, AttributeError):
            return None

    def put(self, name: str, run_id: str) -> None:
        try:
            ids = json.loads(self.path.read_text())
        except (OSError, ValueError):
            ids = {}
        tmp = self.path.with_name(".trackers.json.tmp")
        tmp.write_text(json.dumps({**ids, name: run_id}))
        tmp.replace(self.path)


class TensorBoardTracker:
    def __init__(self, cfg: Any, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass  # samples.jsonl and the report show them

    def close(self) -> None:
        self.writer.close()  # flushes: a failure of the background writer surfaces here


def wandb_mode() -> str:
    """WANDB_MODE, else online with credentials and offline without (never a login prompt)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc().authenticators(host or "") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbTracker:
    def __init__(self, cfg: Any, run_dir: Path, start_step: int):
        import wandb

        self.wandb = wandb
        ids = _Ids(run_dir)
        run_id = ids.get("wandb") or secrets.token_hex(4)  # W&B ids: letters and digits
        ids.put("wandb", run_id)
        self.run = wandb.init(
            project=cfg.log.project or os.environ.get("WANDB_PROJECT") or "grpo",
            name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir), config=to_dict(cfg),
            mode=wandb_mode(), settings=wandb.Settings(console="off", silent=True),
            reinit="create_new")  # grpo.train twice in one notebook: two runs, not one
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({**scalars(metrics), "step": step})

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=sample_rows(step, samples))
        self.run.log({"samples": table, "step": step})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, cfg: Any, run_dir: Path, start_step: int):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = run_dir.resolve() / "mlflow"
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)  # no global mlflow state: the user's own stays as it was
        ids = _Ids(run_dir)
        run_id = ids.get("mlflow")
        if run_id is None:
            name = cfg.log.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "grpo"
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:  # artifacts beside the local store, not in ./mlruns of whatever the working directory is
                where = None if os.environ.get("MLFLOW_TRACKING_URI") else (local / "artifacts").as_uri()
                experiment_id = self.client.create_experiment(name, artifact_location=where)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            ids.put("mlflow", run_id)
            config = to_dict(cfg)
            params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]  # MLflow's value limit
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
            self.client.log_dict(run_id, config, "config.json")
        self.run_id = run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, now, step)
                                                    for k, v in scalars(metrics).items()])

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass  # samples.jsonl and the report show them; MLflow's tables need pandas conversions per step

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def mlflow_key(key: str) -> str:
    """A metric name MLflow accepts: letters, digits, `_-. /` and no empty path part. A reward
    named by file path (`reward//abs/rewards.py:fn/mean`) would otherwise fail the whole batch."""
    return "/".join(part for part in re.sub(r"[^\w.\- /]", "_", key).split("/") if part)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# The allowed values of log.report_to (the packages each needs: grpo.config.values.TRACKER_PACKAGES).
TRACKERS: Registry[type] = Registry("tracker", "log.report_to")
TRACKERS.register("tensorboard", TensorBoardTracker)
TRACKERS.register("wandb", WandbTracker)
TRACKERS.register("mlflow", MlflowTracker)
