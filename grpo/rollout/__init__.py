"""Generation engines behind one small interface: `engine.generate(prompts, params)` returns a
Trajectory, `engine.sync_weights(model, version)` after the weights change.

The engine modules (and transformers, vllm behind them) are imported only when an engine
is built, so importing this package loads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from grpo.config import RolloutConfig
from grpo.config import rules as config_rules
from grpo.config.values import (
    ENGINE_NAMES,  # the values rollout.engine allows: auto + this table's names
)
from grpo.plugins.registry import Registry
from grpo.rollout.base import RolloutEngine, SamplingParams, Trajectory


@dataclass(frozen=True)
class EngineKind:
    """What is known of an engine before its module (and transformers or vllm) is imported."""

    path: str  # "module:Class", imported when the engine is built (engine_class)
    in_process: bool  # generates in this process: `grpo serve-rollout --engine` may run it
    # samples with its own copy of the weights and its own kernels, so its log-probs differ
    # from the trainer's even in float32: sampler_correction=auto corrects for it (training.loss)
    own_numerics: bool


# rollout.engine -> EngineKind: the table build_engine dispatches on and the config lists.
ENGINES: Registry[EngineKind] = Registry("rollout engine", "rollout.engine")
ENGINES.register("shared_prefix", EngineKind("grpo.rollout.shared_prefix:SharedPrefixEngine", True, False))
ENGINES.register("transformers", EngineKind("grpo.rollout.transformers_engine:TransformersEngine", True, False))
ENGINES.register("vllm", EngineKind("grpo.rollout.vllm_engine:VLLMEngine", True, True))
# a `grpo serve-rollout` process (rollout.url)
ENGINES.register("server", EngineKind("grpo.rollout.server_engine:ServerEngine", False, True))
IN_PROCESS_ENGINES = tuple(n for n in ENGINES if ENGINES.get(n).in_process)  # what serve-rollout may run
# rollout.vllm_lora_sync -> how a LoRA policy's weights reach vLLM (grpo.rollout.vllm_engine)
LORA_SYNCS = {
    "merged": "the base weights with B @ A * scale added, through vLLM's in-place weight reload",
    "adapter": "the adapters alone, loaded by vLLM's LoRA support (enable_lora); the base stays",
}

__all__ = ["ENGINES", "ENGINE_NAMES", "IN_PROCESS_ENGINES", "LORA_SYNCS", "RolloutEngine", "SamplingParams", "SharedPrefixEngine", "Trajectory",
           "TransformersEngine", "VLLMEngine", "build_engine", "check_engine", "engine_name"]


def engine_class(name: str) -> type:
    module, _, cls = ENGINES.get(name).path.partition(":")
    return getattr(import_module(module), cls)


def __getattr__(attr: str) -> Any:  # `from grpo.rollout import SharedPrefixEngine` imports it then
    for name in ENGINES:
        if ENGINES.get(name).path.endswith(f":{attr}"):
            return engine_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def engine_name(cfg: RolloutConfig) -> str:
    """rollout.engine, with `auto` resolved in this process (grpo.config.rules.engine_choice)."""
    return config_rules.engine_choice(cfg.engine, lambda: find_spec("vllm") is not None)


def check_engine(cfg: RolloutConfig) -> None:
    """The engine rules that need no model (grpo.config.rules; Config.validate runs them too)."""
    config_rules.check_engine(cfg, engine_name(cfg))


def build_engine(cfg: RolloutConfig, model: Any, tokenizer: Any, dtype: Any = None) -> RolloutEngine:
    """The engine named by rollout.engine, generating with `model` (the policy itself), its
    products in `dtype` (grpo.compute.precision's rollout dtype; None = the weights' own). Under
    torchrun every rank builds its engine at the same point: vLLM's start runs collectives."""
    check_engine(cfg)
    name = engine_name(cfg)
    # later turns of an episode continue from the prompt plus everything after it so far
    prompt_limit = cfg.max_prompt_tokens
    if prompt_limit is not None and cfg.multi_turn:
        prompt_limit += cfg.episode_tokens
    if name == "server":
        from grpo.rollout.server_engine import build_server_engine

        return build_server_engine(cfg, model, tokenizer, prompt_limit)
    if name == "vllm":
        # vLLM sizes its cache per sequence: the prompt limit plus the completion budget
        max_model_len = None if cfg.max_prompt_tokens is None else cfg.max_prompt_tokens + cfg.episode_tokens
        options = {"max_model_len": max_model_len, "stop_strings": bool(cfg.stop) or cfg.multi_turn,
                   "lora_sync": cfg.vllm_lora_sync, "dtype": dtype, **cfg.vllm}  # rollout.vllm.dtype wins
        return engine_class(name)(model, tokenizer, max_prompt_tokens=prompt_limit, **options)
    dtype = dtype or next(model.parameters()).dtype
    return engine_class(name)(model, tokenizer, max_prompt_tokens=prompt_limit, dtype=dtype)
