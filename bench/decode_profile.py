"""Where a sampled rollout's time goes, and whether two checkouts sample the same tokens.

    PYTHONPATH=. .venv/bin/python bench/decode_profile.py --profile        # the top ops of one rollout
    PYTHONPATH=CHECKOUT .venv/bin/python bench/decode_profile.py --save A.pt   # timed rollouts, seeds 0-3
    .venv/bin/python bench/decode_profile.py --compare A.pt B.pt            # equal tokens and log-probs?

The bundled model in float32, grpo's shared-prefix engine (reordered linears), temperature 1.
--profile: the first 2 prompts of bench/prompts.jsonl x G=8, up to 64 new tokens, one warm-up
rollout then one under torch.profiler (ops by self CPU time). --save: the first 4 prompts x G=8, up
to 128 new tokens, one rollout per seed, each timed; the tokens and sampler log-probs saved (tensors
only) for --compare. Run --save with PYTHONPATH set to two checkouts (e.g. a `git worktree` of the
earlier commit) to compare versions: same seeds, same model, so equal tokens mean equal draws.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def engine_and_prompts(count: int):
    from grpo.compute import models
    from grpo.config import load_config
    from grpo.rollout import build_engine
    from grpo.tasks.base import Example
    from grpo.tasks.prompts import PromptFormat

    cfg = load_config(None, ["rollout.engine=shared_prefix"])
    model, tokenizer = models.load_policy(cfg.model)
    rows = [json.loads(line) for line in (HERE / "prompts.jsonl").read_text().splitlines()[:count]]
    prompts = [PromptFormat().render(tokenizer, Example(r["id"], r["prompt"], r["answer"], {})) for r in rows]
    return build_engine(cfg.rollout, model, tokenizer), prompts


def params(max_new_tokens: int):
    from grpo.rollout import SamplingParams

    return SamplingParams(group_size=8, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens)


def profile() -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    engine, prompts = engine_and_prompts(2)
    torch.manual_seed(0)
    engine.generate(prompts, params(64))
    torch.manual_seed(0)
    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        batch = engine.generate(prompts, params(64))
        elapsed = time.perf_counter() - start
    print(f"rollout {elapsed:.2f} s, {int(batch.completion_mask.sum())} tokens, longest {batch.completion_ids.shape[1]}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def save(path: str) -> None:
    import torch

    engine, prompts = engine_and_prompts(4)
    engine.generate(prompts, params(16))  # warm-up
    times, outputs = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        start = time.perf_counter()
        batch = engine.generate(prompts, params(128))
        times.append(round(time.perf_counter() - start, 2))
        outputs.append([batch.completion_ids, batch.sampler_logprobs])
    print(f"seconds per rollout, seeds 0-3: {times}; tokens {[int(o[0].ne(0).sum()) for o in outputs]}")
    torch.save(outputs, path)


def compare(a: str, b: str) -> None:
    import torch

    for seed, ((ids_a, lp_a), (ids_b, lp_b)) in enumerate(zip(torch.load(a), torch.load(b), strict=True)):
        same = ids_a.shape == ids_b.shape and torch.equal(ids_a, ids_b)
        gap = float((lp_a - lp_b).abs().max()) if same else float("nan")
        print(f"seed {seed}: tokens equal {same}, sampler log-probs max difference {gap}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--save")
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.profile:
        profile()
    if args.save:
        save(args.save)
    if args.compare:
        compare(*args.compare)


if __name__ == "__main__":
    main()
