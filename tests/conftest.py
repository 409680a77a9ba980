"""Shared fixtures."""

import pytest
from tiny import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama + ChatML tokenizer on disk (see tests/tiny.py); built once per session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))
