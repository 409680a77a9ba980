"""Generation engines behind one small interface: `engine.generate(prompts, params)`."""

from __future__ import annotations

from typing import Any

from grpo.config import RolloutConfig
from grpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpo.rollout.hf import TransformersEngine
from grpo.rollout.shared_prefix import SharedPrefixEngine

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingParams", "SharedPrefixEngine", "TransformersEngine",
           "build_engine"]

ENGINES = {"shared_prefix": SharedPrefixEngine, "transformers": TransformersEngine}


def build_engine(cfg: RolloutConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine named by rollout.engine, generating with `model` (the policy itself)."""
    if cfg.engine not in ENGINES:
        raise ValueError(f"config field `rollout.engine` = {cfg.engine!r} is invalid; allowed: {', '.join(ENGINES)}")
    return ENGINES[cfg.engine](model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens)
