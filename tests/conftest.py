"""Shared fixtures."""

import json

import pytest
from tiny import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama + ChatML tokenizer on disk (see tests/tiny.py); built once per session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir):
    """A finished 3-step training run of the tiny model (see tests/run_dirs.py); made once per session."""
    from run_dirs import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny_run") / "run", tiny_model_dir)


@pytest.fixture
def data_file(tmp_path):
    """A JSONL task of 30 two-number sums."""
    path = tmp_path / "sums.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
