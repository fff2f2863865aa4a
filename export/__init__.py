"""Export a fer-edge training checkpoint to a verified ONNX model.

``python -m export CHECKPOINT --out model.onnx`` (``--help`` lists options);
:func:`export.onnx_export.export_checkpoint` is the Python API.
``python -m export.recover MODEL.onnx --out CKPT`` goes the other way: a
trainable checkpoint rebuilt from an exported file (BatchNorm folded back out).

The names below are imported lazily so that ``export.evaluate`` (used by the
benchmarks' ONNX-only memory probe) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExportConfig": "onnx_export", "ExportError": "onnx_export", "ExportReport": "onnx_export",
    "OutputExistsError": "onnx_export", "export_checkpoint": "onnx_export", "QuantConfig": "variants",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
