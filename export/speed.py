"""``python -m export.speed MODEL.onnx``: time an exported model and store the figures in its metadata.

Export already does this for the files it writes; this stamps a file exported
before speed was recorded (or re-times one on another machine). The graph is
not changed, only ``extra.speed`` in the ``fer_edge`` metadata; the file is
replaced atomically. Time on a quiet machine: the figures are what
``fer-edge models`` shows.

Example:
    python -m export.speed fer_edge/models/default.onnx --threads 2 --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from fer_edge.errors import ModelError
from fer_edge.metadata import ModelInfo

from .evaluate import make_session, random_inputs
from .onnx_export import measure_speed, restamp


def stamp(path: Path, threads: int, write: bool) -> dict:
    """Measure ``path`` (random inputs of its size) and, with ``write``, store the figures in it."""
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    info = ModelInfo.from_props(props, str(path))
    session = make_session(graph.SerializeToString(), threads)
    speed = measure_speed(session, random_inputs(info.preprocess, 32, 0), threads)
    if write:
        info.extra = {**info.extra, "speed": speed}
        restamp(graph, info, path)
    return speed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, nargs="+")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default %(default)s)")
    p.add_argument("--write", action="store_true", help="store the figures in the file's metadata")
    a = p.parse_args(argv)
    code = 0
    for path in a.model:
        try:
            print(json.dumps({"model": str(path), **stamp(path, a.threads, a.write)}))
        except (ModelError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
