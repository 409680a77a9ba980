"""Generation engines behind one small interface: `engine.generate(prompts, params)`."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from grpo.config import RolloutConfig
from grpo.distributed import launched_world_size
from grpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpo.rollout.hf import TransformersEngine
from grpo.rollout.shared_prefix import SharedPrefixEngine
from grpo.rollout.vllm_engine import VLLMEngine  # imports vllm only when one is built

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingParams", "SharedPrefixEngine", "TransformersEngine",
           "VLLMEngine", "build_engine", "engine_name"]

ENGINES = {"shared_prefix": SharedPrefixEngine, "transformers": TransformersEngine, "vllm": VLLMEngine}


def engine_name(cfg: RolloutConfig) -> str:
    """rollout.engine, with `auto` resolved: vllm where it is installed and the run is one
    process (bench/RESULTS.md: it generates faster than shared_prefix, 80 against 71 tokens/s
    on the bench step, though the whole step now takes about as long), else shared_prefix."""
    if cfg.engine != "auto":
        return cfg.engine
    return "vllm" if find_spec("vllm") is not None and launched_world_size() == 1 else "shared_prefix"


def build_engine(cfg: RolloutConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine named by rollout.engine, generating with `model` (the policy itself)."""
    name = engine_name(cfg)
    if name not in ENGINES:
        allowed = ", ".join(["auto", *ENGINES])
        raise ValueError(f"config field `rollout.engine` = {cfg.engine!r} is invalid; allowed: {allowed}")
    if cfg.vllm and name != "vllm":
        raise ValueError(f"config field `rollout.vllm` = {cfg.vllm!r} is set but rollout.engine = {cfg.engine!r}"
                         + (" (auto chose shared_prefix: vllm is not installed or the run has several "
                            "processes)" if cfg.engine == "auto" else ""))
    if name == "vllm":
        # vLLM sizes its cache per sequence: the prompt limit plus the completion budget
        max_model_len = None if cfg.max_prompt_tokens is None else cfg.max_prompt_tokens + cfg.max_new_tokens
        options = {"max_model_len": max_model_len, **cfg.vllm}
        return VLLMEngine(model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens, **options)
    return ENGINES[name](model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens)
