"""Batched augmentation for small grayscale face crops, as tensor ops.

Input and output: float tensors (B, 1, S, S) in [0, 1]. Kept mild on purpose:
FER crops are already tight and expressions live in small details (mouth
corners, brows), so large crops or rotations destroy the label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.preprocess import PreprocessSpec


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation."""

    flip_p: float = 0.5
    max_rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.88, 1.12)
    max_translate: float = 0.08  # fraction of the side
    brightness: float = 0.2  # additive, in [0, 1] units
    contrast: tuple[float, float] = (0.7, 1.3)
    erase_p: float = 0.4
    erase_area: tuple[float, float] = (0.02, 0.15)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random flip, affine, brightness/contrast and erasing, per sample."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=g) < cfg.flip_p
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    ang = _uniform(b, -cfg.max_rotate_deg, cfg.max_rotate_deg, g) * (math.pi / 180)
    sc = _uniform(b, *cfg.scale, g)
    tx = _uniform(b, -cfg.max_translate, cfg.max_translate, g) * 2
    ty = _uniform(b, -cfg.max_translate, cfg.max_translate, g) * 2
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = _uniform(b, *cfg.contrast, g)[:, None, None, None]
    br = _uniform(b, -cfg.brightness, cfg.brightness, g)[:, None, None, None]
    x = ((x - mean) * c + mean + br).clamp(0.0, 1.0)

    if cfg.erase_p > 0:
        x = _erase(x, cfg, g)
    return x


def _erase(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random erasing: one rectangle per chosen sample, filled with noise."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=g) < cfg.erase_p
    area = _uniform(b, *cfg.erase_area, g) * h * w
    aspect = torch.exp(_uniform(b, math.log(0.5), math.log(2.0), g))
    eh = (area * aspect).sqrt().clamp(1, h).long()
    ew = (area / aspect).sqrt().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1).float()).long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1).float()).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_r = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
    in_c = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
    mask = (in_r[:, :, None] & in_c[:, None, :] & chosen[:, None, None])[:, None]
    noise = torch.rand(x.shape, generator=g)
    return torch.where(mask, noise, x)


def to_input(x01: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1] -> normalised (B, 3, S, S); same math as fer_edge.normalize."""
    mean = torch.tensor(spec.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def augmented_inputs(x: np.ndarray, spec: PreprocessSpec, seed: int = 0) -> np.ndarray:
    """Normalised model inputs (N, 3, S, S) put through training's augmentation, normalised again.

    Statistics measured on them are of the kind training's BatchNorms averaged
    (used by ``export.recover`` and ``train.qat``).
    """
    x01 = torch.from_numpy(x[:, :1] * np.float32(spec.std[0]) + np.float32(spec.mean[0]))  # back to [0, 1]
    g = torch.Generator().manual_seed(seed)
    return to_input(augment(x01, AugmentConfig(), g), spec).numpy().astype(np.float32)
