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

Nothing read back runs code: training_state.pt is loaded with `torch.load(weights_only=True)`,
which unpickles only tensors and plain containers, so a checkpoint from elsewhere (a shared
run, a download) cannot execute anything on resume. That is why the RNG states are stored
in plain form (lists and ints, not numpy's arrays or Python's tuples of objects).
Checkpoints written before that held numpy's state as an ndarray: exactly the numpy names
that rebuild a plain uint32 array (LEGACY_NUMPY_GLOBALS) are allowed for them, nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    reference_moved: bool = False  # reference.sync_every or iterative RL changed the reference
    entropy_coef: float | None = None  # the adapted entropy bonus coefficient (algorithm.entropy_target); None: fixed
    num_overflow_skips: int = 0  # float16 updates skipped because the scaled gradients overflowed
    loss_scale: dict[str, Any] = field(default_factory=dict)  # the float16 loss scaler's state_dict
    # async + adaptive group sizes: each batch in flight's sizes (its whole round's, oldest first), so a
    # resumed run, which requests those prompts again, splits them as they were split
    group_sizes_in_flight: list[list[int]] = field(default_factory=list)


REFERENCE_FILE = "reference.safetensors"  # only in runs whose reference moved (sync_every, iterative RL)


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


def keep_recorded_split(cfg: Any) -> None:
    """A resumed run trains on the rows it started with: where the run's config.yaml recorded
    another task.num_eval than this config resolves to (a run written before a data task without
    evaluation held nothing out), the recorded one is kept, so the data stream resumes exactly."""
    path = Path(cfg.output_dir) / "config.yaml"
    if latest_checkpoint(cfg.output_dir) is None or not path.is_file():
        return
    import yaml

    recorded = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("task", {}).get("num_eval")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != cfg.task.num_eval:
        print(f"resume: task.num_eval = {recorded} as this run started with (not {cfg.task.num_eval}), "
              "so it trains on the same rows")
        cfg.task.num_eval = recorded


def parameter_state(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters (trainable_only: those the optimizer changes: all of them,
    or only LoRA adapters). A copy: under fsdp the gathered weights are views into one
    communication buffer."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            if p.requires_grad or not trainable_only}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return parameter_state(model, trainable_only=True)


# What numpy's pickled uint32 ndarray (its MT19937 key) needs, and nothing more: checkpoints
# from before the plain form.
LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state() -> dict[str, Any]:
    """Every RNG's state in a form `torch.load(weights_only=True)` reads: tensors, lists, ints."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy": {"bit_generator": numpy_state["bit_generator"], "key": numpy_state["state"]["key"].tolist(),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    else:  # a checkpoint from before the plain form: random.getstate()'s own tuple
        random.setstate(python)
    if isinstance(numpy_state, dict):
        np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                             "state": {"key": np.array(numpy_state["key"], dtype=np.uint32),
                                       "pos": numpy_state["pos"]},
                             "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    else:  # before the plain form: np.random.get_state()'s tuple holding an ndarray
        np.random.set_state(numpy_state)
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
    reference: dict[str, torch.Tensor] | None = None  # a reference moved by reference.sync_every
    extra: list[Callable[[Path], None]] = field(default_factory=list)  # write more files into the checkpoint


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
        if snapshot.reference is not None:
            save_file(snapshot.reference, tmp / REFERENCE_FILE)
        for write in snapshot.extra:
            write(tmp)
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


class UnsafeCheckpoint(ValueError):
    """A training_state.pt whose unpickling would import code: refused, never run."""


def read_training_state(path: Path) -> dict[str, Any]:
    """training_state.pt, unpickled without running code. A file whose pickle names anything
    but tensors and plain containers is refused: grpo never writes one, so it was crafted or
    comes from another program."""
    file = path / "training_state.pt"
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise  # damaged: reported as such by the caller
        found = _unsafe_globals(file, str(e))
        raise UnsafeCheckpoint(
            f"checkpoint file {str(file)!r} is refused: loading it would import "
            f"{', '.join(found) if found else 'objects other than tensors'}, which a grpo checkpoint never "
            "holds; it was not written by grpo (or was altered), so nothing in it was run"
        ) from None


def _unsafe_globals(file: Path, refusal: str) -> list[str]:
    """The names the pickle would import (beyond the allowed ones), found without running it:
    listed from a zip checkpoint, else the one torch's refusal names."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in LEGACY_NUMPY_GLOBALS}
    try:
        found = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(file) if n not in allowed]
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: only for the message
        found = []
    return found[:3] or re.findall(r"GLOBAL ([\w.]+)", refusal)[:1]


def _damaged(path: Path, e: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); it was damaged "
        "after it was written (grpo writes checkpoints atomically): delete that directory to "
        "resume from the previous checkpoint"
    )


def load_weights(path: str | Path, model: torch.nn.Module, file: str = "model.safetensors",
                 every_parameter: bool = False) -> None:
    """Copy a checkpoint's trainable weights into `model` (resume, and `grpo eval` of a checkpoint);
    with every_parameter, all of them must be in `file` (a frozen reference, a reward model)."""
    path = Path(path)
    try:
        weights = load_file(path / file)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise _damaged(path, e) from None
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad or every_parameter) - set(weights))
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
        blob = read_training_state(path)
        saved = json.loads((path / "trainer_state.json").read_text())
        saved.pop("extra", None)  # an unused field that checkpoints before num_updates held
        state = TrainerState(**saved)
    except UnsafeCheckpoint:
        raise
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
