"""``python -m train``: fine-tune EfficientNet-B0 or -Lite0 on an image-folder dataset.

Example:
    python -m train --data ../shared/data/fer2013 --out runs/b0-96 --epochs 20
    python -m train --arch lite0 --teacher fer_edge/models/default.onnx --out runs/fast
    python -m train --out runs/b0-96 --resume      # continue a killed run
    python -m train --mixup 0.2 --cutmix 1.0 --out runs/b0-96-mix   # mixup or CutMix per batch
    torchrun --nproc_per_node 4 -m train --out runs/b0-96   # 4 GPUs (or CPU processes)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .config import HALF, IMAGENET_MEAN, IMAGENET_STD, QAT_BITS, TEACHER_MODES, TrainConfig, parse_classes
from .model import ARCH_CHOICES, POOL_CHOICES, WEIGHT_CHOICES


def _stages(text: str) -> list[int]:
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected stage numbers like 4,5,6") from None


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=d.data, help="root with train/<class>/ and val/<class>/")
    p.add_argument("--out", default=d.out, help="run folder (checkpoints, metrics, plots)")
    p.add_argument("--classes", default=",".join(d.classes),
                   help="comma-separated FER-2013 classes, or 'all' (default %(default)s)")
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--arch", choices=ARCH_CHOICES, default=d.arch,
                   help="network: b0 (accurate) or lite0 (edge: ReLU6, no SE; int8-friendly)")
    p.add_argument("--weights", default=d.weights,
                   help=f"initial weights: one of {WEIGHT_CHOICES} or a checkpoint path")
    p.add_argument("--pool", choices=POOL_CHOICES, default=d.pool)
    p.add_argument("--head-hidden", type=int, default=d.head_hidden, help="0 = linear head")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--class-weighting", choices=("none", "sqrt", "balanced"), default=d.class_weighting)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 disables")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping; 0 disables")
    p.add_argument("--no-tta", action="store_true", help="evaluate without flip TTA")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--limit-per-class", type=int, default=d.limit_per_class)
    p.add_argument("--drop-blocks", type=_stages, default=[], metavar="S,S,...",
                   help="remove the last block of these stages (1-7) for a shallower, faster network")
    p.add_argument("--teacher", action="append", default=[], metavar="MODEL.onnx",
                   help="distil from an exported model (repeat to average several teachers)")
    p.add_argument("--teacher-mode", choices=TEACHER_MODES, default=d.teacher_mode,
                   help="online: teacher sees each augmented batch; cached: once per image, "
                        "before the first epoch; paired: cached, and a detector crop "
                        "(NAME.SCENE.png beside NAME.png) gets its bare image's targets "
                        "(default %(default)s)")
    p.add_argument("--kd-alpha", type=float, default=d.kd_alpha,
                   help="weight of the distillation term, 0..1 (default %(default)s)")
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    p.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA",
                   help="mixup: blend each image with another, lambda ~ Beta(ALPHA, ALPHA); "
                        "0 = off (default %(default)s)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, metavar="ALPHA",
                   help="CutMix: paste a box of another image over 1 - lambda of the area, "
                        "lambda ~ Beta(ALPHA, ALPHA); 0 = off (default %(default)s)")
    p.add_argument("--mix-prob", type=float, default=d.mix_prob, metavar="P",
                   help="chance that a batch is mixed at all, 0..1 (default %(default)s)")
    p.add_argument("--cutmix-share", type=float, default=d.cutmix_share, metavar="S",
                   help="with --mixup and --cutmix both on: chance that a mixed batch uses CutMix "
                        "rather than mixup, 0..1 (default %(default)s)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also save every epoch's evaluated weights as <out>/epoch-NNN.pt, for "
                        "weight averaging afterwards (may be switched on when resuming)")
    p.add_argument("--qat-weight-bits", type=int, choices=QAT_BITS, default=d.qat_weight_bits, metavar="BITS",
                   help="quantization-aware training: conv and linear weights on the int8 export's "
                        "per-channel grid, 8 or 7 bits (7: export with --int8-reduce-range); 0 = off")
    p.add_argument("--resume", action="store_true",
                   help="continue <out>/last.pt (with --epochs: re-plan the schedule to that length)")
    return p


def _normalisation_for(weights: str) -> tuple[tuple, tuple]:
    """Mean/std matching the initial weights' pre-training (a checkpoint keeps its own)."""
    if weights == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if weights in ("lite0", "none"):
        return HALF, HALF
    from .checkpoint import load

    spec = load(Path(weights))["preprocess"]
    return tuple(spec["mean"]), tuple(spec["std"])


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Map parsed flags onto :class:`TrainConfig` (normalisation follows --weights)."""
    mean, std = _normalisation_for(a.weights)
    values = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name)}
    values.update(classes=parse_classes(a.classes), tta=not a.no_tta, mean=mean, std=std)
    if not 0.0 <= a.kd_alpha <= 1.0:
        raise ValueError(f"--kd-alpha {a.kd_alpha}: must be between 0 and 1")
    if a.kd_temperature <= 0:
        raise ValueError(f"--kd-temperature {a.kd_temperature}: must be positive")
    cfg = TrainConfig(**values)
    cfg.mix_config()  # a bad --mixup/--cutmix/--mix-prob/--cutmix-share stops here, before any data
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from . import distributed
    from .checkpoint import CheckpointError
    from .data import DataLayoutError
    from .model import WeightsError
    from .teacher import TeacherError
    from .trainer import Trainer

    try:
        epochs_given = any(a == "--epochs" or a.startswith("--epochs=") for a in (argv or sys.argv[1:]))
        Trainer(cfg, resume=args.resume, epochs=args.epochs if args.resume and epochs_given else None,
                keep_epochs=args.keep_epochs).fit()
    except (DataLayoutError, WeightsError, CheckpointError, TeacherError, ValueError) as exc:
        if distributed.is_main_process():  # under torchrun, every process hits the same error
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
