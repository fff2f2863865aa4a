"""``python -m benchmarks.quant_sweep``: which int8 recipe, if any, pays off for this model.

For one checkpoint: export fp32, then quantize it with each recipe (format,
which nodes, calibration, types) and measure val accuracy, agreement with
fp32 and latency at batch 1 and 32, all with ONNX Runtime. Latency is timed
round-robin over all models so that passing load disturbs them alike. A recipe is worth
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

from export.evaluate import calibration_inputs, default_threads, load_labelled, make_session, run_session, score
from export.variants import QuantConfig, to_int8
from fer_edge.metadata import ModelInfo

from .latency import LatencyStats, TimingPlan, measure_interleaved
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
    "qoperator/all-but-dw/minmax/per-channel/u8s8",
    "qdq/all-but-dw/minmax/per-channel/u8s8",
    "qdq/pointwise/minmax/per-channel/u8s8",
)


@dataclass
class SweepRow:
    """One recipe's figures (fp32 is the reference row)."""

    recipe: str
    path: str
    accuracy: float
    macro_f1: float
    agreement_vs_fp32: float
    size_mb: float
    quantize_s: float
    b1: LatencyStats | None = None
    b32: LatencyStats | None = None
    speedup_b32: float | None = None

    def keep(self, fp32_accuracy: float) -> bool:
        """Faster than fp32 at batch 32 and within 1 point of its accuracy."""
        return (self.speedup_b32 or 0.0) > 1.0 and fp32_accuracy - self.accuracy <= 0.01


def _score(path: Path, recipe: str, val, fp32_top1, threads: int, quantize_s: float) -> SweepRow:
    logits = run_session(make_session(path, threads), val.inputs)
    s = score(logits, val.labels, val.classes)
    agree = float((logits.argmax(1) == fp32_top1).mean()) if fp32_top1 is not None else 1.0
    return SweepRow(recipe, str(path), s.accuracy, s.macro_f1, agree, path.stat().st_size / 1e6, quantize_s)


def _quantize(fp32, calib, q: QuantConfig, path: Path, reuse: bool) -> float:
    """Write the int8 model for ``q`` (or reuse an earlier one); return seconds spent."""
    import onnx

    if reuse and path.is_file():
        return 0.0
    t0 = time.perf_counter()
    onnx.save(to_int8(fp32, calib, q), path)
    return time.perf_counter() - t0


def _time_rows(rows: list[SweepRow], val, threads: int, rounds: int) -> None:
    """Batch-1 and batch-32 latency of every row, interleaved (see measure_interleaved)."""
    runtimes = [onnx_runtime(Path(r.path), threads) for r in rows]
    plan = TimingPlan(warmup=2, rounds=rounds, min_iters=rounds, min_seconds=0.5 * rounds)
    b1 = measure_interleaved(runtimes, val.inputs, 1, plan)
    b32 = measure_interleaved(runtimes, val.inputs, 32, plan)
    for r, s1, s32 in zip(rows, b1, b32):
        r.b1, r.b32, r.speedup_b32 = s1, s32, b32[0].median_ms / s32.median_ms


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
    p.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    p.add_argument("--reuse", action="store_true", help="reuse int8 files already in --out")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import onnx

    from export import ExportConfig, export_checkpoint

    recipes = [QuantConfig.from_label(r) for r in (a.recipe or DEFAULT_RECIPES)]
    threads = a.threads or default_threads()
    a.out.mkdir(parents=True, exist_ok=True)
    fp32_path = a.out / "fp32.onnx"
    if not (a.reuse and fp32_path.is_file()):
        export_checkpoint(ExportConfig(checkpoint=a.checkpoint, out=fp32_path, force=True, threads=threads))
    fp32 = onnx.load(fp32_path)
    info = ModelInfo.from_props({p.key: p.value for p in fp32.metadata_props}, str(fp32_path))
    val = load_labelled(a.data, "val", info.labels, info.preprocess, a.val_limit)
    calib = calibration_inputs(a.data, info.labels, info.preprocess, a.calib_images, seed=0)
    base = _score(fp32_path, "fp32", val, None, threads, 0.0)
    fp32_top1 = run_session(make_session(fp32_path, threads), val.inputs).argmax(1)
    rows, failures = [base], {}
    for q in recipes:
        log.info("int8 %s", q.label())
        path = a.out / (q.label().replace("/", "_") + ".onnx")
        try:
            seconds = _quantize(fp32, calib, q, path, a.reuse)
        except Exception as exc:  # ORT's quantizer raises many types; one bad recipe must not end the sweep
            failures[q.label()] = f"{type(exc).__name__}: {exc}"
            log.warning("int8 %s failed: %s", q.label(), failures[q.label()])
            continue
        rows.append(_score(path, q.label(), val, fp32_top1, threads, seconds))
        log.info("  accuracy %.4f (%+.2f points)", rows[-1].accuracy, (rows[-1].accuracy - base.accuracy) * 100)
    log.info("timing %d models, interleaved", len(rows))
    _time_rows(rows, val, threads, a.rounds)
    print(f"{'recipe':<62}{'acc':>8}{'d pts':>7}{'agree':>8}{'ms b1':>8}{'ms b32':>8}{'x fp32':>8}{'MB':>7}  keep")
    for r in rows:
        print(_row(r, base.accuracy))
    for label, why in failures.items():
        print(f"{label:<62}FAILED {why}")
    print(f"({threads} threads, load average {os.getloadavg()[0]:.1f}; timings interleaved over {a.rounds} rounds)")
    (a.out / "sweep.json").write_text(json.dumps(
        {"threads": threads, "val_images": len(val), "calib_images": len(calib),
         "loadavg": list(os.getloadavg()), "rows": [asdict(r) | {"keep": r.keep(base.accuracy)} for r in rows],
         "failures": failures}, indent=2))
    return 0


def _row(r: SweepRow, fp32_acc: float) -> str:
    assert r.b1 is not None and r.b32 is not None, "rows are printed after _time_rows timed them"
    return (f"{r.recipe:<62}{r.accuracy:>8.4f}{(r.accuracy - fp32_acc) * 100:>+7.2f}{r.agreement_vs_fp32:>8.2%}"
            f"{r.b1.median_ms:>8.3f}{r.b32.median_ms:>8.3f}{r.speedup_b32:>8.2f}{r.size_mb:>7.2f}  "
            f"{'yes' if r.keep(fp32_acc) else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
