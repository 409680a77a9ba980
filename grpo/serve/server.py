"""`grpo serve-ref`: serve per-token reference log-probs so the reference model can live on
another device or machine than the policy (set `reference.url` in the training config).

    export GRPO_REF_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    grpo serve-ref --model PATH [--host 127.0.0.1] [--port 8765] [--device cuda:1]

The log-probs are computed by `grpo.logprobs.batch_logprobs`, the same code the trainer runs
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
import hmac
import ipaddress
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from grpo import models
from grpo.config import ModelConfig
from grpo.logprobs import batch_logprobs
from grpo.serve.protocol import (
    HEALTH_PATH,
    LOGPROBS_PATH,
    BadRequest,
    Limits,
    decode_request,
    encode_response,
)

log = logging.getLogger("grpo.serve")
DEFAULT_LIMITS = Limits()  # frozen, so a safe shared default


def make_app(model: torch.nn.Module, token: str, limits: Limits = DEFAULT_LIMITS,
             micro_batch_size: int = 16) -> Starlette:
    """The ASGI app serving `model` (frozen, eval mode) to holders of `token`."""
    if not token:
        raise ValueError("the reference server needs a non-empty bearer token")
    device = next(model.parameters()).device
    vocab_size = model.get_input_embeddings().num_embeddings
    expected = f"Bearer {token}".encode()
    # One dedicated thread runs every forward: requests queue for the model instead of
    # competing for its memory, and on CPU torch keeps one OpenMP team (a fresh pool thread
    # per request made a 10 ms forward take 100s of ms on a busy 2-core machine).
    forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-ref-forward")

    def compute(batch, temperature: float) -> torch.Tensor:
        return batch_logprobs(model, batch, micro_batch_size, device, temperature)

    async def logprobs(request: Request) -> Response:
        # Headers are latin-1 on the wire; compare bytes in constant time.
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            body = await _read_body(request, limits.max_body_bytes)
            batch, temperature = decode_request(body, limits, vocab_size)
        except BadRequest as e:
            return _error(e.status, str(e))
        except ClientDisconnect:  # gone mid-body (or cut off by the read deadline): nobody to answer
            return Response(status_code=400)
        try:
            result = await asyncio.get_running_loop().run_in_executor(forward_thread, compute, batch, temperature)
        except Exception as e:  # noqa: BLE001 - one failed forward must not end the server
            log.exception("reference forward failed")
            return _error(500, f"the reference forward failed: {type(e).__name__}: {e}")
        return Response(encode_response(result), media_type="application/octet-stream")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "limits": limits.as_dict()})

    return Starlette(routes=[Route(LOGPROBS_PATH, logprobs, methods=["POST"]),
                             Route(HEALTH_PATH, health, methods=["GET"])])


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed max_bytes (before it is all read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"body of {declared} bytes is over the server's max_body_bytes={max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"body is over the server's max_body_bytes={max_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_deadline_protocol(read_timeout: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for reading each request.

    The clock starts when the connection opens and again when a response completes; if the
    next request's headers and body have not all arrived read_timeout seconds later, the
    connection is closed (the handler then sees a disconnect). Once a request is read, its
    forward may take as long as it takes."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReadDeadlineH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_read_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_read_deadline()

        def _arm_read_deadline(self) -> None:
            if getattr(self, "read_deadline", None) is not None:
                self.read_deadline.cancel()
            self.read_deadline = self.loop.call_later(read_timeout, self._read_deadline_passed, self.cycle)

        def _read_deadline_passed(self, cycle_before) -> None:
            cycle = self.cycle
            if cycle is not cycle_before and cycle is not None and not cycle.more_body:
                return  # this request arrived whole in time
            if not self.transport.is_closing():
                log.info("closing a connection from %s: no whole request within %g s", self.client, read_timeout)
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if getattr(self, "read_deadline", None) is not None:
                self.read_deadline.cancel()
            super().connection_lost(exc)

    return ReadDeadlineH11Protocol


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 8765, *, device: str = "auto",
          dtype: str = "auto", token_env: str = "GRPO_REF_TOKEN", micro_batch_size: int = 16,
          limits: Limits = DEFAULT_LIMITS, log_level: str = "info", read_timeout: float = 30.0,
          max_connections: int = 64) -> None:
    """Load the model and serve until interrupted. ValueError when the token is not set."""
    import uvicorn

    token = os.environ.get(token_env, "")
    if not token:  # checked before the model load, so the mistake costs a second
        raise ValueError(f"set the bearer token in the environment variable {token_env} "
                         "(the trainer reads it from reference.token_env); the server never runs without one")
    model = models.load_frozen(ModelConfig(path=model_path, device=device, dtype=dtype))
    if not is_loopback(host):
        print(f"grpo serve-ref: warning: listening on {host}: plain HTTP, the token and tensors travel "
              "unencrypted; prefer an SSH tunnel or a private network", file=sys.stderr)
    uvicorn.run(make_app(model, token, limits, micro_batch_size), host=host, port=port, log_level=log_level,
                http=read_deadline_protocol(read_timeout), limit_concurrency=max_connections)


def main(argv: list[str]) -> int:
    d = DEFAULT_LIMITS
    parser = argparse.ArgumentParser(prog="grpo serve-ref", description="serve reference log-probs over HTTP")
    parser.add_argument("--model", default=None, help="HF model directory or .gguf file (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--token-env", default="GRPO_REF_TOKEN", help="environment variable with the bearer token")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="rows per forward pass")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    parser.add_argument("--max-rows", type=int, default=d.max_rows)
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help="cap on rows * (prompt + completion)")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="seconds a request (headers and body) may take to arrive; slower clients are cut off")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="open connections at most; more get 503 (bounds memory at about this * max-body-bytes)")
    ns = parser.parse_args(argv)
    for name in ("port", "micro_batch_size", "max_body_bytes", "max_rows", "max_tokens", "max_connections"):
        if getattr(ns, name) < (0 if name == "port" else 1):
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(ns, name)} is invalid")
    if not ns.read_timeout > 0:
        raise ValueError(f"--read-timeout = {ns.read_timeout} is invalid: expected seconds > 0")
    serve(ns.model, ns.host, ns.port, device=ns.device, dtype=ns.dtype, token_env=ns.token_env,
          micro_batch_size=ns.micro_batch_size, limits=Limits(ns.max_body_bytes, ns.max_rows, ns.max_tokens),
          read_timeout=ns.read_timeout, max_connections=ns.max_connections)
    return 0
