"""Atomic checkpoint files holding weights plus the config export/ needs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fer_edge.atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a fer-edge checkpoint."""


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through :func:`fer_edge.atomic.atomic_write` (temporary file, fsync, rename).

    A run killed mid-write leaves the previous file intact, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks (checkpoints, teacher models)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check its shape.

    Raises:
        CheckpointError: with the file name and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/zip errors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a fer-edge checkpoint (needs 'model' and 'config' entries)")
    return ckpt
