"""The weight push from the trainer to `grpo serve-rollout`, over its authenticated HTTP.

    POST /v1/weights     Authorization: Bearer <token>
      body: a safetensors file, streamed: 8 bytes (little-endian header length), the JSON
      header {name: {dtype, shape, data_offsets}, "__metadata__": {"version": "<int>"}},
      then every tensor's raw bytes in header order

The trainer writes the header itself and then streams each tensor's memory (no copy of the
whole model into one bytes object); the server checks the header against the served model
(names, shapes, dtypes, offsets that tile the data exactly, every parameter covered) before it
reads a byte of data, then reads the data straight into one staging buffer of the announced
size. Nothing received is ever interpreted as code, and nothing but the HTTP port listens.

Why HTTP and not torch.distributed on CPU (bench/RESULTS.md, the rollout server's section,
has the measurement): torch's TCPStore master binds every interface whatever host it is
given, and neither the store nor gloo's pair sockets authenticate a peer, so anyone who
could reach them could have fed the server other weights. A push over the bearer-checked
HTTP costs more seconds per push on loopback than a gloo broadcast, a small share of a step.
NCCL between GPUs (`--weight-transport nccl`) is in grpo/serve/nccl.py.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from grpo.compute.dtypes import DTYPES  # the weight dtypes a run may ask for are the ones pushed
from grpo.serve.common import BadRequest, json_object

WIRE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # safetensors' dtype codes
FROM_WIRE = {code: name for name, code in WIRE.items()}
MAX_HEADER_BYTES = 16 * 2**20  # ~100 bytes per tensor: room for models of 100k tensors
MAX_DIMS = 8


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a push: the server's parameter name, its shape and dtype on the wire."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    dtype = str(tensor.dtype).removeprefix("torch.")
    assert dtype in DTYPES, f"{name}: cannot push {tensor.dtype}"
    return TensorSpec(name, tuple(tensor.shape), dtype)


def encode_header(specs: list[TensorSpec], version: int) -> bytes:
    """The push body's first bytes: the header length, then the safetensors JSON header."""
    header: dict = {"__metadata__": {"version": str(version)}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": WIRE[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.num_bytes]}
        offset += s.num_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw)) + raw


def body_chunks(named: list[tuple[str, torch.Tensor]], version: int) -> Iterator[memoryview | bytes]:
    """The whole push body, one piece per tensor (each moved to CPU only when its turn comes)."""
    yield encode_header([spec_of(n, t) for n, t in named], version)
    for _, t in named:
        yield memoryview(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())


def body_size(named: list[tuple[str, torch.Tensor]], version: int) -> int:
    return len(encode_header([spec_of(n, t) for n, t in named], version)) + sum(
        spec_of(n, t).num_bytes for n, t in named)


def decode_header(raw: bytes) -> tuple[int, list[TensorSpec]]:
    """(version, specs in data order) of a push header (without its 8 length bytes);
    BadRequest naming what is wrong. The offsets must tile the data from 0 without gaps."""
    header = json_object(raw, "the weights header")
    meta = header.pop("__metadata__", None)
    version = meta.get("version") if isinstance(meta, dict) else None
    if not (isinstance(version, str) and version.isdigit() and len(version) <= 18):
        raise BadRequest(400, "__metadata__.version must be a decimal integer >= 0 (as a string)")
    if not header:
        raise BadRequest(400, "the push names no tensors")
    entries = []
    for name, entry in header.items():
        entries.append(_spec(name, entry))
    entries.sort(key=lambda e: e[1])
    offset = 0
    for spec, start, end in entries:
        if start != offset or end - start != spec.num_bytes:
            raise BadRequest(400, f"tensor {spec.name!r}: data_offsets [{start}, {end}] do not follow the one "
                                  f"before (at {offset}) with its {spec.num_bytes} bytes")
        offset = end
    return int(version), [spec for spec, _, _ in entries]


def _spec(name: str, entry: object) -> tuple[TensorSpec, int, int]:
    ok = (isinstance(entry, dict) and entry.get("dtype") in FROM_WIRE and isinstance(entry.get("shape"), list)
          and len(entry["shape"]) <= MAX_DIMS and isinstance(entry.get("data_offsets"), list)
          and len(entry["data_offsets"]) == 2
          and all(_count(n) for n in entry["shape"]) and all(_count(n) for n in entry["data_offsets"]))
    if not ok:
        raise BadRequest(400, f"tensor {name[:100]!r}: bad header entry {str(entry)[:200]}: expected "
                              f"{{dtype in {', '.join(FROM_WIRE)}, shape: <= {MAX_DIMS} integers >= 0, "
                              "data_offsets: [start, end]}")
    start, end = entry["data_offsets"]
    return TensorSpec(name, tuple(entry["shape"]), FROM_WIRE[entry["dtype"]]), start, end


def _count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**48


class Staging:
    """Receives a push body chunk by chunk: first the header (checked by `check(version, specs)`,
    which raises BadRequest), then the data into one buffer of exactly the announced size."""

    def __init__(self, check, max_header_bytes: int = MAX_HEADER_BYTES):
        self.check, self.max_header_bytes = check, max_header_bytes
        self.head = bytearray()
        self.version: int | None = None
        self.specs: list[TensorSpec] = []
        self.buffer: torch.Tensor | None = None  # [data bytes] uint8
        self.filled = 0

    def feed(self, chunk: bytes) -> None:
        if self.buffer is None:
            self.head += chunk
            chunk = self._header()
            if self.buffer is None:
                return
        if self.filled + len(chunk) > self.buffer.numel():
            raise BadRequest(400, f"the push body is longer than its header announced ({self.buffer.numel()} data bytes)")
        self.view[self.filled : self.filled + len(chunk)] = chunk
        self.filled += len(chunk)

    def _header(self) -> bytes:
        if len(self.head) < 8:
            return b""
        (size,) = struct.unpack("<Q", self.head[:8])
        if size > self.max_header_bytes:
            raise BadRequest(413, f"weights header of {size} bytes is over the limit of {self.max_header_bytes}")
        if len(self.head) < 8 + size:
            return b""
        self.version, self.specs = decode_header(bytes(self.head[8 : 8 + size]))
        self.check(self.version, self.specs)
        self.buffer = torch.empty(sum(s.num_bytes for s in self.specs), dtype=torch.uint8)
        self.view = memoryview(self.buffer.numpy())
        rest, self.head = bytes(self.head[8 + size :]), bytearray()
        return rest

    def tensors(self) -> list[torch.Tensor]:
        """The received tensors (views of the buffer); BadRequest when the body was cut short."""
        if self.buffer is None or self.filled != self.buffer.numel():
            have = "no complete header" if self.buffer is None else f"{self.filled} of {self.buffer.numel()} data bytes"
            raise BadRequest(400, f"the push body ended early: {have}")
        out, offset = [], 0
        for s in self.specs:
            dtype = DTYPES[s.dtype]
            piece = self.buffer[offset : offset + s.num_bytes]
            if offset % dtype.itemsize:  # a view of another dtype must start on its alignment
                piece = piece.clone()
            out.append(piece.view(dtype).view(s.shape))
            offset += s.num_bytes
        return out
