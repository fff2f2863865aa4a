"""Training configuration: one dataclass, saved inside every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # train.mix imports torch; the config stays importable without it
    from .mix import MixConfig

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
DEFAULT_CLASSES = ("happy", "neutral", "sad")

# Normalisation that matches each initialisation's pre-training.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # TF EfficientNet-Lite: (x - 127) / 128
TEACHER_MODES = ("online", "cached", "paired")  # see train.teacher
#: ``--qat-weight-bits`` choices (train.qat): 0 trains without rounding the weights.
QAT_BITS = (0, 7, 8)


def parse_classes(text: str) -> list[str]:
    """``"happy,neutral,sad"`` or ``"all"`` -> validated class list (given order kept).

    Raises:
        ValueError: unknown or repeated class names; lists the valid ones.
    """
    if text.strip().lower() == "all":
        return list(FER2013_CLASSES)
    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in FER2013_CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; choose from {list(FER2013_CLASSES)} or 'all'")
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"need at least 2 distinct classes, got {names}")
    return names


@dataclass
class TrainConfig:
    """Everything that defines a training run (CLI flags map 1:1 onto fields)."""

    data: str = "../shared/data/fer2013"
    out: str = "runs/train"
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    input_size: int = 96
    arch: str = "b0"  # b0 | lite0 (train.model.ARCH_CHOICES)
    drop_blocks: list[int] = field(default_factory=list)  # stages whose last block is removed
    weights: str = "lite0"  # imagenet | lite0 | none | path to checkpoint
    pool: str = "avg"
    head_hidden: int = 0
    dropout: float = 0.2
    freeze_backbone: bool = False
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    class_weighting: str = "sqrt"  # none | sqrt | balanced
    ema_decay: float = 0.999  # 0 disables the weight average
    patience: int = 6  # early stopping on val accuracy; 0 disables
    tta: bool = True  # evaluate with horizontal-flip test-time augmentation
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = torch's default
    limit_per_class: int = 0  # cap images per class (quick experiments, tests); 0 = all
    # Knowledge distillation: exported ONNX teachers (logits averaged), mixed
    # into the loss as kd_alpha * T^2 * KL(teacher/T || student/T).
    teacher: list[str] = field(default_factory=list)
    teacher_mode: str = "online"  # online (each augmented batch) | cached (once per image) | paired
    kd_alpha: float = 0.7
    kd_temperature: float = 2.0
    # Mixup / CutMix (train.mix, timm's semantics): Beta(alpha, alpha) per method,
    # 0 = off; off by default, which keeps the recipe in README unchanged.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0  # chance a batch is mixed at all
    cutmix_share: float = 0.5  # with both on: chance a mixed batch uses CutMix
    # Also save each epoch's evaluated weights as <out>/epoch-NNN.pt (best.pt's
    # format, 16 MB each for B0), so the last epochs can be averaged afterwards
    # (stochastic weight averaging: tools/average_models.py soup --tail).
    keep_epochs: bool = False
    # Quantization-aware training (train.qat): conv and linear weights rounded to the
    # int8 export's per-channel grid of this many bits while training and evaluating;
    # 0 = off. 7 matches `python -m export --precision int8 --int8-reduce-range`.
    qat_weight_bits: int = 0
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF

    def mix_config(self) -> MixConfig:
        """The mixup/CutMix settings; raises ValueError naming the option for a bad value."""
        from .mix import MixConfig

        return MixConfig(mixup=self.mixup, cutmix=self.cutmix, prob=self.mix_prob,
                         cutmix_share=self.cutmix_share)

    def to_dict(self) -> dict:
        """JSON-safe dict (stored in checkpoints; read back by export/)."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
