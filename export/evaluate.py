"""Inputs for parity checks, calibration and validation; running and scoring ONNX models.

Every image goes through :mod:`fer_edge.preprocess`, the runtime's own
preprocessing, so the figures measured here are the figures users get.
Shared by :mod:`export` and :mod:`benchmarks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.preprocess import PreprocessSpec, normalize, preprocess
from train.data import list_split, load_split
from train.metrics import summarize


@dataclass
class LabelledImages:
    """Preprocessed images of one split.

    Attributes:
        inputs: float32 (N, 3, S, S) model inputs.
        labels: int64 (N,) class indices into ``classes``.
        classes: Class names in logit order.
        paths: Source file of each image.
    """

    inputs: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> LabelledImages:
        """The images at positions ``idx``, in that order."""
        return LabelledImages(self.inputs[idx], self.labels[idx], self.classes,
                              [self.paths[i] for i in idx])


@dataclass
class EvalResult:
    """Accuracy of one model on one labelled set."""

    accuracy: float
    macro_f1: float
    n: int

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n}


@dataclass
class Parity:
    """How closely one model's logits follow a reference's on the same inputs.

    Attributes:
        what: Which two models were compared, e.g. ``"onnx fp32 vs torch"``.
        inputs: Where the inputs came from (``"val images"`` or ``"random"``).
        n: Number of inputs.
        max_abs_diff: Largest absolute logit difference.
        top1_agreement: Share of inputs with the same arg-max.
        top1_mismatches_beyond_ties: Disagreements where the reference's top-2
            margin exceeds twice the tolerance (so not a numerical tie).
        atol: Tolerance the check used (``None`` when only reported, not enforced).
    """

    what: str
    inputs: str
    n: int
    max_abs_diff: float
    top1_agreement: float
    top1_mismatches_beyond_ties: int
    atol: float | None

    @property
    def passed(self) -> bool:
        """Within tolerance and no top-1 change outside numerical ties (always true if not enforced)."""
        if self.atol is None:
            return True
        return self.max_abs_diff <= self.atol and self.top1_mismatches_beyond_ties == 0

    def describe(self) -> str:
        limit = f" (limit {self.atol:g})" if self.atol is not None else ""
        return (f"{self.what}: max |diff| {self.max_abs_diff:.2e}{limit}, top-1 agreement "
                f"{self.top1_agreement:.2%} on {self.n} {self.inputs}")

    def to_dict(self) -> dict:
        return {"what": self.what, "inputs": self.inputs, "n": self.n,
                "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "top1_mismatches_beyond_ties": self.top1_mismatches_beyond_ties,
                "atol": self.atol, "passed": self.passed}


def load_labelled(root: Path, split: str, classes: list[str], spec: PreprocessSpec,
                  limit_per_class: int = 0) -> LabelledImages:
    """Decode and preprocess ``root/split/<class>/*`` for the given classes.

    Raises:
        train.data.DataLayoutError: the folder layout is wrong (names what is missing).
    """
    split_data = load_split(Path(root), split, list(classes), spec.input_size, limit_per_class)
    return LabelledImages(normalize(split_data.images, spec), split_data.labels, list(classes),
                          split_data.paths)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` indices, as even across classes as the data allows, in shuffled order.

    Parity and calibration sets need every class, not the first ``n`` files of
    the first class folder.
    """
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    rank = 0
    while len(picked) < n and any(rank < len(ix) for ix in by_class):
        picked.extend(int(ix[rank]) for ix in by_class if rank < len(ix))
        rank += 1
    return rng.permutation(np.asarray(picked[:n], dtype=np.int64))


def calibration_inputs(root: Path, classes: list[str], spec: PreprocessSpec, n: int,
                       seed: int) -> np.ndarray:
    """``n`` training images, balanced over classes, as float32 model inputs.

    Only the sampled files are decoded (the training split is large).
    """
    items = list_split(Path(root), "train", list(classes))
    labels = np.asarray([label for _, label in items])
    idx = stratified_sample(labels, n, seed)
    return np.stack([preprocess(items[i][0], spec) for i in idx]).astype(np.float32)


def random_inputs(spec: PreprocessSpec, n: int, seed: int) -> np.ndarray:
    """``n`` random-pixel images through :func:`fer_edge.preprocess.normalize`.

    Uniform pixels keep the inputs in the range real images occupy, unlike
    Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, spec.input_size, spec.input_size), dtype=np.uint8)
    return normalize(pixels, spec)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def default_threads() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_session(model: Path | bytes, threads: int = 0, exact_int8: bool | None = None):
    """CPU ONNX Runtime session with ``threads`` intra-op threads (0 = all cores).

    Args:
        model: Path of an ONNX file or its serialized bytes.
        threads: Intra-op threads; inter-op is 1 (the graph is a single chain).
        exact_int8: See :func:`fer_edge.providers.session_options`: ``None``
            is the runtime's choice; a benchmark forces one kind of int8 kernel.

    Raises:
        ModelError: ``model`` is a path that is missing or not a loadable ONNX
            model (the message names it, as the runtime's own loader does).
    """
    import onnxruntime as ort

    from fer_edge.errors import ModelError
    from fer_edge.providers import ORT_MODEL_ERRORS, first_line, session_options

    so = session_options(threads or default_threads(), exact_int8)  # the runtime's options: its figures are users'
    so.inter_op_num_threads = 1
    if isinstance(model, bytes):  # a graph export just built: a failure here is a bug, keep its traceback
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    if not model.is_file():
        raise ModelError(f"{model}: no such ONNX file")
    try:
        return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except ORT_MODEL_ERRORS as exc:
        raise ModelError(f"{model}: not a loadable ONNX model ({first_line(exc)})") from None


def run_session(session, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) for float32 inputs (N, 3, S, S), in batches."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: inputs[i : i + batch_size]})[0]
           for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out).astype(np.float32)


def median_ms_per_image(session, inputs: np.ndarray, batch: int = 32, calls: int = 10,
                        warmup: int = 2) -> float:
    """Median per-image latency of ``session`` at ``batch`` (inputs repeated to fill it)."""
    import time

    x = np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0 / batch


def score(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> EvalResult:
    """Accuracy and macro-F1 of arg-max predictions."""
    s = summarize(labels, logits.argmax(1), list(classes))
    return EvalResult(accuracy=s["accuracy"], macro_f1=s["macro_f1"], n=s["n"])


def compare(what: str, inputs: str, reference: np.ndarray, other: np.ndarray,
            atol: float | None) -> Parity:
    """Compare two logit arrays of the same inputs (see :class:`Parity`)."""
    if reference.shape != other.shape:
        raise ValueError(f"{what}: output shapes differ: {reference.shape} vs {other.shape}")
    ref_top = reference.argmax(1)
    other_top = other.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    # A tie in the reference may legitimately resolve either way.
    tie = margin <= 2 * (atol or 0.0)
    diff = float(np.abs(reference - other).max()) if reference.size else 0.0
    if not np.isfinite(other).all():
        diff = float("inf")
    return Parity(
        what=what, inputs=inputs, n=len(reference), max_abs_diff=diff,
        top1_agreement=float((ref_top == other_top).mean()) if len(reference) else 1.0,
        top1_mismatches_beyond_ties=int(((ref_top != other_top) & ~tie).sum()),
        atol=atol,
    )
