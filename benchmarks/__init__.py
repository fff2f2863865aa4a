"""Benchmarks of the exported model against PyTorch eager on CPU.

``python -m benchmarks --data DIR --checkpoint best.pt --model model.onnx ...``
(``--help`` lists options); :func:`benchmarks.run.run_benchmarks` is the
Python API. ``python -m benchmarks.quant_sweep`` compares int8 recipes.
"""

from .config import BenchConfig

__all__ = ["BenchConfig"]
