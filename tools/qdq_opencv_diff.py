"""Where OpenCV DNN's results on an int8 QDQ model leave ONNX Runtime's, op by op.

For each quantized op (Conv, Add, GlobalAveragePool, Gemm) of the model, the op
alone (its input QuantizeLinear/DequantizeLinear, the op, its output
QuantizeLinear) is cut out of the graph and fed ONNX Runtime's own input codes
for the same images, so no earlier difference carries over. Its output codes,
from ONNX Runtime and from OpenCV, are compared with the exact result (float64
arithmetic on the integer codes, rounded half to even): the largest difference
in codes and the share of values that differ. Then, for a Gemm, the bias OpenCV
effectively adds to each image of a batch (its output minus input times
weights).

Measured on ``fast`` (see :func:`export.portable.gemm_bias_as_row`): every op but
the Gemm is within 1 code of exact on at most ~2e-5 of values, in both
runtimes; the Gemm is off by up to 239 codes on half the values, because
OpenCV adds the bias to the first image of a batch only.

Usage::

    python tools/qdq_opencv_diff.py fer_edge/models/fast.onnx --data ../shared/data/fer2013 [--images 16]

Needs OpenCV (``pip install opencv-python-headless``) and PyTorch (for the
float64 convolution).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _inputs(path: Path, data: Path | None, n: int) -> np.ndarray:
    from export.evaluate import load_labelled, random_inputs
    from fer_edge.metadata import ModelInfo

    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    if data is not None:
        per_class = -(-n // len(info.labels))
        return load_labelled(data, "val", info.labels, info.preprocess, per_class).inputs[:n]
    return random_inputs(info.preprocess, n, seed=0)


def _stat(got: np.ndarray, exact: np.ndarray) -> str:
    """Largest difference in codes from ``exact`` and the share of values that differ."""
    diff = np.abs(got.astype(np.float64).reshape(exact.shape) - exact)
    return f"{int(diff.max()):4d} {np.mean(diff > 0):8.1e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/qdq_opencv_diff.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="int8 QDQ ONNX file")
    p.add_argument("--data", type=Path, default=None, help="image-folder root with val/<class>/")
    p.add_argument("--images", type=int, default=16, help="images to run (default 16)")
    a = p.parse_args(argv)

    import cv2
    import onnxruntime as ort
    import torch

    from fer_edge.providers import session_options

    x = _inputs(a.model, a.data, a.images)
    model = onnx.load(str(a.model))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    quants = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    # ONNX Runtime's codes of every quantized tensor, on the whole model.
    probe = onnx.load(str(a.model))
    for q in quants:
        probe.graph.output.append(helper.make_tensor_value_info(q.output[0], TensorProto.UINT8, None))
    opts = session_options(1)
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    codes = dict(zip([o.name for o in session.get_outputs()], session.run(None, {graph.input[0].name: x})))

    def qparams(q: onnx.NodeProto) -> tuple[float, int]:
        return float(inits[q.input[1]]), int(inits[q.input[2]])

    def dequantized_const(name: str) -> np.ndarray:
        dq = producers[name]
        q, scale, zp = (inits[i].astype(np.float64) for i in dq.input[:3])
        if scale.ndim == 1 and q.ndim > 1:
            shape = (-1,) + (1,) * (q.ndim - 1)
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return (q - zp) * scale

    print(f"{'op':18} {'name':48} {'ORT vs exact':>14} {'OpenCV vs exact':>16}  (max codes, share)")
    folder = Path(tempfile.mkdtemp())
    for node in graph.node:
        if node.op_type not in ("Conv", "Add", "GlobalAveragePool", "Gemm"):
            continue
        out_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0])
        in_qs = []
        for name in node.input:
            src = producers.get(name)
            while src is not None and src.op_type == "Flatten":
                src = producers.get(src.input[0])
            if src is not None and src.op_type == "DequantizeLinear" and src.input[0] not in inits:
                in_qs.append(producers[src.input[0]])
        acts = [(codes[q.output[0]].astype(np.float64) - qparams(q)[1]) * qparams(q)[0] for q in in_qs]
        if node.op_type == "Conv":
            attrs = {t.name: helper.get_attribute_value(t) for t in node.attribute}
            y = torch.nn.functional.conv2d(
                torch.from_numpy(acts[0]), torch.from_numpy(dequantized_const(node.input[1])),
                torch.from_numpy(dequantized_const(node.input[2])), stride=attrs.get("strides", 1),
                padding=attrs.get("pads", [0, 0])[:2], groups=attrs.get("group", 1)).numpy()
        elif node.op_type == "Add":
            y = acts[0] + acts[1]
        elif node.op_type == "GlobalAveragePool":
            y = acts[0].mean(axis=(2, 3), keepdims=True)
        else:
            y = acts[0].reshape(len(x), -1) @ dequantized_const(node.input[1]).T + dequantized_const(node.input[2])
        scale, zp = qparams(out_q)
        exact = np.clip(np.rint(y / scale) + zp, 0, 255)
        sub = folder / "op.onnx"
        onnx.utils.extract_model(str(a.model), str(sub), [q.input[0] for q in in_qs], [out_q.output[0]])
        feeds = {q.input[0]: ((codes[q.output[0]].astype(np.float32) - qparams(q)[1]) * np.float32(qparams(q)[0]))
                 for q in in_qs}
        ort_codes = ort.InferenceSession(str(sub), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        net = cv2.dnn.readNetFromONNX(str(sub))
        for name, value in feeds.items():
            net.setInput(value, name)
        cv_codes = np.asarray(net.forward()).astype(np.float64) + 128  # OpenCV holds uint8 codes as int8
        print(f"{node.op_type:18} {node.name[-48:]:48} {_stat(ort_codes, exact):>14} {_stat(cv_codes, exact):>16}")
        if node.op_type == "Gemm":
            net = cv2.dnn.readNetFromONNX(str(a.model))
            net.setInput(x)
            gemm = next(n for n in net.getLayerNames() if n.endswith(node.name))
            before = next(n for n in net.getLayerNames() if n.endswith(in_qs[0].output[0].replace(
                "_QuantizeLinear_Output", "_DequantizeLinear")))
            a_in, out = (np.asarray(t, np.float64) for t in net.forward([before, gemm]))
            bias = out - a_in.reshape(len(x), -1) @ dequantized_const(node.input[1]).T
            print(f"  OpenCV's effective Gemm bias per image (true: {dequantized_const(node.input[2])}):")
            for i, row in enumerate(bias[:6]):
                print(f"    image {i}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
