"""Landmark framing (tried, not adopted; README "Face detection"): fit the FER frame's side
and centre from BlazeFace landmarks on train faces, then compare val accuracy through
detection with the box framing, paired against the bare crops.

Usage: ``[SIDE=0,1,2,3] [CY=0,1,2] python tools/framing_landmarks.py FIT_SCENE TRAIN_PER_CLASS [VAL_SCENE ...]``

SIDE: lengths the side is fitted on (0 box side, 1 eye distance, 2 eye-to-mouth, 3 ear-to-ear);
CY: heights the centre is fitted on (0 eye midpoint, 1 mouth, 2 nose). The README rows:
``python tools/framing_landmarks.py edge-128-384 400`` (all lengths and heights) and
``SIDE=0,3 CY=0,1 python tools/framing_landmarks.py edge-96-288 400``.
The first of those runs also fitted the centre's x from the eye, nose and mouth
x offsets; this script keeps the box centre's x, as the second did, so it
reproduces the second row and the first only approximately (written after both
runs, from the experiment's code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools")]

import measure_framing as mf  # noqa: E402  (after the path set-up)

from fer_edge import Classifier  # noqa: E402
from fer_edge.blazeface import BlazeFace  # noqa: E402
from fer_edge.faces import FaceBox, crop_face  # noqa: E402

LABELS = ["happy", "neutral", "sad"]
SIDE = [int(i) for i in os.environ.get("SIDE", "0,1,2,3").split(",")]
CY = [int(i) for i in os.environ.get("CY", "0,1,2").split(",")]


def features(b: FaceBox) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """(lengths, heights relative to the box centre in box sides, box side, centre x, centre y)."""
    lm = {mark.name: np.array((mark.x, mark.y)) for mark in b.landmarks}
    eyes = (lm["right_eye"] + lm["left_eye"]) / 2
    side = max(b.w, b.h)
    cx, cy = b.x + b.w / 2, b.y + b.h / 2
    lengths = np.array([side, np.linalg.norm(lm["left_eye"] - lm["right_eye"]),
                        np.linalg.norm(lm["mouth_center"] - eyes),
                        np.linalg.norm(lm["right_ear_tragion"] - lm["left_ear_tragion"])])
    heights = np.array([eyes[1] - cy, lm["mouth_center"][1] - cy, lm["nose_tip"][1] - cy]) / side
    return lengths, heights[CY], side, cx, cy


def main() -> None:
    det = BlazeFace(providers="cpu", threads=2)

    def found(split: str, per: int, scene: mf.Scene) -> list[mf.Sample]:
        return [s for s in mf.detect(mf.load(split, LABELS, per), scene, det) if s.box is not None]

    fit_scene = mf.Scene.parse(sys.argv[1])
    train = found("train", int(sys.argv[2]), fit_scene)
    feats = [features(s.box) for s in train if s.box is not None]
    lengths = np.array([f[0] for f in feats])
    heights = np.array([np.r_[f[1], 1.0] for f in feats])
    sides = np.array([f[2] for f in feats])
    centre = np.array([s.frame_left + fit_scene.face / 2 for s in train])
    w_side = np.zeros(4)
    w_side[SIDE] = np.linalg.lstsq(lengths[:, SIDE], np.full(len(lengths), fit_scene.face), rcond=None)[0]
    w_cy = np.linalg.lstsq(heights, (centre - np.array([f[4] for f in feats])) / sides, rcond=None)[0]
    print("fit on", len(train), "faces: side weights", w_side.round(4), "centre weights", w_cy.round(4))

    def crop(scene_img, b: FaceBox, rotate: bool):
        lengths, heights, side, cx, cy = features(b)
        fs = float(lengths @ w_side)
        ny = cy + side * float(np.r_[heights, 1.0] @ w_cy)
        frame = FaceBox(round(cx - fs / 2), round(ny - fs / 2), round(fs), round(fs), b.score, b.landmarks)
        return crop_face(scene_img, frame, align=rotate, scale=1.0, offset_y=0.0)

    for name in ["default", "fast"]:
        clf = Classifier(name, threads=2)
        for text in sys.argv[3:] or ["edge-128-384", "edge-96-288"]:
            val = found("val", 0, mf.Scene.parse(text))
            labels = [s.label for s in val]
            bare = mf.correct(clf, [s.bare for s in val], labels)
            row: dict[str, object] = {"n": len(val), "bare": round(float(bare.mean()), 4)}
            for variant, crops in [("box", [mf.SHIPPED.crop(s.scene, s.box) for s in val if s.box]),
                                   ("landmarks", [crop(s.scene, s.box, True) for s in val if s.box]),
                                   ("landmarks, never rotated", [crop(s.scene, s.box, False) for s in val if s.box])]:
                hits = mf.correct(clf, crops, labels)
                row[variant] = (round(float(hits.mean()), 4), mf.paired(bare, hits))
            print(text, name, row, flush=True)


if __name__ == "__main__":
    main()
