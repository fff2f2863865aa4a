"""Peak memory of one runtime, measured in a fresh process.

Run by the benchmark as ``python -m benchmarks.probe KIND PATH ...``; prints one
JSON line. A fresh process per runtime keeps one runtime's allocations out of
another's peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    On Linux ``ru_maxrss`` survives ``execve``, so a child started by a big
    parent would report the parent's peak; ``VmHWM`` belongs to this
    process's own address space, so it is read first.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__)
    p.add_argument("kind", choices=("torch", "onnx"))
    p.add_argument("path", type=Path, nargs="+", help="checkpoint(s) (torch; several: an ensemble) or ONNX file")
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--tta", choices=("none", "flip"), default="none")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    from .runtimes import onnx_runtime, torch_runtime

    if a.kind == "torch":
        import torch  # noqa: F401  (imported before the baseline reading on purpose)
    else:
        import onnxruntime  # noqa: F401
    after_import = peak_rss_mb()
    if a.kind == "torch":
        runtime = torch_runtime(a.path[0], a.tta, a.threads, a.path[1:])
    else:
        runtime = onnx_runtime(a.path[0], a.threads)
    after_load = peak_rss_mb()
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, 3, a.input_size, a.input_size)).astype(np.float32)
    for _ in range(a.iters):
        runtime.predict(x)
    print(json.dumps({"after_import_mb": after_import, "after_load_mb": after_load,
                      "peak_mb": peak_rss_mb(), "batch": a.batch}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
