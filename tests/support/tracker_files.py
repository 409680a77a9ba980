"""Reading back what the trackers wrote: W&B's offline run file, record by record."""

import json
import struct
import time
from pathlib import Path


def wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """Every record of the offline run's `run-<id>.wandb` file: W&B's LevelDB-style log (a 7-byte
    header, then 32 KiB blocks of chunks: crc32 (4 bytes), length (2, little-endian), type (1:
    full, 2: first, 3: middle, 4: last), data), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    # run.finish() returns once the run is marked done; W&B's service may write the file's last
    # bytes a moment later (it tears the stream down on its own schedule), so read each file
    # once it ends with the exit record, waiting for a slow host to get there.
    deadline = time.monotonic() + timeout
    while True:
        # one offline run directory per process: a resumed run adds one, with the same run id
        paths = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        per_file = [_read_log(path.read_bytes(), wandb_internal_pb2.Record) for path in paths]
        done = paths and all(rs and rs[-1].WhichOneof("record_type") == "exit" for rs in per_file)
        if done or time.monotonic() > deadline:
            assert done, f"no finished W&B run file under {run_dir}: {[(p, p.stat().st_size) for p in paths]}"
            return [record for rs in per_file for record in rs]
        time.sleep(0.2)


def _read_log(data: bytes, record_type) -> list:
    block, records, pending = 32768, [], b""
    if len(data) < 7:  # not written yet
        return []
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # the end, or a chunk still being written
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = record_type()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    rows = []
    for r in wandb_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def wandb_config(run_dir: Path) -> dict:
    """The config as the run record and later config records set it."""
    out = {}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = r.run.config.update if kind == "run" else r.config.update
            out.update({item.key: json.loads(item.value_json) for item in updates})
    return out
