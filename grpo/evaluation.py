"""Held-out evaluation: greedy accuracy, pass@k, format rate, completion length.

The grader is the RL reward itself (the `accuracy` and `format` reward functions, with the
options the run configured), so what evaluation calls correct is what training rewarded.
Two accuracies, because they differ a lot for small models: `accuracy` is lenient (the
accuracy reward as configured: by default an untagged completion's last number counts),
`strict_accuracy` counts a completion only when its `<answer>` holds the right answer and
the whole layout passes the `format` reward (and `sampled_...` for both at T > 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from grpo import rewards
from grpo.config import Config, RewardSpec
from grpo.episodes.turns import build_sampler
from grpo.rollout import SamplingParams
from grpo.tasks.base import Example


def grader_specs(cfg: Config) -> list[RewardSpec]:
    """The accuracy and format rewards as the run configured them (defaults otherwise), then
    the strict accuracy (answer tags only)."""
    configured = {spec.name: spec for spec in cfg.rewards}
    specs = [RewardSpec(name, 1.0, dict(configured[name].options) if name in configured else {})
             for name in ("accuracy", "format")]
    return [*specs, RewardSpec("accuracy", 1.0, {**specs[0].options, "fallback": False})]


def graded(graders: list, completions: list[str], examples: list[Example], timeout: float) -> torch.Tensor:
    """[N, 3] booleans per completion: lenient accuracy, format, strict accuracy (and format)."""
    scores = rewards.score(graders, completions, examples, timeout).per_function
    accuracy, fmt, strict = (torch.nan_to_num(scores[g.name]) >= 1.0 for g in graders)
    return torch.stack([accuracy, fmt, strict & fmt], dim=1)


def step_graders(cfg: Config, built: list | None = None) -> list:
    """The run's step (process) rewards, unweighted: held-out step scores are reported for each.
    built: the run's reward functions when it has them (a reward model is not loaded twice)."""
    if built is None:
        built = rewards.build(cfg.rewards, load=False)
    steps = [r for r in built if getattr(r.fn, "steps", None) is not None]
    for r in steps:
        if hasattr(r.fn, "load"):
            r.fn.load()
    return [r._replace(weight=1.0) for r in steps]


class StepTally:
    """Sums of step scores and step counts per step reward, over some completions."""

    def __init__(self, graders: list):
        self.graders = graders
        self.sums = {g.name: [0.0, 0] for g in graders}

    def add(self, completions: list[str], examples: list[Example], timeout: float) -> None:
        for g in self.graders:  # one at a time: scores.steps pools the functions it runs
            for row in rewards.score([g], completions, examples, timeout).steps:
                self.sums[g.name][0] += sum(score for _, score in row)
                self.sums[g.name][1] += len(row)

    def results(self, prefix: str, num_completions: int) -> dict[str, float]:
        """{prefix}step_score/<name>: the mean over every step (for 0/1 scores, the fraction of
        steps right); {prefix}steps/<name>: steps per completion."""
        out = {}
        for name, (total, count) in self.sums.items():
            out[f"{prefix}step_score/{name}"] = total / count if count else float("nan")
            out[f"{prefix}steps/{name}"] = count / max(num_completions, 1)
        return out


def evaluate(engine: Any, tokenizer: Any, examples: list[Example], cfg: Config,
             progress: Callable[[int, int], None] | None = None, reward_fns: list | None = None) -> dict[str, Any]:
    """Score `examples`: greedy accuracy, format, mean_length, truncation_rate; with k > 1 also
    pass@k (some of k samples right) and sampled_accuracy (the fraction of samples right);
    with tools, tool_call_rate (greedy episodes that called one; sampled_tool_call_rate); with
    step rewards, step_score/<name> and steps/<name> (StepTally; sampled_ ones over the samples).
    progress(done, total) is called before the first chunk and after each one; reward_fns: the
    run's built rewards (else built from cfg), for the step scores."""
    if not examples:
        raise ValueError("evaluation needs at least one held-out example (eval.num_examples, task.num_eval)")
    e = cfg.eval
    max_new = e.max_new_tokens or cfg.rollout.max_new_tokens
    graders = rewards.build(grader_specs(cfg))
    greedy = SamplingParams(group_size=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_new,
                            stop=tuple(cfg.rollout.stop))
    sampler = build_sampler(cfg, engine, tokenizer)
    lengths, truncated = [], 0
    greedy_grades, sampled_grades = [], []  # [n, 3] and [n, k, 3]: lenient, format, strict
    called = [0, 0]  # greedy and sampled episodes that called a tool
    steps = step_graders(cfg, reward_fns)
    greedy_steps, sampled_steps = StepTally(steps), StepTally(steps)
    for start in range(0, len(examples), e.batch_size):
        if progress is not None:
            progress(start, len(examples))
        chunk = examples[start : start + e.batch_size]
        batch = sampler.sample(chunk, greedy)
        greedy_grades.append(graded(graders, batch.completions, chunk, cfg.reward_timeout))
        greedy_steps.add(batch.completions, chunk, cfg.reward_timeout)
        lengths += batch.loss_mask.sum(1).tolist()  # sampled tokens
        truncated += sum(r == "length" for r in batch.finish_reasons)
        called[0] += calls_a_tool(batch)
        if e.pass_k > 1:
            sampled = SamplingParams(group_size=e.pass_k, temperature=e.temperature, top_p=cfg.rollout.top_p,
                                     top_k=cfg.rollout.top_k, max_new_tokens=max_new, stop=greedy.stop)
            batch = sampler.sample(chunk, sampled)
            called[1] += calls_a_tool(batch)
            repeated = [ex for ex in chunk for _ in range(e.pass_k)]
            grades = graded(graders, batch.completions, repeated, cfg.reward_timeout)
            sampled_grades.append(grades.view(len(chunk), e.pass_k, 3))
            sampled_steps.add(batch.completions, repeated, cfg.reward_timeout)
    if progress is not None:
        progress(len(examples), len(examples))
    n, g = len(examples), torch.cat(greedy_grades).double()
    results: dict[str, Any] = {
        "num_examples": n,
        "strict_accuracy": g[:, 2].mean().item(),  # the headline (first in every summary), lenient beside it
        "accuracy": g[:, 0].mean().item(),
        "format": g[:, 1].mean().item(),
        "mean_length": sum(lengths) / n,
        "truncation_rate": truncated / n,
    }
    if e.pass_k > 1:
        s = torch.cat(sampled_grades).double()  # [n, k, 3]
        results[f"pass@{e.pass_k}"] = s[:, :, 0].amax(dim=1).mean().item()
        # the mean over the k samples: accuracy of the sampling policy that training optimizes
        results["sampled_strict_accuracy"] = s[:, :, 2].mean().item()
        results["sampled_accuracy"] = s[:, :, 0].mean().item()
    if steps:
        results.update(greedy_steps.results("", n))
        if e.pass_k > 1:
            results.update(sampled_steps.results("sampled_", n * e.pass_k))
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


def run_eval(cfg: Config, checkpoint: str | None = None, loaded: Any = None) -> dict[str, Any]:
    """`grpo eval`: load the model (and a checkpoint's weights), evaluate on the eval split.
    loaded: a models.LoadedModel evaluated as it is (grpo.evaluate(model=...))."""
    from grpo.compute import models
    from grpo.rollout import build_engine
    from grpo.tasks import build_task
    from grpo.training.checkpoint import load_weights

    task = build_task(cfg.task)
    model, tokenizer = models.load_policy(cfg.model, loaded)
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
