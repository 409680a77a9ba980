"""`grpo serve-rollout`: generation in a process (and on devices) of its own, so that a run can
generate on some GPUs while it trains on others (rollout.engine=server, rollout.url).

    export GRPO_ROLLOUT_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    grpo serve-rollout --model PATH [--host 127.0.0.1] [--port 8766] [--device cuda:1] [--engine auto]

The generation is the project's own engines (grpo.rollout.build_engine's table): vLLM where it
is installed, shared_prefix otherwise (`--engine` chooses, like rollout.engine=auto), so the
server's samples are those the same engine gives in the training process. The trainer sends
prompts as token ids (protocol in rollout_protocol.py) and gets trajectories back; after each
optimizer step it pushes the new weights in one authenticated HTTP request (grpo.serve.weights;
with --weight-transport nccl, announced over HTTP and broadcast GPU to GPU, grpo.serve.nccl),
and the server swaps them in between two generations. Safety as `grpo serve-ref`
(grpo.serve.common): no start without a bearer token, loopback unless told, capped requests,
4xx for bad ones while it keeps serving; by default nothing but the HTTP port listens.

Threads: one runs every generation (requests queue for the device rather than compete for
it); the event loop reads a push into fresh tensors while a generation may still run, and
another thread then takes the weights lock, which a generation holds from start to end, to
copy them in. A generation waits while a push of the version it asks for (or a later one) is
arriving, and is refused with 409 when the server then holds an older version (it restarted:
the trainer pushes again). A push that fails midway (the trainer died) changes nothing: the tensors were staged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from grpo.compute.dtypes import DTYPE_NAMES
from grpo.serve.common import (
    BadRequest,
    BearerCheck,
    add_limit_arguments,
    check_positive,
    error,
    is_loopback,
    read_body,
    require_token,
    run_app,
)
from grpo.serve.nccl import (
    SERVER,
    STORE_PATH,
    WeightGroup,
    decode_store,
    loopback_nccl_interface,
    run_store_call,
)
from grpo.serve.rollout_protocol import (
    GENERATE_PATH,
    HEALTH_PATH,
    SESSION_PATH,
    WEIGHTS_PATH,
    Limits,
    decode_generate,
    decode_session,
    decode_weights,
    encode_reply,
)
from grpo.serve.weights import Staging, TensorSpec

log = logging.getLogger("grpo.serve")
DEFAULT_LIMITS = Limits(max_rows=4096, max_tokens=8_000_000)
WEIGHT_TRANSPORTS = ("http", "nccl")


class RolloutService:
    """The engine, the weights it samples from and the group they arrive by (no HTTP here)."""

    def __init__(self, engine: Any, model: torch.nn.Module, *, transport: str = "http", group_timeout: float = 120.0):
        self.engine, self.model, self.transport, self.group_timeout = engine, model, transport, group_timeout
        self.store = dist.HashStore() if transport == "nccl" else None  # in this process's memory: no socket
        self.instance = secrets.token_hex(8)  # a new one at every start: the trainer sees a restart
        self.version = 0  # the model directory's weights until a push
        self.pending = -1  # the version being received, -1 when none
        self.group: WeightGroup | None = None
        self.session = ""
        self.cond = threading.Condition()  # held by a generation from start to end, and by the swap
        self.params = model.state_dict(keep_vars=True)  # tied weights appear under each of their names
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_input_embeddings().num_embeddings

    def generate(self, prompts: list[list[int]], params: Any, min_version: int) -> Any:
        with self.cond:
            # a push at or past the version asked for is arriving: wait for it, even when the
            # weights held are numbered higher (a new trainer starts again from version 0)
            self.cond.wait_for(lambda: self.pending < min_version, timeout=self.group_timeout)
            if self.version < min_version:
                raise BadRequest(409, f"the server holds weights version {self.version}, older than the "
                                      f"{min_version} asked for (restarted?): push the weights again")
            return self.engine.generate_tokens(prompts, params)

    def join(self, session: str) -> None:
        """Join the trainer's weight group for `session` (blocks until it joins too)."""
        self.group, self.session = None, session
        self.group = WeightGroup.join(self.store, session, SERVER, self.device, self.group_timeout)

    def check(self, specs: list[TensorSpec], session: str | None = None) -> None:
        """A push must name this model's tensors with their shapes, and cover every parameter."""
        if session is not None and session != self.session:
            raise BadRequest(409, f"no weight group for session {session!r}: POST {SESSION_PATH} first")
        covered = set()
        for s in specs:
            target = self.params.get(s.name)
            if target is None or tuple(target.shape) != s.shape:
                have = None if target is None else list(target.shape)
                raise BadRequest(400, f"tensor {s.name!r} {list(s.shape)} does not match the served model ({have})")
            covered.add(id(target))
        missing = [n for n, p in self.params.items() if id(p) not in covered and isinstance(p, torch.nn.Parameter)]
        if missing:
            raise BadRequest(400, f"the push leaves out {len(missing)} parameters, e.g. {missing[0]!r}")

    def begin(self, version: int) -> None:
        """A push of `version` is arriving: generations that ask for it wait for it."""
        with self.cond:
            self.pending = version

    def abandon(self) -> None:
        """The push failed midway (the trainer died, a bad body): nothing changed."""
        with self.cond:
            self.pending = -1
            self.cond.notify_all()

    def receive(self, session: str, version: int, specs: list[TensorSpec]) -> None:
        """NCCL: receive the announced tensors over the session's group, then swap them in."""
        self.begin(version)
        try:
            tensors = self.group.receive(specs)  # staged: a push that fails midway changes nothing
        except Exception:
            log.exception("weight push for version %d failed; keeping version %d", version, self.version)
            self.group = None
            self.abandon()
            raise
        self.swap(version, specs, tensors)

    def swap(self, version: int, specs: list[TensorSpec], tensors: list[torch.Tensor]) -> None:
        try:
            with self.cond, torch.no_grad():  # between two generations
                for s, t in zip(specs, tensors, strict=True):
                    self.params[s.name].copy_(t)
                self.engine.sync_weights(self.model, version)
                self.version = version
        except Exception:
            log.exception("swapping in the weights of version %d failed; keeping version %d", version, self.version)
            raise
        finally:
            self.abandon()  # nothing pending any more

    def health(self, limits: Limits) -> dict:
        return {"status": "ok", "instance": self.instance, "version": self.version,
                "weight_transport": self.transport, "engine": type(self.engine).__name__, "limits": limits.as_dict()}


def make_app(service: RolloutService, token: str, limits: Limits = DEFAULT_LIMITS) -> Starlette:
    unauthorized = BearerCheck(token)
    generation = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-rollout-generate")
    weights = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-rollout-weights")
    store_calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpo-rollout-store")  # some block

    async def body_of(request: Request) -> bytes | Response:
        if (refusal := unauthorized(request)) is not None:
            return refusal
        try:
            return await read_body(request, limits.max_body_bytes)
        except BadRequest as e:
            return error(e.status, str(e))
        except ClientDisconnect:
            return Response(status_code=400)

    async def generate(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        try:
            prompts, params, min_version = decode_generate(body, limits, service.vocab_size)
            result = await asyncio.get_running_loop().run_in_executor(generation, service.generate, prompts,
                                                                      params, min_version)
        except BadRequest as e:
            return error(e.status, str(e))
        except ValueError as e:  # the engine's own checks: a prompt over the context, ...
            return error(400, str(e))
        except Exception as e:  # noqa: BLE001 - one failed generation must not end the server
            log.exception("generation failed")
            return error(500, f"generation failed: {type(e).__name__}: {e}")
        return Response(encode_reply(result, service.instance), media_type="application/octet-stream")

    async def push(request: Request) -> Response:
        """The weights, streamed into a staging buffer once their header matched the model."""
        if (refusal := unauthorized(request)) is not None:
            return refusal
        staging, began = Staging(lambda version, specs: service.check(specs)), False
        try:
            async for chunk in request.stream():
                staging.feed(chunk)
                if staging.version is not None and not began:
                    service.begin(staging.version)
                    began = True
            tensors = staging.tensors()
        except (BadRequest, ClientDisconnect) as e:
            if began:
                service.abandon()
            return error(e.status, str(e)) if isinstance(e, BadRequest) else Response(status_code=400)
        weights.submit(service.swap, staging.version, staging.specs, tensors)
        return JSONResponse({"instance": service.instance, "bytes": staging.filled})

    async def session(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        try:
            name = decode_session(body)
        except BadRequest as e:
            return error(e.status, str(e))
        weights.submit(service.join, name)  # completes when the trainer joins too
        return JSONResponse({"instance": service.instance})

    async def announce(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        try:
            name, version, specs = decode_weights(body)
            service.check(specs, name)
        except BadRequest as e:
            return error(e.status, str(e))
        weights.submit(service.receive, name, version, specs)  # the trainer broadcasts them now
        return JSONResponse({"instance": service.instance, "bytes": sum(s.num_bytes for s in specs)})

    async def store(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        try:
            call = decode_store(body)
            reply = await asyncio.get_running_loop().run_in_executor(store_calls, run_store_call, service.store,
                                                                     call, service.group_timeout)
        except BadRequest as e:
            return error(e.status, str(e))
        return JSONResponse(reply)

    async def health(request: Request) -> Response:
        return JSONResponse(service.health(limits))

    routes = [Route(GENERATE_PATH, generate, methods=["POST"]), Route(HEALTH_PATH, health, methods=["GET"])]
    if service.transport == "nccl":
        routes += [Route(WEIGHTS_PATH, announce, methods=["POST"]), Route(SESSION_PATH, session, methods=["POST"]),
                   Route(STORE_PATH, store, methods=["POST"])]
    else:
        routes.append(Route(WEIGHTS_PATH, push, methods=["POST"]))
    return Starlette(routes=routes)


def build_service(model_path: str | None, *, engine: str = "auto", device: str = "auto", dtype: str = "auto",
                  host: str = "127.0.0.1", weight_transport: str = "http", engine_options: dict | None = None,
                  group_timeout: float = 120.0) -> RolloutService:
    """Load the model and its engine."""
    from grpo.compute import models
    from grpo.config import ModelConfig, RolloutConfig
    from grpo.rollout import IN_PROCESS_ENGINES, engine_class, engine_name

    name = engine_name(RolloutConfig(engine=engine))
    if name not in IN_PROCESS_ENGINES:
        raise ValueError(f"--engine = {engine!r} is invalid; allowed: auto, {', '.join(IN_PROCESS_ENGINES)}")
    if weight_transport not in WEIGHT_TRANSPORTS:
        raise ValueError(f"--weight-transport = {weight_transport!r} is invalid; allowed: {', '.join(WEIGHT_TRANSPORTS)}")
    model = models.load_frozen(ModelConfig(path=model_path, device=device, dtype=dtype))
    if weight_transport == "nccl":
        if next(model.parameters()).device.type != "cuda":
            raise ValueError("--weight-transport nccl needs the model on a GPU (--device cuda...); http works anywhere")
        if is_loopback(host):
            loopback_nccl_interface()
    tokenizer = models.load_tokenizer(models.resolve_model_dir(model_path))
    # vllm detokenizes only for stop strings; a trainer's request may carry them (episodes always do)
    options = {"stop_strings": True, **(engine_options or {})} if name == "vllm" else {}
    gen = engine_class(name)(model, tokenizer, **options)
    return RolloutService(gen, model, transport=weight_transport, group_timeout=group_timeout)


def main(argv: list[str]) -> int:
    from grpo.rollout import IN_PROCESS_ENGINES

    d = DEFAULT_LIMITS
    parser = argparse.ArgumentParser(prog="grpo serve-rollout", description="generate trajectories over HTTP")
    parser.add_argument("--model", default=None, help="HF model directory or .gguf file (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--weight-transport", default="http", choices=WEIGHT_TRANSPORTS,
                        help="how the trainer's weights arrive: http (the authenticated port, nothing else listens) "
                        "or nccl (GPU to GPU; NCCL's own unauthenticated socket listens too, see docs/servers.md)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--engine", default="auto", help="auto (vllm where installed, else shared_prefix), "
                        f"or one of {', '.join(IN_PROCESS_ENGINES)}")
    parser.add_argument("--vllm", default="{}", help="JSON keyword arguments for vllm.LLM (engine vllm), e.g. "
                        "'{\"tensor_parallel_size\": 2, \"gpu_memory_utilization\": 0.9}'")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the server's sampling (requests without a seed draw from it, in arrival order)")
    parser.add_argument("--token-env", default="GRPO_ROLLOUT_TOKEN", help="environment variable with the bearer token")
    parser.add_argument("--group-timeout", type=float, default=120.0,
                        help="seconds to wait for the trainer's side of a weight group or push")
    add_limit_arguments(parser, d, read_timeout=60.0)
    ns = parser.parse_args(argv)
    check_positive(ns, ("port", "max_body_bytes", "max_rows", "max_tokens", "max_connections"))
    try:
        vllm_options = json.loads(ns.vllm)
    except ValueError as e:
        raise ValueError(f"--vllm = {ns.vllm!r} is not JSON: {e}") from None
    token = require_token(ns.token_env, "rollout.token_env")
    torch.manual_seed(ns.seed)  # a lockstep run through a fresh server samples reproducibly
    service = build_service(ns.model, engine=ns.engine, device=ns.device, dtype=ns.dtype, host=ns.host,
                            weight_transport=ns.weight_transport, engine_options=vllm_options,
                            group_timeout=ns.group_timeout)
    limits = Limits(ns.max_body_bytes, ns.max_rows, ns.max_tokens)
    run_app(make_app(service, token, limits), ns.host, ns.port, name="serve-rollout", read_timeout=ns.read_timeout,
            max_connections=ns.max_connections, long_paths=(WEIGHTS_PATH,), token=token)
    return 0
