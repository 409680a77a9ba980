"""Shared fixtures."""

import json

import pytest
import torch

from grpo.compute import precision
from tests.support.tiny import make_tiny_model_dir

# The real measurement, taken before any test pins it: the tests of the choice itself
# (tests/compute/test_precision.py) import it from here.
real_auto_compute = precision.auto_compute


@pytest.fixture(autouse=True)
def float32_auto_precision(monkeypatch):
    """`model.precision: auto` measures the machine (grpo.compute.precision): tests pin its answer to
    float32 so that a result never depends on the host's bf16 speed."""
    monkeypatch.setattr(precision, "auto_compute", lambda device, world=None: (torch.float32, {}, "pinned by tests"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama + ChatML tokenizer on disk (see tests/support/tiny.py); built once per session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir):
    """A finished 3-step training run of the tiny model (see tests/support/run_dirs.py); made once per session."""
    from tests.support.run_dirs import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny_run") / "run", tiny_model_dir)


@pytest.fixture
def data_file(tmp_path):
    """A JSONL task of 30 two-number sums."""
    path = tmp_path / "sums.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def offline_trackers(monkeypatch, tmp_path):
    """W&B offline and all of its own files (settings, cache) under tmp: nothing reaches a server
    or the home directory; no MLflow URI of the environment leaks in."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
