"""The policy's weights as an inference engine with its own copy loads them (vLLM, the rollout server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def hf_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of the policy as vLLM's loader expects them: for a peft LoRA model,
    the base weights with each adapter's delta B @ A * scale added (nothing is merged in place)."""
    if not hasattr(model, "get_base_model"):
        for name, tensor in model.state_dict().items():
            # fsdp: a shard; every rank gathers the same tensors in the same order
            yield name, (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
            active = [a for a in module.active_adapters if a in module.lora_A]
            if active:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        if "modules_to_save" in name or "original_module" in name:
            raise ValueError("the vllm engine does not support peft modules_to_save")
        name = name.replace(".base_layer.", ".")
        tensor = tensor.detach()
        yield name, (tensor + deltas[name].to(tensor.dtype)) if name in deltas else tensor


def unique_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """hf_weights without the second name of a tied tensor (the embeddings and an lm_head that
    shares them): a receiver holding the same architecture ties them too. Ties are read from
    the module's own parameters, not from tensor addresses (merged LoRA and FSDP tensors are
    fresh, and a freed one's address can come back)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: set[int] = set()
    tied: set[str] = set()
    for name, p in base.state_dict(keep_vars=True).items():
        if id(p) in seen:
            tied.add(name.replace(".base_layer.", "."))
        seen.add(id(p))
    for name, tensor in hf_weights(model):
        if name not in tied:
            yield name, tensor
