"""The rollout server's wire format: safetensors (tensors, plus JSON in its metadata) and
JSON, never pickle. Every request is checked here before it reaches the engine: each field's
type and range, with a 4xx naming the field (tests/serve/test_fuzz.py throws mutated bodies
at these decoders).

    POST /v1/generate     Authorization: Bearer <token>
      safetensors {prompt_ids [sum of lengths] int64, prompt_lengths [B] int64}, the prompts'
      token ids one after another; metadata "request": JSON {group_size, temperature, top_p,
      top_k, max_new_tokens, seed, stop, min_version, group_sizes}; group_sizes (optional, null
      when left out): each prompt's own number of completions (rollout.group_policy adaptive)
      200: safetensors {completion_ids, completion_mask, loss_mask [N, C] int64,
           sampler_logprobs [N, C] float32, policy_version [N] int64}, N = B * group_size (or
           the sum of group_sizes) in group order; metadata "reply": JSON {completions,
           finish_reasons, instance}
      409: the server's weights are older than min_version (it restarted: push them again)
    POST /v1/weights      the weights as a streamed safetensors body (grpo.serve.weights):
      received into fresh tensors, then swapped in between two generations; later samples
      carry the push's version
    with --weight-transport nccl instead (grpo.serve.nccl):
    POST /v1/store        JSON {op, key, value}: a call on the server's rendezvous store
    POST /v1/session      JSON {"session": "<hex>"}: join a weight group under that name
    POST /v1/weights      JSON {"session", "version", "tensors": [{name, shape, dtype}, ...]}:
      receive these tensors over the session's NCCL group
    GET /health -> JSON {status, instance, version, weight_transport, limits} (no token needed)

`instance` is a random id drawn when the server starts: a trainer that sees it change knows
the server restarted and lost the weights it was sent.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict
from typing import Any

import torch
from safetensors.torch import load, save

from grpo.rollout.base import SamplingParams
from grpo.serve.common import BadRequest, json_object
from grpo.serve.protocol import HEALTH_PATH, Limits
from grpo.serve.weights import DTYPES, TensorSpec

GENERATE_PATH, SESSION_PATH, WEIGHTS_PATH = "/v1/generate", "/v1/session", "/v1/weights"
__all__ = ["GENERATE_PATH", "HEALTH_PATH", "SESSION_PATH", "WEIGHTS_PATH", "Limits"]
REPLY_TENSORS = {"completion_ids": torch.int64, "completion_mask": torch.int64, "loss_mask": torch.int64,
                 "sampler_logprobs": torch.float32, "policy_version": torch.int64}


def metadata(body: bytes) -> dict[str, str]:
    """A safetensors file's string metadata (its JSON header's `__metadata__`)."""
    (size,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + size])
    return header.get("__metadata__") or {}


def _parse(body: bytes, key: str) -> tuple[dict[str, torch.Tensor], Any]:
    try:
        tensors = load(body)
        return tensors, json.loads(metadata(body)[key])
    except Exception as e:  # noqa: BLE001 - the parsers' error types are not public API
        raise BadRequest(400, f"the body is not a safetensors file with `{key}` metadata ({type(e).__name__}: {e})") from None


def encode_generate(prompts: list[list[int]], params: SamplingParams, min_version: int) -> bytes:
    flat = torch.tensor([i for p in prompts for i in p], dtype=torch.int64)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    request = {**asdict(params), "stop": list(params.stop), "min_version": min_version,
               "group_sizes": None if params.group_sizes is None else list(params.group_sizes)}
    return save({"prompt_ids": flat, "prompt_lengths": lengths}, metadata={"request": json.dumps(request)})


def decode_generate(body: bytes, limits: Limits, vocab_size: int) -> tuple[list[list[int]], SamplingParams, int]:
    """(prompts as token ids, sampling params, min_version); BadRequest naming what is wrong."""
    tensors, request = _parse(body, "request")
    flat, lengths = tensors.get("prompt_ids"), tensors.get("prompt_lengths")
    if flat is None or lengths is None or flat.dtype != torch.int64 or lengths.dtype != torch.int64 \
            or flat.dim() != 1 or lengths.dim() != 1:
        raise BadRequest(400, "prompt_ids and prompt_lengths must be 1-D int64 tensors")
    params, min_version = _sampling(request, vocab_size)
    B = lengths.shape[0]
    # max first: a sum of huge lengths would wrap around in int64 and match
    if B < 1 or (lengths < 1).any() or int(lengths.max()) > flat.shape[0] or int(lengths.sum()) != flat.shape[0]:
        raise BadRequest(400, "every prompt needs >= 1 token and prompt_lengths must sum to len(prompt_ids)")
    if params.group_sizes is not None and len(params.group_sizes) != B:
        raise BadRequest(400, f"request field `group_sizes` holds {len(params.group_sizes)} sizes for {B} prompts: "
                              "expected one per prompt")
    rows = sum(params.sizes(B))
    tokens = rows * (int(lengths.max()) + params.max_new_tokens)
    if rows > limits.max_rows or tokens > limits.max_tokens:
        raise BadRequest(413, f"{rows} rows and up to {tokens} tokens are over the server's limits "
                              f"(max_rows={limits.max_rows}, max_tokens={limits.max_tokens})")
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise BadRequest(400, f"prompt_ids holds ids outside [0, {vocab_size}) (another tokenizer?)")
    return [p.tolist() for p in flat.split(lengths.tolist())], params, min_version


MAX_SEED = 2**62  # vLLM gives the G samples seeds seed, seed + 1, ...: room to add
MAX_STOPS, MAX_STOP_CHARS = 64, 256


def _sampling(request: Any, vocab_size: int) -> tuple[SamplingParams, int]:
    """The request's sampling fields, each checked for type and range (JSON allows NaN and
    Infinity, Python's bool is an int): a BadRequest names the first field that is wrong."""
    if not isinstance(request, dict):
        raise BadRequest(400, "the request metadata must be a JSON object")
    checks = {
        "group_size": (_integer(1, 2**20), "an integer >= 1"),
        "temperature": (_number(0, 1e6), "a finite number >= 0"),
        "top_p": (lambda v: _number(0, 1)(v) and v > 0, "a number in (0, 1]"),
        "top_k": (_integer(0, vocab_size), f"an integer in [0, {vocab_size}] (0 = off)"),
        "max_new_tokens": (_integer(1, 2**31), "an integer >= 1"),
        "seed": (lambda v: v is None or _integer(0, MAX_SEED)(v), f"null or an integer in [0, {MAX_SEED}]"),
        "stop": (lambda v: isinstance(v, list) and len(v) <= MAX_STOPS
                 and all(isinstance(x, str) and 0 < len(x) <= MAX_STOP_CHARS for x in v),
                 f"a list of at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters"),
        "min_version": (_integer(0, 2**62), "an integer >= 0"),
    }
    for field, (ok, allowed) in checks.items():
        if field not in request:
            raise BadRequest(400, f"request field `{field}` is missing: expected {allowed}")
        if not ok(request[field]):
            raise BadRequest(400, f"request field `{field}` = {str(request[field])[:100]} is invalid: expected {allowed}")
    sizes = request.get("group_sizes")  # optional: a client from before unequal groups leaves it out
    if sizes is not None and not (isinstance(sizes, list) and 1 <= len(sizes) <= 2**20
                                  and all(_integer(1, 2**20)(n) for n in sizes)):
        raise BadRequest(400, f"request field `group_sizes` = {str(sizes)[:100]} is invalid: expected null or a "
                              "list of integers >= 1, one per prompt")
    fields = ("group_size", "temperature", "top_p", "top_k", "max_new_tokens", "seed")
    params = SamplingParams(**{k: request[k] for k in fields}, stop=tuple(request["stop"]),
                            group_sizes=None if sizes is None else tuple(sizes))
    return params, request["min_version"]


def _integer(low: int, high: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(low: float, high: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def encode_reply(trajectory: Any, instance: str) -> bytes:
    tensors = {name: getattr(trajectory, name).detach().to("cpu", dtype).contiguous()
               for name, dtype in REPLY_TENSORS.items()}
    reply = {"completions": [str(c) for c in trajectory.completions],
             "finish_reasons": list(trajectory.finish_reasons), "instance": instance}
    return save(tensors, metadata={"reply": json.dumps(reply)})


def decode_reply(body: bytes, num_rows: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The reply's tensors and JSON; ValueError when it is not what was asked for."""
    try:
        tensors, reply = _parse(body, "reply")
    except BadRequest as e:
        raise ValueError(str(e)) from None
    for name, dtype in REPLY_TENSORS.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or t.shape[0] != num_rows:
            raise ValueError(f"the reply's {name} is not {dtype} with {num_rows} rows")
    if len(reply.get("completions", [])) != num_rows or len(reply.get("finish_reasons", [])) != num_rows:
        raise ValueError(f"the reply does not hold {num_rows} completions and finish reasons")
    return tensors, reply


def decode_session(body: bytes) -> str:
    session = json_object(body, "the body").get("session")
    if not (isinstance(session, str) and 1 <= len(session) <= 64 and session.isalnum()):
        raise BadRequest(400, "session must be 1-64 letters and digits")
    return session


def decode_weights(body: bytes) -> tuple[str, int, list[TensorSpec]]:
    """(session, version, tensor specs) of a weight announcement."""
    data = json_object(body, "the body")
    session = decode_session(body)
    version, specs = data.get("version"), data.get("tensors")
    if not _integer(0, 2**62)(version) or not isinstance(specs, list) or not specs:
        raise BadRequest(400, "version must be an integer >= 0 and tensors a non-empty list")
    out = []
    for s in specs:
        ok = (isinstance(s, dict) and isinstance(s.get("name"), str) and s.get("dtype") in DTYPES
              and isinstance(s.get("shape"), list) and len(s["shape"]) <= 8 and all(_integer(0, 2**48)(n) for n in s["shape"]))
        if not ok:
            raise BadRequest(400, f"bad tensor spec {str(s)[:200]}: expected {{name, shape, dtype in "
                                  f"{', '.join(DTYPES)}}}")
        out.append(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]))
    return session, version, out

