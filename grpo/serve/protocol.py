"""The reference server's wire format: safetensors bytes both ways, never pickle.

    POST /v1/logprobs        Authorization: Bearer <token>
      request body (safetensors), exactly the inputs `grpo.training.logprobs.batch_logprobs` uses:
        prompt_ids      [N, P] int64    left-padded, as in grpo.trajectory
        prompt_mask     [N, P] int64    1 = prompt token, 0 = padding
        completion_ids  [N, C] int64    right-padded
        completion_mask [N, C] int64    1 = a token of the sequence, 0 = padding
        temperature     [1]    float64  the sampling temperature (logits are divided by it)
      200: safetensors {logprobs: [N, C] float32, zeros on padding}
      4xx / 5xx: JSON {"error": "..."}; 4xx are the client's fault and are not retried
    GET /health -> 200 JSON {"status": "ok", "limits": {...}, "vocab_size": V} (no token needed)

safetensors rather than pickle because unpickling runs arbitrary code: a reference server
reachable by anyone who can open a socket must only ever parse plain tensors.
Every request is checked here, before it reaches the model: an out-of-range token id would
be an IndexError on CPU but a device-side assert on CUDA, which poisons the CUDA context and
with it every later request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load, save

from grpo.serve.common import BadRequest
from grpo.trajectory import TokenSequences

LOGPROBS_PATH = "/v1/logprobs"
HEALTH_PATH = "/health"
ID_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


@dataclass(frozen=True)
class Limits:
    """What one request may hold; a request over any of them is refused with 413."""

    max_body_bytes: int = 64 * 2**20  # 2M tokens of int64 ids + masks is 32 MiB
    max_rows: int = 4096  # N
    max_tokens: int = 2_000_000  # N * (P + C)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def encode_request(batch: TokenSequences, temperature: float) -> bytes:
    tensors = {name: getattr(batch, name).detach().to("cpu", torch.int64).contiguous() for name in ID_FIELDS}
    tensors["temperature"] = torch.tensor([temperature], dtype=torch.float64)
    return save(tensors)


def decode_request(body: bytes, limits: Limits, vocab_size: int) -> tuple[TokenSequences, float]:
    """Parse and check a request body; raises BadRequest naming what is wrong."""
    try:
        tensors = load(body)
    except Exception as e:  # noqa: BLE001 - the parser's error types are not public API
        raise BadRequest(400, f"the body is not a safetensors file ({e})") from None
    missing = [n for n in (*ID_FIELDS, "temperature") if n not in tensors]
    if missing:
        raise BadRequest(400, f"missing tensors: {', '.join(missing)}")
    for name in ID_FIELDS:
        t = tensors[name]
        if t.dtype != torch.int64 or t.dim() != 2:
            raise BadRequest(400, f"{name} must be a 2-D int64 tensor, got {t.dtype} {list(t.shape)}")
    p_ids, p_mask, c_ids, c_mask = (tensors[n] for n in ID_FIELDS)
    if p_ids.shape != p_mask.shape or c_ids.shape != c_mask.shape or p_ids.shape[0] != c_ids.shape[0]:
        raise BadRequest(400, f"shapes disagree: prompt {list(p_ids.shape)} / {list(p_mask.shape)}, "
                              f"completion {list(c_ids.shape)} / {list(c_mask.shape)}")
    (N, P), C = p_ids.shape, c_ids.shape[1]
    if N < 1 or P < 1 or C < 1:
        raise BadRequest(400, f"empty batch: N={N}, P={P}, C={C} (each must be >= 1)")
    if N > limits.max_rows or N * (P + C) > limits.max_tokens:
        raise BadRequest(413, f"batch of {N} rows and {N * (P + C)} tokens is over the server's limits "
                              f"(max_rows={limits.max_rows}, max_tokens={limits.max_tokens})")
    for name in ("prompt_ids", "completion_ids"):
        t = tensors[name]
        if t.min() < 0 or t.max() >= vocab_size:
            raise BadRequest(400, f"{name} holds ids outside [0, {vocab_size}) (another tokenizer?)")
    for name in ("prompt_mask", "completion_mask"):
        if not ((tensors[name] == 0) | (tensors[name] == 1)).all():
            raise BadRequest(400, f"{name} must hold only 0 and 1")
    if not (p_mask.sum(1) > 0).all():
        raise BadRequest(400, "every row needs at least one prompt token")  # else attention sees nothing
    temp = tensors["temperature"]
    if temp.dtype != torch.float64 or temp.shape != (1,) or not (math.isfinite(temp.item()) and temp.item() > 0):
        raise BadRequest(400, f"temperature must be a [1] float64 tensor > 0, got {temp.dtype} {list(temp.shape)}")
    return TokenSequences(p_ids, p_mask, c_ids, c_mask), temp.item()


def encode_response(logprobs: torch.Tensor) -> bytes:
    return save({"logprobs": logprobs.detach().to("cpu", torch.float32).contiguous()})


def decode_response(body: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """The [N, C] float32 log-probs of a reply; ValueError if the reply is not that."""
    try:
        logprobs = load(body)["logprobs"]
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"the reply is not a safetensors file with `logprobs` ({e})") from None
    if logprobs.dtype != torch.float32 or tuple(logprobs.shape) != tuple(shape):
        raise ValueError(f"the reply holds {logprobs.dtype} {list(logprobs.shape)}, expected float32 {list(shape)}")
    return logprobs
