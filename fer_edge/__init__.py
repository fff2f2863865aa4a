"""fer-edge: facial-expression recognition with ONNX Runtime.

Runtime dependencies are onnxruntime, numpy, pillow and click only; importing
this package never imports torch (training and export live outside it).

Example:
    >>> import fer_edge
    >>> issubclass(fer_edge.ImageError, fer_edge.FerEdgeError)
    True
"""

from __future__ import annotations

# Defined before the imports below: classifier.py reads it.
__version__ = "0.1.0"

from .classifier import DEFAULT_MODEL, FACE_MODES, Classifier  # noqa: E402
from .errors import (  # noqa: E402
    DependencyError,
    FerEdgeError,
    ImageError,
    ModelError,
    ProviderError,
)
from .metadata import ModelInfo  # noqa: E402
from .preprocess import PreprocessSpec  # noqa: E402
from .providers import available_providers  # noqa: E402
from .results import FaceResult, ImageResult, Prediction  # noqa: E402

__all__ = [
    "__version__",
    "Classifier",
    "DEFAULT_MODEL",
    "FACE_MODES",
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
