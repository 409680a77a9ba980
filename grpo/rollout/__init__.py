"""Generation engines behind one small interface: `engine.generate(prompts, params)`."""

from __future__ import annotations

from typing import Any

from grpo.config import RolloutConfig
from grpo.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpo.rollout.hf import TransformersEngine

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingParams", "TransformersEngine", "build_engine"]


def build_engine(cfg: RolloutConfig, model: Any, tokenizer: Any) -> RolloutEngine:
    """The engine named by rollout.engine, generating with `model` (the policy itself)."""
    if cfg.engine == "transformers":
        return TransformersEngine(model, tokenizer, max_prompt_tokens=cfg.max_prompt_tokens)
    raise ValueError(f"config field `rollout.engine` = {cfg.engine!r} is invalid; allowed: transformers")
