"""Does torch.compile remove the decode step's per-op cost on CPU? Eager vs compiled, one decode loop each.

    PYTHONPATH=. .venv/bin/python bench/decode_compile.py [--rows 16] [--steps 48]

The bundled model in float32, `rows` copies of the first prompt of bench/prompts.jsonl prefilled
into transformers' StaticCache (fixed shapes: what a compiled step needs), then `steps` greedy
decode steps of all rows. Eager runs the model's forward as grpo's engines do; compiled wraps the
same forward in torch.compile (inductor, dynamic=False). Reported: the compile (first calls) and
the median decode step after it; the greedy tokens of both are compared. An experiment for issue
28 part 2, not what grpo runs: the shared-prefix engine drops finished rows from its cache every
step (changing shapes), which a compiled path would have to bucket.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def decode(model, ids: torch.Tensor, steps: int, forward) -> tuple[list[float], torch.Tensor, float]:
    from transformers import StaticCache

    rows, prompt = ids.shape
    cache = StaticCache(config=model.config, max_cache_len=prompt + steps + 1)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                    cache_position=torch.arange(prompt), logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens, times, first = [token], [], 0.0
        for t in range(steps):
            position = torch.tensor([prompt + t])
            start = time.perf_counter()
            logits = forward(input_ids=token, past_key_values=cache, use_cache=True, cache_position=position,
                             position_ids=position.expand(rows, 1)).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            elapsed = time.perf_counter() - start
            if t < 2:
                first += elapsed  # compile happens in the first calls
            else:
                times.append(elapsed)
            tokens.append(token)
    return times, torch.cat(tokens, 1), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=48)
    args = parser.parse_args()
    import systems
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = systems.model_dir("bundled")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    question = systems.load_prompts()[0].question
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].repeat(args.rows, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rows} rows, prompt {ids.shape[1]} "
          f"tokens, {args.steps} decode steps")
    eager_times, eager_tokens, _ = decode(model, ids, args.steps, model.forward)
    print(f"eager:    {1000 * statistics.median(eager_times):.1f} ms per decode step (median)")
    compiled = torch.compile(model.forward, dynamic=False)
    start = time.perf_counter()
    times, tokens, first = decode(model, ids, args.steps, compiled)
    print(f"compiled: {1000 * statistics.median(times):.1f} ms per decode step (median); first two calls "
          f"{first:.1f} s, whole loop {time.perf_counter() - start:.1f} s")
    same = torch.equal(tokens, eager_tokens)
    print(f"greedy tokens equal: {same}" + ("" if same else
          f" (first difference at step {int((tokens != eager_tokens).any(0).nonzero()[0])})"))


if __name__ == "__main__":
    main()
