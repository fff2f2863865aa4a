"""The seam between fer-edge and face detectors: :class:`FaceBox` and :class:`FaceDetector`.

A face detector is anything with a ``detect(image) -> list[FaceBox]`` method.
fer-edge ships one (:class:`fer_edge.blazeface.BlazeFace`, the default of
:class:`fer_edge.Classifier`); pass your own as ``Classifier(detector=...)``.

Example:
    >>> from PIL import Image
    >>> class WholeImage:
    ...     def detect(self, image):
    ...         return [FaceBox(0, 0, image.width, image.height, score=1.0)]
    >>> isinstance(WholeImage(), FaceDetector)
    True
    >>> WholeImage().detect(Image.new("L", (40, 30)))[0].w
    40
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from PIL import Image

from .errors import ModelError

if TYPE_CHECKING:
    from .providers import ProvidersArg

#: Landmark names alignment looks for. "Right"/"left" are the person's own:
#: in an upright frontal face their right eye is on the image's left.
RIGHT_EYE = "right_eye"
LEFT_EYE = "left_eye"

#: The face detectors fer-edge ships, by name (``fer-edge classify --detector``);
#: the first is :class:`fer_edge.Classifier`'s default. Both are the same
#: BlazeFace network and find the same faces (up to float rounding):
#:
#: * ``blazeface`` (the default): ``blazeface_full_range_aligned.onnx``, with
#:   channel counts padded to multiples of 16 (tools/convert_blazeface.py
#:   --aligned), which ONNX Runtime's x86 CPU kernels run in their blocked
#:   layout without reorders: less time per photo.
#: * ``blazeface-unaligned``: ``blazeface_full_range.onnx``, the conversion's
#:   direct output. It ships because the aligned file is derived from it and
#:   checked against it, and because ``web/`` loads it (onnxruntime-web's WASM
#:   kernels have no blocked layout to gain from). On non-x86 CPUs the aligned
#:   file's extra zero channels may cost more than they save (not measured).
SHIPPED_DETECTORS = ("blazeface", "blazeface-unaligned")
#: Each shipped detector's model file, in ``fer_edge/models/detectors/``.
SHIPPED_DETECTOR_FILES = {"blazeface": "blazeface_full_range_aligned.onnx",
                          "blazeface-unaligned": "blazeface_full_range.onnx"}


class Landmark(NamedTuple):
    """A named facial point in image pixels (floats: sub-pixel precision)."""

    name: str
    x: float
    y: float


@dataclass(frozen=True)
class FaceBox:
    """A face found in an image.

    Attributes:
        x: Left edge, in pixels of the image given to the detector. A face at
            the border may get a box reaching past it (negative ``x``, or
            ``x + w`` beyond the width): crops pad such boxes, never fail.
        y: Top edge.
        w: Width.
        h: Height.
        score: Detector confidence (BlazeFace: a probability in 0..1), or
            ``None`` when the box was not detected (the whole image).
        landmarks: Named points (:class:`Landmark`); empty when the detector
            gives none. Alignment uses :data:`RIGHT_EYE` and :data:`LEFT_EYE`.
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None
    landmarks: tuple[Landmark, ...] = ()

    def landmark(self, name: str) -> tuple[float, float] | None:
        """The ``(x, y)`` of the landmark called ``name``, or ``None``.

        Example:
            >>> FaceBox(0, 0, 9, 9, landmarks=(Landmark("nose_tip", 4.5, 5.0),)).landmark("nose_tip")
            (4.5, 5.0)
        """
        for point in self.landmarks:
            if point.name == name:
                return (point.x, point.y)
        return None


@runtime_checkable
class FaceDetector(Protocol):
    """What :class:`fer_edge.Classifier` needs from a face detector.

    Implementations must be safe to call from several threads at once
    (a Classifier may be shared) and must return ``[]``, not raise, for an
    image without faces. Boxes and landmarks are in the pixels of the image
    passed in; order does not matter (the Classifier keeps the order given).
    """

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Find the faces in a decoded image (any Pillow mode)."""
        ...


def shipped_detector(
    name: str = SHIPPED_DETECTORS[0],
    *,
    providers: ProvidersArg = None,
    threads: int = 0,
    min_face: float | None = None,
) -> FaceDetector:
    """Open a shipped face detector by name, for ``Classifier(detector=...)``.

    Args:
        name: One of :data:`SHIPPED_DETECTORS`.
        providers: Execution providers, as for :class:`fer_edge.Classifier`.
        threads: Intra-op threads for ONNX Runtime; 0 lets it decide.
        min_face: Smallest face side to look for, in image pixels; ``None``
            keeps the detector's fast default (see :class:`fer_edge.BlazeFace`).

    Raises:
        ModelError: ``name`` is not a shipped detector (the message lists
            them), or its model file is missing or corrupt.
        ProviderError: A requested provider is not available.
        ValueError: ``min_face`` is not positive.

    Example:
        >>> shipped_detector("blazeface", providers="cpu", min_face=24).min_face
        24.0
        >>> shipped_detector(providers="cpu").model_path.name
        'blazeface_full_range_aligned.onnx'
        >>> shipped_detector("blazeface-unaligned", providers="cpu").model_path.name
        'blazeface_full_range.onnx'
    """
    if name not in SHIPPED_DETECTORS:
        raise ModelError(f"unknown face detector {name!r}; shipped detectors: "
                         f"{', '.join(SHIPPED_DETECTORS)}")
    from . import blazeface  # lazy: blazeface imports this module

    model = blazeface.DEFAULT_MODEL.with_name(SHIPPED_DETECTOR_FILES[name])
    return blazeface.BlazeFace(model, providers=providers, threads=threads, min_face=min_face)
