"""Nothing read from disk runs code: checkpoints from elsewhere and configs with Python tags.

A crafted training_state.pt whose unpickling would run a command is refused on resume with
one line (exit 2) and the command never runs; checkpoints written before the RNG states were
stored in plain form still resume exactly; a YAML config or override with a `!!python/...`
tag is refused.
"""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo.config import load_config
from grpo.training import checkpoint
from tests.support.cli_runs import fails, metrics, quick, run_cli, tiny_args


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    with quick(monkeypatch):
        yield


@pytest.fixture
def args(tmp_path, tiny_model_dir):
    return tiny_args(tmp_path, tiny_model_dir)


class RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.normal()  # a cached gaussian is part of numpy's state
    saved = checkpoint.rng_state()
    torch.save(saved, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_would_run_a_command_is_refused(capsys, args, tmp_path, writer):
    status, _, err = run_cli(capsys, "train", *args)  # checkpoint-000001
    assert status == 0, err
    state = tmp_path / "run" / "checkpoint-000001" / "training_state.pt"
    marker = tmp_path / "pwned"
    blob = {"optimizer": RunsACommand(marker), "scheduler": {}, "rng": []}
    if writer == "torch.save":
        torch.save(blob, state)
    else:  # the legacy (non-zip) format torch.load also reads
        state.write_bytes(pickle.dumps(blob, protocol=2))
    fails(capsys, 2, "train", *args, "train.num_steps=2", "resume=true",
          says=("training_state.pt", "is refused", "posix.system", "nothing in it was run"))
    assert not marker.exists()


def test_a_checkpoint_from_before_the_plain_rng_form_still_resumes_exactly(capsys, args, tmp_path):
    status, _, err = run_cli(capsys, "train", *args, "train.num_steps=2", f"output_dir={tmp_path / 'ref'}")
    assert status == 0, err
    status, _, err = run_cli(capsys, "train", *args)  # step 1 of the same run
    assert status == 0, err
    # rewrite its RNG states as checkpoints before the plain form held them
    state = tmp_path / "run" / "checkpoint-000001" / "training_state.pt"
    blob = torch.load(state, weights_only=True)
    for rng in blob["rng"]:
        py, npy = rng["python"], rng["numpy"]
        rng["python"] = (py["version"], tuple(py["internal"]), py["gauss_next"])
        rng["numpy"] = ("MT19937", np.array(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                        npy["gauss"])
    torch.save(blob, state)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(state)
    status, _, err = run_cli(capsys, "train", *args, "train.num_steps=2", "resume=true")
    assert status == 0, err
    assert metrics(tmp_path / "run", drop_times=True) == metrics(tmp_path / "ref", drop_times=True)


YAML_TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/object:builtins.dict {{}}",
]


@pytest.mark.parametrize("tag", YAML_TAGS)
def test_a_yaml_config_with_a_python_tag_is_refused(capsys, tmp_path, tag):
    marker = tmp_path / "pwned"
    value = tag.format(marker=marker)
    config = tmp_path / "evil.yaml"
    config.write_text(f"train:\n  num_steps: {value}\n")
    fails(capsys, 2, "train", str(config), says=("evil.yaml", "line 2", "is refused", "plain data only"))
    fails(capsys, 2, "train", f"train.num_steps={value}", says=("override", "is refused"))
    assert not marker.exists()
    with pytest.raises(ValueError, match="is refused"):
        load_config(str(config))
