"""Generation on a `grpo serve-rollout` server (rollout.engine=server, rollout.url).

The trainer's side of grpo.serve.rollout_server: `generate` / `generate_tokens` send the
prompts as token ids and build the Trajectory from the reply (ids exactly as the server's
engine sampled them, its sampler log-probs, finish reasons, the policy version it sampled
with); `sync_weights` announces the policy's weights over HTTP and broadcasts them in the
request body (grpo.serve.weights; LoRA merged in, as for vLLM), or, from a server started
with --weight-transport nccl, broadcasts them in the NCCL group of grpo.serve.nccl. Episodes run through
it unchanged: grpo.episodes.turns drives `generate_tokens` turn by turn.

Recovery: every reply names the server instance that made it. When the server is gone
(connection refused or reset, a timeout, a 5xx), restarted (a new instance, or 409: its
weights are older than those pushed), the engine waits for it (GET /health, up to
rollout.server_timeout seconds, then a RolloutServerError naming the URL and the last
failure), joins a new weight group, pushes the current weights and asks again; a reply from
an instance that never got our weights is thrown away. Only the thread that built the
engine pushes (it is the one that changes the weights: the trainer's loop); another thread
(the asynchronous rollout's) that finds the server restarted waits until the loop has
pushed (grpo.rollout.pipeline calls `refresh` while it waits).

Under torchrun every rank sends its own prompts to the server; rank 0 alone joins the
weight group and pushes (the ranks hold the same weights after each step; with fsdp every
rank takes part in gathering them), and the other ranks ask for the version their own
trainer reached, which the server makes them wait for (409 while it is not announced yet:
they retry until rollout.server_timeout).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch
import torch.distributed as dist

from grpo.rollout.base import SamplingParams, Trajectory
from grpo.rollout.transformers_engine import TransformersEngine
from grpo.rollout.weights import unique_weights
from grpo.serve.common import error_text
from grpo.serve.nccl import TRAINER, HttpStore, WeightGroup
from grpo.serve.rollout_protocol import (
    GENERATE_PATH,
    HEALTH_PATH,
    SESSION_PATH,
    WEIGHTS_PATH,
    decode_reply,
    encode_generate,
)
from grpo.serve.weights import body_chunks, body_size, spec_of

log = logging.getLogger("grpo.serve")


class RolloutServerError(ValueError):
    """The rollout server refused a request or stayed unreachable (the user's to fix: start it,
    fix rollout.url or the token), reported by the CLI in one line."""


class _Gone(Exception):
    """The server did not answer (down, restarting) or answered 5xx."""


class _Stale(Exception):
    """The server holds other weights than ours (it restarted): push again."""


class ServerEngine(TransformersEngine):
    """Engine whose generation runs in a `grpo serve-rollout` process; `model` is the policy
    whose weights it pushes (and whose device the trajectories land on)."""

    decodes_with_policy = False

    def __init__(self, model: Any, tokenizer: Any, max_prompt_tokens: int | None = None, *, url: str, token: str,
                 request_timeout: float = 600.0, server_timeout: float = 300.0):
        super().__init__(model, tokenizer, max_prompt_tokens)
        self.url, self.token = url.rstrip("/"), token
        self.request_timeout, self.server_timeout = request_timeout, server_timeout
        self.num_ranks = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.pushes = self.num_ranks == 1 or dist.get_rank() == 0
        self.owner = threading.get_ident()  # the thread that changes the weights, and so pushes them
        self.lock = threading.Condition()
        self.instance: str | None = None  # the server instance holding our weights (None: not pushed yet)
        self.pushed = -1  # the version it holds
        self.transport = "http"  # how the server takes weights (its /health says)
        self.group: WeightGroup | None = None  # nccl: the weight group of the current session
        self.session = ""
        self.push_seconds = self.push_bytes = 0.0  # of the last push
        self.num_pushes = 0
        if self.num_ranks > 1:  # where every rank is (fsdp's gathers are collectives), not in rank 0's first generate
            self.sync_weights(model, 0)

    # ------------------------------------------------------------------ sampling

    def generate_tokens(self, prompts: list[list[int]], params: SamplingParams) -> Trajectory:
        if not prompts:
            raise ValueError("generate_tokens() needs at least one prompt")
        self._check_lengths([len(p) for p in prompts], params.max_new_tokens)
        deadline, last = time.monotonic() + self.server_timeout, ""
        while True:
            try:
                self._ensure_pushed(deadline)
                min_version = self.pushed if self.pushes else self.version
                body = self._post(GENERATE_PATH, encode_generate(prompts, params, min_version),
                                  "application/octet-stream", self.request_timeout)
                tensors, reply = decode_reply(body, sum(params.sizes(len(prompts))))
                if self.pushes and reply["instance"] != self.instance:
                    raise _Stale(f"the reply came from server instance {reply['instance']}, which never got the "
                                 "weights (it restarted)")
                return self._trajectory(prompts, params, tensors, reply)
            except (_Gone, _Stale) as e:
                last = str(e)
                self._lost(isinstance(e, _Stale))
                if time.monotonic() > deadline:
                    raise self._failure(last) from None
                time.sleep(0.2)
            except ValueError as e:
                if isinstance(e, RolloutServerError):
                    raise
                raise RolloutServerError(f"rollout server {self.url}: {e}") from None

    def _trajectory(self, prompts: list[list[int]], params: SamplingParams, tensors: dict, reply: dict) -> Trajectory:
        device = next(self.model.parameters()).device
        P = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (P - len(p)) + p for p in prompts], device=device)  # [B, P]
        mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)  # [B, P]
        completion_mask = tensors["completion_mask"].to(device)  # [N, C]
        return Trajectory(
            prompt_ids=params.repeat(ids),  # each prompt once per completion of its group
            prompt_mask=params.repeat(mask),
            completion_ids=tensors["completion_ids"].to(device).masked_fill(completion_mask == 0, self.pad_id),
            completion_mask=completion_mask,
            loss_mask=tensors["loss_mask"].to(device),
            sampler_logprobs=tensors["sampler_logprobs"],
            policy_version=tensors["policy_version"],
            completions=reply["completions"],
            finish_reasons=reply["finish_reasons"],
        )

    # ------------------------------------------------------------------ weights

    def sync_weights(self, model: Any, version: int) -> None:
        """Push the policy's weights (every rank calls: with fsdp all take part in gathering them)."""
        assert model is self.model, "sync_weights got a different model than the engine's policy"
        self._sync(version)
        if self.num_ranks > 1:  # the others ask only once rank 0 has pushed: a server an earlier run (or the
            dist.barrier()  # model directory) left at this version number must not answer them with its weights

    def _sync(self, version: int) -> None:
        model = self.model
        self.version = version
        if not self.pushes:
            if hasattr(next(model.parameters()), "full_tensor"):
                for _ in unique_weights(model):  # the gathers are collectives: rank 0 needs every rank
                    pass
            return
        deadline = time.monotonic() + self.server_timeout
        try:
            if self.instance is not None:
                self._push()
                return
        except (_Gone, _Stale) as e:
            log.warning("rollout server %s: weight push failed (%s); waiting for it", self.url, e)
            self._lost(True)
        self._ensure_pushed(deadline)

    def refresh(self) -> None:
        """On the pushing thread: push again if another thread found the server restarted."""
        if self.pushes and self.instance is None and threading.get_ident() == self.owner:
            self._ensure_pushed(time.monotonic() + self.server_timeout)

    def _ensure_pushed(self, deadline: float) -> None:
        """The server holds our current weights, or this (non-pushing) thread waited for that."""
        if not self.pushes or (self.instance is not None and self.pushed == self.version):
            return
        if threading.get_ident() != self.owner:
            with self.lock:
                if not self.lock.wait_for(lambda: self.instance is not None, max(0.0, deadline - time.monotonic())):
                    raise self._failure("the training loop did not push the weights to the restarted server")
            return
        last = ""
        while True:
            try:
                self._connect(deadline)
                self._push()
                return
            except (_Gone, _Stale) as e:
                last = str(e)
                if time.monotonic() > deadline:
                    raise self._failure(last) from None
                time.sleep(0.5)

    def _connect(self, deadline: float) -> None:
        """Wait for the server; with NCCL, join a new weight group with it."""
        health = self._wait_for_health(deadline)
        self.transport = health.get("weight_transport", "http")
        if self.transport != "nccl":
            return
        session = secrets.token_hex(8)
        self._post(SESSION_PATH, json.dumps({"session": session}).encode(), "application/json", 30)
        timeout = max(1.0, deadline - time.monotonic())
        try:
            store = HttpStore(self.url, self.token, timeout)
            self.group = WeightGroup.join(store, session, TRAINER, next(self.model.parameters()).device, timeout)
        except (RuntimeError, OSError) as e:  # NCCL / store failures: the server went away again
            raise _Gone(f"joining the weight group failed: {type(e).__name__}: {e}") from None
        self.session = session

    def _push(self) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            tensors = list(unique_weights(self.model))
            if self.transport == "nccl":
                reply = self._push_nccl(tensors)
            else:
                reply = json.loads(self._stream(WEIGHTS_PATH, body_chunks(tensors, self.version),
                                                body_size(tensors, self.version)))
        with self.lock:
            self.instance, self.pushed = reply["instance"], self.version
            self.lock.notify_all()
        self.push_seconds, self.push_bytes = time.perf_counter() - start, float(reply["bytes"])
        self.num_pushes += 1

    def _push_nccl(self, tensors: list) -> dict:
        specs = [spec_of(name, t).as_dict() for name, t in tensors]
        body = json.dumps({"session": self.session, "version": self.version, "tensors": specs}).encode()
        reply = json.loads(self._post(WEIGHTS_PATH, body, "application/json", 60))
        try:
            self.group.send(t for _, t in tensors)
        except (RuntimeError, OSError) as e:
            raise _Gone(f"the weight broadcast failed: {type(e).__name__}: {e}") from None
        return reply

    def _lost(self, stale: bool) -> None:
        if stale and self.pushes:
            with self.lock:
                self.instance = None

    # ------------------------------------------------------------------ HTTP

    def _wait_for_health(self, deadline: float) -> dict:
        last = ""
        while True:
            try:
                request = urllib.request.Request(self.url + HEALTH_PATH, method="GET")
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return json.loads(reply.read())
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if time.monotonic() > deadline:
                raise self._failure(last)
            time.sleep(0.5)

    def _post(self, path: str, body: bytes, content_type: str, timeout: float) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.read()
        except urllib.error.HTTPError as e:
            text = f"HTTP {e.code}: {error_text(e)}"
            if e.code == 409:
                raise _Stale(text) from None
            if e.code >= 500 or e.code in (408, 429):
                raise _Gone(text) from None
            raise RolloutServerError(f"rollout server {self.url}{path} refused the request: {text}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _Gone(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None

    def _stream(self, path: str, chunks: Any, size: int) -> bytes:
        """POST a body of `size` bytes given as pieces (the weights: never one bytes object)."""
        parts = urllib.parse.urlsplit(self.url + path)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.request_timeout)
        try:
            conn.putrequest("POST", parts.path)
            for key, value in (("Authorization", f"Bearer {self.token}"), ("Content-Length", str(size)),
                               ("Content-Type", "application/octet-stream")):
                conn.putheader(key, value)
            conn.endheaders()
            for chunk in chunks:
                conn.send(chunk)
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Gone(f"the weight push failed: {type(e).__name__}: {e}") from None
        finally:
            conn.close()
        if reply.status == 409:
            raise _Stale(f"HTTP 409: {data[:200]!r}")
        if reply.status >= 500 or reply.status in (408, 429):
            raise _Gone(f"HTTP {reply.status}: {data[:200]!r}")
        if reply.status != 200:
            raise RolloutServerError(f"rollout server {self.url}{path} refused the weights: HTTP {reply.status}: "
                                     f"{data[:300].decode('utf-8', 'replace')}")
        return data

    def _failure(self, last: str) -> RolloutServerError:
        return RolloutServerError(f"rollout server {self.url} did not come back within rollout.server_timeout = "
                                  f"{self.server_timeout:g} s; last failure: {last}")


def build_server_engine(cfg: Any, model: Any, tokenizer: Any, max_prompt_tokens: int | None) -> ServerEngine:
    token = os.environ.get(cfg.token_env, "")
    if not token:
        raise ValueError(f"rollout.url = {cfg.url!r} is set but the environment variable {cfg.token_env} "
                         "(rollout.token_env) holding the server's bearer token is empty or not set")
    return ServerEngine(model, tokenizer, max_prompt_tokens, url=cfg.url, token=token,
                        request_timeout=cfg.request_timeout, server_timeout=cfg.server_timeout)
