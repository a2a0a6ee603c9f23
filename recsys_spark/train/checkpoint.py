"""Per-epoch training checkpoints, written atomically by rank 0.

One file per run, ``<dir>/checkpoint.pt``, replaced after every epoch: written
to a temporary file in the same directory and renamed over the old one
(``os.replace`` is atomic on POSIX), so a crash mid-write leaves the previous
checkpoint intact. It is read with ``torch.load(weights_only=True)``: only
tensors and plain containers, never arbitrary pickled objects.

A checkpoint carries a ``run_key`` (model, hyperparameters, data size, trainer
settings): one whose key differs from the current run's is stale (another
model, other data) and is ignored, so a crashed run resumes but a new one
starts fresh. Contents (see ``loop.train``): ``epoch`` (completed epochs),
``model`` and ``optimizer`` state dicts, ``scaler`` (mixed precision),
``best_metric``, ``best_epoch``, ``bad_epochs``, ``best_model``, ``history``, ``step``
(global step count, for schedules), ``finished``,
``rng`` (rank 0's torch RNG states; the loop also reseeds every epoch from
(seed, epoch, rank), so a resumed epoch sees the same randomness).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FILE_NAME = "checkpoint.pt"


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / FILE_NAME


def save(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``<directory>/checkpoint.pt`` atomically (tmp file + rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def load(directory: str | os.PathLike | None, run_key: str) -> dict[str, Any] | None:
    """The checkpoint of run ``run_key`` in ``directory``, or None (none there, or another run's)."""
    if directory is None:
        return None
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("run_key") != run_key:
        print(f"checkpoint {path} belongs to another run (model, data or settings changed): starting fresh",
              flush=True)
        return None
    return state


def clear(directory: str | os.PathLike | None) -> None:
    """Remove the checkpoint after a finished run, so the next run starts fresh."""
    if directory is not None:
        checkpoint_path(directory).unlink(missing_ok=True)


__all__ = ["FILE_NAME", "checkpoint_path", "clear", "load", "save"]
