"""Tiny training checkpoints and image folders for the export/ and benchmarks/ tests.

Served by the ``ckpt_factory`` fixture, which imports it (``from tests import
checkpoint_factory``) only when a test asks for it, because it imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from train.checkpoint import save_atomic
from train.config import TrainConfig
from train.model import build_model
from train.trainer import spec_of


def make_checkpoint(path: Path, classes: Sequence[str], input_size: int = 32, seed: int = 0,
                    num_outputs: int | None = None, arch: str = "b0") -> Path:
    """A randomly initialised EfficientNet-B0 checkpoint in the trainer's best.pt layout.

    BatchNorm statistics are estimated on random inputs first: with torchvision's
    init and default running stats the logits do not depend on the input at
    all, which would make every parity check trivially pass.

    Args:
        path: Where to write it.
        classes: Class names stored in the config.
        input_size: Input side in pixels.
        seed: Weight-init seed.
        num_outputs: Logits of the saved weights when they should *not* match
            ``classes`` (a mismatched checkpoint); default ``len(classes)``.
        arch: ``b0`` or ``lite0``.
    """
    torch.manual_seed(seed)
    cfg = TrainConfig(classes=list(classes), input_size=input_size, weights="none", out=str(path.parent),
                      arch=arch)
    model = build_model(num_outputs or len(classes), cfg.pool, cfg.head_hidden, cfg.dropout, arch=arch)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exact statistics after a few batches
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, input_size, input_size) * 2 - 1)
        model.eval()
        # A random net is far more sensitive to float rounding than a trained one
        # (its logits reach the tens, and errors grow with them): scale the head so
        # logits stay within about +-1, and the 1e-4 fp32 tolerance has a margin.
        pixels = torch.randint(0, 256, (128, 1, input_size, input_size)).float() / 255
        logits = model((pixels.expand(-1, 3, -1, -1) - 0.5) / 0.5)
        head = model.classifier[-1]
        head.weight /= logits.abs().max()
        head.bias.zero_()
    save_atomic({"config": cfg.to_dict(), "classes": list(classes), "preprocess": spec_of(cfg).to_dict(),
                 "epoch": 3, "model": model.state_dict(),
                 "val": {"accuracy": 0.5, "macro_f1": 0.4, "tta": False, "n": 10}}, path)
    return path


def make_image_folder(root: Path, classes: Sequence[str], train_per_class: int = 6,
                      val_per_class: int = 4, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/`` with random 48x48 grey images (train PNG, val JPEG, as FER-2013)."""
    rng = np.random.default_rng(seed)
    for split, n, ext in (("train", train_per_class, "png"), ("val", val_per_class, "jpg")):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # A class-dependent brightness gives the images some structure.
                pixels = np.clip(rng.normal(60 + 50 * c, 40, (48, 48)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{split}_{i:03d}.{ext}")
    return root
