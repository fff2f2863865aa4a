"""MediaPipe BlazeFace (full range) run by ONNX Runtime, with numpy pre/post-processing.

The model ships inside the package, so plain ``pip install`` detects faces:
no OpenCV, no download. The default (:data:`DEFAULT_MODEL`,
``models/detectors/blazeface_full_range_aligned.onnx``) is derived by
``tools/convert_blazeface.py --aligned`` from :data:`UNALIGNED_MODEL`
(``blazeface_full_range.onnx``, converted from MediaPipe's TFLite file by
``tools/convert_blazeface.py``): the same network with channel counts that
ONNX Runtime's x86 CPU kernels run faster, finding the same faces. Both are
Apache-2.0, see ``models/detectors/LICENSE-blazeface``; why both ship:
:data:`fer_edge.detector.SHIPPED_DETECTORS`.

BlazeFace full range was trained on 192x192 inputs and finds faces of about
20 to 130 px there (:data:`MIN_FACE_INPUT_PX`). Its graph is convolutional up
to the output reshapes, so fer-edge runs it on inputs of other sizes too:

* a *coarse* pass sees the whole image at :data:`COARSE_SIDE` px (large and
  close-up faces, up to the whole frame);
* a *fine* pass sees it at up to :data:`FINE_SIDE` px on its longer side
  (smaller faces: about 20/FINE_SIDE of the longer side and up), or at the
  scale ``min_face`` asks for;
* when ``min_face`` puts the fine pass more than :data:`MAX_PASS_RATIO` times
  the coarse one's scale, passes in between, so no face size is missed.

Detections of all passes are merged by MediaPipe's weighted non-maximum
suppression, so a face seen by both gives one box.

Example:
    >>> from PIL import Image
    >>> BlazeFace(providers="cpu").detect(Image.new("RGB", (320, 240), (128, 128, 128)))
    []
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .detector import LEFT_EYE, RIGHT_EYE, SHIPPED_DETECTOR_FILES, FaceBox, Landmark
from .errors import ModelError
from .files import display_path
from .preprocess import to_gray
from .providers import ORT_MODEL_ERRORS, ProvidersArg, first_line, open_session, resolve_providers
from .zoo import MODELS_DIR

#: The default detector model: BlazeFace full range with channel counts padded
#: to multiples of 16 (``tools/convert_blazeface.py --aligned``), fastest with
#: ONNX Runtime's x86 CPU kernels (``fer-edge classify --detector blazeface``).
DEFAULT_MODEL = MODELS_DIR / "detectors" / SHIPPED_DETECTOR_FILES["blazeface"]
#: The conversion's direct output, which :data:`DEFAULT_MODEL` is derived from
#: and checked against, and which ``web/`` loads (``--detector blazeface-unaligned``).
UNALIGNED_MODEL = MODELS_DIR / "detectors" / SHIPPED_DETECTOR_FILES["blazeface-unaligned"]

#: MediaPipe's keypoint order for BlazeFace (face_detection_full_range.pbtxt).
LANDMARK_NAMES = (RIGHT_EYE, LEFT_EYE, "nose_tip", "mouth_center", "right_ear_tragion",
                  "left_ear_tragion")

#: The network's output stride: one anchor per 4x4 input pixels
#: (MediaPipe's SSD anchor options for full range: one layer, stride 4).
STRIDE = 4
#: Height and width of the input must be multiples of this (five 2x
#: down-samplings whose outputs are added back after up-sampling).
INPUT_MULTIPLE = 32

#: Detections scoring below this are dropped. MediaPipe's default is 0.5, but
#: on scikit-image's sample photos non-faces scored up to 0.63 (coins, the
#: logo, a galaxy) while the real faces there scored 0.75 and 0.92.
MIN_SCORE = 0.65
#: MediaPipe's IoU above which boxes are merged, and the raw-score clip that
#: keeps exp() finite.
MIN_SUPPRESSION_IOU = 0.3
RAW_SCORE_CLIP = 80.0

#: Measured on scikit-image's astronaut head pasted at different sizes: the
#: model scores a face >= 0.84 from 20 px (in its input) up to ~100 px, 0.41 at
#: 16 px, 0.63 at 128 px and below 0.5 from 160 px.
MIN_FACE_INPUT_PX = 20
#: Coarse pass: the image's longer side is scaled to this, then padded by
#: :data:`COARSE_PAD` on each side, so a face filling the whole image is
#: ~128 px in the input (still found) and faces from ~16% of the image's
#: longer side up are seen.
COARSE_SIDE = 128
COARSE_PAD = 32
#: Fine pass: the longer side of the image is scaled down to this (never up).
#: The detection cost grows with the input's pixels (a little faster than
#: linearly): on one busy core a 1280x854 photo took 26 ms at 448, 19 ms at
#: 384 and 16 ms at 320 (benchmarks/detector.py). 384 is meant to keep it
#: within the 15 ms budget on 2 idle threads; it finds faces from ~5% of the
#: longer side (67 px in a 1280 px photo, 100 px at 1920); ``min_face`` goes lower.
FINE_SIDE = 384
#: The fine pass is skipped for images whose longer side is at most this:
#: the coarse pass already sees them at (nearly) full resolution.
FINE_MIN_IMAGE_SIDE = 192
#: ``min_face`` never makes the fine pass upscale the image more than this, nor
#: its input's longer side exceed MAX_FINE_SIDE (a 2048x1536 input already took
#: ~0.5 GB of memory in all; larger ones would take more memory, not find faces
#: a user asked for in a photo the Classifier decodes at ~2048 px anyway).
MAX_UPSCALE = 2.0
MAX_FINE_SIDE = 2048
#: Largest scale step between consecutive passes. The model finds faces of
#: about 20 to 100 px in its input (5x), so passes at most 4x apart leave no
#: face size unseen. The default's passes are 3x apart (COARSE_SIDE to
#: FINE_SIDE) and get nothing in between; a small ``min_face`` gets
#: intermediate passes, without which faces of ~150-300 px in a 1920x1080
#: photo were missed (the coarse and a 1600 px fine pass are 12.5x apart).
MAX_PASS_RATIO = 4.0
#: Pillow's ``reducing_gap`` for the first (largest) pass's resize: an image
#: shrinking by ``2 * REDUCING_GAP`` or more is first ``reduce()``d by the
#: whole factor ``int(ratio / REDUCING_GAP)`` (box means), and only what is
#: left goes through the bilinear filter, still shrinking at least this much
#: (so still low-pass filtered). 1.5, not Pillow's suggested 2 or 3, because
#: the common case, a 1280 px photo to the 384 px fine pass (3.3x), gets a 2x
#: reduce only below 1.67. That cut its resize's CPU time by ~40% (3.96 to
#: 2.42 ms); the same faces were found on all test scenes, boxes moved by at
#: most 1 px (2 px in a 4000 px photo). web/fer.js (resizePillowReducing)
#: does the same, exactly.
REDUCING_GAP = 1.5

# Image modes numpy cannot turn into RGB directly: 16-bit and float images go
# through the preprocessing's own luma conversion (which rescales rather than
# clips), the detector then sees them as grey like the classifier does.
_GRAY_FIRST = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _GRAY_FIRST:
        return to_gray(image).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def _round_up(n: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


class _Pass:
    """Where the image lies in one model input: scale and top-left offset."""

    def __init__(self, scale: float, pad: int, size: tuple[int, int], width: int, height: int):
        self.scale = scale
        self.pad = pad
        self.size = size  # scaled image (w, h)
        self.input_w = width
        self.input_h = height


def _anchors(grid_h: int, grid_w: int) -> np.ndarray:
    """Anchor centres (A, 2) in input pixels, row-major like the output.

    MediaPipe's full-range anchors are fixed-size (1x1) with offset 0.5, so
    only the centres matter: decoded values are pixel offsets from them.
    """
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    return np.stack([(xs.ravel() + 0.5) * STRIDE, (ys.ravel() + 0.5) * STRIDE], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with each row of ``boxes``."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(dets: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = MIN_SUPPRESSION_IOU) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression.

    Boxes overlapping the best remaining one by more than ``iou_threshold``
    are not dropped but averaged into it, weighted by score; the merged
    detection keeps the best score. Averaging steadies boxes and landmarks,
    which the crop framing and the alignment depend on.

    Args:
        dets: (N, 4 + 2K) rows of x0, y0, x1, y1 and K landmark (x, y) pairs.
        scores: (N,) probabilities.
        iou_threshold: Overlap above which detections are one face.

    Returns:
        The merged detections and their scores, best first.

    Example:
        >>> d = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
        >>> merged, s = weighted_nms(d, np.array([0.9, 0.9, 0.8]))
        >>> merged[:, 0].tolist(), s.tolist()
        ([0.5, 50.0], [0.9, 0.8])
    """
    order = np.argsort(-scores, kind="stable")
    remaining = order
    out_dets, out_scores = [], []
    while remaining.size:
        top = remaining[0]
        overlap = _iou(dets[top, :4], dets[remaining, :4])
        group = remaining[overlap > iou_threshold]
        if group.size == 0:  # a degenerate (zero-area) box overlaps nothing, itself included
            group = remaining[:1]
        weights = scores[group]
        out_dets.append((dets[group] * weights[:, None]).sum(axis=0) / weights.sum())
        out_scores.append(scores[top])
        remaining = remaining[(overlap <= iou_threshold) & (remaining != top)]
    width = dets.shape[1] if dets.ndim == 2 else 4
    return (np.asarray(out_dets, dtype=np.float64).reshape(-1, width),
            np.asarray(out_scores, dtype=np.float64))


class BlazeFace:
    """Face detector: MediaPipe BlazeFace full range on ONNX Runtime.

    Implements :class:`fer_edge.detector.FaceDetector`. Safe to share
    between threads (ONNX Runtime sessions are).

    Args:
        model: The ONNX file; default the shipped :data:`DEFAULT_MODEL` (the
            channel-aligned file; :data:`UNALIGNED_MODEL` works as well).
        providers: As for :class:`fer_edge.Classifier`: ``None`` picks
            automatically, names/aliases are used exactly. A Classifier gives
            its detector the providers its own session got.
        threads: Intra-op threads for ONNX Runtime; 0 lets it decide.
        min_score: Detections scoring below this are dropped.
        min_face: Smallest face side, in image pixels, to look for. ``None``:
            the fine pass runs at :data:`FINE_SIDE` (fast; faces from ~5%
            of the image's longer side). A value scales the fine pass so a
            face of that size is :data:`MIN_FACE_INPUT_PX` in the input: a 24 px
            face in a 1920x1080 photo needs ``min_face=24`` and a 1600 px pass
            (plus one at 480 px, see :data:`MAX_PASS_RATIO`): ~14x the
            default's input pixels, and time. A value above the default's
            ~5% gives a smaller fine pass, or none: faster.

    Raises:
        ModelError: The model file is missing, not ONNX, or not BlazeFace-shaped
            (the message names the file).
        ProviderError: A requested provider is not available or failed to start.
        ValueError: ``min_score`` is not in (0, 1) or ``min_face`` is not positive.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        providers: ProvidersArg = None,
        threads: int = 0,
        min_score: float = MIN_SCORE,
        min_face: float | None = None,
    ) -> None:
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be between 0 and 1, got {min_score!r}")
        if min_face is not None and not min_face > 0:
            raise ValueError(f"min_face must be a positive number of pixels, got {min_face!r}")
        self.model_path = Path(model) if model is not None else DEFAULT_MODEL
        self.min_score = float(min_score)
        self.min_face = None if min_face is None else float(min_face)
        # The logit of min_score, a little lower so that float32 rounding never
        # drops a candidate the exact float64 score test would keep.
        self._min_logit = math.log(self.min_score / (1.0 - self.min_score)) - 1e-3
        self._threads = threads
        self._requested = resolve_providers(providers)
        self._open()

    def _open(self) -> None:
        name = display_path(self.model_path)
        if not self.model_path.is_file():
            reason = "is a directory" if self.model_path.is_dir() else "no such file"
            raise ModelError(f"face detector model {name}: {reason} (reinstall fer-edge, "
                             "or pass a BlazeFace ONNX file)")
        self._session = open_session(self.model_path, self._requested, self._threads,
                                     what="face detector model ")
        inputs = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or shape[3] != 3 or not {"regressors", "scores"} <= outputs:
            raise ModelError(
                f"face detector model {name}: not a BlazeFace model from "
                f"tools/convert_blazeface.py (inputs {[(i.name, i.shape) for i in inputs]}, "
                f"outputs {sorted(outputs)}; need one NHWC RGB input and outputs "
                "'regressors' and 'scores')"
            )
        self._input = inputs[0].name
        self.providers: list[str] = list(self._session.get_providers())
        self._lock = threading.Lock()
        self._anchor_cache: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the session and lock, which cannot be pickled."""
        state = self.__dict__.copy()
        for key in ("_session", "_lock", "_anchor_cache"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return (f"BlazeFace({display_path(self.model_path)!r}, provider={self.providers[0]!r}, "
                f"min_score={self.min_score}, min_face={self.min_face})")

    # -- passes ------------------------------------------------------------

    def _passes(self, width: int, height: int) -> list[_Pass]:
        """The model inputs one image of ``width`` x ``height`` is searched in, coarsest first."""
        long_side = max(width, height)
        coarse = COARSE_SIDE / long_side
        passes = [_scaled_pass(width, height, coarse, COARSE_PAD)]
        fine = self._fine_scale(long_side)
        if fine > coarse * 1.5:  # otherwise the coarse pass covers it
            steps = math.ceil(math.log(fine / coarse) / math.log(MAX_PASS_RATIO) - 1e-9)
            # Geometric steps up to the fine scale: the cheapest ladder with no gap.
            passes += [_scaled_pass(width, height, coarse * (fine / coarse) ** (k / steps), 0)
                       for k in range(1, steps + 1)]
        return passes

    def _fine_scale(self, long_side: int) -> float:
        """Scale of the finest pass; 0 when the coarse pass is enough."""
        if self.min_face is not None:
            return min(MIN_FACE_INPUT_PX / self.min_face, MAX_UPSCALE, MAX_FINE_SIDE / long_side)
        if long_side > FINE_MIN_IMAGE_SIDE:
            return min(FINE_SIDE / long_side, 1.0)
        return 0.0

    def _anchors(self, grid_h: int, grid_w: int) -> np.ndarray:
        key = (grid_h, grid_w)
        with self._lock:
            anchors = self._anchor_cache.get(key)
            if anchors is None:
                if len(self._anchor_cache) > 16:  # photos of many sizes: keep it bounded
                    self._anchor_cache.clear()
                anchors = self._anchor_cache[key] = _anchors(grid_h, grid_w)
        return anchors

    def _infer(self, x: np.ndarray, p: _Pass) -> tuple[np.ndarray, np.ndarray]:
        """The model's raw outputs for one input: regressors (A, 16) and logits (A,)."""
        try:
            raw, logits = self._session.run(["regressors", "scores"], {self._input: x})
        except ORT_MODEL_ERRORS as exc:
            raise ModelError(f"face detector model {display_path(self.model_path)}: inference "
                             f"failed on a {p.input_w}x{p.input_h} input ({first_line(exc)})") from None
        return raw[0], logits[0, :, 0]

    def _decode(self, raw: np.ndarray, logits: np.ndarray, p: _Pass) -> tuple[np.ndarray, np.ndarray]:
        """Candidates above min_score, in image pixels: (N, 16) detections and (N,) scores."""
        # Thresholding the float32 logits first (sigmoid is monotonic) leaves
        # the exp() and the float64 decoding to the few candidates, not all
        # anchors; the exact score test below keeps the float64 results as before.
        near = np.flatnonzero(logits >= self._min_logit)
        clipped = np.clip(logits[near].astype(np.float64), -RAW_SCORE_CLIP, RAW_SCORE_CLIP)
        scores = 1.0 / (1.0 + np.exp(-clipped))
        passed = scores >= self.min_score
        keep, scores = near[passed], scores[passed]
        # Checked after the exact test, not before it: a logit within the 1e-3
        # margin of min_score passes the float32 filter and then fails here,
        # which left nothing to decode (a crash on some real images).
        if keep.size == 0:
            return np.zeros((0, 4 + 2 * len(LANDMARK_NAMES))), np.zeros(0)
        anchors = self._anchors(p.input_h // STRIDE, p.input_w // STRIDE)
        if len(anchors) != len(logits) or raw.shape[0] != len(logits):
            raise ModelError(f"face detector model {display_path(self.model_path)}: {len(logits)} "
                             f"outputs for a {p.input_w}x{p.input_h} input, expected {len(anchors)}")
        reg = raw[keep].astype(np.float64)
        centre = anchors[keep] + reg[:, 0:2]
        half = reg[:, 2:4] / 2
        marks = reg[:, 4:4 + 2 * len(LANDMARK_NAMES)].reshape(len(keep), len(LANDMARK_NAMES), 2)
        points = anchors[keep][:, None, :] + marks
        dets = np.concatenate([centre - half, centre + half, points.reshape(len(keep), -1)], axis=1)
        # Input pixels -> image pixels (undo the padding, then the scaling).
        return (dets - p.pad) / p.scale, scores

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Find faces, with six landmarks each.

        Args:
            image: A decoded Pillow image, any mode (16-bit and float images
                are seen as grey).

        Returns:
            Boxes in ``image``'s pixels, largest first; ``[]`` when there is no
            face. Boxes of faces at the border may reach past it.

        Raises:
            ModelError: Inference failed.
        """
        return self._detect(image, _Laps(enabled=False))

    def detect_timed(self, image: Image.Image) -> tuple[list[FaceBox], dict[str, float]]:
        """:meth:`detect`, with the milliseconds each stage took (for benchmarks/detector.py).

        Stages: ``rgb`` (mode conversion), ``resize``, ``tensor`` (float input
        and padding), ``model`` (``session.run``), ``decode`` (threshold and
        box decoding), ``nms`` (merging) and ``boxes`` (FaceBox objects);
        each summed over the passes.

        Example:
            >>> faces, ms = BlazeFace(providers="cpu").detect_timed(Image.new("RGB", (320, 240)))
            >>> faces, sorted(ms) == sorted(STAGES)
            ([], True)
        """
        laps = _Laps(enabled=True)
        faces = self._detect(image, laps)
        return faces, laps.ms

    def _detect(self, image: Image.Image, laps: _Laps) -> list[FaceBox]:
        if image.width < 1 or image.height < 1:
            return []
        scaled = _to_rgb(image)
        laps.lap("rgb")
        found = []
        # Largest pass first, each resized from the previous one: shrinking a
        # 1280 px photo straight to 128 px costs more than the coarse pass
        # itself. (web/blazeface.js resizes in the same order, pixel for pixel.)
        for i, p in enumerate(sorted(self._passes(image.width, image.height), key=lambda q: -q.scale)):
            if scaled.size != p.size:
                scaled = _resize_for_pass(scaled, p.size, first=i == 0)
            laps.lap("resize")
            x = _input_tensor(scaled, p)
            laps.lap("tensor")
            raw, logits = self._infer(x, p)
            laps.lap("model")
            found.append(self._decode(raw, logits, p))
            laps.lap("decode")
        dets = np.concatenate([d for d, _ in found])
        scores = np.concatenate([s for _, s in found])
        if not len(scores):
            return []
        dets, scores = weighted_nms(dets, scores)
        laps.lap("nms")
        faces = _face_boxes(dets, scores)
        laps.lap("boxes")
        return faces


#: The stages :meth:`BlazeFace.detect_timed` reports, in pipeline order.
STAGES = ("rgb", "resize", "tensor", "model", "decode", "nms", "boxes")


class _Laps:
    """Per-stage wall time of one detect call; a no-op unless enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.ms: dict[str, float] = dict.fromkeys(STAGES, 0.0) if enabled else {}
        self._last = time.perf_counter() if enabled else 0.0

    def lap(self, stage: str) -> None:
        """Add the time since the previous lap to ``stage``."""
        if self.enabled:
            now = time.perf_counter()
            self.ms[stage] += (now - self._last) * 1000
            self._last = now


def _scaled_pass(width: int, height: int, scale: float, pad: int) -> _Pass:
    """The image scaled by ``scale``, padded by ``pad`` and rounded up to the input multiple."""
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _Pass(scale, pad, size, _round_up(size[0] + 2 * pad, INPUT_MULTIPLE),
                 _round_up(size[1] + 2 * pad, INPUT_MULTIPLE))


def _resize_for_pass(image: Image.Image, size: tuple[int, int], first: bool) -> Image.Image:
    """``image`` resized to a pass's ``size`` (BILINEAR), as web/blazeface.js does it.

    Only the first (largest) pass, resized from the full image, uses
    :data:`REDUCING_GAP`: that is where the time goes (~5 ms for a 1280x854
    photo), while later passes start from the previous, already small, one.
    """
    gap = REDUCING_GAP if first else None
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=gap)


def _input_tensor(scaled: Image.Image, p: _Pass) -> np.ndarray:
    """The (1, H, W, 3) float32 model input: pixels in [-1, 1], padding black (-1).

    Padding is black as MediaPipe's letterboxing pads with zeros. Only the
    padding strips are filled (the fine pass usually has none), and the
    pixels are scaled straight into the input: no intermediate float copy.
    """
    w, h = p.size
    x = np.empty((1, p.input_h, p.input_w, 3), dtype=np.float32)
    x[0, :p.pad] = -1.0
    x[0, p.pad + h:] = -1.0
    x[0, p.pad:p.pad + h, :p.pad] = -1.0
    x[0, p.pad:p.pad + h, p.pad + w:] = -1.0
    inside = x[0, p.pad:p.pad + h, p.pad:p.pad + w]
    np.multiply(np.asarray(scaled), np.float32(1 / 127.5), out=inside, casting="unsafe")
    inside -= 1.0
    return x


def _face_boxes(dets: np.ndarray, scores: np.ndarray) -> list[FaceBox]:
    """Merged detections -> FaceBoxes (whole pixels, named landmarks), largest first."""
    faces = []
    for row, score in zip(dets, scores):
        x0, y0, x1, y1 = row[:4]
        w, h = round(x1 - x0), round(y1 - y0)
        if w < 1 or h < 1:
            continue
        points = row[4:].reshape(-1, 2)
        faces.append(FaceBox(
            x=round(x0), y=round(y0), w=w, h=h, score=float(score),
            landmarks=tuple(Landmark(n, float(px), float(py))
                            for n, (px, py) in zip(LANDMARK_NAMES, points)),
        ))
    return sorted(faces, key=lambda f: (-f.w * f.h, f.y, f.x))
