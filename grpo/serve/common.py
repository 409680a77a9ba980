"""What the two servers (`grpo serve-ref`, `grpo serve-rollout`) and their clients share.

Both serve a model over plain HTTP to holders of a bearer token: the token is required to
start (read from an environment variable, never a command line where `ps` shows it) and
compared in constant time; the server binds loopback unless told otherwise; a body over the
size limit is refused (413) before it is all read; a request must arrive whole within a read
deadline; open connections are capped (503 beyond). A bad request gets a 4xx with a JSON
`{"error": ...}` and the server keeps serving.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import sys
import urllib.error
from typing import Any

log = logging.getLogger("grpo.serve")


class BadRequest(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def require_token(token_env: str, client_field: str) -> str:
    """The bearer token from `token_env`; ValueError when it is empty (checked before any
    model loads, so the mistake costs a second). client_field: where the trainer reads it."""
    token = os.environ.get(token_env, "")
    if not token:
        raise ValueError(f"set the bearer token in the environment variable {token_env} "
                         f"(the trainer reads it from {client_field}); the server never runs without one")
    return token


class BearerCheck:
    """`check(request)` -> None, or the 401 response for a missing or wrong token."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the server needs a non-empty bearer token")
        self.expected = f"Bearer {token}".encode()

    def __call__(self, request: Any) -> Any:
        # Headers are latin-1 on the wire; compare bytes in constant time.
        given = request.headers.get("authorization", "").encode("latin-1")
        if hmac.compare_digest(given, self.expected):
            return None
        return error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


async def read_body(request: Any, max_bytes: int) -> bytes:
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


def json_object(raw: bytes, what: str) -> dict:
    """`raw` parsed as a JSON object; BadRequest (400) saying that `what` is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"{what} is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadRequest(400, f"{what} must be a JSON object")
    return data


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_deadline_protocol(read_timeout: float, long_paths: tuple[str, ...] = (), token: str = "") -> type:
    """uvicorn's h11 protocol, plus a deadline for reading each request.

    The clock starts when the connection opens and again when a response completes; if the
    next request's headers and body have not all arrived read_timeout seconds later, the
    connection is closed (the handler then sees a disconnect). Once a request is read, its
    work may take as long as it takes. A request to one of long_paths that carries the bearer
    `token` (a weight push: the whole model, whose size the deadline cannot know) gets more
    time, one read_timeout after another."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    expected = f"Bearer {token}".encode("latin-1") if token else None

    def trusted(cycle) -> bool:
        if expected is None or cycle is None or cycle.scope.get("path") not in long_paths:
            return False
        given = dict(cycle.scope.get("headers", [])).get(b"authorization", b"")
        return hmac.compare_digest(given, expected)

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
            if trusted(cycle):
                self._arm_read_deadline()
                return
            if not self.transport.is_closing():
                log.info("closing a connection from %s: no whole request within %g s", self.client, read_timeout)
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if getattr(self, "read_deadline", None) is not None:
                self.read_deadline.cancel()
            super().connection_lost(exc)

    return ReadDeadlineH11Protocol


def run_app(app: Any, host: str, port: int, *, name: str, log_level: str = "info", read_timeout: float = 30.0,
            max_connections: int = 64, long_paths: tuple[str, ...] = (), token: str = "") -> None:
    """Serve `app` with uvicorn until interrupted (a warning when it listens beyond loopback)."""
    import uvicorn

    if not is_loopback(host):
        print(f"grpo {name}: warning: listening on {host}: plain HTTP, the token and tensors travel "
              "unencrypted; prefer an SSH tunnel or a private network", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=read_deadline_protocol(read_timeout, long_paths, token),
                limit_concurrency=max_connections)


def error_text(e: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, or the raw start of the body."""
    try:
        raw = e.read()
    except OSError:
        return e.reason
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace") or str(e.reason)


def add_limit_arguments(parser: Any, limits: Any, read_timeout: float = 30.0) -> None:
    """--max-body-bytes, --max-rows, --max-tokens, --read-timeout, --max-connections."""
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)
    parser.add_argument("--max-rows", type=int, default=limits.max_rows)
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens,
                        help="cap on the tokens of one request (rows * (prompt + completion))")
    parser.add_argument("--read-timeout", type=float, default=read_timeout,
                        help="seconds a request (headers and body) may take to arrive; slower clients are cut off")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="open connections at most; more get 503 (bounds memory at about this * max-body-bytes)")


def check_positive(ns: Any, names: tuple[str, ...]) -> None:
    """Command-line counts that must be >= 1 (the port >= 0), and a read timeout > 0."""
    for name in names:
        if getattr(ns, name) < (0 if name == "port" else 1):
            raise ValueError(f"--{name.replace('_', '-')} = {getattr(ns, name)} is invalid")
    if not ns.read_timeout > 0:
        raise ValueError(f"--read-timeout = {ns.read_timeout} is invalid: expected seconds > 0")
