"""Atomic checkpoints and exact resume.

A checkpoint is a directory `checkpoint-000010/` holding everything needed to continue
the run bit for bit: trainable weights (safetensors), optimizer and scheduler state, RNG
states (one per rank), the data position and the step. In a multi-process run every rank
helps gather it (`take_snapshot`) and rank 0 writes it. It is written into a temporary sibling directory,
fsynced, then renamed into place, so a process killed at any moment leaves either the
previous checkpoints or the new complete one, never a half-written directory under the
final name. Old checkpoints are deleted the same way round: renamed to a temporary name,
then removed, so a kill during the deletion cannot leave a partial `checkpoint-*` either.
Temporary leftovers of a killed writer are removed on the next save. A write that fails
(disk full, permission denied) raises CheckpointWriteError (an OSError) naming the path;
the earlier checkpoints are untouched. bench/chaos.py checks all of this with `kill -9`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{6,})$")
TMP_PREFIX = ".tmp-checkpoint-"


@dataclass
class TrainerState:
    """The loop's own counters, saved as JSON next to the tensors."""

    step: int = 0  # GRPO steps completed
    examples_seen: int = 0  # position in the training-data stream
    bad_steps_in_a_row: int = 0
    num_skipped_updates: int = 0
    num_updates: int = 0  # optimizer updates made: the policy version that trajectories carry


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """ValueError unless `run_dir` can take this run: a directory (or nothing yet) and, for a
    fresh run, free of another run's checkpoints (rotation would delete them, and the old
    metrics would be cut away)."""
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"config field `output_dir` = {str(run_dir)!r} is a file, not a directory")
    if not resume and list_checkpoints(root):
        raise ValueError(
            f"config field `output_dir` = {str(run_dir)!r} already holds checkpoints of a run; "
            "set resume=true to continue it, or choose another output_dir"
        )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer changes (all of them, or only LoRA adapters)."""
    # a copy: under fsdp the gathered weights are views into one communication buffer
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Snapshot:
    """What a checkpoint holds besides the loop counters, gathered from every rank.

    The optimizer state is the full, unsharded one keyed by parameter name
    (torch.distributed.checkpoint.state_dict), so a checkpoint loads into any world size and
    either train.parallel mode. `rng` holds one RNG state per rank."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]


def take_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, world: Any) -> Snapshot:
    """Every rank calls this (the gathers are collectives); only rank 0's copy is complete."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    with world.full_weights(model):
        weights = trainable_state(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return Snapshot(weights, get_optimizer_state_dict(model, optimizer, options=options), scheduler.state_dict(),
                    world.gather_objects(rng_state()))


def save_checkpoint(run_dir: str | Path, snapshot: Snapshot, state: TrainerState, keep_last: int) -> Path:
    """Write checkpoint-<step> atomically, then drop all but the newest `keep_last`."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / checkpoint_name(state.step)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
        save_file(snapshot.weights, tmp / "model.safetensors")
        torch.save({"optimizer": snapshot.optimizer, "scheduler": snapshot.scheduler, "rng": snapshot.rng},
                   tmp / "training_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
        _fsync_dir_files(tmp)
        if final.exists():  # a re-save of the same step: move the old one aside, never half-delete it
            _discard(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception):  # disk full, permissions, I/O: name the path, keep the cause
            raise CheckpointWriteError(
                f"could not write checkpoint {str(final)!r} ({type(e).__name__}: {e}); the previous "
                "checkpoints are intact: fix the cause, then resume=true continues from the newest"
            ) from e
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        _discard(old)
    return final


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; nothing under a checkpoint-* name was touched."""


def _discard(path: Path) -> None:
    """Delete a checkpoint: renamed to a temp name first (atomic), so a kill during the
    deletion leaves a stale temp directory (removed by the next save), never a
    half-deleted directory that still looks like a checkpoint."""
    trash = path.with_name(f"{TMP_PREFIX}old-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _damaged(path: Path, e: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); it was damaged "
        "after it was written (grpo writes checkpoints atomically): delete that directory to "
        "resume from the previous checkpoint"
    )


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Copy a checkpoint's trainable weights into `model` (resume, and `grpo eval` of a checkpoint)."""
    path = Path(path)
    try:
        weights = load_file(path / "model.safetensors")
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise _damaged(path, e) from None
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_training_state(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, world: Any
) -> TrainerState:
    """Restore optimizer, scheduler and RNG in place (weights: `load_weights`, before sharding);
    return the loop counters. Each rank takes its own RNG state when the world size is the one
    that saved; with another world size rank 0 continues rank 0's stream and the other ranks
    are reseeded (the data stream and the weights continue exactly either way)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    path = Path(path)
    try:
        blob = torch.load(path / "training_state.pt", weights_only=False)
        saved = json.loads((path / "trainer_state.json").read_text())
        saved.pop("extra", None)  # an unused field that checkpoints before num_updates held
        state = TrainerState(**saved)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise _damaged(path, e) from None
    set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(blob["scheduler"])
    if "num_updates" not in saved:  # an older checkpoint: the schedule counts the same updates
        state.num_updates = scheduler.last_epoch
    rngs = blob["rng"] if isinstance(blob["rng"], list) else [blob["rng"]]
    if len(rngs) == world.size or world.rank == 0:
        set_rng_state(rngs[world.rank])
    else:
        world.seed_sampling(state.step)
    return state


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.iterdir():
        _fsync(p)
    _fsync(directory)
