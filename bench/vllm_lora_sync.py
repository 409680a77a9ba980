"""LoRA weight sync into vLLM: merged weights pushed (lora_sync=merged) against the adapters
loaded (lora_sync=adapter), alternating, on the bundled model with the default LoRA config.

    flock /tmp/grpo-cpu.lock env OMP_NUM_THREADS=2 .venv-vllm/bin/python bench/vllm_lora_sync.py [--repeats 5]
        [--model DIR | --random-shape 360m]

Both engines live side by side (eager, fp32, CPU). Each repeat perturbs every LoRA weight
(a stand-in for an optimizer step), then for each mode times `sync_weights` and one rollout
of 2 bench prompts x G=8, up to 64 new tokens, temperature 1, fixed seed: the adapter path
moves far less data but vLLM then runs the LoRA kernels in every decode step. Medians go to
stdout and bench/vllm_lora_sync.json (keyed by model).
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grpo.compute import models
from grpo.config import Config
from grpo.rollout import SamplingParams, VLLMEngine

HERE = Path(__file__).parent
SHAPES = {  # SmolLM2 family shapes, random weights (the bundled model is the 135M one)
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
}


def random_model_dir(shape: str, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **SHAPES[shape])
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix=f"grpo-bench-{shape}-"))
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="HF dir; default the bundled model")
    ap.add_argument("--random-shape", choices=sorted(SHAPES), default=None)
    args = ap.parse_args()
    path, label = args.model, args.model or "bundled SmolLM2-135M"
    if args.random_shape:
        path = str(random_model_dir(args.random_shape, models.resolve_model_dir(None)))
        label = f"SmolLM2-{args.random_shape.upper()} shape, random weights"
    cfg = Config().model
    model, tok = models.load_policy(dataclasses.replace(cfg, path=path, lora=dataclasses.replace(cfg.lora, enabled=True)))
    rows = [json.loads(line) for line in (HERE / "prompts.jsonl").open()][:2]
    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    engines = {mode: VLLMEngine(model, tok, max_model_len=1024, lora_sync=mode) for mode in ("merged", "adapter")}
    params = SamplingParams(8, 1.0, 1.0, 0, 64, seed=0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    print(f"{label}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{sum(p.numel() for p in lora) / 1e6:.2f}M in LoRA (r={cfg.lora.r}), {torch.get_num_threads()} threads")
    sync: dict[str, list[float]] = {m: [] for m in engines}
    rollout: dict[str, list[float]] = {m: [] for m in engines}
    generator = torch.Generator().manual_seed(0)
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        with torch.no_grad():
            for p in lora:
                p.add_(torch.randn(p.shape, generator=generator) * 1e-3)
        for mode, engine in engines.items():
            start = time.perf_counter()
            engine.sync_weights(model, rep + 1)
            synced = time.perf_counter()
            batch = engine.generate(prompts, params)
            done = time.perf_counter()
            if rep:
                sync[mode].append(synced - start)
                rollout[mode].append(done - synced)
            print(f"  {mode:8s} round {rep}: sync {synced - start:.3f} s, rollout {done - synced:.2f} s "
                  f"({int(batch.completion_mask.sum())} tokens)")
    result = {m: {"sync_s": statistics.median(sync[m]), "rollout_s": statistics.median(rollout[m])} for m in engines}
    for mode, r in result.items():
        print(f"{mode:8s} median sync {r['sync_s']:.3f} s, rollout {r['rollout_s']:.2f} s")
    out = HERE / "vllm_lora_sync.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved[label] = {**result, "repeats": args.repeats, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
