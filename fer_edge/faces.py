"""Face modes and FER-2013-style face crops: when to detect, and how to cut a face out.

FER-2013 images are tight 48x48 face crops; users' photos are not. A face
detector (:mod:`fer_edge.detector`; the default is :class:`fer_edge.blazeface.BlazeFace`)
finds the faces; this module decides whether an image needs detection at all
(:func:`needs_detection`, the one place the ``faces`` modes are checked) and
cuts each face out with the framing the model was trained on, turned upright
by its eye landmarks (:func:`crop_face`). Each crop then goes through the
ordinary preprocessing (:func:`fer_edge.preprocess.resize_gray`) like a
training image.

Example:
    >>> from PIL import Image
    >>> photo = Image.new("L", (640, 480))
    >>> needs_detection(photo, "auto")
    True
    >>> crop_face(photo, FaceBox(x=100, y=100, w=80, h=80)).size
    (96, 96)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .detector import LEFT_EYE, RIGHT_EYE, FaceBox, FaceDetector, Landmark
from .preprocess import to_gray

__all__ = ["FACE_MODES", "FaceBox", "FaceDetector", "Landmark", "check_mode", "needs_detection",
           "eye_angle", "face_frame", "crop_face"]

#: Values of the ``faces`` parameter / ``--faces`` option: detect if the image
#: looks like more than a face crop, always detect, never detect.
FACE_MODES = ("auto", "on", "off")

#: ``auto`` treats an image as a ready-made face crop when its longer side is at
#: most this many pixels ...
CROP_MAX_SIDE = 160
#: ... and its width / height lies in this range (inclusive). 4:3 and 3:2 are
#: camera frame formats, so they fall outside and get detection.
CROP_ASPECT_RANGE = (0.8, 1.25)

#: Side of the FER-2013 frame divided by the side of BlazeFace's box, and the
#: frame centre's offset from the box centre (fraction of the frame side, +y
#: is towards the chin in the upright face). Measured, not guessed:
#: ``tools/measure_framing.py`` shows FER-2013 crops (upscaled to 96 px in a
#: 288 px scene, edge pixels repeated outwards) to BlazeFace and compares its
#: box with the known 48x48 frame. On 100 train images per class: frame/box
#: median 1.20, horizontal offset 0.00, vertical -0.036 to -0.042 over five
#: scenes (BlazeFace's box reaches a little lower, to the chin, than
#: FER-2013's frame). Through detection, the 1,449 val faces found among 2,155
#: scored 82.33% (``default``) against 82.61% for the known frame cut from
#: the same scenes and 83.09% as bare crops; README, "Face detection".
FRAME_SCALE = 1.2
FRAME_OFFSET_Y = -0.036

#: Faces tilted less than this (degrees) are cut without rotation. FER-2013's
#: own faces are not levelled (BlazeFace's eye lines on val: median -2.4
#: degrees, 90% within 18): the model has learned small tilts, and levelling
#: every face cost accuracy on val (2 degree threshold: 75.6% vs 77.7%
#: unaligned, 197 faces; 10 degrees: 81.1% vs 80.6%, 444 faces; both with
#: tools/measure_framing.py). Above it, the face is turned upright.
MIN_ROTATION_DEG = 10.0


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`FACE_MODES`, else ``ValueError`` listing them.

    Example:
        >>> check_mode("maybe")
        Traceback (most recent call last):
        ...
        ValueError: faces='maybe' is not one of ['auto', 'on', 'off']
    """
    if mode not in FACE_MODES:
        raise ValueError(f"faces={mode!r} is not one of {list(FACE_MODES)}")
    return str(mode)


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
    check_mode(mode)
    if mode != "auto":
        return mode == "on"
    w, h = image.size
    return not (max(w, h) <= CROP_MAX_SIDE and crop_shaped(w, h))


def crop_shaped(width: int, height: int) -> bool:
    """Whether ``width / height`` lies in :data:`CROP_ASPECT_RANGE`: a face crop's shape, whatever its size.

    Example:
        >>> crop_shaped(224, 224), crop_shaped(640, 480), crop_shaped(10, 0)
        (True, False, False)
    """
    low, high = CROP_ASPECT_RANGE
    return height > 0 and low <= width / height <= high


def eye_angle(box: FaceBox) -> float | None:
    """How far the face is turned from upright, in degrees, from its eyes.

    The angle of the line from the person's right eye (image left) to their
    left eye, clockwise in image coordinates (y down): 0 for an upright face,
    about 30 for a face turned 30 degrees clockwise, +-180 upside down.
    ``None`` when the box has no eye landmarks.

    Example:
        >>> from fer_edge.detector import Landmark
        >>> eyes = (Landmark("right_eye", 10, 10), Landmark("left_eye", 20, 20))
        >>> eye_angle(FaceBox(0, 0, 30, 30, landmarks=eyes))
        45.0
    """
    right, left = box.landmark(RIGHT_EYE), box.landmark(LEFT_EYE)
    if right is None or left is None or right == left:
        return None
    return math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))


def face_frame(box: FaceBox, *, scale: float | None = None,
               offset_y: float | None = None) -> tuple[int, int, int]:
    """The square FER-2013-style frame around a box, before rotation: (left, top, side).

    The frame is :data:`FRAME_SCALE` times the box's longer side, centred on
    the box (shifted by :data:`FRAME_OFFSET_Y`), and may extend past the image
    borders. :func:`crop_face` turns this frame about its centre by the
    face's :func:`eye_angle`.

    Args:
        box: The detected face box.
        scale: Frame side / box side; ``None``: :data:`FRAME_SCALE`.
        offset_y: Frame centre below the box centre, in frame sides;
            ``None``: :data:`FRAME_OFFSET_Y`. (Both are parameters so that
            ``tools/measure_framing.py`` can fit them with this very code.)

    Example:
        >>> face_frame(FaceBox(x=100, y=100, w=80, h=80))
        (92, 89, 96)
    """
    scale = FRAME_SCALE if scale is None else scale
    offset_y = FRAME_OFFSET_Y if offset_y is None else offset_y
    side = max(1, round(max(box.w, box.h) * scale))
    left = round(box.x + box.w / 2 - side / 2)
    top = round(box.y + box.h / 2 + offset_y * side - side / 2)
    return left, top, side


# Modes numpy cannot round-trip are converted the way to_gray would convert
# them anyway (palette via RGBA, the others via RGB), so the crop's luma is
# the same as the luma of the uncropped image.
_VIA_RGBA = ("P", "PA")
_VIA_RGB = ("CMYK", "YCbCr", "LAB", "HSV")
# Modes Pillow cannot rotate with bilinear resampling: a rotated crop of them
# is made from their luma (what the classifier uses anyway).
_ROTATE_AS_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "1")


def _padded_crop(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """``image.crop`` of any rectangle; outside the image, border pixels are repeated.

    Repeated rather than padded with black: the missing part is more face or
    background, and a hard black edge is something the model never saw in
    training.
    """
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


def crop_face(image: Image.Image, box: FaceBox, align: bool = True, *, scale: float | None = None,
              offset_y: float | None = None, min_rotation_deg: float | None = None) -> Image.Image:
    """Cut one face out as a square crop framed like FER-2013, upright.

    See :func:`face_frame` for the framing. When the box has eye landmarks
    and the face is tilted by at least :data:`MIN_ROTATION_DEG`, the frame is
    turned with the face (about its centre) so the crop shows the eyes level,
    as in most FER-2013 images. Where the frame runs past the image border
    (a face at the edge of the photo) the border pixels are repeated: the
    crop is always the full frame, never cut short or out of range.

    Args:
        image: The decoded photo (any mode).
        box: A face box in the photo's pixels, e.g. from a detector.
        align: Rotate by the eye landmarks (when present).
        scale: Frame side / box side (:func:`face_frame`); ``None``: :data:`FRAME_SCALE`.
        offset_y: Frame centre offset (:func:`face_frame`); ``None``: :data:`FRAME_OFFSET_Y`.
        min_rotation_deg: Smallest tilt that is turned upright; ``None``:
            :data:`MIN_ROTATION_DEG`.

    Returns:
        A square image, ready for the normal preprocessing. Same mode as
        ``image`` except palette (-> RGBA), CMYK/YCbCr/LAB/HSV (-> RGB), and
        16-bit or 1-bit images that needed rotating (-> L).

    Raises:
        ValueError: The box is empty (``w`` or ``h`` < 1).

    Example:
        >>> from PIL import Image
        >>> crop_face(Image.new("RGB", (100, 100)), FaceBox(0, 0, 40, 40)).size
        (48, 48)
    """
    if box.w < 1 or box.h < 1:
        raise ValueError(f"face box {box} has no area")
    offset_y = FRAME_OFFSET_Y if offset_y is None else offset_y
    min_rotation_deg = MIN_ROTATION_DEG if min_rotation_deg is None else min_rotation_deg
    left, top, side = face_frame(box, scale=scale, offset_y=offset_y)
    angle = eye_angle(box) if align else None
    if angle is None or abs(angle) < min_rotation_deg:
        return _padded_crop(image, left, top, left + side, top + side)
    # The turned frame's corners lie within this axis-aligned square around
    # its centre; that square (padded at the borders) is all that is rotated.
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # The frame's offset from the box centre is along the face's own
    # chin direction, which the rotation turns too: (0, offset) -> R (0, offset).
    offset = offset_y * side
    cx = box.x + box.w / 2 - sin * offset
    cy = box.y + box.h / 2 + cos * offset
    half = side / 2 * (abs(cos) + abs(sin)) + 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    region = _padded_crop(image, x0, y0, math.ceil(cx + half), math.ceil(cy + half))
    if region.mode in _ROTATE_AS_GRAY:
        region = to_gray(region)
    # Pillow maps continuous output coordinates (pixel centres at +0.5) through
    # (a, b, c, d, e, f); output point P samples centre + R(angle) (P - side/2):
    # the crop's x axis runs along the eye line. With angle 0 this is the plain crop.
    a, b, d, e = cos, -sin, sin, cos
    c = (cx - x0) - (a + b) * side / 2
    f = (cy - y0) - (d + e) * side / 2
    return region.transform((side, side), Image.Transform.AFFINE, (a, b, c, d, e, f),
                            resample=Image.Resampling.BILINEAR)
