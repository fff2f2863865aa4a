"""Checkpoints for export and benchmarks: load one (or an ensemble) as an eval-mode model.

Also the two wrappers export folds into graphs: :class:`FlipTTA` (mean logits of
an image and its mirror) and :class:`MeanLogits` (an ensemble in one graph).
Checkpoints are read with ``torch.load(..., weights_only=True)``
(:func:`train.checkpoint.load`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_edge.preprocess import PreprocessSpec
from train import checkpoint as ckpt_io
from train.checkpoint import CheckpointError
from train.config import TrainConfig
from train.model import model_for
from train.trainer import spec_of

#: Architecture (``TrainConfig.arch``) -> the model name stored in the metadata.
MODEL_NAMES = {"b0": "efficientnet_b0", "lite0": "efficientnet_lite0"}


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model (eval mode, logits out) and the facts export needs."""

    model: nn.Module
    config: TrainConfig
    classes: list[str]
    spec: PreprocessSpec
    epoch: int | None
    val: dict | None
    sha256: str
    #: The file it was loaded from (an ensemble's: its first member's).
    path: Path
    #: For an ensemble, its members in order (``model`` is then a :class:`MeanLogits`).
    members: list[LoadedCheckpoint] = field(default_factory=list)


class FlipTTA(nn.Module):
    """Mean logits of each image and its horizontal mirror, in one batched pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # One pass on 2N images is cheaper than two passes at batch 1.
        y = self.model(torch.cat([x, x.flip(-1)]))
        return (y[:n] + y[n:]) / 2


class MeanLogits(nn.Module):
    """Mean logits of several models on the same input (an ensemble in one graph)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def strip_softmax(model: nn.Module) -> int:
    """Remove trailing Softmax/LogSoftmax modules of ``model.classifier``; return how many.

    The runtime applies softmax itself and int8 calibration needs logits.
    """
    head = getattr(model, "classifier", None)
    removed = 0
    while isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], (nn.Softmax, nn.LogSoftmax)):
        del head[len(head) - 1]
        removed += 1
    return removed


def load_checkpoint_model(path: Path) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint describes and load its weights.

    Raises:
        CheckpointError: unreadable file, bad config, classes/preprocessing that
            disagree with the config, or weights that do not fit the model.
    """
    path = Path(path)
    ckpt = ckpt_io.load(path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
        spec = spec_of(cfg)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid training config in checkpoint ({exc})") from exc
    classes = list(ckpt.get("classes", cfg.classes))
    if classes != list(cfg.classes):
        raise CheckpointError(f"{path}: 'classes' {classes} disagrees with config classes {cfg.classes}")
    if "preprocess" in ckpt:
        try:
            stored = PreprocessSpec.from_dict(ckpt["preprocess"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: invalid 'preprocess' entry ({exc})") from exc
        if stored != spec:
            raise CheckpointError(f"{path}: 'preprocess' {stored} disagrees with the config's {spec}")
    model = model_for(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[:4]
        raise CheckpointError(
            f"{path}: weights do not fit the model its config describes ({MODEL_NAMES[cfg.arch]}, "
            f"{len(classes)} classes {classes}, pool={cfg.pool}, head_hidden={cfg.head_hidden}): "
            + " ".join(s.strip() for s in first)
        ) from exc
    strip_softmax(model)
    model.eval()
    val = ckpt.get("val") if isinstance(ckpt.get("val"), dict) else None
    epoch = ckpt.get("epoch")
    return LoadedCheckpoint(model, cfg, classes, spec, int(epoch) if epoch is not None else None,
                            val, ckpt_io.file_sha256(path), path)


def load_for_export(checkpoint: Path, ensemble: tuple[Path, ...] | list[Path] = ()) -> LoadedCheckpoint:
    """One checkpoint, or an ensemble of ``checkpoint`` and ``ensemble`` averaged by :class:`MeanLogits`.

    An ensemble's ``sha256`` is the digest of its members' digests in order, so
    a file exported from it can be matched to the same checkpoints later; its
    ``val``/``epoch`` are ``None`` (no member's figure describes the ensemble).

    Raises:
        CheckpointError: a member is unreadable, or members differ in classes or preprocessing.
    """
    first = load_checkpoint_model(Path(checkpoint))
    if not ensemble:
        return first
    members = [first]
    for path in ensemble:
        other = load_checkpoint_model(Path(path))
        if other.classes != first.classes or other.spec != first.spec:
            raise CheckpointError(
                f"{path} cannot join an ensemble with {checkpoint}: classes {other.classes} vs {first.classes}, "
                f"preprocessing {other.spec} vs {first.spec}; members must agree on both")
        members.append(other)
    digest = hashlib.sha256("".join(m.sha256 for m in members).encode()).hexdigest()
    model = MeanLogits([m.model for m in members]).eval()
    return LoadedCheckpoint(model, first.config, first.classes, first.spec, None, None, digest, first.path, members)


def torch_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """PyTorch eager logits for float32 inputs (N, 3, S, S)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            out.append(model(torch.from_numpy(inputs[i : i + batch_size])).float().numpy())
    return np.concatenate(out)
