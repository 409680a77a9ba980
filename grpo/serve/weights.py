"""The weight push from the trainer to `grpo serve-rollout`: torch.distributed broadcasts in a
two-member process group of their own, never pickle.

    server: store = TCPStore(host, group_port, is_master=True)      once, at start
    both:   group = WeightGroup.join(store, session, rank, device)  rank 0 = trainer, 1 = server
    trainer: group.send(tensors)        after the HTTP announcement named, shaped and typed them
    server:  group.receive(specs)       -> tensors, then acknowledges

The group is built from its own TCPStore (PrefixStore per session), not from
`init_process_group`, so it never touches the default group a torchrun job trains in (the
same idea as vLLM's StatelessProcessGroup and TRL's vllm_client communicator). gloo on CPU,
NCCL when the tensors live on CUDA (both ends on GPUs). A session is one trainer connection:
a restarted server or trainer makes a new one under a new prefix. The bytes are raw tensor
memory of the announced shapes and dtypes: nothing received is ever interpreted as code.
The store and the group's sockets are not authenticated (like torchrun's own rendezvous):
the HTTP side is, and only an authenticated announcement makes the server receive; keep the
group port on loopback or a private network.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from grpo.compute.dtypes import DTYPES  # the weight dtypes a run may ask for are the ones pushed

TRAINER, SERVER = 0, 1  # ranks in the weight group


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a push: the server's parameter name, its shape and dtype on the wire."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES

    @property
    def num_bytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * DTYPES[self.dtype].itemsize

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    dtype = str(tensor.dtype).removeprefix("torch.")
    assert dtype in DTYPES, f"{name}: cannot push {tensor.dtype}"
    return TensorSpec(name, tuple(tensor.shape), dtype)


def open_store(host: str, port: int, is_master: bool, timeout: float) -> dist.TCPStore:
    """The server's rendezvous store (is_master) or the trainer's connection to it."""
    return dist.TCPStore(host, port, is_master=is_master, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout))


class WeightGroup:
    """Rank TRAINER sends, rank SERVER receives; one broadcast per tensor, then an acknowledgement
    from the server, so `send` returns only once every byte has arrived (the trainer may then
    change its parameters in place)."""

    def __init__(self, backend: dist.ProcessGroup, device: torch.device):
        self.backend, self.device = backend, device

    @classmethod
    def join(cls, store: dist.Store, session: str, rank: int, device: torch.device, address: str | None,
             timeout: float) -> WeightGroup:
        """Blocks until both ranks joined (or `timeout` seconds). address: the local interface
        for gloo's sockets (127.0.0.1 on loopback), None = the host name's."""
        prefixed = dist.PrefixStore(f"grpo-weights/{session}", store)
        wait = datetime.timedelta(seconds=timeout)
        if device.type == "cuda":  # NCCL: both ends on GPUs (not exercised by the CPU test suite)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = wait
            return cls(dist.ProcessGroupNCCL(prefixed, rank, 2, options), device)
        gloo = dist.ProcessGroupGloo
        options = gloo._Options()
        options._timeout = wait
        options._devices = [gloo.create_device(hostname=address) if address else gloo.create_default_device()]
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
