"""The physical floor of a GRPO step on this machine: FLOPs over matmul rate, bytes over bandwidth.

Measured, not assumed: `measure_machine` times a 2048^3 matmul in fp32 and in bf16 and a large
memory copy on the machine it runs on (the same threads torch uses for training). A system's
floor uses the rate of the dtype it computes in (its `precision` record) and the weight bytes
its decode reads (4 per parameter in fp32, 2 in bf16).
"""

from __future__ import annotations

import platform
import time

import torch

NUM_PARAMS = 134.5e6  # SmolLM2-135M-Instruct (tied embedding counted once)
BYTES = {"float32": 4, "bfloat16": 2}


def _best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_machine() -> dict:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    matmul_s = _best_of(lambda: a @ b)
    a16, b16 = a.bfloat16(), b.bfloat16()
    a16 @ b16
    matmul16_s = _best_of(lambda: a16 @ b16)
    src = torch.randn(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = _best_of(lambda: dst.copy_(src))
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "matmul_gflops": 2 * n**3 / matmul_s / 1e9,
        "matmul_bf16_gflops": 2 * n**3 / matmul16_s / 1e9,
        "copy_gbs": 2 * src.numel() * 4 / copy_s / 1e9,  # read + write
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
    }


class FloorModel:
    def __init__(self, machine: dict, dtype: str = "float32", num_params: float = NUM_PARAMS):
        self.dtype, self.num_params = dtype, num_params
        self.flops = machine["matmul_bf16_gflops" if dtype == "bfloat16" else "matmul_gflops"] * 1e9
        self.bandwidth = machine["copy_gbs"] * 1e9
        self.weight_bytes = BYTES[dtype] * num_params

    def step_floor(self, step: dict) -> dict:
        """Seconds per phase for one step's token counts (prompts counted once per group)."""
        n = self.num_params
        tokens = step["prompt_tokens"] + step["completion_tokens"]
        prefill = 2 * n * step["prompt_tokens"] / self.flops
        decode = step["max_completion"] * self.weight_bytes / self.bandwidth
        return {
            "generation": prefill + decode,
            "logprobs": 2 * n * tokens / self.flops,
            "update": 6 * n * tokens / self.flops,
        }
