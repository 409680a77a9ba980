"""How far bf16 compute moves per-token log-probs, with and without the float32 LM head (model.lm_head_fp32).

    PYTHONPATH=$PWD .venv/bin/python bench/lm_head_precision.py   # minutes: bf16 on a CPU without bf16 kernels is slow

The bundled model (float32 master weights), the first 4 prompts of bench/prompts.jsonl, G=4
completions each sampled in float32 at temperature 1 (seed 0, up to 64 new tokens). The same
tokens are then scored three ways, as the trainer scores them (grpo.training.logprobs.batch_logprobs):
  fp32            no autocast: the reference numbers
  bf16            bf16 autocast over the whole model, head included (model.lm_head_fp32=false)
  bf16+fp32 head  bf16 autocast, the head in float32 (grpo.compute.lm_head.Float32Head)
and the mean / max |log p - log p_fp32| over completion tokens is printed for the last two. Only
numerics: CPUs without fast bf16 kernels run this slowly, and nothing here is timed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from grpo.compute import models
from grpo.compute.lm_head import keep_head_float32
from grpo.config import load_config
from grpo.rollout import SamplingParams, build_engine
from grpo.tasks.base import Example
from grpo.tasks.prompts import PromptFormat
from grpo.training.logprobs import batch_logprobs

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


def main() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.lm_head_fp32=false", "model.precision=float32"])
    model, tokenizer = models.load_policy(cfg.model)
    model.eval()
    engine = build_engine(cfg.rollout, model, tokenizer)
    rows = [json.loads(line) for line in (HERE / "prompts.jsonl").read_text().splitlines()[:4]]
    prompts = [PromptFormat().render(tokenizer, Example(r["id"], r["prompt"], r["answer"], {})) for r in rows]
    batch = engine.generate(prompts, SamplingParams(group_size=4, temperature=1.0, top_p=1.0, top_k=0,
                                                     max_new_tokens=64, seed=0))
    mask = batch.completion_mask.bool()

    def score(autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return batch_logprobs(model, batch, 8, CPU)[mask]

    fp32, bf16 = score(False), score(True)
    keep_head_float32(model)
    head32 = score(True)
    print(f"{int(mask.sum())} completion tokens, {len(batch)} completions")
    for name, lp in (("bf16", bf16), ("bf16+fp32 head", head32)):
        diff = (lp - fp32).abs()
        print(f"{name:15s} mean |dlogp| {diff.mean():.4f}  max {diff.max():.3f}  "
              f"mean |dp| {(lp.exp() - fp32.exp()).abs().mean():.5f}")


if __name__ == "__main__":
    main()
