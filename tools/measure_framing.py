"""Measure how the face detector's boxes relate to FER-2013's 48x48 frame, and
what detection costs in accuracy.

For FER-2013 val images (``$FER_EDGE_DATA/val/<label>/*.jpg``, default
``../shared/data/fer2013``): each 48x48 face is upscaled ``--upscale`` times and
pasted on a grey canvas twice its size, so the whole face is visible with
room around it, as in a photo. BlazeFace then runs on the canvas, and:

* framing: the known frame (the pasted face) is compared with the detected
  box: frame side / box side, and the frame centre's offset from the box
  centre (in frame sides); medians and quartiles are printed. These give
  ``fer_edge.faces.FRAME_SCALE`` and ``FRAME_OFFSET_Y``.
* accuracy: the shipped model classifies the bare 48x48 crops
  (``faces="off"``) and the canvases through detection and aligned cropping
  (``faces="on"``, main face); both accuracies are printed, with how many
  canvases had no face found, and the accuracies on just the images where a
  face was found (bare crop, detected crop without and with alignment).

Usage: ``python tools/measure_framing.py --per-class 100 --json out.json``
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fer_edge import Classifier
from fer_edge.blazeface import BlazeFace
from fer_edge.faces import FRAME_OFFSET_Y, FRAME_SCALE, MIN_ROTATION_DEG, crop_face, eye_angle

REPO = Path(__file__).resolve().parents[1]


def canvas(face: Image.Image, upscale: int) -> tuple[Image.Image, int]:
    """The face, upscaled, centred on a grey canvas twice its side; and that side."""
    side = 48 * upscale
    big = face.convert("L").resize((side, side), Image.Resampling.BILINEAR)
    out = Image.new("L", (2 * side, 2 * side), 128)
    out.paste(big, (side // 2, side // 2))
    return out, side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--upscale", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013")) / "val"
    clf = Classifier(threads=2)
    detector = BlazeFace(providers=clf.providers, threads=2)
    ratios, dxs, dys, angles, scores = [], [], [], [], []
    bare_ok = det_ok = missed = total = 0
    found_bare_ok = found_unaligned_ok = 0  # on the images where a face was found
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = label_dir.name
        files = sorted(label_dir.glob("*.jpg"))[: args.per_class]
        if label not in clf.labels:
            continue  # a class the shipped model does not predict
        for f in files:
            face = Image.open(f)
            face.load()
            shown, side = canvas(face, args.upscale)
            total += 1
            bare_right = clf.analyze(face, faces="off").faces[0].label == label
            bare_ok += bare_right
            found = detector.detect(shown)
            if not found:
                missed += 1
                continue
            box = found[0]
            scores.append(box.score)
            ratios.append(side / max(box.w, box.h))
            # Known frame centre minus box centre, in frame sides (+y: down).
            dxs.append((side - (box.x + box.w / 2)) / side)
            dys.append((side - (box.y + box.h / 2)) / side)
            angle = eye_angle(box)
            if angle is not None:
                angles.append(angle)
            found_bare_ok += bare_right
            found_unaligned_ok += clf.predict(crop_face(shown, box, align=False)).label == label
            result = clf.analyze(shown, faces="on")  # the real pipeline: detect, align, crop
            det_ok += bool(result.faces) and result.main_face.label == label

    def q(values: list[float]) -> list[float]:
        return [round(float(v), 3) for v in np.percentile(values, [25, 50, 75])] if values else []

    report = {
        "images": total,
        "upscale": args.upscale,
        "found": total - missed,
        "frame_over_box_side_q25_50_75": q(ratios),
        "frame_centre_dx_q25_50_75": q(dxs),
        "frame_centre_dy_q25_50_75": q(dys),
        "eye_angle_deg_q25_50_75": q(angles),
        "abs_eye_angle_deg_p90_p95": [round(float(v), 1) for v in np.percentile(np.abs(angles), [90, 95])]
        if angles else [],
        "min_rotation_deg_used": MIN_ROTATION_DEG,
        "score_q25_50_75": q(scores),
        "score_min": round(min(scores), 3) if scores else None,
        "accuracy_bare_crops": round(bare_ok / total, 4),
        "accuracy_through_detection_misses_wrong": round(det_ok / total, 4),
        # The fair comparison: the same images, those where a face was found.
        "found_accuracy_bare_crops": round(found_bare_ok / max(1, total - missed), 4),
        "found_accuracy_detected_unaligned": round(found_unaligned_ok / max(1, total - missed), 4),
        "found_accuracy_detected_aligned": round(det_ok / max(1, total - missed), 4),
        "frame_scale_used": FRAME_SCALE,
        "frame_offset_y_used": FRAME_OFFSET_Y,
        "labels": clf.labels,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
