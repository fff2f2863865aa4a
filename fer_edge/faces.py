"""Face detection and FER-2013-style face crops for real photos.

FER-2013 images are tight 48x48 face crops; users' photos are not. This module
finds the faces in a photo (OpenCV Haar cascade, an optional extra:
``pip install 'fer-edge[detect]'``) and cuts each one out with the framing the
model was trained on, so every face then goes through the ordinary
preprocessing (:func:`fer_edge.preprocess.resize_gray`) like a training image.

OpenCV is imported lazily, only when :func:`detect_faces` runs: importing this
module, or classifying crops with ``faces="off"``, never needs it.

Example:
    >>> from PIL import Image
    >>> photo = Image.new("L", (640, 480))
    >>> needs_detection(photo, "auto")
    True
    >>> crop_face(photo, FaceBox(x=100, y=100, w=80, h=80)).size
    (84, 84)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import DependencyError
from .preprocess import to_gray

#: Values of the ``faces`` parameter / ``--faces`` option.
FACE_MODES = ("auto", "on", "off")

#: ``auto`` treats an image as a ready-made face crop when its longer side is at
#: most this many pixels ...
CROP_MAX_SIDE = 160
#: ... and its width / height lies in this range (inclusive). 4:3 and 3:2 are
#: camera frame formats, so they fall outside and get detection.
CROP_ASPECT_RANGE = (0.8, 1.25)

#: Side of the FER-2013 frame divided by the side of the detector's box.
#: Measured, not guessed: running this detector on two sets of 600 FER-2013
#: validation images (happy/neutral/sad; upscaled 2x or 4x and padded so the
#: whole face is visible) found the 48x48 frame to be 1.03-1.05x the detected
#: box (median; quartiles ~0.98 and ~1.13), centred on the box (median offsets
#: within 0.01 box sides). FER-2013 was itself cut with an automatic face detector, so its
#: faces are framed this tightly: a 1.2x-1.4x "portrait" margin would show the
#: model smaller faces than it was trained on.
FRAME_SCALE = 1.05

#: The frontal-face cascade used. alt2 was chosen over the "default" cascade:
#: on scikit-image's sample photos the default cascade reported six faces in
#: the coins photo (and some on the moon and a retina scan after histogram
#: equalisation, which is why none is applied), alt2 none; both found ~70% of
#: 600 FER-2013 faces.
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"

#: Larger images are shrunk to this longer side before detection (Haar cost
#: grows with pixel count: on a busy 2-core machine a 4000x3000 photo took
#: ~5 s at full size, <1 s shrunk to 1280x960).
#: The smallest face found is then about 20 px in the shrunk image, ~1.6% of
#: the longer side of a large photo.
DETECT_MAX_SIDE = 1280

#: detectMultiScale settings: 10% scale steps and 5 overlapping hits per face
#: are OpenCV's documented defaults and the usual precision/recall compromise.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5

_INSTALL_HINT = "pip install 'fer-edge[detect]' (which installs opencv-python-headless<5)"

# cv2.CascadeClassifier must not be shared between threads, so each thread
# loads and caches its own (the XML parse costs ~50 ms, detection much more).
_local = threading.local()


@dataclass(frozen=True)
class FaceBox:
    """A face's box in image pixels.

    Attributes:
        x: Left edge.
        y: Top edge.
        w: Width.
        h: Height.
        score: Detector confidence, or ``None`` when the box was not detected
            (``faces="off"``: the whole image). For the Haar cascade this is
            the cascade's final-stage weight: higher means more face-like, but
            it is not a probability and has no fixed range.
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None


def _check_mode(mode: str) -> str:
    if mode not in FACE_MODES:
        raise ValueError(f"faces mode {mode!r} is not one of {FACE_MODES}")
    return mode


def needs_detection(image: Image.Image, mode: str) -> bool:
    """Decide whether an image must go through face detection.

    ``"off"``: never (the whole image is one face crop). ``"on"``: always.
    ``"auto"``: the image is taken as a ready-made face crop, and not
    detected, when its longer side is at most :data:`CROP_MAX_SIDE` (160) px
    *and* its width/height ratio is within :data:`CROP_ASPECT_RANGE`
    (0.8..1.25, inclusive); every other image is detected. Face-crop data sets
    (FER-2013: 48x48) are small and square; photos are larger or 4:3 / 3:2.

    Args:
        image: The decoded image.
        mode: One of :data:`FACE_MODES`.

    Returns:
        True when faces should be detected, False when the image is one face.

    Raises:
        ValueError: ``mode`` is not one of :data:`FACE_MODES`.

    Example:
        >>> from PIL import Image
        >>> needs_detection(Image.new("L", (48, 48)), "auto")
        False
        >>> needs_detection(Image.new("L", (160, 120)), "auto")
        True
    """
    _check_mode(mode)
    if mode != "auto":
        return mode == "on"
    w, h = image.size
    low, high = CROP_ASPECT_RANGE
    is_crop = max(w, h) <= CROP_MAX_SIDE and low <= w / h <= high
    return not is_crop


def _import_cv2() -> Any:
    try:
        import cv2  # noqa: PLC0415 - optional extra, imported on first use
    except ImportError as exc:
        raise DependencyError(f"face detection needs OpenCV: {_INSTALL_HINT}. ({exc})") from exc
    return cv2


def _cascade_path(cv2: Any) -> str:
    """Where the installed OpenCV keeps the Haar cascade, or a DependencyError."""
    version = getattr(cv2, "__version__", "unknown")
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, CASCADE_FILE) if folder else ""
    if not path or not os.path.isfile(path):
        # OpenCV 5 and some distribution builds (e.g. apt's python3-opencv)
        # ship no cascade files in cv2.data.
        raise DependencyError(
            f"face detection needs OpenCV's Haar cascade {CASCADE_FILE}, which OpenCV "
            f"{version} does not ship; {_INSTALL_HINT}"
        )
    return path


def _load_cascade() -> Any:
    """This thread's cascade classifier, loaded on first use."""
    cascade = getattr(_local, "cascade", None)
    if cascade is not None:
        return cascade
    cv2 = _import_cv2()
    path = _cascade_path(cv2)
    with open(path, encoding="utf-8") as f:
        xml = f.read()
    # Parsed from memory because OpenCV's own file opening fails on non-ASCII
    # paths on Windows (e.g. a virtualenv under C:\Users\Zoë).
    storage = cv2.FileStorage(xml, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    cascade = cv2.CascadeClassifier()
    if not cascade.read(storage.getFirstTopLevelNode()) or cascade.empty():
        raise DependencyError(
            f"{path}: OpenCV could not load this cascade; reinstall: {_INSTALL_HINT}"
        )
    _local.cascade = cascade
    return cascade


def _detection_input(image: Image.Image, cv2: Any) -> tuple[np.ndarray, float]:
    """Grayscale uint8 array for the detector and the factor it was shrunk by."""
    gray = np.asarray(to_gray(image), dtype=np.uint8)
    h, w = gray.shape
    factor = min(1.0, DETECT_MAX_SIDE / max(w, h))
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray, factor


def detect_faces(image: Image.Image) -> list[FaceBox]:
    """Find frontal faces with OpenCV's Haar cascade.

    Needs the ``detect`` extra (``pip install 'fer-edge[detect]'``); nothing
    is downloaded. The image is converted to luma like the model's input, and
    images with a side above :data:`DETECT_MAX_SIDE` are shrunk for speed
    (boxes are mapped back to the original pixels). Profile and strongly
    tilted faces are usually missed (the cascade is frontal-only, as is
    FER-2013).

    Args:
        image: Any decoded Pillow image.

    Returns:
        Boxes in original image pixels, largest first; an empty list when no
        face is found. Scores are the cascade's (uncalibrated) confidences.

    Raises:
        DependencyError: OpenCV or its cascade file is not installed.
    """
    cascade = _load_cascade()
    cv2 = _import_cv2()
    gray, factor = _detection_input(image, cv2)
    window = cascade.getOriginalWindowSize()
    if gray.shape[0] < window[1] or gray.shape[1] < window[0]:
        return []
    boxes, _levels, weights = cascade.detectMultiScale3(
        gray,
        scaleFactor=SCALE_FACTOR,
        minNeighbors=MIN_NEIGHBORS,
        minSize=tuple(window),
        outputRejectLevels=True,
    )
    faces = [
        FaceBox(
            x=round(x / factor), y=round(y / factor), w=round(w / factor), h=round(h / factor),
            score=float(s),
        )
        for (x, y, w, h), s in zip(np.asarray(boxes).reshape(-1, 4), np.ravel(weights))
    ]
    return sorted(faces, key=lambda f: (-f.w * f.h, f.y, f.x))


def face_frame(box: FaceBox) -> tuple[int, int, int]:
    """The square FER-2013-style frame around a box: (left, top, side).

    The frame is :data:`FRAME_SCALE` times the box's longer side, centred on
    the box, and may extend past the image borders.

    Example:
        >>> face_frame(FaceBox(x=100, y=100, w=80, h=80))
        (98, 98, 84)
    """
    side = max(1, round(max(box.w, box.h) * FRAME_SCALE))
    left = round(box.x + box.w / 2 - side / 2)
    top = round(box.y + box.h / 2 - side / 2)
    return left, top, side


# Modes numpy cannot round-trip are converted the way to_gray would convert
# them anyway (palette via RGBA, the others via RGB), so the crop's luma is
# the same as the luma of the uncropped image.
_VIA_RGBA = ("P", "PA")
_VIA_RGB = ("CMYK", "YCbCr", "LAB", "HSV")


def crop_face(image: Image.Image, box: FaceBox) -> Image.Image:
    """Cut one face out as a square crop framed like FER-2013.

    See :func:`face_frame` for the framing. Where the frame runs past the image
    border (a face at the edge of the photo) the border pixels are repeated
    rather than padded with black: the missing part is more face or
    background, and a hard black edge is something the model never saw in
    training.

    Args:
        image: The decoded photo (any mode).
        box: A face box in the photo's pixels, e.g. from :func:`detect_faces`.

    Returns:
        A square image, ready for the normal preprocessing. Same mode as
        ``image`` except palette (-> RGBA) and CMYK/YCbCr/LAB/HSV (-> RGB).

    Raises:
        ValueError: The box is empty (``w`` or ``h`` < 1).

    Example:
        >>> from PIL import Image
        >>> crop_face(Image.new("RGB", (100, 100)), FaceBox(0, 0, 40, 40)).size
        (42, 42)
    """
    if box.w < 1 or box.h < 1:
        raise ValueError(f"face box {box} has no area")
    left, top, side = face_frame(box)
    right, bottom = left + side, top + side
    width, height = image.size
    # The part of the frame inside the image (at least its nearest pixel):
    # only that is cropped and converted, never the whole photo.
    x0, y0 = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    x1, y1 = max(min(right, width), x0 + 1), max(min(bottom, height), y0 + 1)
    part = image.crop((x0, y0, x1, y1))
    if part.mode in _VIA_RGBA:
        part = part.convert("RGBA")
    elif part.mode in _VIA_RGB:
        part = part.convert("RGB")
    if (x0, y0, x1, y1) == (left, top, right, bottom):
        return part
    pixels = np.asarray(part)
    rows = np.clip(np.arange(top, bottom) - y0, 0, y1 - y0 - 1)
    cols = np.clip(np.arange(left, right) - x0, 0, x1 - x0 - 1)
    return Image.fromarray(np.ascontiguousarray(pixels[rows[:, None], cols]))
