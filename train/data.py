"""Image-folder data, preloaded as uint8 arrays through the runtime's preprocessing.

FER-2013 is tiny (48x48 grey), so the whole split fits in memory after the
resize: decoding once and augmenting whole batches as tensors keeps both CPU
cores on the network instead of on per-image Python transforms.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.errors import ImageError
from fer_edge.files import IMAGE_EXTENSIONS
from fer_edge.preprocess import preprocess_gray


class DataLayoutError(ValueError):
    """The data folder is not ``<root>/<split>/<class>/<images>``."""


@dataclass
class Split:
    """One split in memory: uint8 images (N, S, S), int64 labels (N,), file paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def list_split(root: Path, split: str, classes: list[str], limit_per_class: int = 0) -> list[tuple[Path, int]]:
    """Files of ``root/split/<class>/`` for the chosen classes, sorted for reproducibility."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataLayoutError(
            f"{split_dir}: missing; expected {root}/{split}/<class>/<images> "
            f"with class folders {classes}"
        )
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataLayoutError(f"{split_dir}: no folder for classes {missing}; found {present}")
    items: list[tuple[Path, int]] = []
    for idx, cls in enumerate(classes):
        files = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataLayoutError(f"{split_dir / cls}: no images ({' '.join(sorted(IMAGE_EXTENSIONS))})")
        if limit_per_class:
            files = files[:limit_per_class]
        items.extend((f, idx) for f in files)
    return items


def load_split(root: Path, split: str, classes: list[str], size: int, limit_per_class: int = 0) -> Split:
    """Decode and resize every image of a split with :func:`fer_edge.preprocess.preprocess_gray`.

    Unreadable files are reported on stderr and skipped, not fatal.
    """
    items = list_split(root, split, classes, limit_per_class)
    images = np.empty((len(items), size, size), dtype=np.uint8)
    labels, paths, n = [], [], 0
    for path, label in items:
        try:
            images[n] = preprocess_gray(path, size)
        except ImageError as exc:
            print(f"skipping {exc}", file=sys.stderr)
            continue
        labels.append(label)
        paths.append(str(path))
        n += 1
    if n == 0:
        raise DataLayoutError(f"{root / split}: none of the images could be read")
    return Split(images[:n], np.asarray(labels, dtype=np.int64), paths)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """Loss weights against class imbalance: ``none``, ``sqrt`` or ``balanced`` (1/freq)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    if mode == "none":
        w = np.ones(num_classes)
    elif mode == "balanced":
        w = counts.sum() / (num_classes * counts)
    elif mode == "sqrt":
        w = np.sqrt(counts.sum() / (num_classes * counts))
    else:
        raise ValueError(f"class_weighting {mode!r} is not one of ('none', 'sqrt', 'balanced')")
    return (w / w.mean()).astype(np.float32)
