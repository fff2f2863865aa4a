"""The Ray engine against the local engine: throughput, start-up, and a 10-million-image projection.

Runs ``fer-edge classify`` as users do, in fresh processes, alternating the
engines so that both see the same machine load (note it: on a shared machine
the load average is recorded with the results):

* start-up: one image, wall time (interpreter, imports, model; for Ray also
  starting Ray locally, the actor pool, and shutting down);
* a folder run of each engine; steady rate = images / (wall - start-up);
* per-worker rate of the Ray engine = its steady rate / workers, and from it
  the wall time and core-hours for 10 million images at several pool sizes.

Usage:
    python -m benchmarks.ray_engine --data ../shared/data/fer2013/val --workers 2
    python -m benchmarks.ray_engine --help

Prints a summary and writes JSON (default ``benchmarks/results/ray_engine.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Images in the projection.
PROJECT_IMAGES = 10_000_000
#: Pool sizes the projection is given for.
PROJECT_WORKERS = (2, 16, 64, 256)


def _classify(args: list[str], out: Path) -> tuple[float, int, int]:
    """Run ``fer-edge classify ARGS -o OUT``; returns (wall seconds, exit status, records)."""
    cmd = [sys.executable, "-m", "fer_edge", "classify", *args, "--format", "jsonl",
           "--no-progress", "-o", str(out), "--force"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                          env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: some files failed, still a complete run
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    records = sum(1 for _ in out.open(encoding="utf-8")) if out.exists() else 0
    return wall, proc.returncode, records


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def measure(data: Path, workers: int, repeats: int, model: str | None) -> dict:
    """Alternate local and Ray runs; returns the JSON-ready results."""
    one = next(p for p in sorted(data.rglob("*")) if p.suffix.lower() in (".jpg", ".png"))
    common = ["--model", model] if model else []
    engines = {"local": [], "ray": ["--engine", "ray", "--workers", str(workers)]}
    runs: dict[str, dict[str, list[float]]] = {e: {"startup_s": [], "folder_s": []} for e in engines}
    images = 0
    loads = [_load()]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        for _ in range(repeats):
            for engine, extra in engines.items():
                wall, _, _ = _classify([str(one), *common, *extra], out)
                runs[engine]["startup_s"].append(wall)
                wall, _, images = _classify([str(data), *common, *extra], out)
                runs[engine]["folder_s"].append(wall)
                loads.append(_load())
                print(f"{engine}: start-up {runs[engine]['startup_s'][-1]:.1f} s, "
                      f"{images} images in {wall:.1f} s", file=sys.stderr)
    result: dict = {"images": images, "workers": workers, "repeats": repeats, "engines": {}}
    for engine, r in runs.items():
        startup, folder = min(r["startup_s"]), min(r["folder_s"])
        steady = images / max(folder - startup, 1e-9)
        result["engines"][engine] = {
            "startup_s": round(startup, 2), "folder_s": round(folder, 2),
            "images_per_s": round(images / folder, 1), "steady_images_per_s": round(steady, 1),
            "runs": r}
    per_worker = result["engines"]["ray"]["steady_images_per_s"] / workers
    result["ray_per_worker_images_per_s"] = round(per_worker, 1)
    result["ray_startup_overhead_s"] = round(
        result["engines"]["ray"]["startup_s"] - result["engines"]["local"]["startup_s"], 2)
    result["projection_10M"] = [
        {"workers": n, "hours": round(PROJECT_IMAGES / (per_worker * n) / 3600, 2),
         # One CPU core per worker (the default pool on a cluster), plus start-up.
         "core_hours": round(PROJECT_IMAGES / per_worker / 3600, 1)}
        for n in PROJECT_WORKERS]
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform(), "load_average_1min": loads}
    try:
        import ray

        result["machine"]["ray"] = ray.__version__
    except ImportError:
        pass
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013" / "val",
                   help="folder of images (default: the FER-2013 val split)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="runs per engine; the fastest counts")
    p.add_argument("--model", help="model name or file (default: the shipped default)")
    p.add_argument("--price-per-core-hour", type=float, default=0.04,
                   help="USD per vCPU-hour for the cost column (an assumption; default "
                        "%(default)s, about on-demand compute-optimised cloud prices)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray_engine.json")
    a = p.parse_args(argv)
    result = measure(a.data, a.workers, a.repeats, a.model)
    for row in result["projection_10M"]:
        row["usd"] = round(row["core_hours"] * a.price_per_core_hour, 2)
    result["price_per_core_hour_usd"] = a.price_per_core_hour
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    e = result["engines"]
    print(f"{result['images']} images; local: {e['local']['images_per_s']} img/s "
          f"({e['local']['steady_images_per_s']} steady, start-up {e['local']['startup_s']} s); "
          f"ray x{result['workers']}: {e['ray']['images_per_s']} img/s "
          f"({e['ray']['steady_images_per_s']} steady, start-up {e['ray']['startup_s']} s)")
    print(f"per Ray worker: {result['ray_per_worker_images_per_s']} img/s; 10M images: " + "; ".join(
        f"{r['workers']} workers {r['hours']} h" for r in result["projection_10M"])
        + f"; {result['projection_10M'][0]['core_hours']} core-hours "
          f"(~${result['projection_10M'][0]['usd']} at ${a.price_per_core_hour}/core-hour)")
    print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
