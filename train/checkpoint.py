"""Atomic checkpoint files holding weights plus the config export/ needs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from fer_edge.output import current_umask


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a fer-edge checkpoint."""


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous file intact, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would surprise other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
