"""Result types returned by :class:`fer_edge.Classifier`.

* :class:`Prediction`: the expression of one face (or one whole image).
* :class:`FaceResult`: a face box in the image plus its :class:`Prediction`.
* :class:`ImageResult`: everything known about one input image, or why it failed;
  :meth:`ImageResult.to_record` is the JSON record the CLI prints.

Example:
    >>> p = Prediction(label="happy", score=0.75, probabilities={"happy": 0.75, "sad": 0.25})
    >>> face = FaceResult(box=(0, 0, 48, 48), detection_score=None, prediction=p)
    >>> r = ImageResult(path="a.png", width=48, height=48, detected=False, faces=[face])
    >>> r.to_record()["label"], r.to_record()["faces"][0]["box"]
    ('happy', [0, 0, 48, 48])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """The expression predicted for one face.

    Attributes:
        label: The most probable class.
        score: Its probability, in [0, 1].
        probabilities: Probability of every class, in the model's label order.

    Example:
        >>> Prediction("sad", 0.6, {"happy": 0.4, "sad": 0.6}).label
        'sad'
    """

    label: str
    score: float
    probabilities: dict[str, float]

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict with ``label``, ``score`` and ``probabilities``."""
        return {"label": self.label, "score": self.score, "probabilities": dict(self.probabilities)}


@dataclass(frozen=True)
class FaceResult:
    """One face: where it is and what it shows.

    Attributes:
        box: ``(x, y, w, h)`` in pixels of the (EXIF-rotated) input image. The
            whole image when face detection was not run.
        detection_score: Detector confidence, ``None`` when the detector gives
            none or detection was not run.
        prediction: The expression of this face.

    Example:
        >>> f = FaceResult((1, 2, 3, 4), None, Prediction("happy", 1.0, {"happy": 1.0}))
        >>> f.label, f.area
        ('happy', 12)
    """

    box: tuple[int, int, int, int]
    detection_score: float | None
    prediction: Prediction

    @property
    def label(self) -> str:
        """Shortcut for ``prediction.label``."""
        return self.prediction.label

    @property
    def score(self) -> float:
        """Shortcut for ``prediction.score``."""
        return self.prediction.score

    @property
    def probabilities(self) -> dict[str, float]:
        """Shortcut for ``prediction.probabilities``."""
        return self.prediction.probabilities

    @property
    def area(self) -> int:
        """Box area in pixels (used to pick the main face)."""
        return self.box[2] * self.box[3]

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict: ``box``, ``detection_score`` and the prediction's fields."""
        return {
            "box": list(self.box),
            "detection_score": self.detection_score,
            **self.prediction.to_record(),
        }


@dataclass
class ImageResult:
    """Everything known about one input image.

    Attributes:
        path: File the image came from; ``None`` for in-memory images.
        width: Image width in pixels after EXIF orientation (0 on error).
        height: Image height in pixels after EXIF orientation (0 on error).
        detected: Whether face detection was run on this image.
        faces: One entry per face; empty when detection found none.
        error: Why the image could not be classified, else ``None``.

    Example:
        >>> ImageResult(path="x.jpg", width=0, height=0, detected=False, faces=[],
        ...             error="x.jpg: empty file").to_record()
        {'path': 'x.jpg', 'error': 'x.jpg: empty file'}
    """

    path: str | None
    width: int
    height: int
    detected: bool
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def failed(cls, path: str | None, error: str) -> ImageResult:
        """The result for an image that could not be classified."""
        return cls(path=path, width=0, height=0, detected=False, faces=[], error=error)

    @property
    def ok(self) -> bool:
        """True when the image was classified (even if no face was found)."""
        return self.error is None

    @property
    def main_face(self) -> FaceResult | None:
        """The largest face (first one on ties), or ``None`` if there is none."""
        if not self.faces:
            return None
        return max(self.faces, key=lambda f: f.area)

    def to_record(self) -> dict[str, Any]:
        """The JSON record the CLI writes for this image.

        Successful images carry ``path``, ``width``, ``height``, ``detected``,
        ``faces`` and the main (largest) face's ``label``, ``score`` and
        ``probabilities`` at top level (``None`` when no face was found).
        Failed images carry only ``path`` and ``error``.
        """
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        main = self.main_face
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "detected": self.detected,
            "faces": [f.to_record() for f in self.faces],
            "label": main.label if main else None,
            "score": main.score if main else None,
            "probabilities": dict(main.probabilities) if main else None,
        }
