"""Checkpoints: everything needed to continue a run exactly where it stopped.

checkpoint.npz holds the model's arrays, the optimizer's state arrays and a JSON header with the
loop's TrainState (epoch, batch, partial accumulators, history, early-stopping bookkeeping) and
the optimizer's step count. The random numbers need no saving: they are functions of
(seed, epoch, batch). Written atomically after every epoch and when a run is stopped.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nnx import __version__
from nnx.atomic import write_atomic
from nnx.cpu_choice import PATHS
from nnx.errors import ModelFileError, NnxError
from nnx.io import check_members, digest, memory_limit, read_json_member
from nnx.nn.sequential import Sequential
from nnx.optim import Optimizer
from nnx.trainer import TrainState

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
FORMAT = "nnx-checkpoint"
FORMAT_VERSION = 2  # 2: per-array SHA-256 and shapes in the header


def save_checkpoint(
    path: Path,
    model: Sequential,
    optimizer: Optimizer,
    state: TrainState,
    config: dict[str, Any] | None = None,
    cpu_path: str | None = None,
) -> None:
    """`config`: the run's config as JSON data, so that a resume can say what changed since;
    `cpu_path`: the CPU code it ran on (nnx/cpu_choice.py), which a resume takes again."""
    arrays = {f"model/{k}": v for k, v in model.state().items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_arrays(model.backend.to_numpy).items()})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnx_version": __version__,
        "state": state.to_dict(),
        "optimizer_steps": optimizer.steps,
        "architecture": model.spec(),
        "config": config,
        "cpu_path": cpu_path,
        # As in model files: a tampered checkpoint is refused, never loaded into the weights.
        "arrays": {name: {"shape": list(a.shape), "sha256": digest(a)} for name, a in arrays.items()},
    }
    buffer = io.BytesIO()
    np.savez(buffer, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    write_atomic(path, buffer.getvalue())


def saved_config(path: Path) -> dict[str, Any] | None:
    """The config a checkpoint was written under (None for checkpoints of nnx before it kept one)."""
    try:
        config = read_json_member(path).get("config")
    except ModelFileError:
        return None
    return config if isinstance(config, dict) else None


def checkpoint_cpu_path(path: Path) -> str | None:
    """The CPU path (nnx/cpu_choice.py) a checkpoint's run took, or None (a GPU run, an older
    checkpoint, an unreadable one: load_checkpoint says what is wrong with it)."""
    try:
        header = read_json_member(path)
    except (ModelFileError, OSError):
        return None
    kept = header.get("cpu_path") if isinstance(header, dict) else None
    return kept if isinstance(kept, str) and kept in PATHS else None


def load_checkpoint(path: Path, model: Sequential, optimizer: Optimizer) -> TrainState:
    """Restore model and optimizer in place; returns the loop's state."""
    if not path.is_file():
        raise NnxError(f"{path}: no checkpoint to resume from")
    try:
        header = read_json_member(path)
    except ModelFileError as exc:
        raise NnxError(str(exc).replace("nnx model file", "nnx checkpoint")) from None
    if (
        header.get("format") != FORMAT
        or not isinstance(header.get("format_version"), int)
        or (header["format_version"] > FORMAT_VERSION)
    ):
        raise NnxError(f"{path}: not an nnx checkpoint this version understands")
    if header.get("architecture") != model.spec():
        raise NnxError(f"{path}: the checkpoint's architecture differs from the run's config")
    listed = header.get("arrays")
    if header["format_version"] >= 2 and not isinstance(listed, dict):
        raise NnxError(f"{path}: the checkpoint lists no arrays (tampered or corrupt)")
    if isinstance(listed, dict):
        try:
            check_members(path, listed, memory_limit())  # shapes and dtypes before any data is read
        except ModelFileError as exc:
            raise NnxError(str(exc).replace("nnx model file", "nnx checkpoint")) from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files if key != "__header__"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise NnxError(f"{path}: not a readable nnx checkpoint ({exc})") from None
    for name, array in arrays.items():
        if isinstance(listed, dict) and digest(array) != listed.get(name, {}).get("sha256"):
            raise NnxError(f"{path}: array {name} does not match its checksum (checkpoint tampered or corrupt)")
    model_arrays = {k.removeprefix("model/"): v for k, v in arrays.items() if k.startswith("model/")}
    optim_arrays = {k.removeprefix("optim/"): v for k, v in arrays.items() if k.startswith("optim/")}
    try:
        model.load_state(model_arrays)
        steps = header.get("optimizer_steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps < 1 << 62:
            raise ValueError(f"optimizer_steps {str(steps)[:40]} is not a count of steps")
        optimizer.load_state_arrays(optim_arrays, steps)
    except (KeyError, ValueError) as exc:
        raise NnxError(f"{path}: does not match the run's model or optimizer ({exc})") from None
    return training_state(path, header)


COUNT = Field(0, ge=0, le=1 << 62)  # a count of batches, images or epochs


class _EpochSchema(BaseModel):
    """One entry of a checkpoint's history, as nnx writes it (nnx.trainer.EpochMetrics)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: int = Field(ge=1, le=1 << 62)
    train_loss: float
    train_accuracy: float = Field(ge=0, le=1)
    val_loss: float | None
    val_accuracy: float | None = Field(ge=0, le=1)
    seconds: float = Field(ge=0)
    lr: float = Field(ge=0)


class _StateSchema(BaseModel):
    """A checkpoint's training state, as nnx writes it (nnx.trainer.TrainState); a key an older
    nnx did not write takes TrainState's default. Losses may be any float (a diverging run's)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: int = Field(1, ge=1, le=1 << 62)
    batch: int = COUNT
    loss_sum: float = 0.0
    correct: int = COUNT
    seen: int = COUNT
    epoch_seconds: float = Field(0.0, ge=0)
    history: list[_EpochSchema] = Field(default_factory=list, max_length=1 << 20)
    train_seconds: float = Field(0.0, ge=0)
    samples_seen: int = COUNT
    best_metric: float | None = None
    best_epoch: int = COUNT
    epochs_without_improvement: int = COUNT


def training_state(path: Path, header: dict[str, Any]) -> TrainState:
    """The loop's state from a checkpoint's header, checked first: a state nnx did not write (a
    missing or extra key, a wrong type, a count out of range) is one line naming the key."""
    try:
        state = _StateSchema.model_validate(header.get("state"))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "state"
        raise NnxError(
            f"{path}: the checkpoint's training state is not what nnx writes ({where}: {error['msg']})"
        ) from None
    return TrainState.from_dict(state.model_dump())
