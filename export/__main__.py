"""``python -m export``: checkpoint -> verified ONNX file with fer-edge metadata.

Examples:
    python -m export runs/b0-96/best.pt --out model.onnx --data ../shared/data/fer2013
    python -m export runs/b0-96/best.pt --out model-int8.onnx --data ../shared/data/fer2013 --precision int8
    python -m export runs/b0-96/best.pt --out model-w16.onnx --data ../shared/data/fer2013 --weights fp16  # half size
    python -m export runs/b0-96/best.pt --out model-tta.onnx --tta flip --force
    python -m export runs/a/best.pt runs/b/best.pt --out ensemble.onnx   # mean of both models' logits

Exit status: 0 written; 1 a check failed (nothing written); 2 bad arguments,
checkpoint or data folder, or --out exists without --force.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .onnx_export import MIN_OPSET, PRECISIONS, TTA_MODES, WEIGHT_STORAGE, ExportConfig
from .variants import CALIB_METHODS, INT8_TYPES, QUANT_FORMATS, QUANT_SCOPES, QuantConfig


def build_parser() -> argparse.ArgumentParser:
    d, q = ExportConfig(Path(), Path()), QuantConfig()
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="+",
                   help="fer-edge training checkpoint (best.pt); several make one graph averaging their logits")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--data", type=Path, default=None,
                   help="image-folder root with train/<class>/ and val/<class>/: parity on val images, "
                        "val accuracy per precision, int8 calibration")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp16: weights and compute; int8: ORT static quantization (recipe below)")
    p.add_argument("--weights", choices=WEIGHT_STORAGE, default=d.weights,
                   help="how an fp32 graph stores its weights; fp16 halves the file, compute stays fp32")
    p.add_argument("--opset", type=int, default=d.opset, help=f"ONNX opset, >= {MIN_OPSET} (default %(default)s)")
    p.add_argument("--tta", choices=TTA_MODES, default=d.tta,
                   help="flip: the graph averages the logits of the image and its mirror")
    p.add_argument("--calib-images", type=int, default=d.calib_images,
                   help="training images for int8 calibration (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--model-version", default=None, help="version string stored in the metadata "
                   "(default <run folder>-e<epoch>)")
    p.add_argument("--parity-images", type=int, default=d.parity_images)
    p.add_argument("--val-limit", type=int, default=d.val_limit_per_class,
                   help="val images per class to score (0 = all)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0 = all cores)")
    g = p.add_argument_group("int8 recipe (defaults: the most accurate one in python -m benchmarks.quant_sweep)")
    g.add_argument("--int8-format", choices=QUANT_FORMATS, default=q.format)
    g.add_argument("--int8-scope", choices=QUANT_SCOPES, default=q.scope)
    g.add_argument("--int8-calibration", choices=CALIB_METHODS, default=q.calibrate_method)
    g.add_argument("--int8-percentile", type=float, default=q.percentile)
    g.add_argument("--int8-per-tensor", action="store_true", help="one weight scale per tensor")
    g.add_argument("--int8-reduce-range", action="store_true")
    g.add_argument("--int8-float-ends", action="store_true",
                   help="keep the stem conv and the classifier in float")
    g.add_argument("--int8-activations", choices=INT8_TYPES, default=q.activation_type)
    g.add_argument("--int8-weights", choices=INT8_TYPES, default=q.weight_type)
    return p


def config_from_args(a: argparse.Namespace) -> ExportConfig:
    """Map parsed flags onto :class:`ExportConfig`."""
    quant = QuantConfig(
        format=a.int8_format, scope=a.int8_scope, calibrate_method=a.int8_calibration,
        percentile=a.int8_percentile, per_channel=not a.int8_per_tensor,
        reduce_range=a.int8_reduce_range, activation_type=a.int8_activations, weight_type=a.int8_weights,
        keep_ends_float=a.int8_float_ends,
    )
    return ExportConfig(
        checkpoint=a.checkpoint[0], ensemble=tuple(a.checkpoint[1:]), out=a.out, data=a.data,
        precision=a.precision, weights=a.weights, opset=a.opset,
        tta=a.tta, calib_images=a.calib_images, force=a.force, model_version=a.model_version,
        parity_images=a.parity_images, val_limit_per_class=a.val_limit, threads=a.threads, quant=quant,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from train.checkpoint import CheckpointError
    from train.data import DataLayoutError

    from .onnx_export import ExportError, OutputExistsError, export_checkpoint

    try:
        cfg = config_from_args(args)
        cfg.validate()
        report = export_checkpoint(cfg)
    except (ValueError, CheckpointError, DataLayoutError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    for warning in report.warnings:
        # Repeated on stderr so it survives `> log` redirection of the summary.
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
