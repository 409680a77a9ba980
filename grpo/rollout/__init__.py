"""Generation engines behind one small interface: `engine.generate(prompts, params)`."""

from __future__ import annotations

from typing import Any

from grpo.config import RolloutConfig
from grpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpo.rollout.hf import TransformersEngine
from grpo.rollout.shared_prefix import SharedPrefixEngine
from grpo.rollout.vllm_engine import VLLMEngine  # imports vllm only when one is built

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingParams", "SharedPrefixEngine", "TransformersEngine",
           "VLLMEngine", "build_engine"]

ENGINES = {"shared_prefix": SharedPrefixEngine, "transformers": TransformersEngine, "vllm": VLLMEngine}


def build_engine(cfg: RolloutConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine named by rollout.engine, generating with `model` (the policy itself)."""
    if cfg.engine not in ENGINES:
        raise ValueError(f"config field `rollout.engine` = {cfg.engine!r} is invalid; allowed: {', '.join(ENGINES)}")
    if cfg.vllm and cfg.engine != "vllm":
        raise ValueError(f"config field `rollout.vllm` = {cfg.vllm!r} is set but rollout.engine = {cfg.engine!r}")
    if cfg.engine == "vllm":
        # vLLM sizes its cache per sequence: the prompt limit plus the completion budget
        max_model_len = None if cfg.max_prompt_tokens is None else cfg.max_prompt_tokens + cfg.max_new_tokens
        options = {"max_model_len": max_model_len, **cfg.vllm}
        return VLLMEngine(model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens, **options)
    return ENGINES[cfg.engine](model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens)
