"""``python -m benchmarks.quant_sweep``: which int8 recipe, if any, pays off for this model.

For one checkpoint: export fp32, then quantize it with each recipe (format,
which nodes, calibration, types) and measure val accuracy, agreement with
fp32 and latency at batch 1 and 32, all with ONNX Runtime. A recipe is worth
keeping only if it is faster than fp32 at batch 32 *and* within 1 point of
its accuracy. Recipes are :meth:`export.variants.QuantConfig.label` strings.

Example:
    python -m benchmarks.quant_sweep runs/b0-96/best.pt --data ../shared/data/fer2013 \\
        --out runs/quant-sweep --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from export.evaluate import (calibration_inputs, default_threads, load_labelled, make_session,
                             run_session, score)
from export.variants import QuantConfig, to_int8

from .config import BenchConfig
from .latency import LatencyStats, measure
from .runtimes import onnx_runtime

log = logging.getLogger("benchmarks")

#: Naive baselines (the pilot's), better calibration, then recipes that keep sensitive parts in float.
DEFAULT_RECIPES = (
    "qoperator/all/minmax/per-channel/u8s8",
    "qdq/all/minmax/per-channel/u8s8",
    "qoperator/pointwise/minmax/per-channel/u8s8",
    "qoperator/all/percentile/per-channel/u8s8",
    "qoperator/all/entropy/per-channel/u8s8",
    "qoperator/all-but-se/percentile/per-channel/u8s8",
    "qoperator/all/percentile/per-channel/u8s8/float-ends",
    "qoperator/all/percentile/per-channel/s8s8",
    "qoperator/all/percentile/per-channel/u8s8/reduce-range",
    "qdq/all-but-se/percentile/per-channel/u8s8",
    "qoperator/pointwise/percentile/per-channel/u8s8",
)


@dataclass
class SweepRow:
    """One recipe's figures (fp32 is the reference row)."""

    recipe: str
    accuracy: float
    macro_f1: float
    agreement_vs_fp32: float
    b1: LatencyStats
    b32: LatencyStats
    speedup_b32: float
    size_mb: float
    quantize_s: float

    def keep(self, fp32_accuracy: float) -> bool:
        """Faster than fp32 at batch 32 and within 1 point of its accuracy."""
        return self.speedup_b32 > 1.0 and fp32_accuracy - self.accuracy <= 0.01


def _measure(path: Path, recipe: str, val, fp32_top1, timing: BenchConfig, threads: int,
             quantize_s: float, fp32_b32: float | None) -> SweepRow:
    rt = onnx_runtime(path, threads)
    logits = run_session(make_session(path, threads), val.inputs)
    s = score(logits, val.labels, val.classes)
    b1, b32 = measure(rt, val.inputs, 1, timing), measure(rt, val.inputs, 32, timing)
    agree = float((logits.argmax(1) == fp32_top1).mean()) if fp32_top1 is not None else 1.0
    return SweepRow(recipe, s.accuracy, s.macro_f1, agree, b1, b32,
                    (fp32_b32 or b32.median_ms) / b32.median_ms, path.stat().st_size / 1e6, quantize_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/quant-sweep"))
    p.add_argument("--recipe", action="append", default=None,
                   help=f"int8 recipe label (repeatable; default: {len(DEFAULT_RECIPES)} presets)")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--val-limit", type=int, default=0, help="val images per class (0 = all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from export import ExportConfig, export_checkpoint

    recipes = [QuantConfig.from_label(r) for r in (a.recipe or DEFAULT_RECIPES)]
    threads = a.threads or default_threads()
    a.out.mkdir(parents=True, exist_ok=True)
    fp32_path = a.out / "fp32.onnx"
    report = export_checkpoint(ExportConfig(checkpoint=a.checkpoint, out=fp32_path, force=True, threads=threads))
    import onnx

    fp32 = onnx.load(fp32_path)
    info = report.info
    val = load_labelled(a.data, "val", info.labels, info.preprocess, a.val_limit)
    calib = calibration_inputs(a.data, info.labels, info.preprocess, a.calib_images, seed=0)
    timing = BenchConfig(data=a.data, warmup=5, min_iters=10, min_seconds=a.min_seconds)
    base = _measure(fp32_path, "fp32", val, None, timing, threads, 0.0, None)
    fp32_top1 = run_session(make_session(fp32_path, threads), val.inputs).argmax(1)
    rows, failures = [base], {}
    for q in recipes:
        log.info("int8 %s", q.label())
        t0 = time.perf_counter()
        path = a.out / (q.label().replace("/", "_") + ".onnx")
        try:
            onnx.save(to_int8(fp32, calib, q), path)
        except Exception as exc:  # ORT's quantizer raises many types; one bad recipe must not end the sweep
            failures[q.label()] = f"{type(exc).__name__}: {exc}"
            log.warning("int8 %s failed: %s", q.label(), failures[q.label()])
            continue
        rows.append(_measure(path, q.label(), val, fp32_top1, timing, threads, time.perf_counter() - t0,
                             base.b32.median_ms))
        print(_row(rows[-1], base.accuracy), flush=True)
    print(f"\n{'recipe':<62}{'acc':>8}{'d pts':>7}{'agree':>8}{'ms b1':>8}{'ms b32':>8}{'x fp32':>8}{'MB':>7}  keep")
    for r in rows:
        print(_row(r, base.accuracy))
    for label, why in failures.items():
        print(f"{label:<62}FAILED {why}")
    (a.out / "sweep.json").write_text(json.dumps(
        {"threads": threads, "val_images": len(val), "calib_images": len(calib),
         "loadavg": list(os.getloadavg()), "rows": [asdict(r) | {"keep": r.keep(base.accuracy)} for r in rows],
         "failures": failures}, indent=2))
    return 0


def _row(r: SweepRow, fp32_acc: float) -> str:
    return (f"{r.recipe:<62}{r.accuracy:>8.4f}{(r.accuracy - fp32_acc) * 100:>+7.2f}{r.agreement_vs_fp32:>8.2%}"
            f"{r.b1.median_ms:>8.3f}{r.b32.median_ms:>8.3f}{r.speedup_b32:>8.2f}{r.size_mb:>7.2f}  "
            f"{'yes' if r.keep(fp32_acc) else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
