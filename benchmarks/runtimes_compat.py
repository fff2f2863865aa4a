"""``python -m benchmarks.runtimes_compat``: the shipped models in other ONNX runtimes.

For every shipped model, each runtime that is installed (OpenCV DNN, OpenVINO)
loads the file and runs the same inputs as ONNX Runtime (the reference):
load OK or the runtime's error with the operator at fault, max |logit
difference|, top-1 agreement, val accuracy and ms per image at batch 1 and 32.
Where a runtime cannot read a shipped file correctly, the row of its portable
form (:mod:`export.portable`, built in a temporary folder) follows.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

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

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def opencv_predict(path: Path, threads: int) -> Predict:
    """OpenCV DNN (``cv2.dnn.readNetFromONNX``), default backend and target (CPU).

    Raises:
        ImportError: OpenCV is not installed.
        RuntimeLoadError: OpenCV cannot parse or run the graph (its message, and the operator).
    """
    import cv2

    cv2.setNumThreads(threads)
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as exc:
        raise _load_error(f"OpenCV {cv2.__version__}", path, exc) from None

    def predict(x: np.ndarray) -> np.ndarray:
        try:
            net.setInput(np.ascontiguousarray(x))
            return np.asarray(net.forward(), dtype=np.float32).reshape(len(x), -1)
        except cv2.error as exc:
            raise _load_error(f"OpenCV {cv2.__version__}", path, exc) from None

    return predict


def openvino_predict(path: Path, threads: int, precision: str = "f32") -> Predict:
    """OpenVINO on CPU.

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
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise _load_error(f"OpenVINO {ov.__version__}", path, exc) from None
    request = compiled.create_infer_request()

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


def portable_forms(path: Path, folder: Path) -> list[tuple[str, Path]]:
    """The rewritten forms of ``path`` that :mod:`export.portable` makes, written under ``folder``."""
    from export.portable import NotApplicable, dequantize_qdq, unfold_flip_tta

    model = onnx.load(str(path))
    forms = []
    try:
        out = folder / f"{path.stem}-portable.onnx"
        onnx.save(unfold_flip_tta(model), str(out))
        forms.append(("portable rewrite (export.portable)", out))
    except NotApplicable:
        pass
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        out = folder / f"{path.stem}-fp32.onnx"
        onnx.save(dequantize_qdq(model), str(out))
        forms.append(("dequantized fp32 (export.portable --dequantize)", out))
    return forms


def benchmark(models: dict[str, Path], data: Path | None, threads: int, seconds: float,
              limit: int = 0) -> list[Row]:
    """Every runtime on every model (and its portable forms for OpenCV)."""
    rows: list[Row] = []
    runtimes: list[tuple[str, Callable[[Path], Predict]]] = [
        ("ONNX Runtime", lambda p: ort_predict(p, threads))]
    try:
        import cv2

        runtimes.append((f"OpenCV DNN {cv2.__version__}", lambda p: opencv_predict(p, threads)))
    except ImportError:
        print("OpenCV not installed (pip install opencv-python-headless): no OpenCV rows", file=sys.stderr)
    try:
        import openvino as ov

        default = openvino_precision()
        runtimes.append((f"OpenVINO {ov.get_version().split('-')[0]} f32",
                         lambda p: openvino_predict(p, threads, "f32")))
        runtimes.append((f"OpenVINO {ov.get_version().split('-')[0]} default ({default})",
                         lambda p: openvino_predict(p, threads, "default")))
    except ImportError:
        print("OpenVINO not installed (pip install openvino): no OpenVINO rows", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            inputs, labels, kind = model_inputs(path, data, limit)
            reference = run_all(ort_predict(path, threads), inputs)
            for runtime, make in runtimes:
                rows.append(measure(name, runtime, "shipped", lambda m=make, p=path: m(p), inputs, kind,
                                    reference, labels, seconds))
                print(_line(rows[-1]), file=sys.stderr)
            # Portable forms: in ONNX Runtime (cost of the rewrite) and OpenCV (why it exists).
            for what, form in portable_forms(path, Path(tmp)):
                for runtime, make in runtimes:
                    if runtime.startswith(("ONNX Runtime", "OpenCV")):
                        rows.append(measure(name, runtime, what, lambda m=make, f=form: m(f), inputs, kind,
                                            reference, labels, seconds))
                        print(_line(rows[-1]), file=sys.stderr)
    return rows


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
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes_compat.json"))
    a = p.parse_args(argv)
    from export.evaluate import cpu_model
    from fer_edge.zoo import shipped_models

    rows = benchmark(shipped_models(), a.data, a.threads, a.seconds, a.limit)
    print(table(rows))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": a.threads},
        "reference": "ONNX Runtime CPU on the shipped file",
        "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
