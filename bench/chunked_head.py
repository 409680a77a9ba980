"""Log-probs without full logits: time and peak memory of the LM head + log-softmax + entropy, by chunk size.

    PYTHONPATH=. python bench/chunked_head.py                      # both shapes, every chunk size
    PYTHONPATH=. python bench/chunked_head.py --shape 0.5b --chunks 128,full

What an update does with one micro-batch's hidden states [positions, H]: the head's logits, the
log-prob of each picked token at temperature 0.7 and the (detached) entropy, then the backward
into the hidden states and the head's weight. `full` is the path before grpo.compute.chunked_head
(the whole [positions, V] logits tensor, kept by autograd); a number is positions per chunk through
chunked_head.token_stats. Each configuration runs in its own process: peak RSS above what the
process held after building its inputs is the memory the computation needed. Times are the median
of 3 forward+backward passes after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = {"135m": (576, 49152, 2048), "0.5b": (896, 151936, 1024)}  # hidden, vocabulary, positions
TEMPERATURE = 0.7


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(shape: str, chunk: str) -> dict:
    from grpo import algorithm
    from grpo.compute import chunked_head
    from grpo.compute.allocator import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    H, V, N = SHAPES[shape]
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(1, N, H, requires_grad=True)
    ids = torch.randint(0, V, (1, N))
    parts = chunked_head.ModelParts(lambda **_: None, head, tuple(head.parameters()), torch.device("cpu"))

    def step() -> None:
        if chunk == "full":
            logits = head(hidden)
            lp = algorithm.token_logprobs(logits, ids, TEMPERATURE)
            ent = algorithm.token_entropy(logits.detach(), TEMPERATURE)
        else:
            spec = chunked_head.StatsSpec(TEMPERATURE, "metric", chunk_positions=int(chunk))
            lp, ent, _ = chunked_head.token_stats(parts, hidden, ids, spec)
        (lp.sum() + 0 * ent.sum()).backward()
        head.weight.grad = hidden.grad = None

    base = rss_mib()
    step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shape": shape, "chunk": chunk, "seconds": statistics.median(times), "peak_mib": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--chunks", default="64,128,256,512,1024,full")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in shapes:
        H, V, N = SHAPES[shape]
        print(f"\n{shape}: hidden {H}, vocabulary {V}, {N} positions (full logits {N * V * 4 / 2**20:.0f} MiB float32)")
        print(f"{'chunk':>6} {'positions x V':>14} {'s/pass':>7} {'peak MiB':>9}")
        for chunk in args.chunks.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", shape, chunk], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            elements = "all" if chunk == "full" else f"2^{(int(chunk) * V).bit_length() - 1}"
            print(f"{chunk:>6} {elements:>14} {r['seconds']:7.2f} {r['peak_mib']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
