"""``python -m benchmarks``: the shipped models, or one model's PyTorch vs ONNX Runtime rows, on CPU.

Without --model/--checkpoint: every shipped model (fer_edge/models/*.onnx) with
its variants and a B0 reference in one run (benchmarks/zoo.py: zoo.json, zoo.png).
With them, one trained model in depth:

Measures latency (batch 1/8/32), accuracy and macro-F1 on val, agreement with
PyTorch, file size, peak memory, and `fer-edge classify` cold start and folder
throughput; prints a table with PASS/MISS for the project's targets and writes
<out>/benchmark.json and <out>/benchmark.png.

Examples:
    python -m benchmarks --data ../shared/data/fer2013      # every shipped model
    python -m benchmarks --data ../shared/data/fer2013 --variant fast=fast-fp32.onnx \\
        --with-checkpoint fast=runs/fast/best.pt
    python -m benchmarks --data ../shared/data/fer2013 --checkpoint runs/b0-96/best.pt \\
        --model model.onnx model-int8.onnx --out runs/benchmark
    python -m benchmarks --data ../shared/data/fer2013 --checkpoint runs/b0-96/best.pt --quick
    python -m benchmarks --data ../shared/data/fer2013 --model fast   # one shipped model, ONNX rows only
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import BATCH_SIZES, BenchConfig


def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig(data=Path())
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="image-folder root with val/<class>/")
    p.add_argument("--model", nargs="*", default=[],
                   help="exported ONNX files of one model, or a shipped model's name (e.g. fast)")
    p.add_argument("--checkpoint", type=Path, nargs="+", default=None,
                   help="its checkpoint (PyTorch eager baseline); several for an ensemble export")
    p.add_argument("--out", type=Path, default=d.out, help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="few iterations and 20 images: a smoke test")
    p.add_argument("--limit", type=int, default=0, help="val images to use (0 = all; --quick: 20)")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--threads", type=int, default=0, help="threads for PyTorch and ORT alike (0 = all cores)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FILE",
                   help="shipped-models run: another exported file of shipped model NAME (repeatable)")
    p.add_argument("--with-checkpoint", action="append", default=[], metavar="NAME=FILE",
                   help="shipped-models run: the PyTorch checkpoint of shipped model NAME")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds, help="timing per runtime and batch")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from fer_edge.errors import ModelError
    from train.checkpoint import CheckpointError
    from train.data import DataLayoutError

    from .report import summary
    from .run import run_benchmarks

    if not a.model and not a.checkpoint:
        return _run_zoo(a)

    from fer_edge.zoo import resolve_model

    try:
        cfg = BenchConfig(data=a.data, out=a.out,
                          models=[resolve_model(m) for m in a.model],  # a shipped name, as everywhere in fer-edge
                          checkpoint=a.checkpoint[0] if a.checkpoint else None,
                          ensemble=list(a.checkpoint[1:]) if a.checkpoint else [],
                          quick=a.quick, limit=a.limit, batches=tuple(a.batches), threads=a.threads,
                          min_seconds=0.0 if a.quick else a.min_seconds)
        report = run_benchmarks(cfg)
    except (ValueError, CheckpointError, DataLayoutError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"\nwrote {Path(cfg.out) / 'benchmark.json'} and {Path(cfg.out) / 'benchmark.png'}")
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} {item!r}: expected NAME=FILE, e.g. fast=model.onnx")
        out.setdefault(name, []).append(Path(path))
    return out


def _run_zoo(a: argparse.Namespace) -> int:
    from fer_edge.errors import ModelError

    from .zoo import run_zoo, zoo_table

    cfg = BenchConfig(data=a.data, out=a.out, quick=a.quick, limit=a.limit, batches=tuple(a.batches),
                      threads=a.threads, min_seconds=0.0 if a.quick else a.min_seconds)
    try:
        variants = _pairs(a.variant, "--variant")
        checkpoints = {k: v[-1] for k, v in _pairs(a.with_checkpoint, "--with-checkpoint").items()}
        report = run_zoo(cfg, variants, checkpoints)
    except (ValueError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(zoo_table(report))
    print(f"wrote {Path(a.out) / 'zoo.json'} and {Path(a.out) / 'zoo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
