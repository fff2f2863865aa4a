"""``python -m benchmarks.int8_kernels``: an int8 model on ONNX Runtime's exact and default int8 kernels.

On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), ONNX Runtime's default
u8 x s8 kernels add pairs of products in int16 and saturate, so an int8
model's answers depend on the CPU. fer-edge opens every session with ORT's
exact kernels on such CPUs, and only there (:func:`fer_edge.providers.session_options`).
This measures, on this CPU and for one int8 file, what that choice gives and
costs: val accuracy, top-1 agreement and largest logit difference between the
two, and latency at batch 1 and 32, timed round-robin. On a CPU with VNNI (or
not x86) the two sessions are the same and so should be the figures.

Example:
    python -m benchmarks.int8_kernels fer_edge/models/fast.onnx --data ../shared/data/fer2013 \\
        --threads 2 --json benchmarks/results/int8_kernels-avx2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.evaluate import cpu_model, default_threads, load_labelled, make_session, run_session, score
from fer_edge.atomic import atomic_write
from fer_edge.providers import cpu_vnni_flags, exact_int8_matters

from .latency import LatencyStats, TimingPlan, measure_interleaved
from .runtimes import session_runtime


@dataclass
class KernelRow:
    """One way of running the file: its val figures and latency."""

    kernels: str
    accuracy: float
    macro_f1: float
    b1: LatencyStats
    b32: LatencyStats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an int8 ONNX file exported by fer-edge")
    p.add_argument("--data", type=Path, required=True, help="FER-2013 folders (val/<class>/)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    threads = a.threads or default_threads()
    sessions = {"exact": make_session(a.model, threads, exact_int8=True),
                "ORT default": make_session(a.model, threads, exact_int8=False)}
    runtimes = [session_runtime(s, a.model) for s in sessions.values()]
    info = runtimes[0].model_info
    if info.precision != "int8":
        p.error(f"{a.model}: precision {info.precision}, not int8: its kernels do not depend on this option")
    val = load_labelled(a.data, "val", info.labels, info.preprocess)
    logits = {k: run_session(s, val.inputs) for k, s in sessions.items()}
    plan = TimingPlan(rounds=a.rounds)
    b1 = measure_interleaved(runtimes, val.inputs, 1, plan)
    b32 = measure_interleaved(runtimes, val.inputs, 32, plan)
    rows = []
    for i, (k, z) in enumerate(logits.items()):
        s = score(z, val.labels, val.classes)
        rows.append(KernelRow(k, s.accuracy, s.macro_f1, b1[i], b32[i]))
    (ex, de) = logits.values()
    agree = float(np.mean(ex.argmax(1) == de.argmax(1)))
    diff = float(np.abs(ex - de).max())
    vnni = list(cpu_vnni_flags() or ())
    chosen = "exact" if exact_int8_matters(platform.machine(), cpu_vnni_flags()) else "ORT default"
    print(f"{a.model} on {cpu_model()} ({platform.machine()}; VNNI flags: {', '.join(vnni) or 'none'}), "
          f"{threads} threads, {len(val)} val images")
    print(f"{'kernels':<20}{'val acc':>9}{'macro-F1':>10}{'ms b1':>8}{'ms b32':>8}")
    for r in rows:
        print(f"{r.kernels:<20}{r.accuracy * 100:>8.2f}%{r.macro_f1:>10.3f}"
              f"{r.b1.median_ms:>8.3f}{r.b32.median_ms:>8.3f}")
    print(f"same top-1 on {agree * 100:.2f}% of images; largest logit difference {diff:.4f}; "
          f"load average {os.getloadavg()[0]:.1f}; fer-edge uses {chosen} kernels on this CPU")
    if a.json:
        doc = {"model": str(a.model), "cpu": cpu_model(), "machine": platform.machine(), "vnni_flags": vnni,
               "fer_edge_uses": chosen, "threads": threads, "val_images": len(val), "top1_agreement": agree,
               "max_abs_logit_diff": diff,
               "loadavg": list(os.getloadavg()), "rows": [asdict(r) for r in rows]}
        with atomic_write(a.json) as f:
            f.write(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
