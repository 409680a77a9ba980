"""What autograd keeps for the entropy bonus's backward, beyond the logits themselves.

    PYTHONPATH=. python bench/entropy_memory.py

Logits [2, 1024, 49152] float32 (the bundled model's vocabulary), temperature 0.7. The textbook
formula (softmax, then logsumexp(z) - sum p z, in 1024-token chunks) saves z and p of every
chunk for its backward; grpo.algorithm.token_entropy saves only the logits and recomputes each
block in backward. Counted with saved_tensors_hooks: storage bytes of every saved tensor that is
not the logits.
"""

from __future__ import annotations

import torch

from grpo import algorithm

TEMPERATURE = 0.7


def saved_bytes(fn, logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() != logits.data_ptr():
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(logits)
    return out, sum(seen.values())


def textbook(logits: torch.Tensor) -> torch.Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], 1024):
        z = flat[start : start + 1024] / TEMPERATURE
        p = torch.softmax(z, -1)
        parts.append(torch.logsumexp(z, -1) - (p * z).sum(-1))
    return torch.cat(parts).view(logits.shape[:2])


def main() -> None:
    logits = torch.randn(2, 1024, 49152, requires_grad=True)
    plain, plain_bytes = saved_bytes(textbook, logits)
    ours, our_bytes = saved_bytes(lambda x: algorithm.token_entropy(x, TEMPERATURE), logits)
    torch.testing.assert_close(plain, ours)
    mib = 2**20
    print(f"logits {logits.numel() * 4 / mib:.0f} MiB; saved for backward beyond them: "
          f"textbook {plain_bytes / mib:.0f} MiB, token_entropy {our_bytes / mib:.0f} MiB")


if __name__ == "__main__":
    main()
