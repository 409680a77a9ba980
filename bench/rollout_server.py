"""The rollout server on this CPU: seconds per step lockstep vs asynchronous, the weight push.

    flock /tmp/grpo-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/rollout_server.py [--steps 5]
        [--parts steps,push,bytes]

steps: the demo recipe (bundled SmolLM2-135M, 2 prompts x G=8, up to 96 new tokens, beta 0.04),
`--steps` steps without evaluation, three ways: the in-process shared_prefix engine, the
server engine in lockstep (rollout.max_staleness=0) and asynchronous (max_staleness=1). The
server is `grpo serve-rollout --engine shared_prefix` on the same 2 cores. Medians over the
steps after the first (its generation also pays the server's start), from metrics.jsonl.
push: the bundled model's push (one streamed, authenticated HTTP request over loopback, then the
copy-in), timed 5 times with the trainer's ServerEngine against the server; against it, the
transport the push used before (a gloo broadcast over loopback, grpo.serve.nccl's WeightGroup
on a HashStore, sender and receiver threads in this process) of the same tensors, 5 times.
bytes: bytes one push sends for the bundled model and a Qwen2.5-1.5B-shaped model (built from
transformers' Qwen2Config on the meta device: no weights, no download), fp32 and bf16, and the
time of one loopback gloo broadcast of the 1.5B shape's tensors in bf16 (random values,
sender and receiver threads in this process: the transport alone, no server).
Results go to stdout and bench/rollout_server.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

HERE = Path(__file__).parent
ROOT = HERE.parent
TOKEN = "bench-rollout-token-0123456789"
QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def start_server(port: int, model: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "grpo", "serve-rollout", "--port", str(port), "--engine", "shared_prefix",
           *(["--model", model] if model else [])]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the rollout server did not start")


def run_steps(name: str, steps: int, overrides: list[str], out: Path) -> dict:
    run = out / name
    env = {**os.environ, "GRPO_ROLLOUT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "grpo", "train", str(ROOT / "configs/demo.yaml"), f"output_dir={run}",
           f"train.num_steps={steps}", "eval.num_examples=0", "train.first_run_check=false", "checkpoint.every=0",
           "log.progress=false", "log.report_to=[]", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    keys = ("time/step", "time/generation", "time/rewards", "time/logprobs", "time/update", "async/staleness_mean",
            "async/generation_seconds")
    result = {k: round(statistics.median(m[k] for m in metrics), 2) for k in keys if k in metrics[0]}
    result["tokens_generated"] = sum(m["tokens_generated"] for m in metrics)  # steps 2-5: lengths differ by run
    result["wall_seconds"] = round(wall, 1)
    print(name, result, flush=True)
    return result


def bench_steps(steps: int, port: int) -> dict:
    url = f"rollout.url=http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        results = {"in_process": run_steps("in_process", steps, ["rollout.engine=shared_prefix"], Path(tmp))}
        server = start_server(port)
        try:
            for name, k in (("server_lockstep", 0), ("server_async_k1", 1)):
                results[name] = run_steps(name, steps, ["rollout.engine=server", url, f"rollout.max_staleness={k}"],
                                          Path(tmp))
        finally:
            server.kill()
            server.wait()
    return results


def bench_push(port: int, repeats: int = 5) -> dict:
    from grpo.compute import models
    from grpo.config import ModelConfig
    from grpo.rollout.server_engine import ServerEngine
    from grpo.rollout.weights import unique_weights

    model, tokenizer = models.load_policy(ModelConfig())
    server = start_server(port)
    try:
        engine = ServerEngine(model, tokenizer, url=f"http://127.0.0.1:{port}", token=TOKEN)
        times = []
        for version in range(repeats + 1):
            with torch.no_grad():
                model.lm_head.weight.add_(1e-6)  # a stand-in for an optimizer step
            engine.sync_weights(model, version)
            times.append(engine.push_seconds)
    finally:
        server.kill()
        server.wait()
    shapes = [(tuple(t.shape), t.dtype) for _, t in unique_weights(model)]
    gloo = [time_broadcast([s for s, _ in shapes], torch.float32) for _ in range(repeats)]
    result = {"push_seconds_median": round(statistics.median(times[1:]), 3), "push_bytes": int(engine.push_bytes),
              "push_seconds": [round(t, 3) for t in times], "gloo_broadcast_seconds_median":
              round(statistics.median(gloo), 3), "gloo_broadcast_seconds": [round(t, 3) for t in gloo]}
    print("push, bundled model:", result, flush=True)
    return result


def push_bytes(model: torch.nn.Module) -> int:
    from grpo.rollout.weights import unique_weights
    from grpo.serve.weights import spec_of

    return sum(spec_of(name, t).num_bytes for name, t in unique_weights(model))


def bench_bytes() -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo.compute import models
    from grpo.config import ModelConfig

    bundled, _ = models.load_policy(ModelConfig())
    result = {"bundled_fp32_bytes": push_bytes(bundled)}
    del bundled
    with torch.device("meta"):
        qwen = Qwen2ForCausalLM(Qwen2Config(**QWEN_1_5B))
    result["qwen2.5_1.5b_shape_fp32_bytes"] = push_bytes(qwen)
    result["qwen2.5_1.5b_shape_bf16_bytes"] = push_bytes(qwen.to(torch.bfloat16))
    result["qwen2.5_1.5b_shape_parameters"] = sum(p.numel() for p in qwen.parameters())
    shapes = [tuple(p.shape) for p in qwen.parameters()]
    del qwen
    result["qwen2.5_1.5b_bf16_broadcast_seconds"] = round(time_broadcast(shapes, torch.bfloat16), 2)
    print("bytes:", result, flush=True)
    return result


def time_broadcast(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> float:
    """One loopback gloo push of tensors of these shapes (the transport only)."""
    import torch.distributed as dist

    from grpo.serve.nccl import SERVER, TRAINER, WeightGroup
    from grpo.serve.weights import spec_of

    store = dist.HashStore()
    tensors = [torch.randn(s, dtype=dtype) for s in shapes]
    specs = [spec_of(str(i), t) for i, t in enumerate(tensors)]
    cpu = torch.device("cpu")
    receiver = threading.Thread(target=lambda: WeightGroup.join(store, "bench", SERVER, cpu, 300,
                                                                gloo_address="127.0.0.1").receive(specs))
    receiver.start()
    group = WeightGroup.join(store, "bench", TRAINER, cpu, 300, gloo_address="127.0.0.1")
    start = time.perf_counter()
    group.send(tensors)
    seconds = time.perf_counter() - start
    receiver.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--parts", default="steps,push,bytes")
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = HERE / "rollout_server.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    parts = ns.parts.split(",")
    if "bytes" in parts:
        results["bytes"] = bench_bytes()
    if "push" in parts:
        results["push"] = bench_push(ns.port)
    if "steps" in parts:
        results["steps"] = bench_steps(ns.steps, ns.port)
    results["host"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
