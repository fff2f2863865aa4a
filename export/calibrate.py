"""Temperature scaling: one number per model, so that a score of 0.8 is right ~80% of the time.

A network trained with cross-entropy is usually over-confident: its top
probability runs ahead of its accuracy. Dividing the logits by one fitted
temperature ``T`` (Guo et al., 2017, "On Calibration of Modern Neural
Networks") fixes most of that without changing any prediction (the arg-max of
``logits / T`` is the arg-max of the logits). ``T`` is fitted on val by
minimising the negative log-likelihood, stored in the model's metadata
(:attr:`fer_edge.metadata.ModelInfo.temperature`) and applied by every runtime
(:func:`fer_edge.classifier.softmax`, ``web/fer.js``).

How well scores match accuracy is measured by the expected calibration error
(:func:`ece`), before and after, on the same val images; and, so the figure is
not only in-sample, by 2-fold cross-validation (fit on one half of val, measure
on the other, and the reverse).

``python -m export`` does this when given ``--data``; this command stamps a
file that already exists (metadata only, the graph is not touched; the file is
replaced atomically):

Example:
    python -m export.calibrate fer_edge/models/default.onnx --data ../shared/data/fer2013 --write
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fer_edge.classifier import softmax
from fer_edge.errors import ModelError
from fer_edge.metadata import ModelInfo

#: Equal-width confidence bins of :func:`ece` (the usual choice in the literature).
BINS = 15
#: Search interval of :func:`fit_temperature`; a fitted T at either end is a sign
#: of broken logits or labels, not of a model that needs it.
T_MIN, T_MAX = 0.05, 20.0
#: Golden-section steps: the interval shrinks by 0.618 per step, so 60 steps take
#: log(T_MAX / T_MIN) ~ 6 down to ~1e-12, far below the 4 decimals stored.
_STEPS = 60
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
#: Decimals of the stored temperature (figures are measured with the stored value).
T_DECIMALS = 4
#: How the temperature was fitted, in the metadata's words.
CALIBRATION_METHOD = "temperature scaling: val NLL minimised over T by golden-section search on log T"


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (len(z),) or len(z) == 0:
        raise ValueError(f"need logits (n, classes) and labels (n,) with n > 0, got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    return z, y


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``.

    Example:
        >>> round(nll(np.array([[0.0, 0.0]]), np.array([0])), 4)  # log 2
        0.6931
    """
    z, y = _check(logits, labels)
    z = z / temperature
    # log-sum-exp with the row maximum taken out: no overflow, no log(0).
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [:data:`T_MIN`, :data:`T_MAX`] minimising :func:`nll`.

    Golden-section search on log T: the NLL is convex in 1/T, hence has a
    single minimum along log T, and a fixed number of steps with no random
    start makes the result deterministic. Rounded to :data:`T_DECIMALS`.

    Raises:
        ValueError: shapes do not match, labels out of range, or non-finite logits.

    Example:
        >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [4.0, 0.0]])
        >>> y = np.array([0, 0, 0, 1])  # 75% right, but softmax says 98%
        >>> t = fit_temperature(z, y)  # exactly 4 / log(3): softmax(z / t) says 75%
        >>> t, round(float(softmax(z, t)[0, 0]), 3)
        (3.641, 0.75)
    """
    z, y = _check(logits, labels)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _INV_PHI * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _INV_PHI * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return round(math.exp((lo + hi) / 2), T_DECIMALS)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the gap between confidence and accuracy, weighted by bin size.

    Each prediction goes into one of ``bins`` equal-width bins by its top
    probability (bin k holds (k/bins, (k+1)/bins]); the result is the sum over
    bins of (share of predictions in the bin) x |accuracy - mean confidence|.
    0 is perfect; a model always 90% sure and right 60% of the time scores 0.3.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(ece(p, np.array([0, 0, 0, 1])), 4)  # 0.9 bin: 100% right; 0.6 bin: 50%
        0.1
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"need probs (n, classes) and labels (n,) with n > 0, got {p.shape} and {y.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Right-closed bins; a confidence of exactly 0 (impossible for a softmax) joins bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for k in range(bins):
        in_bin = which == k
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the indices, each with half of every class (for 2-fold CV).

    Example:
        >>> a, b = halves(np.array([0, 0, 0, 0, 1, 1]))
        >>> sorted(np.concatenate([a, b]).tolist()), len(a), len(b)
        ([0, 1, 2, 3, 4, 5], 3, 3)
    """
    rng = np.random.default_rng(seed)
    a: list[int] = []
    b: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Odd class sizes alternate which half gets the extra image, keeping sizes even.
        cut = (len(idx) + (len(a) <= len(b))) // 2
        a.extend(idx[:cut].tolist())
        b.extend(idx[cut:].tolist())
    return np.sort(np.asarray(a, dtype=np.int64)), np.sort(np.asarray(b, dtype=np.int64))


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it does on the data it was measured on.

    Attributes:
        temperature: The fitted T (probabilities are ``softmax(logits / T)``).
        n: Images it was fitted and measured on.
        bins: Confidence bins of the ECE figures.
        ece_before: ECE of ``softmax(logits)``.
        ece_after: ECE of ``softmax(logits / T)``, on the same images T was fitted on.
        ece_cv_after: 2-fold cross-validated ECE: each half's probabilities use the
            T fitted on the other half, then both halves are pooled.
        cv_temperatures: The two halves' temperatures.
        nll_before: Mean negative log-likelihood before.
        nll_after: The same after.
        accuracy: Top-1 accuracy (the temperature does not change it).
    """

    temperature: float
    n: int
    bins: int
    ece_before: float
    ece_after: float
    ece_cv_after: float
    cv_temperatures: tuple[float, float]
    nll_before: float
    nll_after: float
    accuracy: float

    def to_dict(self) -> dict:
        """JSON-ready, figures rounded to 6 decimals (what goes into the metadata)."""
        d = asdict(self)
        return {k: round(v, 6) if isinstance(v, float) else list(v) if isinstance(v, tuple) else v
                for k, v in d.items()}

    def describe(self) -> str:
        """One line for people.

        Example:
            >>> print(Calibration(1.5, 100, 15, 0.1, 0.02, 0.03, (1.4, 1.6), 0.7, 0.6, 0.8).describe())
            temperature 1.5000: ECE 0.1000 -> 0.0200 (2-fold CV 0.0300; halves T 1.4000, 1.6000),
            NLL 0.7000 -> 0.6000 on 100 val images
        """
        ta, tb = self.cv_temperatures
        return (f"temperature {self.temperature:.4f}: ECE {self.ece_before:.4f} -> {self.ece_after:.4f} "
                f"(2-fold CV {self.ece_cv_after:.4f}; halves T {ta:.4f}, {tb:.4f}), "
                f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f} on {self.n} val images")


def calibrate(logits: np.ndarray, labels: np.ndarray, bins: int = BINS, seed: int = 0) -> Calibration:
    """Fit T on all of ``logits`` and measure ECE before/after, in-sample and 2-fold CV.

    The probabilities are computed by the runtime's own
    :func:`fer_edge.classifier.softmax`, so the figures are what users get.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(0.0, 2.0, (2000, 3))  # calibrated logits...
        >>> y = (rng.random((2000, 1)) > softmax(z).cumsum(axis=1)).sum(axis=1)  # ...labels drawn from them
        >>> c = calibrate(3.0 * z, y)  # a model 3x too sure of itself
        >>> round(c.temperature, 1), c.ece_before > 0.1, c.ece_after < 0.03, c.n
        (3.0, True, True, 2000)
    """
    z, y = _check(logits, labels)
    t = fit_temperature(z, y)
    a, b = halves(y, seed)
    if min(len(a), len(b)) == 0:
        raise ValueError("2-fold cross-validation needs at least 2 images")
    ta, tb = fit_temperature(z[a], y[a]), fit_temperature(z[b], y[b])
    # Out-of-fold: each half scored with the temperature of the other.
    oof = np.empty_like(z)
    oof[a], oof[b] = softmax(z[a], tb), softmax(z[b], ta)
    return Calibration(
        temperature=t, n=len(y), bins=bins,
        ece_before=ece(softmax(z), y, bins), ece_after=ece(softmax(z, t), y, bins),
        ece_cv_after=ece(oof, y, bins),
        cv_temperatures=(ta, tb),
        nll_before=nll(z, y), nll_after=nll(z, y, t),
        accuracy=float((z.argmax(axis=1) == y).mean()),
    )


# -- stamping an existing file -------------------------------------------------


def calibration_facts(cal: Calibration, data: Path) -> dict:
    """What the metadata records (``extra.calibration``): the figures, the data set's
    folder name (never the local path) and the method.

    Example:
        >>> c = Calibration(1.5, 100, 15, 0.1, 0.02, 0.03, (1.4, 1.6), 0.7, 0.6, 0.8)
        >>> calibration_facts(c, Path("../shared/data/fer2013"))["data"]
        'fer2013, val split'
    """
    return {**cal.to_dict(), "data": f"{Path(data).name or Path(data).resolve().name}, val split",
            "method": CALIBRATION_METHOD}


def _load_model(path: Path):
    """The ONNX model in ``path`` and its fer-edge metadata.

    Raises:
        ModelError: ``path`` is not an ONNX file, or one without fer-edge metadata
            (such a file is never rewritten).
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not a loadable ONNX model ({exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    return model, ModelInfo.from_props(props, str(path))


def val_logits(path: Path, data: Path, threads: int = 0, limit_per_class: int = 0,
               batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and labels of ``data``'s val split, through the runtime (:class:`fer_edge.Classifier`).

    Raises:
        train.data.DataLayoutError: ``data`` lacks ``val/<class>/`` for the model's labels.
    """
    from fer_edge.classifier import Classifier

    from .evaluate import load_labelled

    clf = Classifier(path, providers="cpu", threads=threads)
    val = load_labelled(Path(data), "val", clf.labels, clf.spec, limit_per_class)
    # In chunks: one run over thousands of images would hold all their activations at once.
    logits = np.concatenate([clf.logits(val.inputs[i:i + batch_size])
                             for i in range(0, len(val), batch_size)])
    return logits, val.labels


def stamp(path: Path, data: Path, write: bool, threads: int = 0, limit_per_class: int = 0) -> Calibration:
    """Fit ``path``'s temperature on ``data``'s val split; with ``write``, store it in the file.

    Only the ``fer_edge`` metadata changes (``temperature`` and
    ``extra.calibration``); the graph's bytes are checked to be unchanged before
    the file is replaced atomically.

    Raises:
        ModelError: ``path`` is not a fer-edge model (left untouched).
        train.data.DataLayoutError: ``data`` has no val images of the model's classes.
    """
    from .onnx_export import restamp

    model, info = _load_model(path)
    logits, labels = val_logits(path, data, threads, limit_per_class)
    cal = calibrate(logits, labels)
    if write:
        info.temperature = cal.temperature
        info.extra = {**info.extra, "calibration": calibration_facts(cal, data)}
        restamp(model, info, path)
    return cal


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, nargs="+", help="fer-edge ONNX model(s)")
    p.add_argument("--data", type=Path, required=True, help="image-folder root with val/<class>/")
    p.add_argument("--write", action="store_true",
                   help="store the temperature and figures in the file's metadata (else only print them)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT decides)")
    p.add_argument("--val-limit", type=int, default=0, help="val images per class (0 = all)")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    a = p.parse_args(argv)
    from train.data import DataLayoutError

    code = 0
    for path in a.model:
        try:
            cal = stamp(path, a.data, a.write, a.threads, a.val_limit)
        except (ModelError, OSError, DataLayoutError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
            continue
        if a.json:
            print(json.dumps({"model": str(path), "written": a.write, **cal.to_dict()}))
        else:
            print(f"{path}: {cal.describe()}" + ("; written" if a.write else "; not written (--write stores it)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
