"""Generation speed: the vllm engine against shared_prefix, alternating, on the bundled model.

    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/vllm_rollout.py [--eager] [--repeats 3]

2 prompts of bench/prompts.jsonl x G=8, up to 128 new tokens, temperature 1.0. Prints the
engine start, each run's generated tokens/s and the weight-sync time. Set OMP_NUM_THREADS
when anything else runs on the machine: two multi-threaded processes on the same cores
spin against each other and both slow down many times over.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from grpo.compute import models
from grpo.config import Config
from grpo.rollout import SamplingParams, SharedPrefixEngine, VLLMEngine

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="HF dir; default the bundled model")
    args = ap.parse_args()
    model, tok = models.load_policy(dataclasses.replace(Config().model, path=args.model))
    rows = [json.loads(line) for line in (HERE / "prompts.jsonl").open()][:2]
    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    vllm = VLLMEngine(model, tok, enforce_eager=args.eager)
    print(f"vllm start ({'eager' if args.eager else 'compiled'}): {vllm.start_seconds:.1f} s")
    vllm.sync_weights(model, 0)
    engines = {"vllm": vllm, "shared_prefix": SharedPrefixEngine(model, tok)}
    params = SamplingParams(8, 1.0, 1.0, 0, 128)
    for rep in range(args.repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            n = engine.generate(prompts, params).num_generated_tokens
            seconds = time.perf_counter() - start
            print(f"run {rep} {name:>13}: {n} tokens in {seconds:.2f} s = {n / seconds:.1f} tokens/s")
    for version in range(1, args.repeats + 1):
        vllm.sync_weights(model, version)  # a full push, as after every training step
        print(f"sync_weights: {vllm.sync_seconds:.2f} s")


if __name__ == "__main__":
    main()
