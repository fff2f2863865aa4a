"""Video analysis speed: a 640x480 video with 3 faces, end to end (target: >= 30 analysed fps on 2 threads).

Makes a deterministic 640x480 H.264 video (scikit-image's astronaut head at
three sizes moving smoothly over a noise background), then runs what
``fer-edge video`` does on it with the ``fast`` model: decode (PyAV, in its
own thread), detect (BlazeFace), classify, track, and write JSON Lines
records. Reports analysed frames per second end to end and seconds per stage,
plus PyAV's raw decode speed and timestamp accuracy on the same file (frame
times against frame index / fps). Prints the figures and writes them as JSON.

Usage::

    python -m benchmarks.video [--threads 2] [--frames 150] [--json benchmarks/results/video.json]

The machine's load average is recorded with the result: on a shared machine
the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fer_edge import Classifier
from fer_edge.output import make_writer
from fer_edge.providers import ort_version
from fer_edge.video import require_av
from fer_edge.video_output import make_video_writer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "video.json"
TARGET_FPS = 30.0
WIDTH, HEIGHT, RATE = 640, 480, 30


def make_video(path: Path, frames: int, faces: int = 3) -> Path:
    """Write the benchmark video: ``faces`` heads (120, 96, 72 px) moving 2 px per frame."""
    from skimage import data  # bench dependency only, never the runtime's

    av = require_av()
    head = Image.fromarray(data.astronaut()).crop((128, 17, 322, 211))
    rng = np.random.default_rng(0)
    bg = Image.fromarray(rng.integers(40, 220, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8))
    bg = bg.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    sizes = [120, 96, 72][:faces]
    heads = [head.resize((s, s), Image.Resampling.BILINEAR) for s in sizes]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            im = bg.copy()
            for k, h in enumerate(heads):
                # Back and forth, so a long video keeps its faces in the picture.
                dx = (2 * i) % 200
                dx = dx if dx < 100 else 200 - dx
                im.paste(h, (20 + 210 * k + dx, 40 + 130 * k + dx // 3))
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_only(path: Path) -> dict:
    """PyAV alone: frames per second to RGB images, and the worst timestamp error."""
    av = require_av()
    t0 = time.perf_counter()
    errors = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate)
        for i, frame in enumerate(c.decode(stream)):
            frame.to_image()
            errors.append(abs(float(frame.time) - i / fps))
    elapsed = time.perf_counter() - t0
    return {"frames": len(errors), "fps": round(len(errors) / elapsed, 1),
            "max_timestamp_error_ms": round(1000 * max(errors), 3)}


def run(path: Path, threads: int) -> dict:
    """Everything ``fer-edge video --model fast --format jsonl`` does, timed per stage."""
    clf = Classifier("fast", threads=threads)
    # Warm up: open the detector and run both models once, outside the timing.
    clf.predict_batch([Image.new("L", (48, 48))])
    clf.detector.detect(Image.new("RGB", (WIDTH, HEIGHT)))
    sink = io.StringIO()
    writer = make_video_writer("jsonl", sink, clf.labels)
    assert type(writer) is type(make_writer("jsonl", sink, clf.labels))  # the classify writer
    writer.begin()
    write_s = 0.0
    t0 = time.perf_counter()
    with clf.analyze_video(path) as analysis:
        for result in analysis:
            tw = time.perf_counter()
            for record in result.records(str(path)):
                writer.write(record)
            write_s += time.perf_counter() - tw
    elapsed = time.perf_counter() - t0
    writer.end()
    s = analysis.stats
    return {
        "analysed_frames": s.analysed,
        "faces": s.faces,
        "tracks": s.tracks,
        "seconds": round(elapsed, 3),
        "analysed_fps": round(s.analysed / elapsed, 1),
        "ms_per_frame": {
            "decode (own thread, overlaps)": round(1000 * s.decode_s / s.decoded, 2),
            "detect": round(1000 * s.detect_s / s.analysed, 2),
            "classify": round(1000 * s.classify_s / s.analysed, 2),
            "write": round(1000 * write_s / s.analysed, 3),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print it, and save it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp) / "bench.mp4", args.frames)
        decode = decode_only(path)
        result = run(path, args.threads)
    report = {
        "video": f"{WIDTH}x{HEIGHT} H.264, {args.frames} frames at {RATE} fps, 3 faces",
        "model": "fast",
        "threads": args.threads,
        "target_fps": TARGET_FPS,
        "meets_target": result["analysed_fps"] >= TARGET_FPS,
        "pyav_decode": decode,
        "end_to_end": result,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "onnxruntime": ort_version(),
        "pyav": require_av().__version__,
    }
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
