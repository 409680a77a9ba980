"""`grpo serve-ref`: serve per-token reference log-probs so the reference model can live on
another device or machine than the policy (set `reference.url` in the training config).

    export GRPO_REF_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    grpo serve-ref --model PATH [--host 127.0.0.1] [--port 8765] [--device cuda:1]

The log-probs are computed by `grpo.training.logprobs.batch_logprobs`, the same code the trainer runs
for a local reference, so remote and local agree to float precision. Safety: the server will
not start without a bearer token (compared in constant time); it binds loopback unless told
otherwise; bodies, rows and tokens per request are capped; a bad request gets a 4xx and the
server keeps serving. Requests are served one forward at a time, on one thread: the model is
one device's worth of memory, and interleaved forwards would only compete for it.
Under load: connections are read concurrently (asyncio), so a slow client never blocks the
others; a request must arrive whole (headers and body) within --read-timeout seconds of its
connection being ready for it, or the connection is closed (a client sending a byte at a time,
or one that stalls, is cut off; uvicorn alone has no such limit); at most --max-connections
are open at once (more get 503, which RemoteReference retries), which also bounds memory at
about max_connections * max_body_bytes. A client that disconnects mid-request is dropped
quietly. bench/serve_load.py measures all of this (bench/RESULTS.md).
Departure from simple_GRPO's ref_server: that one unpickles request bodies (remote code
execution for anyone who can reach the port) and has no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from grpo.compute import models
from grpo.compute.dtypes import DTYPE_NAMES
from grpo.config import ModelConfig
from grpo.serve.common import (
    BadRequest,
    BearerCheck,
    add_limit_arguments,
    check_positive,
    error,
    read_body,
    require_token,
    run_app,
)
from grpo.serve.protocol import HEALTH_PATH, LOGPROBS_PATH, Limits, decode_request, encode_response
from grpo.training.logprobs import batch_logprobs

log = logging.getLogger("grpo.serve")
DEFAULT_LIMITS = Limits()  # frozen, so a safe shared default


def make_app(model: torch.nn.Module, token: str, limits: Limits = DEFAULT_LIMITS,
             micro_batch_size: int = 16) -> Starlette:
    """The ASGI app serving `model` (frozen, eval mode) to holders of `token`."""
    unauthorized = BearerCheck(token)
    device = next(model.parameters()).device
    vocab_size = model.get_input_embeddings().num_embeddings
    # One dedicated thread runs every forward: requests queue for the model instead of
    # competing for its memory, and on CPU torch keeps one OpenMP team (a fresh pool thread
    # per request made a forward an order of magnitude slower on a busy 2-core machine).
    forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-ref-forward")

    def compute(batch, temperature: float) -> torch.Tensor:
        return batch_logprobs(model, batch, micro_batch_size, device, temperature)

    async def logprobs(request: Request) -> Response:
        if (refusal := unauthorized(request)) is not None:
            return refusal
        try:
            body = await read_body(request, limits.max_body_bytes)
            batch, temperature = decode_request(body, limits, vocab_size)
        except BadRequest as e:
            return error(e.status, str(e))
        except ClientDisconnect:  # gone mid-body (or cut off by the read deadline): nobody to answer
            return Response(status_code=400)
        try:
            result = await asyncio.get_running_loop().run_in_executor(forward_thread, compute, batch, temperature)
        except Exception as e:  # noqa: BLE001 - one failed forward must not end the server
            log.exception("reference forward failed")
            return error(500, f"the reference forward failed: {type(e).__name__}: {e}")
        return Response(encode_response(result), media_type="application/octet-stream")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "limits": limits.as_dict(), "vocab_size": vocab_size})

    return Starlette(routes=[Route(LOGPROBS_PATH, logprobs, methods=["POST"]),
                             Route(HEALTH_PATH, health, methods=["GET"])])


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 8765, *, device: str = "auto",
          dtype: str = "auto", token_env: str = "GRPO_REF_TOKEN", micro_batch_size: int = 16,
          limits: Limits = DEFAULT_LIMITS, log_level: str = "info", read_timeout: float = 30.0,
          max_connections: int = 64) -> None:
    """Load the model and serve until interrupted. ValueError when the token is not set."""
    token = require_token(token_env, "reference.token_env")
    model = models.load_frozen(ModelConfig(path=model_path, device=device, dtype=dtype))
    run_app(make_app(model, token, limits, micro_batch_size), host, port, name="serve-ref", log_level=log_level,
            read_timeout=read_timeout, max_connections=max_connections)


def main(argv: list[str]) -> int:
    d = DEFAULT_LIMITS
    parser = argparse.ArgumentParser(prog="grpo serve-ref", description="serve reference log-probs over HTTP")
    parser.add_argument("--model", default=None, help="HF model directory or .gguf file (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--token-env", default="GRPO_REF_TOKEN", help="environment variable with the bearer token")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="rows per forward pass")
    add_limit_arguments(parser, d)
    ns = parser.parse_args(argv)
    check_positive(ns, ("port", "micro_batch_size", "max_body_bytes", "max_rows", "max_tokens", "max_connections"))
    serve(ns.model, ns.host, ns.port, device=ns.device, dtype=ns.dtype, token_env=ns.token_env,
          micro_batch_size=ns.micro_batch_size, limits=Limits(ns.max_body_bytes, ns.max_rows, ns.max_tokens),
          read_timeout=ns.read_timeout, max_connections=ns.max_connections)
    return 0
