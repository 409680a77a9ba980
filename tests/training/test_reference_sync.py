"""reference.sync_every / sync_mix: the reference moves to the policy (TRL's ref-model sync; the
reset of iterative RL), and a resumed run gets the moved reference back from its checkpoint."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.config import load_config
from grpo.training.checkpoint import checkpoint_name
from grpo.training.logprobs import LocalReference
from grpo.training.trainer import train
from tests.support.runs import read_metrics, tiny_config


def test_mix_from_blends_each_parameter_once(tiny_model_dir):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in reference.named_parameters()}
    ref = LocalReference(reference, 4, torch.device("cpu"), 1.0)
    ref.mix_from(policy, 0.25)
    for name, p in reference.named_parameters():  # tied embeddings too: mixed once, not twice
        torch.testing.assert_close(p, before[name] + 0.25, rtol=0, atol=1e-6)
    ref.mix_from(policy, 1.0)
    for (name, p), q in zip(reference.named_parameters(), policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_synced_reference_makes_the_next_kl_zero(tmp_path, tiny_model_dir, data_file):
    common = ["algorithm.beta=0.1", "train.num_steps=3", "eval.num_examples=0", "checkpoint.every=0"]
    plain = tiny_config(tmp_path / "plain", tiny_model_dir, data_file, *common)
    synced = tiny_config(tmp_path / "synced", tiny_model_dir, data_file, *common, "reference.sync_every=1")
    train(plain)
    train(synced)
    kl_plain = [m["kl"] for m in read_metrics(plain.output_dir)]
    kl_synced = [m["kl"] for m in read_metrics(synced.output_dir)]
    # step 1 the same (the reference is still the base); after that the reference is the policy that
    # sampled the step, and with one update per step the KL of its own samples is exactly 0
    assert kl_synced[0] == pytest.approx(kl_plain[0]) and kl_plain[0] == 0
    assert all(k > 0 for k in kl_plain[1:]) and kl_synced[1:] == [0.0, 0.0]


def test_resume_restores_the_moved_reference(tmp_path, tiny_model_dir, data_file):
    common = ["algorithm.beta=0.5", "reference.sync_every=2", "reference.sync_mix=0.5", "eval.num_examples=0"]
    full = tiny_config(tmp_path / "full", tiny_model_dir, data_file, "train.num_steps=4", *common)
    train(full)
    half = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=3", *common)
    train(half)
    assert (Path(half.output_dir) / checkpoint_name(3) / "reference.safetensors").is_file()
    assert not (Path(half.output_dir) / checkpoint_name(1) / "reference.safetensors").exists()  # not moved yet
    resumed = tiny_config(tmp_path / "half", tiny_model_dir, data_file, "train.num_steps=4", *common, "resume=true")
    train(resumed)
    assert read_metrics(full.output_dir) == read_metrics(resumed.output_dir)  # kl of step 4 included


@pytest.mark.parametrize("override, says", [
    (["algorithm.beta=0"], "algorithm.beta = 0 loads no reference"),
    (["algorithm.beta=0.1", "reference.url=http://localhost:1"], "reference.url"),
    (["algorithm.beta=0.1", "model.lora.enabled=true"], "LoRA"),
])
def test_sync_needs_a_local_full_reference(override, says):
    with pytest.raises(ValueError, match=f"reference.sync_every.*{says}"):
        load_config(None, ["reference.sync_every=2", *override])
    with pytest.raises(ValueError, match=r"reference.sync_mix.*\(0, 1\]"):
        load_config(None, ["reference.sync_mix=0"])
