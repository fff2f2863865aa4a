"""Video analysis speed: a 640x480 video with 3 faces, end to end (target: >= 30 analysed fps on 2 threads).

Makes a deterministic 640x480 H.264 video (scikit-image's astronaut head at
three sizes moving smoothly over a noise background), then runs what
``fer-edge video`` does on it with the ``fast`` model: decode (PyAV, in its
own thread), detect (BlazeFace), classify, track, and write JSON Lines
records. It does so once per detector cadence (``--detect-every``, default
1, 2 and 3: the detector on every, every 2nd, every 3rd analysed frame,
boxes carried forward in between), and reports for each the analysed frames
per second end to end and the milliseconds per analysed frame of each stage
(decode, detect, classify, write, other), plus, against ``--detect-every 1``,
how many labels agree and how well the carried boxes overlap. A variant that
fails gets a status row; the others still run. Also PyAV's raw decode speed
and timestamp accuracy on the same file (frame times against frame index /
fps). Prints the figures and writes them as JSON.

Usage::

    python -m benchmarks.video [--threads 2] [--frames 150] [--detect-every 1 2 3]
                               [--json benchmarks/results/video.json]

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
from fer_edge.tracking import iou
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


Key = tuple[int, int]  # (frame, track)
Seen = dict[Key, tuple[tuple[int, int, int, int], str]]  # -> (box, label)


def warm_classifier(threads: int) -> Classifier:
    """The ``fast`` classifier with both models opened and run once, outside the timing."""
    clf = Classifier("fast", threads=threads)
    clf.predict_batch([Image.new("L", (48, 48))])
    clf.detector.detect(Image.new("RGB", (WIDTH, HEIGHT)))
    return clf


def run(clf: Classifier, path: Path, detect_every: int = 1) -> tuple[dict, Seen]:
    """Everything ``fer-edge video --model fast --format jsonl --detect-every N`` does, timed per stage.

    Returns:
        The row of figures, and each record's box and label by (frame, track),
        to compare a variant's records with ``detect_every=1``'s.
    """
    sink = io.StringIO()
    writer = make_video_writer("jsonl", sink, clf.labels)
    assert type(writer) is type(make_writer("jsonl", sink, clf.labels))  # the classify writer
    writer.begin()
    write_s = 0.0
    seen: Seen = {}
    t0 = time.perf_counter()
    with clf.analyze_video(path, detect_every=detect_every) as analysis:
        for result in analysis:
            tw = time.perf_counter()
            for record in result.records(str(path)):
                writer.write(record)
            write_s += time.perf_counter() - tw
            seen.update({(result.frame, f.track): (f.box, f.label) for f in result.faces})
    elapsed = time.perf_counter() - t0
    writer.end()
    s = analysis.stats
    per_frame = {  # ms per analysed frame; detect is amortised over the frames it skips
        "decode (own thread, overlaps)": 1000 * s.decode_s / s.decoded,
        "detect": 1000 * s.detect_s / s.analysed,
        "classify": 1000 * s.classify_s / s.analysed,
        "write": 1000 * write_s / s.analysed,
    }
    # What the iterating thread spent outside the stages: tracking, carrying,
    # waiting for the decoder (when it is the bottleneck), Python overhead.
    rest = 1000 * elapsed / s.analysed - per_frame["detect"] - per_frame["classify"] - per_frame["write"]
    row = {
        "detect_every": detect_every,
        "status": "ok",
        "analysed_frames": s.analysed,
        "detector_passes": s.detections,
        "faces": s.faces,
        "carried_faces": s.carried,
        "tracks": s.tracks,
        "seconds": round(elapsed, 3),
        "analysed_fps": round(s.analysed / elapsed, 1),
        "meets_target": s.analysed / elapsed >= TARGET_FPS,
        "ms_per_frame": {**{k: round(v, 3) for k, v in per_frame.items()},
                         "other (track, wait for decode)": round(rest, 3)},
        "ms_per_detector_pass": round(1000 * s.detect_s / max(1, s.detections), 2),
    }
    return row, seen


def agreement(seen: Seen, reference: Seen) -> dict:
    """How a variant's records compare with ``detect_every=1``'s on the same (frame, track).

    Returns the share of records with the same label, and the mean and worst
    IoU of their boxes (what carrying boxes between detections costs).
    """
    shared = [k for k in seen if k in reference]
    if not shared:
        return {"records_compared": 0}
    ious = [iou(seen[k][0], reference[k][0]) for k in shared]
    same = sum(seen[k][1] == reference[k][1] for k in shared)
    return {"records_compared": len(shared), "missing": len(reference) - len(shared),
            "same_label": round(same / len(shared), 4), "box_iou_mean": round(float(np.mean(ious)), 3),
            "box_iou_min": round(float(min(ious)), 3)}


def variant(clf: Classifier, path: Path, detect_every: int, reference: Seen | None) -> tuple[dict, Seen]:
    """One row of the report; a failure becomes a status row, so the other variants still run."""
    try:
        row, seen = run(clf, path, detect_every)
    except Exception as exc:  # report and go on: one variant's failure is a result too
        return {"detect_every": detect_every, "status": f"failed: {type(exc).__name__}: {exc}"}, {}
    if reference is not None and detect_every != 1:
        row["vs_detect_every_1"] = agreement(seen, reference)
    return row, seen


def summary_lines(rows: list[dict]) -> list[str]:
    """A short table of the variants, for people."""
    lines = [f"{'detect_every':>12}  {'fps':>6}  {'decode':>7}  {'detect':>7}  {'classify':>8}  "
             f"{'write':>6}  {'other':>6}  status"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['detect_every']:>12}  {'-':>6}  {'':>7}  {'':>7}  {'':>8}  {'':>6}  "
                         f"{'':>6}  {row['status']}")
            continue
        ms = list(row["ms_per_frame"].values())
        lines.append(f"{row['detect_every']:>12}  {row['analysed_fps']:>6.1f}  {ms[0]:>7.2f}  "
                     f"{ms[1]:>7.2f}  {ms[2]:>8.2f}  {ms[3]:>6.2f}  {ms[4]:>6.2f}  "
                     f"ok{' (meets target)' if row['meets_target'] else ''}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print it, and save it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1, 2, 3], metavar="N",
                        help="detector cadences to measure (default: 1 2 3)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.detect_every):
        parser.error("--detect-every: each N must be >= 1")
    clf = warm_classifier(args.threads)
    rows: list[dict] = []
    reference: Seen | None = None
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp) / "bench.mp4", args.frames)
        decode = decode_only(path)
        for n in args.detect_every:
            row, seen = variant(clf, path, n, reference)
            if n == 1 and row["status"] == "ok":
                reference = seen
            rows.append(row)
    report = {
        "video": f"{WIDTH}x{HEIGHT} H.264, {args.frames} frames at {RATE} fps, 3 faces",
        "model": "fast",
        "threads": args.threads,
        "target_fps": TARGET_FPS,
        "meets_target_with_detect_every": [r["detect_every"] for r in rows if r.get("meets_target")],
        "pyav_decode": decode,
        "end_to_end": rows,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "onnxruntime": ort_version(),
        "pyav": require_av().__version__,
    }
    print(json.dumps(report, indent=2))
    print("\n".join(["", "ms per analysed frame (decode runs in its own thread, overlapping):",
                     *summary_lines(rows)]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
