"""The NCCL weight push between GPUs (`grpo serve-rollout --weight-transport nccl`), with its
rendezvous over the server's authenticated HTTP. Written, not exercised: it needs two GPUs
(the CPU suite runs the same group over gloo to check the store).

    server: store = dist.HashStore()                      in its own memory: no socket
    trainer: HttpStore(url, token) -> POST /v1/store       each store call, bearer-checked
    both:   group = WeightGroup.join(store, session, rank, device)  rank 0 = trainer, 1 = server
    trainer: group.send(tensors)   after the HTTP announcement named, shaped and typed them
    server:  group.receive(specs)  -> tensors, then acknowledges

The group is built from a store of its own (PrefixStore per session), not from
`init_process_group`, so it never touches the default group a torchrun job trains in (the
idea of vLLM's StatelessProcessGroup). What still listens: NCCL's own bootstrap socket,
which authenticates no one and binds the interface NCCL_SOCKET_IFNAME names (set to the
loopback interface when --host is loopback and the variable is unset): opt in only where
that port is private.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import urllib.request
from collections.abc import Iterable
from datetime import timedelta

import torch
import torch.distributed as dist

from grpo.compute.dtypes import DTYPES
from grpo.serve.common import BadRequest
from grpo.serve.weights import TensorSpec

TRAINER, SERVER = 0, 1  # ranks in the weight group
STORE_PATH = "/v1/store"
STORE_OPS = ("set", "get", "add", "check", "wait", "delete_key", "num_keys", "compare_set")
MAX_KEY, MAX_VALUE = 512, 2**20  # an NCCL unique id is 128 bytes


def loopback_nccl_interface() -> None:
    """NCCL's bootstrap socket on the loopback interface, unless the user chose one."""
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")


def decode_store(body: bytes) -> dict:
    """A store call: {op, key | keys, value (base64), amount, expected}; BadRequest naming the field."""
    try:
        call = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the store call is not JSON ({e})") from None
    if not isinstance(call, dict) or call.get("op") not in STORE_OPS:
        raise BadRequest(400, f"op must be one of {', '.join(STORE_OPS)}")
    keys = call.get("keys", [call.get("key")])
    if not (isinstance(keys, list) and 1 <= len(keys) <= 64
            and all(isinstance(k, str) and 0 < len(k) <= MAX_KEY for k in keys)):
        raise BadRequest(400, f"key must be a string of 1-{MAX_KEY} characters (keys: a list of 1-64 of them)")
    out = {"op": call["op"], "keys": keys}
    for field in ("value", "expected"):
        if field in call:
            v = call[field]
            try:
                out[field] = base64.b64decode(v, validate=True) if isinstance(v, str) and len(v) <= MAX_VALUE else None
            except ValueError:
                out[field] = None
            if out[field] is None:
                raise BadRequest(400, f"{field} must be base64 of at most {MAX_VALUE} characters")
    amount = call.get("amount", 0)
    if not (isinstance(amount, int) and not isinstance(amount, bool) and abs(amount) < 2**62):
        raise BadRequest(400, "amount must be an integer")
    out["amount"] = amount
    return out


def run_store_call(store: dist.Store, call: dict, timeout: float) -> dict:
    """Execute a decoded call on the server's HashStore (blocking calls wait <= timeout s)."""
    op, keys = call["op"], call["keys"]
    try:
        if op == "set":
            store.set(keys[0], call.get("value", b""))
            return {}
        if op == "get":
            store.wait(keys, timedelta(seconds=timeout))
            return {"value": base64.b64encode(store.get(keys[0])).decode()}
        if op == "add":
            return {"value": store.add(keys[0], call["amount"])}
        if op == "check":
            return {"value": store.check(keys)}
        if op == "wait":
            store.wait(keys, timedelta(seconds=timeout))
            return {}
        if op == "delete_key":
            return {"value": store.delete_key(keys[0])}
        if op == "num_keys":
            return {"value": store.num_keys()}
        got = store.compare_set(keys[0], call.get("expected", b""), call.get("value", b""))
        return {"value": base64.b64encode(got).decode()}
    except RuntimeError as e:  # a wait that timed out, a value that is no counter
        raise BadRequest(408 if "imeout" in str(e) else 400, f"store {op}: {e}") from None


class HttpStore(dist.Store):
    """The trainer's view of the server's store: every call one authenticated POST."""

    def __init__(self, url: str, token: str, timeout: float):
        super().__init__()
        self.url, self.token, self.timeout = url.rstrip("/") + STORE_PATH, token, timeout

    def _call(self, op: str, **fields) -> object:
        body = json.dumps({"op": op, **fields}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout + 30) as reply:
            return json.loads(reply.read()).get("value")

    def set(self, key, value):
        value = value.encode() if isinstance(value, str) else bytes(value)
        self._call("set", key=key, value=base64.b64encode(value).decode())

    def get(self, key):
        return base64.b64decode(self._call("get", key=key))

    def add(self, key, amount):
        return self._call("add", key=key, amount=int(amount))

    def check(self, keys):
        return self._call("check", keys=list(keys))

    def wait(self, keys, timeout=None):
        self._call("wait", keys=list(keys))

    def delete_key(self, key):
        return self._call("delete_key", key=key)

    def num_keys(self):
        return self._call("num_keys", key="-")

    def compare_set(self, key, expected, desired):
        enc = [base64.b64encode(v.encode() if isinstance(v, str) else bytes(v)).decode() for v in (expected, desired)]
        return base64.b64decode(self._call("compare_set", key=key, expected=enc[0], value=enc[1]))


class WeightGroup:
    """Rank TRAINER sends, rank SERVER receives; one broadcast per tensor, then an acknowledgement
    from the server, so `send` returns only once every byte has arrived."""

    def __init__(self, backend: dist.ProcessGroup, device: torch.device):
        self.backend, self.device = backend, device

    @classmethod
    def join(cls, store: dist.Store, session: str, rank: int, device: torch.device, timeout: float,
             gloo_address: str | None = None) -> WeightGroup:
        """Blocks until both ranks joined. NCCL on CUDA; gloo (on gloo_address) only for the tests."""
        prefixed = dist.PrefixStore(f"grpo-weights/{session}", store)
        wait = datetime.timedelta(seconds=timeout)
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = wait
            return cls(dist.ProcessGroupNCCL(prefixed, rank, 2, options), device)
        assert gloo_address is not None, "the CPU push goes over HTTP (grpo.serve.weights)"
        gloo = dist.ProcessGroupGloo
        options = gloo._Options()
        options._timeout = wait
        options._devices = [gloo.create_device(hostname=gloo_address)]
        return cls(gloo(prefixed, rank, 2, options), device)

    def _broadcast(self, tensor: torch.Tensor, root: int) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = root
        self.backend.broadcast([tensor], options).wait()

    def send(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._broadcast(t.detach().contiguous(), TRAINER)
        self._broadcast(torch.zeros(1, device=self.device), SERVER)  # the acknowledgement

    def receive(self, specs: list[TensorSpec]) -> list[torch.Tensor]:
        out = []
        for s in specs:
            t = torch.empty(s.shape, dtype=DTYPES[s.dtype], device=self.device)
            self._broadcast(t, TRAINER)
            out.append(t)
        self._broadcast(torch.ones(1, device=self.device), SERVER)
        return out
