"""fer-edge: facial-expression recognition with ONNX Runtime.

Runtime dependencies are onnxruntime, numpy, pillow and click only; importing
this package never imports torch (training and export live outside it).

Example:
    >>> import fer_edge
    >>> issubclass(fer_edge.ImageError, fer_edge.FerEdgeError)
    True
"""

from __future__ import annotations

from ._version import __version__
from .blazeface import BlazeFace
from .classifier import DEFAULT_MODEL, FACE_MODES, Classifier
from .detector import FaceBox, FaceDetector
from .errors import (
    DependencyError,
    FerEdgeError,
    ImageError,
    ModelError,
    ProviderError,
)
from .metadata import ModelInfo
from .preprocess import PreprocessSpec
from .providers import available_providers
from .results import FaceResult, ImageResult, Prediction

__all__ = [
    "__version__",
    "Classifier",
    "DEFAULT_MODEL",
    "FACE_MODES",
    "BlazeFace",
    "FaceBox",
    "FaceDetector",
    "Prediction",
    "FaceResult",
    "ImageResult",
    "PreprocessSpec",
    "ModelInfo",
    "FerEdgeError",
    "ImageError",
    "ModelError",
    "ProviderError",
    "DependencyError",
    "available_providers",
]
