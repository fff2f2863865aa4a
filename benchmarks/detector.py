"""Face-detection speed: BlazeFace on a 1280x854 photo (target: <= 15 ms on 2 threads).

Times :meth:`fer_edge.blazeface.BlazeFace.detect` end to end (colour
conversion, resizing, both passes, decoding and non-maximum suppression) on a
1280x854 RGB photo made from scikit-image's astronaut (three heads of
different sizes on a textured background, so decoding and suppression have
work to do), and, for comparison, what ``min_face=24`` (a 24 px face in a
1920x1080 photo) costs. Each also gets a per-stage breakdown (median ms of
colour conversion, resizing, input tensors, ``session.run``, decoding,
suppression and box building, from :meth:`BlazeFace.detect_timed`), so it is
clear where the time goes. Prints the figures and writes them as JSON.

Usage::

    python -m benchmarks.detector [--threads 2] [--runs 50] [--model blazeface] [--json PATH]

``--model`` is a shipped detector's name (:data:`fer_edge.detector.SHIPPED_DETECTORS`,
default the first, ``blazeface``: the channel-aligned file; ``blazeface-unaligned``:
the conversion's direct output) or a BlazeFace ONNX file; the JSON (which
records ``model_file``) goes to
``benchmarks/results/detector.json`` for the default detector and to
``detector-NAME.json`` (NAME: the detector's name or the file's stem) otherwise,
unless ``--json`` says where.

The machine's load average is recorded with the result: on a busy machine the
median is pessimistic, the minimum closer to what an idle machine does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fer_edge.blazeface import STAGES, BlazeFace
from fer_edge.detector import SHIPPED_DETECTORS, shipped_detector
from fer_edge.providers import ort_version

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "detector.json"
TARGET_MS = 15.0


def photo(width: int = 1280, height: int = 854) -> Image.Image:
    """A deterministic photo-like test image with three faces."""
    from skimage import data  # test/bench dependency only, never the runtime's

    rng = np.random.default_rng(0)
    # Smooth noise as background: flat images make the scaling unrealistically cheap to decode.
    small = rng.integers(40, 220, (height // 16, width // 16, 3), dtype=np.uint8)
    canvas = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    astronaut = Image.fromarray(data.astronaut())
    head = astronaut.crop((128, 17, 322, 211))  # the face with some context around it
    scale = width / 1280
    for size, (x, y) in [(300, (80, 200)), (200, (560, 300)), (130, (980, 420))]:
        side = round(size * scale)
        canvas.paste(head.resize((side, side), Image.Resampling.BILINEAR),
                     (round(x * scale), round(y * scale)))
    return canvas


def time_detect(detector: BlazeFace, image: Image.Image, runs: int) -> dict:
    """Milliseconds per ``detect`` call over ``runs`` calls after 3 warm-up calls."""
    for _ in range(3):
        faces = detector.detect(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.detect(image)
        times.append((time.perf_counter() - start) * 1000)
    passes = detector._passes(*image.size)
    return {
        "image": list(image.size),
        "faces_found": len(faces),
        "model_inputs": [[p.input_w, p.input_h] for p in passes],
        "runs": runs,
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
        "min_ms": round(min(times), 2),
        "stages_median_ms": time_stages(detector, image, runs),
    }


def time_stages(detector: BlazeFace, image: Image.Image, runs: int) -> dict[str, float]:
    """Median milliseconds of each :data:`fer_edge.blazeface.STAGES` over ``runs`` timed calls.

    Run separately from the end-to-end timing so the clock reads never add to it.
    """
    laps: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(runs):
        _, ms = detector.detect_timed(image)
        for stage, value in ms.items():
            laps[stage].append(value)
    return {stage: round(statistics.median(values), 3) for stage, values in laps.items()}


def open_detector(model: str, provider: str, threads: int, min_face: float | None = None) -> BlazeFace:
    """A shipped detector by name, or a BlazeFace on the ONNX file ``model``."""
    if model in SHIPPED_DETECTORS:
        detector = shipped_detector(model, providers=provider, threads=threads, min_face=min_face)
        assert isinstance(detector, BlazeFace)  # every shipped detector is BlazeFace
        return detector
    return BlazeFace(Path(model), providers=provider, threads=threads, min_face=min_face)


def default_json(model: str) -> Path:
    """Where the results of ``model`` go without ``--json``."""
    if model == SHIPPED_DETECTORS[0]:
        return DEFAULT_JSON
    name = model if model in SHIPPED_DETECTORS else Path(model).stem
    return DEFAULT_JSON.with_name(f"detector-{name}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--model", default=SHIPPED_DETECTORS[0],
                        help=f"a shipped detector ({', '.join(SHIPPED_DETECTORS)}) or a BlazeFace ONNX file "
                             "(default %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"default {DEFAULT_JSON.relative_to(REPO)}, or detector-NAME.json for other models")
    args = parser.parse_args()
    args.json = args.json or default_json(args.model)
    default = open_detector(args.model, args.provider, args.threads)
    small_faces = open_detector(args.model, args.provider, args.threads, min_face=24)
    result = {
        "what": "BlazeFace.detect, end to end",
        "model": args.model,
        "model_file": default.model_path.name,
        "target_ms_1280x854": TARGET_MS,
        "threads": args.threads,
        "provider": default.providers[0],
        "onnxruntime": ort_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": platform.processor() or platform.machine(),
        "default_1280x854": time_detect(default, photo(1280, 854), args.runs),
        "min_face_24_1920x1080": time_detect(small_faces, photo(1920, 1080), max(5, args.runs // 5)),
    }
    result["meets_target"] = result["default_1280x854"]["median_ms"] <= TARGET_MS
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    stages = result["default_1280x854"]["stages_median_ms"]
    print("1280x854 stages (median ms): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"1280x854, {args.model}: {result['default_1280x854']['median_ms']} ms median on {args.threads} threads "
          f"(target {TARGET_MS} ms); written to {args.json}")


if __name__ == "__main__":
    main()
