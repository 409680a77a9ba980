"""The GGUF cache: the bundled model and .gguf files converted once, atomically, keyed by size and mtime."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.compute import gguf_cache, models
from grpo.config import ModelConfig

PROMPT = "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"


def logits(model, tokenizer, text=PROMPT):
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "grpo" / "models"


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
    monkeypatch.setattr(gguf_cache, "convert_gguf", lambda g, out: (calls.append(g), convert(g, out)))
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

    monkeypatch.setattr(gguf_cache, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_cache.bundled_model_dir()
    assert list(tmp_cache.iterdir()) == []  # neither the target nor a temp dir


def test_concurrent_converter_result_is_kept(tmp_cache, tiny_model_dir):
    target = tmp_cache / "m"

    def build(out_dir):  # while we convert, another process finishes first
        shutil.copytree(tiny_model_dir, target)
        (target / "winner").write_text("")
        (out_dir / "config.json").write_text("{}")

    assert gguf_cache.cached_conversion(target, build) == target
    assert (target / "winner").exists()
    assert [p.name for p in tmp_cache.iterdir()] == ["m"]
    assert gguf_cache.cached_conversion(target, lambda out: pytest.fail("converted twice")) == target


def test_temp_dirs_of_dead_converters_are_removed(tmp_cache, tiny_model_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tmp_cache.mkdir(parents=True)
    stale = tmp_cache / f"{gguf_cache._temp_owner(int(dead.stdout))}.m.abc123"
    alive = tmp_cache / f"{gguf_cache._temp_owner()}.other.xyz789"
    stale.mkdir()
    alive.mkdir()
    gguf_cache.cached_conversion(tmp_cache / "m", lambda out: fake_converter(tiny_model_dir)(None, out))
    assert sorted(p.name for p in tmp_cache.iterdir()) == sorted(["m", alive.name])


# --------------------------------------------------------------------------- the bundled model


def test_bundled_model_dir_is_a_plain_chatml_model():
    # Uses the real user cache: converted once per machine (~40 s the first time).
    d = gguf_cache.bundled_model_dir()
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
    gguf = gguf_cache.bundled_gguf_path()
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
