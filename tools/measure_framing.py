"""Measure how the face detector's boxes relate to FER-2013's 48x48 frame, and
what detection costs in accuracy.

FER-2013 images (``$FER_EDGE_DATA/<split>/<label>/*.jpg|png``, default
``../shared/data/fer2013``) are tight 48x48 crops, which is not how a user's
photo shows a face. So each crop is put into a *scene*: upscaled (bilinear) to
a face size and placed in the centre of a larger canvas whose surround is
``grey`` (128), ``edge`` (the crop's border pixels repeated outwards) or
``reflect`` (the crop mirrored outwards). A scene is written
``BACKGROUND-FACE-CANVAS``, e.g. ``edge-96-288``: a 96 px face in a 288 px
square. The detector sees the scene and, for each image:

* framing: the known frame (where the 48x48 crop lies in the scene) is
  compared with the detected box: frame side / box side, and the frame
  centre's offset from the box centre (in frame sides, +y down). Their medians
  are what ``fer_edge.faces.FRAME_SCALE`` and ``FRAME_OFFSET_Y`` should be.
* accuracy, on the images where a face was found (the same images in every
  row): ``bare`` (the 48x48 crop classified whole, ``faces="off"``),
  ``oracle`` (the known frame cut out of the scene: what the scene's resampling
  alone costs), and the detection path with the framing and rotation
  threshold in use (``detected``: exactly ``Classifier.analyze(scene,
  faces="on")``'s main face) and with the settings given by ``--variant``.

``fit`` grid-searches frame scale x vertical offset on a TRAIN subset (the
accuracy of the detected crops of the ``default`` model), so the framing is
never tuned on the val images it is reported on.

Usage::

    python tools/measure_framing.py measure --split val --per-class 0 \\
        --scene edge-96-288 --model default --model fast --json out.json
    python tools/measure_framing.py fit --split train --per-class 200 --scene edge-96-288

``crops`` builds a data root for detection-aware training (``python -m train
--data OUT``): ``OUT/train/<label>/`` holds every bare train image (a symlink)
and, for image *i*, the face the runtime would cut out of scene ``i mod
len(--scene)`` (a PNG at the crop's own size, so training preprocesses it
exactly as the runtime does), where a face is found; ``OUT/val`` is the bare
val split, so checkpoints are still selected on the images every other row
is::

    python tools/measure_framing.py crops --split train --per-class 0 \
        --scene edge-96-288 --scene edge-128-384 --out ~/fer-edge-runs/data/fer2013-det

``--per-class 0`` takes every image of the model's classes; N takes the first N
file names of each class in sorted order (a fixed, reproducible subset).

Results are in README.md, "Face detection". Last measurement (2026-11-30, all
val images of happy/neutral/sad, on a 2-core machine shared with a training
run; ``default`` is ``b0-128-det-ft``, measured on its exported file before it
was copied into the package, ``fast`` from an earlier run that day)::

    python tools/measure_framing.py measure --split val --per-class 0 \
        --scene edge-128-384 --scene edge-96-288 --model default --model fast \
        --variant 1.2,-0.036,off

    accuracy (lost / gained against bare)   default                   fast
    edge-128-384, a face found in 1,046 (48.5%)
      bare 48x48 crops                      82.50%                    80.78%
      oracle (known frame)                  82.50% (0 / 0)            81.74% (5 / 15)
      detected, shipped (10 degrees)        82.12% (42 / 38, p 0.74)  80.31% (43 / 38)
      detected, never rotated               82.70% (31 / 33, p 0.90)  80.50% (36 / 33)
    edge-96-288, a face found in 1,449 (67.2%)
      bare 48x48 crops                      82.88%                    80.54%
      oracle (known frame)                  82.82% (18 / 17)          81.57% (13 / 28)
      detected, shipped (10 degrees)        82.40% (60 / 53, p 0.57)  81.23% (47 / 57)
      detected, never rotated               82.26% (50 / 41, p 0.40)  80.54% (46 / 46)

The ``default`` shipped before (``b0-128-from7-s3``) lost 1.44 and 0.76 points
through detection in these two scenes; ``default`` was since fine-tuned on the
``crops`` data root described above.

In ``edge-128-384`` the scene's face is ``default``'s input size, upscaled as
preprocessing does, so its oracle is the bare crop pixel for pixel.

On 100 TRAIN images per class (``--split train --per-class 100``, 5 scenes)
the frame/box median was 1.20 (1.16 in ``reflect-96-288``, where the
detector often picks a mirrored neighbour face) and the centre dy -0.035 to
-0.042: the shipped FRAME_SCALE / FRAME_OFFSET_Y, so they were not changed.
Detection rates there: edge-96-288 71.7%, grey-96-288 66.0%, reflect-96-288
62.3%, edge-96-192 58.7%, edge-144-432 52.0%. The rotation threshold was not
changed either: on train (edge-96-288, 215 faces) 10° beat never-rotate
(90.7% vs 89.3%), on val never-rotate was ahead (82.75% vs 82.33%): 6 of
1,449 images, opposite signs, within noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fer_edge import Classifier
from fer_edge.blazeface import BlazeFace
from fer_edge.faces import FRAME_OFFSET_Y, FRAME_SCALE, MIN_ROTATION_DEG, FaceBox, crop_face, eye_angle
from fer_edge.files import IMAGE_EXTENSIONS

REPO = Path(__file__).resolve().parents[1]
BACKGROUNDS = ("grey", "edge", "reflect")
#: Rotation thresholds that mean "never rotate" and "always rotate".
NEVER, ALWAYS = math.inf, 0.0


@dataclass(frozen=True)
class Scene:
    """How a 48x48 crop is shown to the detector."""

    background: str
    face: int  # side of the upscaled crop, px
    canvas: int  # side of the square scene, px

    @classmethod
    def parse(cls, text: str) -> Scene:
        """``BACKGROUND-FACE-CANVAS``, e.g. ``edge-96-288``."""
        background, face, canvas = text.split("-")
        if background not in BACKGROUNDS or int(canvas) < int(face):
            raise argparse.ArgumentTypeError(f"scene {text!r}: want BACKGROUND-FACE-CANVAS, "
                                             f"BACKGROUND one of {BACKGROUNDS}, CANVAS >= FACE")
        return cls(background, int(face), int(canvas))

    def __str__(self) -> str:
        return f"{self.background}-{self.face}-{self.canvas}"

    def render(self, crop: Image.Image) -> tuple[Image.Image, int]:
        """The scene, and the left (= top) of the crop's frame in it."""
        big = np.asarray(crop.convert("L").resize((self.face, self.face), Image.Resampling.BILINEAR))
        before = (self.canvas - self.face) // 2
        pad = ((before, self.canvas - self.face - before),) * 2
        if self.background == "grey":
            out = np.pad(big, pad, constant_values=128)
        else:  # numpy's "reflect" mirrors without repeating the edge row, like a mirror would
            out = np.pad(big, pad, mode=self.background)  # type: ignore[call-overload]
        return Image.fromarray(out), before


@dataclass(frozen=True)
class Variant:
    """A way to cut the detected face out: framing and rotation threshold."""

    scale: float
    offset_y: float
    min_rotation: float  # degrees; NEVER = no rotation, ALWAYS = every tilt

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``SCALE,OFFSET,MINROT``, MINROT a number of degrees, ``off`` or ``all``."""
        scale, offset, rot = text.split(",")
        angle = {"off": NEVER, "all": ALWAYS}.get(rot)
        return cls(float(scale), float(offset), float(rot) if angle is None else angle)

    def __str__(self) -> str:
        rot = {NEVER: "off", ALWAYS: "all"}.get(self.min_rotation, f"{self.min_rotation:g}")
        return f"{self.scale:g},{self.offset_y:g},{rot}"

    def crop(self, scene: Image.Image, box: FaceBox) -> Image.Image:
        """The crop ``fer_edge.faces.crop_face`` makes with these settings."""
        return crop_face(scene, box, align=self.min_rotation != NEVER, scale=self.scale,
                         offset_y=self.offset_y, min_rotation_deg=self.min_rotation)


SHIPPED = Variant(FRAME_SCALE, FRAME_OFFSET_Y, MIN_ROTATION_DEG)


@dataclass
class Sample:
    """One image: its class, the bare crop, the scene and what was found in it."""

    label: str
    bare: Image.Image
    scene: Image.Image
    frame_left: int
    box: FaceBox | None


def data_root() -> Path:
    return Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013"))


def files_of(split: str, labels: list[str], per_class: int) -> list[tuple[str, Path]]:
    """(label, path) of the first ``per_class`` sorted files per class (0: all)."""
    out: list[tuple[str, Path]] = []
    for label in labels:
        folder = data_root() / split / label
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        out.extend((label, f) for f in (files[:per_class] if per_class else files))
    return out


def load(split: str, labels: list[str], per_class: int) -> list[tuple[str, Image.Image]]:
    """(label, 48x48 'L' image) of the first ``per_class`` sorted files per class (0: all)."""
    out = []
    for label, f in files_of(split, labels, per_class):
        with Image.open(f) as img:
            out.append((label, img.convert("L")))
    return out


def detect(images: list[tuple[str, Image.Image]], scene: Scene, detector: BlazeFace) -> list[Sample]:
    """Render each image's scene and find its main (largest) face, as ``analyze`` does."""
    samples = []
    for label, bare in images:
        shown, left = scene.render(bare)
        found = detector.detect(shown)
        samples.append(Sample(label, bare, shown, left, found[0] if found else None))
    return samples


def correct(clf: Classifier, images: list[Image.Image], labels: list[str]) -> np.ndarray:
    """Per image: classified as its label? (one batched pass)."""
    preds = clf.predict_batch(images)
    return np.array([p.label == t for p, t in zip(preds, labels)], dtype=bool)


def accuracy(clf: Classifier, images: list[Image.Image], labels: list[str]) -> float:
    """Share of ``images`` classified as their ``labels``."""
    return float(correct(clf, images, labels).mean()) if labels else 0.0


def paired(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How ``other`` differs from ``base`` on the same images: images lost and
    gained, and the two-sided exact McNemar p-value (a binomial test on the
    discordant pairs: is losing more likely than gaining?).

    Example:
        >>> paired(np.array([True, True, False]), np.array([True, False, True]))
        {'lost': 1, 'gained': 1, 'p': 1.0}
    """
    lost, gained = int((base & ~other).sum()), int((~base & other).sum())
    n, k = lost + gained, min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"lost": lost, "gained": gained, "p": round(min(1.0, 2 * tail), 4)}


def quartiles(values: list[float]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, [25, 50, 75])] if values else []


def framing(found: list[Sample], scene: Scene) -> dict[str, object]:
    """Where the known frame lies relative to the detected boxes."""
    ratios, dxs, dys, angles = [], [], [], []
    for s in found:
        assert s.box is not None
        centre = s.frame_left + scene.face / 2
        ratios.append(scene.face / max(s.box.w, s.box.h))
        dxs.append((centre - (s.box.x + s.box.w / 2)) / scene.face)
        dys.append((centre - (s.box.y + s.box.h / 2)) / scene.face)
        angle = eye_angle(s.box)
        if angle is not None:
            angles.append(angle)
    return {
        "frame_over_box_side_q25_50_75": quartiles(ratios),
        "frame_centre_dx_q25_50_75": quartiles(dxs),
        "frame_centre_dy_q25_50_75": quartiles(dys),
        "eye_angle_deg_q25_50_75": quartiles(angles),
        "abs_eye_angle_deg_p50_p90": [round(float(v), 1) for v in np.percentile(np.abs(angles), [50, 90])]
        if angles else [],
    }


def measure_model(clf: Classifier, found: list[Sample], scene: Scene,
                  variants: list[Variant]) -> dict[str, object]:
    """Accuracies of one model on the found images: bare, oracle, each variant;
    and, for each, the images lost and gained against ``bare`` (:func:`paired`)."""
    labels = [s.label for s in found]
    oracle = [s.scene.crop((s.frame_left, s.frame_left, s.frame_left + scene.face,
                            s.frame_left + scene.face)) for s in found]
    hits = {"bare": correct(clf, [s.bare for s in found], labels),
            "oracle": correct(clf, oracle, labels)}
    for v in variants:
        crops = [v.crop(s.scene, s.box) for s in found if s.box is not None]
        hits[f"detected {v}"] = correct(clf, crops, labels)
    out: dict[str, object] = {k: round(float(v.mean()), 4) if len(v) else 0.0 for k, v in hits.items()}
    out["vs_bare"] = {k: paired(hits["bare"], v) for k, v in hits.items() if k != "bare"}
    return out


def cmd_measure(args: argparse.Namespace) -> dict[str, object]:
    """Detection rate, framing and accuracies per scene and model."""
    clfs = {m: Classifier(m, threads=2) for m in args.model}
    labels = next(iter(clfs.values())).labels
    images = load(args.split, labels, args.per_class)
    detector = BlazeFace(threads=2)
    variants = [SHIPPED, *[v for v in args.variant if v != SHIPPED]]
    report: dict[str, object] = {"split": args.split, "per_class": args.per_class,
                                 "images": len(images), "labels": labels, "scenes": {}}
    for scene in args.scene:
        start = time.perf_counter()
        samples = detect(images, scene, detector)
        found = [s for s in samples if s.box is not None]
        row: dict[str, object] = {"found": len(found), "detection_rate": round(len(found) / len(samples), 4),
                                  **framing(found, scene)}
        for name, clf in clfs.items():
            row[name] = measure_model(clf, found, scene, variants)
        row["seconds"] = round(time.perf_counter() - start, 1)
        report["scenes"][str(scene)] = row  # type: ignore[index]
        print(str(scene), json.dumps(row), file=sys.stderr)
    return report


def cmd_fit(args: argparse.Namespace) -> dict[str, object]:
    """Grid of frame scale x offset (rotation threshold fixed by --min-rotation) on one split."""
    clf = Classifier(args.model[0], threads=2)
    images = load(args.split, clf.labels, args.per_class)
    detector = BlazeFace(threads=2)
    report: dict[str, object] = {"split": args.split, "per_class": args.per_class,
                                 "images": len(images), "model": args.model[0], "scenes": {}}
    for scene in args.scene:
        found = [s for s in detect(images, scene, detector) if s.box is not None]
        labels = [s.label for s in found]
        grid = {}
        for scale in args.scales:
            for offset in args.offsets:
                v = Variant(scale, offset, args.min_rotation)
                grid[str(v)] = round(accuracy(clf, [v.crop(s.scene, s.box) for s in found
                                                    if s.box is not None], labels), 4)
        best = max(grid, key=lambda k: grid[k])
        row = {"found": len(found), "bare": round(accuracy(clf, [s.bare for s in found], labels), 4),
               "best": best, "best_accuracy": grid[best], "grid": grid, **framing(found, scene)}
        report["scenes"][str(scene)] = row  # type: ignore[index]
        print(str(scene), json.dumps(row), file=sys.stderr)
    return report


def cmd_crops(args: argparse.Namespace) -> dict[str, object]:
    """Write the detection-aware data root (see the module docstring)."""
    if args.out is None:
        raise SystemExit("crops: --out DIR is required")
    if args.split == "val":
        raise SystemExit("crops: --split val would train on the selection split; use train")
    if args.out.exists():
        raise SystemExit(f"crops: {args.out} exists; choose a new folder (nothing is overwritten)")
    labels = Classifier(args.model[0], threads=1).labels
    detector = BlazeFace(threads=2)
    made = {str(s): 0 for s in args.scene}
    items = files_of(args.split, labels, args.per_class)
    for i, (label, path) in enumerate(items):
        folder = args.out / args.split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).symlink_to(path.resolve())
        scene = args.scene[i % len(args.scene)]
        with Image.open(path) as img:
            shown, _ = scene.render(img.convert("L"))
        found = detector.detect(shown)
        if found:
            SHIPPED.crop(shown, found[0]).convert("L").save(folder / f"{path.stem}.{scene}.png")
            made[str(scene)] += 1
    (args.out / "val").symlink_to((data_root() / "val").resolve())
    return {"split": args.split, "images": len(items), "crops": made, "out": str(args.out)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("measure", "fit", "crops"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-class", type=int, default=0, help="first N sorted files per class; 0: all")
    parser.add_argument("--scene", type=Scene.parse, action="append",
                        help="BACKGROUND-FACE-CANVAS (repeatable); default edge-96-288")
    parser.add_argument("--model", action="append", help="zoo name or .onnx (repeatable); default: default")
    parser.add_argument("--variant", type=Variant.parse, action="append", default=[],
                        help="measure: also SCALE,OFFSET,MINROT (MINROT degrees, off or all)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.1, 1.15, 1.2, 1.25, 1.3])
    parser.add_argument("--offsets", type=float, nargs="+", default=[-0.08, -0.06, -0.04, -0.02, 0.0])
    parser.add_argument("--min-rotation", type=float, default=MIN_ROTATION_DEG,
                        help="fit: rotation threshold in degrees (inf: never rotate)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--out", type=Path, help="crops: the new data root (must not exist)")
    args = parser.parse_args(argv)
    args.scene = args.scene or [Scene.parse("edge-96-288")]
    args.model = args.model or ["default"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = {"measure": cmd_measure, "fit": cmd_fit, "crops": cmd_crops}[args.command](args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
