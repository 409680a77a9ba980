"""Held-out evaluation: greedy accuracy, pass@k, format rate, completion length.

The grader is the RL reward itself (the `accuracy` and `format` reward functions, with the
options the run configured), so what evaluation calls correct is what training rewarded.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo import rewards
from grpo.config import Config, RewardSpec
from grpo.rollout import SamplingParams
from grpo.rollout.episodes import build_sampler
from grpo.tasks.base import Example


def grader_specs(cfg: Config) -> list[RewardSpec]:
    """The accuracy and format rewards as the run configured them (defaults otherwise)."""
    configured = {spec.name: spec for spec in cfg.rewards}
    return [RewardSpec(name, 1.0, dict(configured[name].options) if name in configured else {})
            for name in ("accuracy", "format")]


def evaluate(engine: Any, tokenizer: Any, examples: list[Example], cfg: Config) -> dict[str, Any]:
    """Score `examples`: greedy accuracy, format, mean_length, truncation_rate; with k > 1 also
    pass@k (some of k samples right) and sampled_accuracy (the fraction of samples right);
    with tools, tool_call_rate (greedy episodes that called one; sampled_tool_call_rate)."""
    if not examples:
        raise ValueError("evaluation needs at least one held-out example (eval.num_examples, task.num_eval)")
    e = cfg.eval
    max_new = e.max_new_tokens or cfg.rollout.max_new_tokens
    graders = rewards.build(grader_specs(cfg))
    greedy = SamplingParams(group_size=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_new,
                            stop=tuple(cfg.rollout.stop))
    sampler = build_sampler(cfg, engine, tokenizer)
    acc, fmt, lengths, truncated = [], [], [], 0
    passed: list[float] = []
    sampled_correct: list[float] = []
    called = [0, 0]  # greedy and sampled episodes that called a tool
    for start in range(0, len(examples), e.batch_size):
        chunk = examples[start : start + e.batch_size]
        batch = sampler.sample(chunk, greedy)
        scores = rewards.score(graders, batch.completions, chunk, cfg.reward_timeout)
        acc += torch.nan_to_num(scores.per_function["accuracy"]).tolist()
        fmt += torch.nan_to_num(scores.per_function["format"]).tolist()
        lengths += batch.loss_mask.sum(1).tolist()  # sampled tokens
        truncated += sum(r == "length" for r in batch.finish_reasons)
        called[0] += calls_a_tool(batch)
        if e.pass_k > 1:
            sampled = SamplingParams(group_size=e.pass_k, temperature=e.temperature, top_p=cfg.rollout.top_p,
                                     top_k=cfg.rollout.top_k, max_new_tokens=max_new, stop=greedy.stop)
            batch = sampler.sample(chunk, sampled)
            called[1] += calls_a_tool(batch)
            repeated = [ex for ex in chunk for _ in range(e.pass_k)]
            scores = rewards.score(graders[:1], batch.completions, repeated, cfg.reward_timeout)
            correct = torch.nan_to_num(scores.per_function["accuracy"]).view(len(chunk), e.pass_k)
            passed += (correct >= 1.0).any(dim=1).float().tolist()
            sampled_correct += (correct >= 1.0).float().mean(dim=1).tolist()
    n = len(examples)
    results: dict[str, Any] = {
        "num_examples": n,
        "accuracy": sum(a >= 1.0 for a in acc) / n,
        "format": sum(f >= 1.0 for f in fmt) / n,
        "mean_length": sum(lengths) / n,
        "truncation_rate": truncated / n,
    }
    if e.pass_k > 1:
        results[f"pass@{e.pass_k}"] = sum(passed) / n
        # the mean over the k samples: accuracy of the sampling policy that training optimizes
        results["sampled_accuracy"] = sum(sampled_correct) / n
    if cfg.rollout.tools:
        results["tool_call_rate"] = called[0] / n
        if e.pass_k > 1:
            results["sampled_tool_call_rate"] = called[1] / (n * e.pass_k)
    return results


def calls_a_tool(batch: Any) -> int:
    """Episodes of a trajectory with at least one tool reply (0 for single-turn sampling)."""
    return sum(any(m["role"] == "tool" for m in e) for e in batch.episodes or [])


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`evaluate` results of disjoint shards of the examples (one per rank), as if scored
    together: every figure is a mean over examples, so the merge weighs by num_examples."""
    if len(parts) == 1:
        return parts[0]
    n = sum(p["num_examples"] for p in parts)
    return {"num_examples": n, **{key: sum(p[key] * p["num_examples"] for p in parts) / n
                                  for key in parts[0] if key != "num_examples"}}


def run_eval(cfg: Config, checkpoint: str | None = None) -> dict[str, Any]:
    """`grpo eval`: load the model (and a checkpoint's weights), evaluate on the eval split."""
    from grpo import models
    from grpo.checkpoint import load_weights
    from grpo.rollout import build_engine
    from grpo.tasks import build_task

    task = build_task(cfg.task)
    model, tokenizer = models.load_policy(cfg.model)
    if checkpoint is not None:
        load_weights(checkpoint, model)
    engine = build_engine(cfg.rollout, model, tokenizer)
    if checkpoint is not None:
        engine.sync_weights(model, 0)  # an engine with its own copy (vllm) loaded model.path's weights
    return evaluate(engine, tokenizer, task.eval[: cfg.eval.num_examples], cfg)


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)
