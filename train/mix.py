"""Mixup and CutMix on whole batches, with timm's ``Mixup`` semantics (batch mode).

Per batch: with probability ``prob`` the batch is mixed, else left alone. When
both are on, a mixed batch uses CutMix with probability ``cutmix_share``, else
mixup. lambda ~ Beta(alpha, alpha) of the chosen method. Every image is mixed
with the batch in flipped order (image i with image B-1-i), as timm does, so
the partner labels are ``y.flip(0)`` and the pairs are mutual.

* mixup: ``x = lam * x + (1 - lam) * x.flip(0)``;
* CutMix: one box of area share ``1 - lam`` (side ``sqrt(1 - lam)`` of each
  image side, centre uniform, clipped at the border) is pasted from the
  partner into every image; lambda is then corrected to the share that was
  really kept: ``lam = 1 - box_area / (H * W)``.

The loss is ``lam * CE(logits, y) + (1 - lam) * CE(logits, y.flip(0))`` with the
trainer's own (class-weighted, label-smoothed) criterion. With weighted mean
reduction each term divides by the summed class weights of its labels, and
``y.flip(0)`` has the same labels as ``y``, so both terms share one denominator:
every sample's two halves are weighted by their own class's weight.

Randomness: one draw from the trainer's seeded ``torch.Generator`` (checkpointed
in ``last.pt``) seeds a NumPy generator for the batch's decisions, lambda
(NumPy has a Beta sampler; torch's has no ``generator=`` argument) and box.
Nothing else is stored, so ``--resume`` stays exact, and under torchrun every
process draws the same lambda from its identical generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIX_MODES = ("none", "mixup", "cutmix")


@dataclass(frozen=True)
class MixConfig:
    """Mixup/CutMix strengths (alpha 0 turns a method off), as in timm's ``Mixup``.

    Attributes:
        mixup: Beta(alpha, alpha) concentration for mixup; 0 = off.
        cutmix: Beta(alpha, alpha) concentration for CutMix; 0 = off.
        prob: Chance that a batch is mixed at all (timm's ``prob``).
        cutmix_share: With both on, chance that a mixed batch uses CutMix
            rather than mixup (timm's ``switch_prob``).

    Raises:
        ValueError: An alpha below 0 (or not finite) or a probability outside
            [0, 1]; the message names the command-line option.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    cutmix_share: float = 0.5

    def __post_init__(self) -> None:
        # `not x >= 0` also refuses NaN, which every comparison answers False.
        for option, alpha in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if not (alpha >= 0 and math.isfinite(alpha)):
                raise ValueError(f"{option} {alpha}: must be a finite alpha >= 0 (0 turns it off)")
        for option, p in (("--mix-prob", self.prob), ("--cutmix-share", self.cutmix_share)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{option} {p}: must be a probability between 0 and 1")

    @property
    def enabled(self) -> bool:
        """Whether any batch can be mixed (when not, no random numbers are drawn at all)."""
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


@dataclass(frozen=True)
class Mixed:
    """One batch after :func:`mix_batch`.

    Attributes:
        x: The (possibly) mixed images, same shape as the input.
        lam: Share of each image's own content (1.0 when not mixed); for CutMix
            the corrected, real share of pixels kept.
        mode: ``"none"``, ``"mixup"`` or ``"cutmix"``.
        box: CutMix's pasted box ``(y0, y1, x0, x1)``, end-exclusive; else None.
    """

    x: torch.Tensor
    lam: float = 1.0
    mode: str = "none"
    box: tuple[int, int, int, int] | None = None

    @property
    def mixed(self) -> bool:
        return self.mode != "none"


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of side ``sqrt(1 - lam)`` of the image's, centre uniform, clipped.

    Returns:
        ``(y0, y1, x0, x1)``, end-exclusive; may be empty, or smaller than asked after clipping.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    x0, x1 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    return y0, y1, x0, x1


def mix_batch(x: torch.Tensor, cfg: MixConfig, g: torch.Generator) -> Mixed:
    """Mix a batch (B, C, H, W) with its flipped order, or leave it as it is.

    Args:
        x: Images; not modified (a new tensor is returned when mixed).
        cfg: Strengths and probabilities.
        g: The trainer's generator; one value is drawn per batch when ``cfg.enabled``,
            none otherwise (so a run without mixing is unchanged).

    Returns:
        The batch, the lambda it was mixed with and how.
    """
    if not cfg.enabled:
        return Mixed(x)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    if rng.random() >= cfg.prob:
        return Mixed(x)
    if cfg.mixup > 0 and cfg.cutmix > 0:
        use_cutmix = bool(rng.random() < cfg.cutmix_share)
    else:
        use_cutmix = cfg.cutmix > 0
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam = float(rng.beta(alpha, alpha))
    partner = x.flip(0)
    if not use_cutmix:
        return Mixed(lam * x + (1.0 - lam) * partner, lam, "mixup")
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = box = cutmix_box(h, w, lam, rng)
    out = x.clone()
    out[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    # The box was rounded down and clipped at the border: the labels follow the real area.
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return Mixed(out, lam, "cutmix", box)


def mixed_loss(criterion: nn.Module, logits: torch.Tensor, y: torch.Tensor, mixed: Mixed) -> torch.Tensor:
    """``lam * criterion(y) + (1 - lam) * criterion(y.flip(0))``; just ``criterion(y)`` when not mixed.

    ``criterion`` is the trainer's weighted, label-smoothed cross-entropy, so
    label smoothing and class weights apply to each label as without mixing.
    """
    loss = criterion(logits, y)
    if not mixed.mixed:
        return loss
    return mixed.lam * loss + (1.0 - mixed.lam) * criterion(logits, y.flip(0))


def dominant_labels(y: torch.Tensor, mixed: Mixed) -> torch.Tensor:
    """The label that owns the larger share of each image (``y`` itself when lam >= 0.5).

    Train accuracy is measured against it, so it stays a meaningful number with mixing.
    """
    return y if mixed.lam >= 0.5 else y.flip(0)


def mix_teacher_logits(logits: torch.Tensor, mixed: Mixed, temperature: float) -> torch.Tensor:
    """Cached teacher: mix its soft targets like the images, returned as logits for ``kd_loss``.

    The cached logits were computed once per clean image, so a mixed image has
    no logits of its own. The approximation: its target is
    ``lam * softmax(t_i / T) + (1 - lam) * softmax(t_partner / T)``, the teacher's
    two soft targets mixed with the batch's lambda and partner. (The online
    teacher sees the mixed image itself, which is exact.) Returned as
    ``T * log(q)``, whose softmax at temperature T is ``q`` again, so
    :func:`train.teacher.kd_loss` takes it unchanged.
    """
    if not mixed.mixed:
        return logits
    t = temperature
    q = mixed.lam * F.softmax(logits.float() / t, dim=1) + (1.0 - mixed.lam) * F.softmax(
        logits.flip(0).float() / t, dim=1)
    return t * q.clamp_min(torch.finfo(q.dtype).tiny).log()
