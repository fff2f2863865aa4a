"""``python -m benchmarks.runtimes_compat``: the shipped models in other ONNX runtimes.

For every shipped model, each runtime that is installed (OpenCV DNN, OpenVINO)
loads the file and runs the same inputs as ONNX Runtime (the reference):
load OK or the runtime's error with the operator at fault, max |logit
difference|, top-1 agreement, val accuracy and ms per image at batch 1 and 32.
Where a runtime cannot read a shipped file correctly, the row of its portable
form (:mod:`export.portable`, built in a temporary folder) follows; an int8
QDQ model gets three (:data:`INT8_FORMS`): the exact int8 emulation, the QDQ
file with OpenCV's Gemm-bias bug worked around, and the dequantized fp32 graph.

The face detector (BlazeFace's default file, :data:`fer_edge.blazeface.DEFAULT_MODEL`:
``blazeface_full_range_aligned.onnx``; each row names its file) runs in each
runtime on the input tensors fer_edge's own preprocessing builds from photos/
and the tests' sample photos; its raw outputs go through fer_edge's own
decoding and NMS, and the faces are compared (``--only detector`` runs just
that part).

Inputs are every val image of the model's classes when ``--data`` is given,
else random images (agreement on noise is a looser check: many near-ties).

Example:
    python -m benchmarks.runtimes_compat --data ../shared/data/fer2013 \\
        --out benchmarks/results/runtimes_compat.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from PIL import Image

from fer_edge.blazeface import DEFAULT_MODEL as DEFAULT_DETECTOR
from fer_edge.blazeface import BlazeFace
from fer_edge.detector import FaceBox
from fer_edge.providers import session_options

#: float32 (N, 3, S, S) -> float32 logits (N, C).
Predict = Callable[[np.ndarray], np.ndarray]


class RuntimeLoadError(RuntimeError):
    """A runtime could not load or run a model; the message is the runtime's, plus the operator."""


def fault_operator(message: str) -> str | None:
    """The ONNX operator a runtime's error message blames, if it names one.

    Example:
        >>> fault_operator("Node [Concat@ai.onnx]:(onnx_node!/Concat) parse error: ...")
        'Concat'
    """
    found = re.search(r"Node \[(\w+)", message) or re.search(r"\[(\w+)\]:\(onnx_node", message)
    return found.group(1) if found else None


def _load_error(runtime: str, path: Path, exc: Exception) -> RuntimeLoadError:
    text = " ".join(str(exc).split())
    op = fault_operator(text)
    return RuntimeLoadError(f"{runtime} cannot run {path.name}" + (f" (operator {op})" if op else "")
                            + f": {text[:400]}")


def ort_predict(path: Path, threads: int) -> Predict:
    """ONNX Runtime on CPU, the reference every other runtime is compared with."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def opencv_net(path: Path, threads: int):
    """``cv2.dnn.readNetFromONNX(path)`` on the default backend and target (CPU).

    Raises:
        ImportError: OpenCV is not installed.
        RuntimeLoadError: OpenCV cannot parse the graph (its message, and the operator).
    """
    import cv2

    cv2.setNumThreads(threads)
    try:
        return cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as exc:
        raise _load_error(f"OpenCV {cv2.__version__}", path, exc) from None


def opencv_predict(path: Path, threads: int) -> Predict:
    """OpenCV DNN (``cv2.dnn.readNetFromONNX``), default backend and target (CPU).

    Raises:
        ImportError: OpenCV is not installed.
        RuntimeLoadError: OpenCV cannot parse or run the graph (its message, and the operator).
    """
    import cv2

    net = opencv_net(path, threads)

    def predict(x: np.ndarray) -> np.ndarray:
        try:
            net.setInput(np.ascontiguousarray(x))
            return np.asarray(net.forward(), dtype=np.float32).reshape(len(x), -1)
        except cv2.error as exc:
            raise _load_error(f"OpenCV {cv2.__version__}", path, exc) from None

    return predict


def openvino_compiled(path: Path, threads: int, precision: str = "f32"):
    """The ONNX file read and compiled by OpenVINO for its CPU plugin.

    Args:
        path: ONNX file.
        threads: Inference threads.
        precision: ``"f32"`` for parity; ``"default"`` for what OpenVINO picks
            (bf16 on CPUs with AMX or AVX512-BF16, which is faster and less exact).

    Raises:
        ImportError: OpenVINO is not installed.
        RuntimeLoadError: OpenVINO cannot read or compile the graph.
    """
    import openvino as ov

    core = ov.Core()
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise _load_error(f"OpenVINO {ov.__version__}", path, exc) from None


def openvino_predict(path: Path, threads: int, precision: str = "f32") -> Predict:
    """OpenVINO on CPU (arguments and errors as :func:`openvino_compiled`)."""
    request = openvino_compiled(path, threads, precision).create_infer_request()

    def predict(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: np.ascontiguousarray(x)})[0], dtype=np.float32)

    return predict


def openvino_precision() -> str:
    """The inference precision OpenVINO's CPU plugin uses by default on this machine."""
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    # An ov.Type ("bf16", "f32"...), not a string.
    return str(hint.to_string() if hasattr(hint, "to_string") else hint)


@dataclass
class Row:
    """One runtime on one model file.

    Attributes:
        model: Shipped model name.
        runtime: Runtime and settings, e.g. ``"OpenVINO 2026.4 f32"``.
        file: Which file it ran: ``"shipped"`` or the portable form's description.
        loaded: Whether it loaded and ran.
        error: The runtime's message when it did not.
        n: Inputs compared.
        inputs: ``"val images"`` or ``"random images"``.
        max_abs_diff: Largest |logit difference| from ONNX Runtime on the shipped file.
        top1_agreement: Share of inputs with ONNX Runtime's top-1.
        accuracy: Val accuracy (``None`` on random inputs).
        ms_b1: Median ms per image at batch 1.
        ms_b32: Median ms per image at batch 32.
    """

    model: str
    runtime: str
    file: str
    loaded: bool
    error: str | None = None
    n: int = 0
    inputs: str = ""
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    ms_b1: float | None = None
    ms_b32: float | None = None


def run_all(predict: Predict, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for every input, in batches (the last one smaller: tests batch handling too)."""
    return np.concatenate([predict(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def ms_per_image(predict: Predict, inputs: np.ndarray, batch: int, seconds: float) -> float:
    """Median ms per image at ``batch`` over about ``seconds`` of calls (after one warm-up)."""
    x = np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])
    predict(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 200):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0 / batch


def measure(model: str, runtime: str, file: str, make: Callable[[], Predict], inputs: np.ndarray,
            kind: str, reference: np.ndarray, labels: np.ndarray | None, seconds: float) -> Row:
    """One :class:`Row`: load, compare with ``reference`` logits, time."""
    try:
        predict = make()
        logits = run_all(predict, inputs)
    except RuntimeLoadError as exc:
        return Row(model, runtime, file, False, str(exc))
    return Row(
        model, runtime, file, True, None, len(inputs), kind,
        float(np.abs(logits - reference).max()),
        float(np.mean(logits.argmax(1) == reference.argmax(1))),
        None if labels is None else float(np.mean(logits.argmax(1) == labels)),
        ms_per_image(predict, inputs, 1, seconds), ms_per_image(predict, inputs, 32, seconds))


def model_inputs(path: Path, data: Path | None, limit: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Val images of the model's classes (all, or ``limit`` per class), else 64 random images."""
    from export.evaluate import load_labelled, random_inputs
    from fer_edge.metadata import ModelInfo

    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                                 .metadata_props}, source=str(path))
    if data is not None:
        val = load_labelled(data, "val", info.labels, info.preprocess, limit)
        return val.inputs, val.labels, "val images"
    return random_inputs(info.preprocess, 64, seed=0), None, "random images"


#: Row labels of the forms :mod:`export.portable` makes of an int8 QDQ model, by file suffix.
INT8_FORMS = {
    "int8emu": "int8 emulated (export.portable --emulate-int8)",
    "gemmrow": "Gemm bias row (export.portable --gemm-bias-row)",
    "fp32": "dequantized fp32 (export.portable --dequantize)",
}


def portable_forms(path: Path, folder: Path) -> list[tuple[str, Path]]:
    """The rewritten forms of ``path`` that :mod:`export.portable` makes, written under ``folder``.

    An int8 QDQ model gets each of :data:`INT8_FORMS` (one that does not apply is left out).
    """
    from export.portable import NotApplicable, dequantize_qdq, emulate_int8, gemm_bias_as_row, unfold_flip_tta

    rewrites = {"int8emu": emulate_int8, "gemmrow": gemm_bias_as_row, "fp32": dequantize_qdq}

    model = onnx.load(str(path))
    forms = []
    try:
        out = folder / f"{path.stem}-portable.onnx"
        onnx.save(unfold_flip_tta(model), str(out))
        forms.append(("portable rewrite (export.portable)", out))
    except NotApplicable:
        pass
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        for suffix, label in INT8_FORMS.items():
            out = folder / f"{path.stem}-{suffix}.onnx"
            try:
                onnx.save(rewrites[suffix](model), str(out))
            except NotApplicable as exc:
                print(f"{path.name}: no {label}: {exc}", file=sys.stderr)
                continue
            forms.append((label, out))
    return forms


def installed_runtimes() -> list[tuple[str, str]]:
    """The runtimes to compare, as (label, kind), ONNX Runtime first.

    Kinds: ``"ort"``, ``"opencv"``, ``"openvino-f32"``, ``"openvino-default"``.
    A runtime that is not installed is left out, saying so on stderr.
    """
    runtimes = [("ONNX Runtime", "ort")]
    try:
        import cv2

        runtimes.append((f"OpenCV DNN {cv2.__version__}", "opencv"))
    except ImportError:
        print("OpenCV not installed (pip install opencv-python-headless): no OpenCV rows", file=sys.stderr)
    try:
        import openvino as ov

        version = ov.get_version().split("-")[0]
        runtimes.append((f"OpenVINO {version} f32", "openvino-f32"))
        runtimes.append((f"OpenVINO {version} default ({openvino_precision()})", "openvino-default"))
    except ImportError:
        print("OpenVINO not installed (pip install openvino): no OpenVINO rows", file=sys.stderr)
    return runtimes


def benchmark(models: dict[str, Path], data: Path | None, threads: int, seconds: float,
              limit: int = 0) -> list[Row]:
    """Every runtime on every model (and its portable forms for OpenCV)."""
    rows: list[Row] = []
    factories: dict[str, Callable[[Path], Predict]] = {
        "ort": lambda p: ort_predict(p, threads),
        "opencv": lambda p: opencv_predict(p, threads),
        "openvino-f32": lambda p: openvino_predict(p, threads, "f32"),
        "openvino-default": lambda p: openvino_predict(p, threads, "default"),
    }
    runtimes = [(label, factories[kind]) for label, kind in installed_runtimes()]
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            inputs, labels, kind = model_inputs(path, data, limit)
            reference = run_all(ort_predict(path, threads), inputs)
            for runtime, make in runtimes:
                rows.append(measure(name, runtime, "shipped", partial(make, path), inputs, kind,
                                    reference, labels, seconds))
                print(_line(rows[-1]), file=sys.stderr)
            # Portable forms: in ONNX Runtime (cost of the rewrite) and OpenCV (why it exists).
            for what, form in portable_forms(path, Path(tmp)):
                for runtime, make in runtimes:
                    if runtime.startswith(("ONNX Runtime", "OpenCV")):
                        rows.append(measure(name, runtime, what, partial(make, form), inputs, kind,
                                            reference, labels, seconds))
                        print(_line(rows[-1]), file=sys.stderr)
    return rows


# --- the face detector ----------------------------------------------------------

#: float32 (1, H, W, 3) detector input -> its raw outputs: regressors (1, A, 16)
#: (box and landmark offsets, input pixels) and scores (1, A, 1) (logits).
DetectorRun = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
DETECTOR_OUTPUTS = ("regressors", "scores")
#: Two detections are the same face from this box IoU up (boxes are whole pixels,
#: so a 1 px shift of a 70 px face already costs ~3%).
SAME_FACE_IOU = 0.95
#: scikit-image sample photos the detector tests use (tests/test_faces.py): faces,
#: and the faceless ones that once gave false boxes (coins, logo, galaxy...).
SKIMAGE_SAMPLES = ("astronaut", "camera", "coins", "moon", "chelsea", "logo", "rocket", "hubble_deep_field")
PHOTOS = Path(__file__).resolve().parents[1] / "photos"


def ort_detector(path: Path, threads: int) -> DetectorRun:
    """ONNX Runtime on CPU: the detector's reference, as :class:`fer_edge.blazeface.BlazeFace` runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regressors, scores = session.run(list(DETECTOR_OUTPUTS), {name: x})
        return regressors, scores

    return run


def opencv_detector(path: Path, threads: int) -> DetectorRun:
    """The detector in OpenCV DNN, both outputs fetched by name.

    Raises:
        ImportError: OpenCV is not installed.
        RuntimeLoadError: OpenCV cannot parse the graph or run an input.
    """
    import cv2

    net = opencv_net(path, threads)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            # The graph has dynamic height and width: OpenCV re-plans its shapes per input.
            net.setInput(np.ascontiguousarray(x))
            regressors, scores = net.forward(list(DETECTOR_OUTPUTS))
        except cv2.error as exc:
            raise _load_error(f"OpenCV {cv2.__version__}", path, exc) from None
        return np.asarray(regressors, np.float32), np.asarray(scores, np.float32)

    return run


def openvino_detector(path: Path, threads: int, precision: str = "f32") -> DetectorRun:
    """The detector in OpenVINO on CPU (arguments and errors as :func:`openvino_compiled`)."""
    import openvino as ov

    compiled = openvino_compiled(path, threads, precision)
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in DETECTOR_OUTPUTS]

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            result = request.infer({0: np.ascontiguousarray(x)})
        except Exception as exc:  # a shape the compiled graph cannot take
            raise _load_error(f"OpenVINO {ov.__version__}", path, exc) from None
        return np.array(result[outputs[0]], np.float32), np.array(result[outputs[1]], np.float32)

    return run


class RuntimeBlazeFace(BlazeFace):
    """fer_edge's BlazeFace with its model call made by another runtime.

    Only ``_infer`` (input tensor -> raw outputs, the one seam between
    fer_edge's preprocessing and its decoding) is replaced: the passes,
    resizing, input tensor, decoding and weighted NMS stay fer_edge's own, so
    detections can differ from ONNX Runtime's through the raw outputs alone.

    Args:
        run: The runtime's model call.
        model: The detector's ONNX file (also opened, unused, by ONNX Runtime:
            the base class checks it is BlazeFace-shaped).

    Attributes:
        calls: Every model call's input, regressors and scores, in order.
    """

    def __init__(self, run: DetectorRun, model: Path = DEFAULT_DETECTOR) -> None:
        super().__init__(model, providers="cpu", threads=1)
        self.run = run
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _infer(self, x: np.ndarray, p: Any) -> tuple[np.ndarray, np.ndarray]:
        regressors, scores = self.run(x)
        self.calls.append((x, regressors, scores))
        return regressors[0], scores[0, :, 0]


def detector_images(samples: bool = True) -> dict[str, Image.Image]:
    """photos/ (loaded as the CLI loads them) and the tests' scikit-image photos, if installed.

    Args:
        samples: Add the scikit-image sample photos (``False``: photos/ only).
    """
    from fer_edge.preprocess import load_image

    images = {f"photos/{f.name}": load_image(f) for f in sorted(PHOTOS.iterdir())
              if f.suffix in (".jpg", ".png")}
    if not samples:
        return images
    try:
        from skimage import data
    except ImportError:
        print("scikit-image not installed: detector compared on photos/ only", file=sys.stderr)
        return images
    for name in SKIMAGE_SAMPLES:
        images[f"skimage {name}"] = Image.fromarray(getattr(data, name)())
    # tests/test_faces.py's tilted face: a 30-degree roll, where scores sit lower.
    images["skimage astronaut, rotated 30"] = images["skimage astronaut"].rotate(
        30, resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120))
    return images


def box_iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two face boxes."""
    w = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    h = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    union = a.w * a.h + b.w * b.h - w * h
    return w * h / union if union > 0 else 0.0


def faces_iou(reference: list[FaceBox], other: list[FaceBox]) -> float | None:
    """Smallest IoU when each reference face is paired with its best remaining match.

    Returns:
        1.0 when both are empty; ``None`` when the face counts differ.
    """
    if len(reference) != len(other):
        return None
    left, worst = list(other), 1.0
    for face in reference:
        best = max(left, key=lambda o: box_iou(face, o))
        worst = min(worst, box_iou(face, best))
        left.remove(best)
    return worst


@dataclass
class DetectorRow:
    """One runtime on the face detector.

    Attributes:
        model: The detector file's name.
        runtime: Runtime and settings.
        file: ``"shipped"`` (or a rewritten form's description).
        loaded: Whether it loaded and ran every input.
        error: The runtime's message (and operator) when it did not.
        images: Photos compared.
        calls: Model calls compared (one per pass: 1 or 2 per photo).
        faces: Faces ONNX Runtime's BlazeFace finds in them.
        max_score_diff: Largest |difference| of the raw score logits, every anchor.
        max_box_diff: Largest |difference| of the raw regressors (box and
            landmark offsets, input pixels), every anchor.
        same_faces: Same count on every photo and IoU >= :data:`SAME_FACE_IOU` each.
        min_iou: Smallest IoU of a face with ONNX Runtime's (1.0 when none differ).
        differing: Photos whose faces are not the same.
        ms_per_call: Median ms per model call, over the photos' inputs.
    """

    model: str
    runtime: str
    file: str
    loaded: bool
    error: str | None = None
    images: int = 0
    calls: int = 0
    faces: int = 0
    max_score_diff: float | None = None
    max_box_diff: float | None = None
    same_faces: bool | None = None
    min_iou: float | None = None
    differing: list[str] = field(default_factory=list)
    ms_per_call: float | None = None


def ms_per_call(run: DetectorRun, inputs: list[np.ndarray], seconds: float) -> float:
    """Median ms per model call, rounds of every input, over about ``seconds`` (after a warm-up round)."""
    for x in inputs:  # first call per input shape plans/compiles: not timed
        run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 50):
        t0 = time.perf_counter()
        for x in inputs:
            run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0 / len(inputs)


def detect_all(detector: RuntimeBlazeFace, images: dict[str, Image.Image]) -> dict[str, list[FaceBox]]:
    """Each photo's faces (the calls accumulate on ``detector.calls``)."""
    return {name: detector.detect(image) for name, image in images.items()}


def measure_detector(runtime: str, file: str, make: Callable[[], DetectorRun], model: Path,
                     images: dict[str, Image.Image], want: dict[str, list[FaceBox]],
                     reference: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seconds: float) -> DetectorRow:
    """One :class:`DetectorRow`: load, detect on every photo, compare raw outputs and faces, time."""
    row = DetectorRow(model.name, runtime, file, False, images=len(images))
    try:
        detector = RuntimeBlazeFace(make(), model)
        got = detect_all(detector, images)
    except RuntimeLoadError as exc:
        row.error = str(exc)
        return row
    if [c[0].shape for c in detector.calls] != [c[0].shape for c in reference]:
        raise RuntimeError("the runtime was given other inputs than ONNX Runtime: fer_edge's passes changed")
    ious = {name: faces_iou(want[name], got[name]) for name in images}
    row.differing = [n for n, iou in ious.items() if iou is None or iou < SAME_FACE_IOU]
    row.loaded, row.calls, row.faces = True, len(reference), sum(len(f) for f in want.values())
    row.max_box_diff = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(reference, detector.calls))
    row.max_score_diff = max(float(np.abs(a[2] - b[2]).max()) for a, b in zip(reference, detector.calls))
    row.same_faces = not row.differing
    row.min_iou = None if any(i is None for i in ious.values()) else min(i for i in ious.values() if i is not None)
    row.ms_per_call = ms_per_call(detector.run, [c[0] for c in reference], seconds)
    return row


def benchmark_detector(threads: int, seconds: float, model: Path = DEFAULT_DETECTOR) -> list[DetectorRow]:
    """The face detector in every installed runtime, against fer_edge's own BlazeFace (ONNX Runtime).

    The ONNX Runtime row runs the same session through :class:`RuntimeBlazeFace`:
    0 difference and the same faces there show the harness itself changes nothing.
    """
    factories: dict[str, Callable[[Path], DetectorRun]] = {
        "ort": lambda p: ort_detector(p, threads),
        "opencv": lambda p: opencv_detector(p, threads),
        "openvino-f32": lambda p: openvino_detector(p, threads, "f32"),
        "openvino-default": lambda p: openvino_detector(p, threads, "default"),
    }
    images = detector_images()
    shipped = BlazeFace(model, providers="cpu", threads=threads)
    want = {name: shipped.detect(image) for name, image in images.items()}
    recorder = RuntimeBlazeFace(ort_detector(model, threads), model)
    detect_all(recorder, images)
    rows = []
    for runtime, kind in installed_runtimes():
        rows.append(measure_detector(runtime, "shipped", partial(factories[kind], model), model, images,
                                     want, recorder.calls, seconds))
        print(_detector_line(rows[-1]), file=sys.stderr)
    return rows


def _detector_line(r: DetectorRow) -> str:
    if not r.loaded:
        return f"{r.model:33} {r.runtime:34} FAILED: {r.error}"
    return (f"{r.model:33} {r.runtime:34} {'yes':5} {r.images:4} {r.calls:5} {r.faces:5} "
            f"{_fmt(r.max_score_diff, '9.3g')} {_fmt(r.max_box_diff, '9.3g')} "
            f"{'yes' if r.same_faces else 'NO':5} {_fmt(r.min_iou, '7.3f')} {_fmt(r.ms_per_call, '7.2f')}"
            + (f"  differ: {', '.join(r.differing)}" if r.differing else ""))


def detector_table(rows: list[DetectorRow]) -> str:
    """The detector rows as a fixed-width text table."""
    head = (f"{'detector':33} {'runtime':34} {'loads':5} {'imgs':>4} {'calls':>5} {'faces':>5} "
            f"{'score dif':>9} {'box diff':>9} {'same':5} {'min IoU':>7} {'ms/call':>7}")
    return "\n".join([head, *(_detector_line(r) for r in rows)])


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _line(r: Row) -> str:
    if not r.loaded:
        return f"{r.model:8} {r.runtime:34} {r.file:48} FAILED: {r.error}"
    return (f"{r.model:8} {r.runtime:34} {r.file:48} {_fmt(r.max_abs_diff, '9.3g')} "
            f"{_fmt(r.top1_agreement, '8.2%')} {_fmt(r.accuracy, '7.2%')} "
            f"{_fmt(r.ms_b1, '7.2f')} {_fmt(r.ms_b32, '7.2f')}")


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    head = (f"{'model':8} {'runtime':34} {'file':48} {'max diff':>9} {'top-1 ag':>8} "
            f"{'acc':>7} {'ms b1':>7} {'ms b32':>7}")
    return "\n".join([head, *(_line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runtimes_compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="image-folder root with val/<class>/")
    p.add_argument("--limit", type=int, default=0, help="val images per class (0 = all)")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime alike")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per runtime and batch size")
    p.add_argument("--only", choices=("classifiers", "detector"), default=None,
                   help="run one part; the other part of an existing --out file is kept")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="only this shipped model (repeatable); the other models' rows of an "
                        "existing --out file are kept")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes_compat.json"))
    a = p.parse_args(argv)
    from export.evaluate import cpu_model
    from fer_edge.zoo import shipped_models

    models = shipped_models()
    unknown = sorted(set(a.model) - set(models))
    if unknown:
        p.error(f"--model {', '.join(unknown)}: not a shipped model (choose from {', '.join(models)})")
    # With --only or --model, the rows not rerun come from the previous results, not from nowhere.
    keep = bool(a.only or a.model) and a.out.is_file()
    results = json.loads(a.out.read_text()) if keep else {}
    if a.only != "detector":
        chosen = {n: path for n, path in models.items() if not a.model or n in a.model}
        rows = benchmark(chosen, a.data, a.threads, a.seconds, a.limit)
        print(table(rows))
        kept = [r for r in results.get("rows", []) if a.model and r["model"] not in a.model and r["model"] in models]
        new_rows = kept + [asdict(r) for r in rows]
        order = list(models)
        results["rows"] = sorted(new_rows, key=lambda r: order.index(r["model"]))  # stable: runtime order kept
    if a.only != "classifiers":
        detector_rows = benchmark_detector(a.threads, a.seconds)
        print(detector_table(detector_rows))
        results["detector_rows"] = [asdict(r) for r in detector_rows]
    results.update({
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": a.threads},
        "reference": "ONNX Runtime CPU on the shipped file",
        "detector_inputs": "fer_edge's own BlazeFace input tensors (every pass) of photos/ and the "
                           "tests' scikit-image sample photos; decoding and NMS are fer_edge's own"})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
