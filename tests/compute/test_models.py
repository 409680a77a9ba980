"""Model loading: devices and dtypes, errors, the GGUF cache, LoRA and the reference model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "grpo" / "models"


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


# --------------------------------------------------------------------------- the cache


def fake_converter(tiny_model_dir):
    """Stands in for convert_gguf (30 s on the real file): writes the tiny model."""

    def convert(gguf, out_dir):
        for f in Path(tiny_model_dir).iterdir():
            shutil.copy(f, out_dir / f.name)

    return convert


def test_gguf_path_converts_once_keyed_by_size_and_mtime(tmp_path, tmp_cache, tiny_model_dir, monkeypatch):
    calls = []
    convert = fake_converter(tiny_model_dir)
    monkeypatch.setattr(models, "convert_gguf", lambda g, out: (calls.append(g), convert(g, out)))
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    model, tokenizer = models.load_policy(ModelConfig(path=str(gguf)))
    assert tokenizer.eos_token == "<|im_end|>"
    first = models.resolve_model_dir(str(gguf))
    assert len(calls) == 1 and first.parent == tmp_cache and first.name.startswith("my-model-64-")
    os.utime(gguf, ns=(0, 10**9))  # an edited file is a new cache entry
    second = models.resolve_model_dir(str(gguf))
    assert len(calls) == 2 and second != first
    assert sorted(p.name for p in tmp_cache.iterdir()) == sorted([first.name, second.name])


def test_failed_conversion_leaves_nothing(tmp_cache, monkeypatch):
    def convert(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")  # half-written, then killed
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="disk full"):
        models.bundled_model_dir()
    assert list(tmp_cache.iterdir()) == []  # neither the target nor a temp dir


def test_concurrent_converter_result_is_kept(tmp_cache, tiny_model_dir):
    target = tmp_cache / "m"

    def build(out_dir):  # while we convert, another process finishes first
        shutil.copytree(tiny_model_dir, target)
        (target / "winner").write_text("")
        (out_dir / "config.json").write_text("{}")

    assert models.cached_conversion(target, build) == target
    assert (target / "winner").exists()
    assert [p.name for p in tmp_cache.iterdir()] == ["m"]
    assert models.cached_conversion(target, lambda out: pytest.fail("converted twice")) == target


def test_temp_dirs_of_dead_converters_are_removed(tmp_cache, tiny_model_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tmp_cache.mkdir(parents=True)
    stale = tmp_cache / f"{models._temp_owner(int(dead.stdout))}.m.abc123"
    alive = tmp_cache / f"{models._temp_owner()}.other.xyz789"
    stale.mkdir()
    alive.mkdir()
    models.cached_conversion(tmp_cache / "m", lambda out: fake_converter(tiny_model_dir)(None, out))
    assert sorted(p.name for p in tmp_cache.iterdir()) == sorted(["m", alive.name])


# --------------------------------------------------------------------------- the bundled model


def test_bundled_model_dir_is_a_plain_chatml_model():
    # Uses the real user cache: converted once per machine (~40 s the first time).
    d = models.bundled_model_dir()
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    assert (d / "model.safetensors").stat().st_size > 500e6  # fp32, the tied matrix stored once
    tokenizer = models.load_tokenizer(models.resolve_model_dir(None))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    gen = json.loads((d / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos


@pytest.mark.slow
def test_fresh_conversion_and_the_cached_bundled_model_match_the_gguf_model(tmp_path, monkeypatch):
    gguf = models.bundled_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cached, tokenizer = models.load_policy(ModelConfig())  # the user cache, as in a real run
    expected = logits(original, tokenizer)
    assert torch.equal(logits(cached.eval(), tokenizer), expected)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh, _ = models.load_policy(ModelConfig(path=str(gguf)))  # a .gguf path, converted anew
    assert models.resolve_model_dir(str(gguf)).parent == tmp_path / "grpo" / "models"
    assert not [p for p in (tmp_path / "grpo" / "models").iterdir() if p.name.startswith(".")]
    assert torch.equal(logits(fresh.eval(), tokenizer), expected)
    # the tied embedding / lm_head is still one tensor after the round trip
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
