"""What each generation optimization buys: milliseconds per decode step, one variant at a time.

    .venv/bin/python bench/decode.py            # all variants, one process each, ~3 minutes

The bundled model, fp32 on CPU, the first 2 prompts of bench/prompts.jsonl, G=8 (16 rows),
greedy so every row decodes the same number of steps, up to 96 new tokens; best of 3 runs
after a warm-up. Variants, each adding one thing to the one before:
  generate      transformers' model.generate (G copies of each prompt, repeat_kv attention)
  shared        grpo's shared_prefix engine: each prompt prefilled once, cache shared by G rows
  +gqa          grouped-query SDPA without key/value copies (grpo.compute.attention)
  +prealloc     decode cache written in place instead of concatenated (PreallocatedLayer)
  +packed       linear layers through oneDNN with weights reordered once per rollout
                (grpo.compute.packed_linear)
The last one is what grpo runs. Greedy tokens are printed so a variant that changed the
result would show.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ["generate", "shared", "+gqa", "+prealloc", "+packed"]


class ConcatenatedLayer:
    """transformers' own cache layer (each step concatenates the whole cache), with the engine's
    move_rows done its way: every kept row indexed into a new tensor."""

    def __new__(cls, layer, extra):
        def move_rows(holes, sources, rows):
            import torch

            order = torch.arange(rows)
            order[holes] = sources
            layer.batch_select_indices(order)

        layer.move_rows = move_rows
        return layer


def measure(variant: str) -> dict:
    import torch

    import grpo.rollout.shared_prefix as shared_prefix
    import grpo.rollout.transformers_engine as hf
    from grpo.compute import models
    from grpo.config import load_config
    from grpo.rollout import SamplingParams, build_engine
    from grpo.tasks.base import Example
    from grpo.tasks.prompts import PromptFormat

    later = VARIANTS[VARIANTS.index(variant) + 1 :]
    if "+prealloc" in later:  # the decode cache grows by concatenation, as transformers' DynamicCache
        shared_prefix.PreallocatedLayer = ConcatenatedLayer
    if "+packed" in later:  # linear layers on the plain weights
        hf.packed_linears = lambda model: contextlib.nullcontext()
    engine_name = "transformers" if variant == "generate" else "shared_prefix"
    cfg = load_config(None, [f"rollout.engine={engine_name}"])
    model, tokenizer = models.load_policy(cfg.model)
    if variant in ("generate", "shared"):
        model.set_attn_implementation("sdpa")  # transformers' own: repeat_kv under a padding mask
    engine = build_engine(cfg.rollout, model, tokenizer)
    rows = [json.loads(line) for line in (HERE / "prompts.jsonl").read_text().splitlines()[:2]]
    prompts = [PromptFormat().render(tokenizer, Example(r["id"], r["prompt"], r["answer"], {})) for r in rows]
    params = SamplingParams(group_size=8, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=96)
    engine.generate(prompts, params)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        batch = engine.generate(prompts, params)
        best = min(best, time.perf_counter() - t0)
    steps = int(batch.completion_mask.sum(1).max())
    return {"variant": variant, "seconds": best, "steps": steps, "ms_per_step": 1000 * best / steps,
            "threads": torch.get_num_threads(), "first_completion": batch.completions[0]}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(sys.argv[1])))
        return
    results = []
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, variant], check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{variant:10s} {r['seconds']:.2f} s for {r['steps']} steps: {r['ms_per_step']:.0f} ms/step "
              f"(prefill included)  {r['first_completion'][:50]!r}", flush=True)
    (HERE / "decode.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
