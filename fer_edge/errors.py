"""Exception types raised by fer_edge.

Every error the package raises on purpose derives from :class:`FerEdgeError`, so
callers can catch one type; the subclasses say whether the input image or the
model file is at fault.
"""

from __future__ import annotations


class FerEdgeError(Exception):
    """Base class of every error raised by fer_edge on purpose."""


class ImageError(FerEdgeError, ValueError):
    """An input image could not be read or used (names the file and the reason)."""


class ModelError(FerEdgeError, RuntimeError):
    """A model file is missing, corrupt, or was not exported by fer-edge's export/."""


class ProviderError(FerEdgeError, ValueError):
    """An ONNX Runtime execution provider was asked for that is not available."""


class DependencyError(FerEdgeError, ImportError):
    """An optional dependency (e.g. face detection) is needed but not installed."""
