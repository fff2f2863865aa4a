"""Tiny ONNX models for tests, built with onnx.helper (no torch needed).

The graph is Conv(3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm with a
dynamic batch axis, opset 17, and fer-edge metadata in ``metadata_props``:
the same contract as models written by ``python -m export``. Options break
one thing at a time so the runtime's model checks can be tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fer_edge.metadata import ModelInfo
from fer_edge.preprocess import PreprocessSpec

OPSET = 17
HIDDEN = 8


@dataclass(frozen=True)
class ModelOptions:
    """How to build (or deliberately break) a test model.

    Attributes:
        input_size: Metadata input size (and graph size unless graph_size is set).
        graph_size: Spatial size of the graph input if it should differ from the metadata.
        num_outputs: Logits per image if it should differ from len(labels).
        rank: 4 for a normal image input; 2 builds a flat [N, 3*S*S] input.
        batch: ``None`` for a dynamic batch axis, an int for a fixed one.
        metadata: Whether to write the fer_edge metadata.
        input_name: Graph input name (metadata always says "input").
        float16: Build an fp16 graph (input, weights and output in float16).
        seed: Seed of the random weights.
        mean: Normalisation mean written in the metadata.
        std: Normalisation std written in the metadata.
        training_data: The metadata's ``training_data`` text.
        temperature: The metadata's softmax temperature.
        weights_storage: The metadata's ``extra["weights_storage"]`` (what
            ``python -m export --weights fp16`` records), or None for none.
    """

    input_size: int = 32
    graph_size: int | None = None
    num_outputs: int | None = None
    rank: int = 4
    batch: int | None = None
    metadata: bool = True
    input_name: str = "input"
    float16: bool = False
    seed: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    training_data: str = ""
    temperature: float = 1.0
    weights_storage: str | None = None


def _const(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(arr, name)


def build_model(path: Path, labels: Sequence[str], opts: ModelOptions = ModelOptions()) -> Path:
    """Write a test model to ``path`` and return ``path``."""
    rng = np.random.default_rng(opts.seed)
    size = opts.graph_size or opts.input_size
    classes = opts.num_outputs or len(labels)
    dtype = np.float16 if opts.float16 else np.float32
    elem = TensorProto.FLOAT16 if opts.float16 else TensorProto.FLOAT
    batch = opts.batch if opts.batch is not None else "batch"
    if opts.rank == 4:
        in_shape = [batch, 3, size, size]
        nodes = [
            helper.make_node("Conv", [opts.input_name, "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
        ]
        inits = [
            _const("w1", rng.normal(0, 0.5, (HIDDEN, 3, 3, 3)).astype(dtype)),
            _const("b1", rng.normal(0, 0.1, (HIDDEN,)).astype(dtype)),
            _const("w2", rng.normal(0, 2.0, (classes, HIDDEN)).astype(dtype)),
            _const("b2", rng.normal(0, 0.1, (classes,)).astype(dtype)),
        ]
    else:
        flat = 3 * size * size
        in_shape = [batch, flat]
        nodes = [helper.make_node("Gemm", [opts.input_name, "w2", "b2"], ["logits"], transB=1)]
        inits = [
            _const("w2", rng.normal(0, 0.01, (classes, flat)).astype(dtype)),
            _const("b2", np.zeros(classes, dtype=dtype)),
        ]
    graph = helper.make_graph(
        nodes,
        "fer_edge_test",
        [helper.make_tensor_value_info(opts.input_name, elem, in_shape)],
        [helper.make_tensor_value_info("logits", elem, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every ONNX Runtime fer-edge supports
    if opts.metadata:
        spec = PreprocessSpec(input_size=opts.input_size, mean=opts.mean, std=opts.std)
        info = ModelInfo(labels=list(labels), preprocess=spec, model_name="test_cnn",
                         model_version="test", precision="fp16" if opts.float16 else "fp32",
                         training_data=opts.training_data, temperature=opts.temperature,
                         extra={"weights_storage": opts.weights_storage} if opts.weights_storage else {})
        helper.set_model_props(model, info.to_props())
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
