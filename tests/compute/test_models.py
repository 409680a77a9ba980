"""Model loading: devices and dtypes, errors, local directories, LoRA and the reference model."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.compute import models
from grpo.config import LoraConfig, ModelConfig

PROMPT = "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"


def logits(model, tokenizer, text=PROMPT):
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits


# --------------------------------------------------------------------------- devices


def test_resolve_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.resolve_device("auto").type == expected
    assert models.resolve_device("cpu") == torch.device("cpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.resolve_dtype("auto", cpu) == torch.float32
    assert models.resolve_dtype("auto", cuda) == torch.bfloat16
    assert models.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="model.dtype"):
        models.resolve_dtype("fp8", cpu)
    with pytest.raises(ValueError, match="model.device"):
        models.resolve_device("gpu")


# --------------------------------------------------------------------------- errors


def test_missing_and_incomplete_paths_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="model.path.*no such file"):
        models.load_policy(ModelConfig(path=str(tmp_path / "nope")))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="directory or a .gguf"):
        models.load_policy(ModelConfig(path=str(tmp_path / "weights.bin")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        models.load_policy(ModelConfig(path=str(empty)))
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        models.load_policy(ModelConfig(path=str(empty)))


def test_corrupt_model_dir_names_the_path(tmp_path, tiny_model_dir):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"could not load the model in model.path '{broken}'"):
        models.load_policy(ModelConfig(path=str(broken)))


# --------------------------------------------------------------------------- local dirs


def test_load_policy_from_a_local_dir(tiny_model_dir):
    model, tokenizer = models.load_policy(ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True))
    assert model.training and model.is_gradient_checkpointing
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()  # checkpointed backward runs
    assert model.model.embed_tokens.weight.grad is not None


def test_the_policy_owns_its_weights_and_stays_tied(tiny_model_dir):
    """_own_copy: the weights are the process's own memory (not the safetensors file's mapping), the
    same values as a plain load, and a tied head is still the embedding's one Parameter."""
    model, _ = models.load_policy(ModelConfig(path=str(tiny_model_dir)))
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(p, q), name
        assert p.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_tokenizer_without_pad_gets_eos(tmp_path, tiny_model_dir):
    d = shutil.copytree(tiny_model_dir, tmp_path / "nopad")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(d).pad_token is None
    tokenizer = models.load_tokenizer(models.resolve_model_dir(str(d)))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


# --------------------------------------------------------------------------- reference, LoRA


def test_full_reference_is_a_frozen_fresh_load(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    policy, tokenizer = models.load_policy(cfg)
    with torch.no_grad():  # the policy has trained: the reference must still be the initial model
        policy.model.norm.weight.mul_(1.5)
    reference = models.load_reference(cfg, policy)
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert not {p.data_ptr() for p in reference.parameters()} & {p.data_ptr() for p in policy.parameters()}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(logits(reference, tokenizer), logits(base, tokenizer))


def test_lora_policy_and_adapter_disabled_reference(tiny_model_dir):
    lora = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg = ModelConfig(path=str(tiny_model_dir), lora=lora, gradient_checkpointing=True)
    policy, tokenizer = models.load_policy(cfg)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    with torch.no_grad():  # fresh LoRA is a no-op (B = 0): make it matter
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = logits(base, tokenizer)
    assert not torch.allclose(logits(policy, tokenizer), base_logits, atol=1e-4)

    num_params = sum(p.numel() for p in policy.parameters())
    reference = models.load_reference(cfg, policy)
    assert isinstance(reference, models.AdapterDisabledReference)
    assert reference.policy is policy  # no second copy of the weights
    assert sum(p.numel() for p in policy.parameters()) == num_params
    policy.train()
    ref_logits = logits(reference, tokenizer)
    torch.testing.assert_close(ref_logits, base_logits, rtol=0, atol=1e-5)
    assert policy.training  # mode restored; adapters back on
    assert not torch.allclose(logits(policy, tokenizer), base_logits, atol=1e-4)
    ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert not reference(input_ids=ids).logits.requires_grad
    # checkpointed backward through a LoRA policy whose inputs need no grad (non-reentrant)
    policy(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in policy.named_parameters() if p.requires_grad)


def test_unknown_lora_target_names_the_field(tiny_model_dir):
    lora = LoraConfig(enabled=True, target_modules=["no_such_proj"])
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        models.load_policy(ModelConfig(path=str(tiny_model_dir), lora=lora))
