"""Checks before training that the run can fit: context length, memory, disk.

    max_prompt = check_prompts(task, tokenizer, model, cfg)    # ValueError naming the example
    check_memory(model, cfg, max_prompt, device)               # ValueError naming the fields
    check_disk(cfg.output_dir, checkpoint_bytes(model, opt))   # NotEnoughDisk (an OSError)

A run that would fail at step 500 for a reason visible at step 0 should fail at step 0:
an over-long prompt in the data, a batch that cannot fit in memory, a disk without room
for a checkpoint. The memory figure is a cheap estimate from the config and the model's
shape, not a measurement, so it only refuses when the estimate is well past what is free
(MEMORY_SLACK) and `train.check_resources=false` turns both resource checks off.

The memory estimate (bytes beyond the already-loaded weights, b = bytes per parameter):
  gradients + AdamW moments   3 * trainable parameters * b
  + the larger of
    generation                KV cache: N * (P + C) * layers * 2 * kv_heads * head_dim * b
    one micro-batch update    activations: m * (P + C) * layers * (6 h + 4 i) * b
                              (gradient checkpointing: m * (P + C) * (layers * h + 6 h + 4 i) * b)
                              logits: 3 * n * vocab * 4 (fp32 logits, log-softmax, grad), n = m * C
                              where the update keeps them whole, else one chunk of at most K
                              positions (grpo.compute.chunked_head.keeps_logits)
with N = prompts_per_step * G, m = micro_batch_size, P the longest prompt in tokens, C =
max_new_tokens, h hidden size, i MLP intermediate size. Activations per token and layer
(6 h + 4 i values) count the inputs that attention and a gated MLP keep for backward;
eager attention's scores are left out, so the estimate errs low (on the bundled model it came
out below the measured peak: bench/RESULTS.md#figures-that-stood-in-code-comments-2026-12-02).
A refusal therefore means the run clearly cannot fit.

The prompt check renders and tokenizes every training and held-out prompt (a small cost
against one step: bench/RESULTS.md#figures-that-stood-in-code-comments-2026-12-02), because
an over-long prompt otherwise fails the step that happens to draw it, possibly hours in.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from grpo.compute.chunked_head import CHUNK_POSITIONS, keeps_logits
from grpo.config import Config
from grpo.tasks.base import Example
from grpo.tasks.prompts import PromptFormat

GiB = 2**30
# Refuse only when the estimate exceeds what is free by this factor: the estimate is rough,
# and a false refusal of a run that would fit is worse than a late out-of-memory.
MEMORY_SLACK = 1.25
# Room kept on top of a checkpoint's tensors: RNG and scheduler state, JSON, filesystem slack.
DISK_MARGIN_BYTES = 16 * 2**20
DISK_MARGIN_FRACTION = 0.1


def size(num_bytes: float) -> str:
    """Bytes for a message: '1.50 GiB', '17.3 MiB', '900 B'."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(num_bytes)} B"


class NotEnoughDisk(OSError):
    """The output directory's filesystem cannot hold the next checkpoint (errno ENOSPC)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


# --------------------------------------------------------------------------- context


def prompt_lengths(examples: list[Example], tokenizer: Any, render: Callable[[Example], str]) -> list[int]:
    """Tokens in each example's rendered prompt, counted as the rollout engine counts them."""
    if not examples:
        return []
    texts = [render(ex) for ex in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def prompt_limit(cfg: Config, model: Any, max_new_tokens: int) -> tuple[int | None, str]:
    """The longest prompt the engine accepts, and how to name that limit in a message."""
    if cfg.rollout.max_prompt_tokens is not None:
        return cfg.rollout.max_prompt_tokens, f"rollout.max_prompt_tokens = {cfg.rollout.max_prompt_tokens}"
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int):
        return None, ""
    return context - max_new_tokens, (
        f"the model context ({context}) minus the completion length ({max_new_tokens}) = {context - max_new_tokens}"
    )


def check_prompts(task: Any, tokenizer: Any, model: Any, cfg: Config,
                  render: Callable[[Example], str] | None = None) -> int:
    """Every training and held-out prompt fits; returns the longest prompt in tokens.
    render: the sampler's prompt text (tools shown included); None = the task's PromptFormat."""
    render = render or partial(PromptFormat.from_config(cfg.task).render, tokenizer)
    train = prompt_lengths(task.train, tokenizer, render)
    eval_examples = task.eval[: cfg.eval.num_examples]
    held_out = prompt_lengths(eval_examples, tokenizer, render)
    r = cfg.rollout
    eval_new = r.episode_tokens if r.multi_turn else cfg.eval.max_new_tokens or r.max_new_tokens
    for split, examples, lengths, new in (("training", task.train, train, r.episode_tokens),
                                          ("held-out", eval_examples, held_out, eval_new)):
        limit, name = prompt_limit(cfg, model, new)
        if limit is None:
            continue
        if limit < 1:
            raise ValueError(f"no room for a prompt: {name}; lower rollout.max_new_tokens / eval.max_new_tokens")
        over = [i for i, n in enumerate(lengths) if n > limit]
        if over:
            first = over[0]
            raise ValueError(
                f"{len(over)} of {len(lengths)} {split} prompts are longer than {name} tokens (first: "
                f"example {examples[first].id!r}, {lengths[first]} tokens; longest: {max(lengths)} tokens); "
                f"raise rollout.max_prompt_tokens if the model allows, shorten task.system_prompt or "
                f"lower task.few_shot, or remove those rows"
            )
    return max(train + held_out, default=0)


# --------------------------------------------------------------------------- memory


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on `device` (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def estimate_memory(model: torch.nn.Module, cfg: Config, max_prompt: int) -> dict[str, int]:
    """Bytes each part of a step needs beyond the loaded weights (see the module docstring)."""
    mc = getattr(model, "config", None)
    b = next(model.parameters()).element_size()
    out = {"gradients and AdamW state": 3 * _trainable_bytes(model)}
    layers, hidden = getattr(mc, "num_hidden_layers", None), getattr(mc, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(hidden, int):
        return out  # an unfamiliar architecture: count what is certain only
    inter = getattr(mc, "intermediate_size", None) or 4 * hidden
    heads = getattr(mc, "num_attention_heads", None) or 1
    kv_heads = getattr(mc, "num_key_value_heads", None) or heads
    head_dim = getattr(mc, "head_dim", None) or hidden // heads
    vocab = getattr(mc, "vocab_size", None) or 0
    r, t = cfg.rollout, cfg.train
    seq = max_prompt + r.episode_tokens
    # completions a round generates: prompts_per_step * G, or rollout.group_policy's budget under adaptive
    # (a budget of tokens: as many as max_group_size each, the most it can split into)
    budget, _, most = r.group_policy.bounds(r.group_size, t.prompts_per_step)
    n_gen = t.prompts_per_step * most if r.group_policy.unit == "tokens" else budget
    m = t.micro_batch_size
    per_layer = 6 * hidden + 4 * inter  # values kept per token and layer for backward
    if cfg.model.gradient_checkpointing:  # layer inputs, plus one layer recomputed at a time
        activations = m * seq * (layers * hidden + per_layer) * b
    else:
        activations = m * seq * layers * per_layer * b
    positions = m * r.episode_tokens  # the logits of one micro-batch: kept whole, or one chunk at a time
    held = positions if keeps_logits(positions, vocab) else min(positions, CHUNK_POSITIONS)
    update = activations + 3 * held * vocab * 4
    generation = n_gen * seq * layers * 2 * kv_heads * head_dim * b
    if update >= generation:
        out[f"one micro-batch update ({m} completions of up to {seq} tokens)"] = update
    else:
        out[f"generation ({n_gen} sequences of up to {seq} tokens)"] = generation
    return out


def check_memory(model: torch.nn.Module, cfg: Config, max_prompt: int, device: torch.device) -> None:
    """ValueError when the estimated step clearly cannot fit in the free memory."""
    free = available_memory(device)
    if free is None:
        return
    parts = estimate_memory(model, cfg, max_prompt)
    need = sum(parts.values())
    if need <= MEMORY_SLACK * free:
        return
    detail = ", ".join(f"{name} {size(value)}" for name, value in parts.items())
    r, t = cfg.rollout, cfg.train
    raise ValueError(
        f"the configured batch needs about {size(need)} of {device.type} memory beyond the loaded "
        f"weights ({detail}) but only {size(free)} is available; lower train.micro_batch_size "
        f"(now {t.micro_batch_size}), rollout.max_new_tokens (now {r.max_new_tokens}) or "
        f"train.prompts_per_step (now {t.prompts_per_step}), or set model.gradient_checkpointing=true "
        f"(now {str(cfg.model.gradient_checkpointing).lower()}) or model.lora.enabled=true; "
        f"train.check_resources=false skips this estimate"
    )


# --------------------------------------------------------------------------- disk


def free_disk(path: str | Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, once created)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Room one checkpoint takes: trainable weights plus optimizer state, plus a margin."""
    weights = _trainable_bytes(model)
    state = 0
    if optimizer is not None:
        state = sum(v.numel() * v.element_size() for s in optimizer.state.values()
                    for v in s.values() if isinstance(v, torch.Tensor))
    if state == 0:  # before the first step AdamW holds nothing yet; it will hold 2 moments
        state = 2 * weights
    return int((weights + state) * (1 + DISK_MARGIN_FRACTION)) + DISK_MARGIN_BYTES


def model_bytes(model: torch.nn.Module) -> int:
    """Room the final model directory takes (every weight, in its dtype)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_disk(path: str | Path, need: int, what: str) -> None:
    """NotEnoughDisk when the filesystem of `path` has fewer than `need` bytes free."""
    free = free_disk(path)
    if free >= need:
        return
    raise NotEnoughDisk(
        f"not enough disk space in {str(path)!r} for {what}: about {size(need)} needed, "
        f"{size(free)} free; free some space or set output_dir to a larger disk (existing "
        f"checkpoints are intact; resume=true continues from the newest)"
    )


# --------------------------------------------------------------------------- all of it


def preflight(cfg: Config, model: torch.nn.Module, tokenizer: Any, task: Any,
              optimizer: torch.optim.Optimizer, device: torch.device,
              render: Callable[[Example], str] | None = None) -> None:
    """Every check above, as `Trainer.build` runs them before the first step."""
    max_prompt = check_prompts(task, tokenizer, model, cfg, render)
    if not cfg.train.check_resources:
        return
    check_memory(model, cfg, max_prompt, device)
    check_disk(cfg.output_dir, checkpoint_bytes(model, optimizer) + model_bytes(model),
               "a checkpoint and the final model")
