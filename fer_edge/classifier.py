"""The :class:`Classifier`: an ONNX Runtime session plus the model's metadata.

Everything model-specific (labels and their order, input size, normalisation)
is read from the ONNX file's ``fer_edge`` metadata (:mod:`fer_edge.metadata`),
so any model written by ``python -m export`` works, whatever its classes.

In the examples, ``test_model_path`` is a tiny untrained 2-class model that
the test configuration builds; with the shipped model use ``Classifier()``.

Example:
    >>> from PIL import Image
    >>> clf = Classifier(test_model_path)
    >>> face = Image.new("L", (48, 48), 128)
    >>> pred = clf.predict(face)
    >>> list(pred.probabilities) == clf.labels, 0.0 <= pred.score <= 1.0
    (True, True)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, cast

import numpy as np
import onnxruntime as ort
from PIL import Image

from . import faces as faces_module
from ._version import __version__
from .blazeface import BlazeFace
from .detector import FaceDetector
from .errors import ImageError, ModelError, ProviderError
from .faces import FACE_MODES, check_mode  # noqa: F401  (FACE_MODES: re-exported for fer_edge, the CLI)
from .files import display_path, printable
from .metadata import ModelInfo
from .preprocess import (
    EncodedImage,
    ImageInput,
    PreprocessSpec,
    checked_gray,
    load_reduced,
    normalize,
)
from .providers import ORT_MODEL_ERRORS as _ORT_MODEL_ERRORS
from .providers import ProvidersArg, available_providers, resolve_providers
from .providers import first_line as _first_line
from .providers import open_session as _open_session
from .results import FaceResult, ImageResult, Prediction
from .zoo import MODELS_DIR, resolve_model

if TYPE_CHECKING:
    from .video import VideoAnalysis

log = logging.getLogger("fer_edge")

#: The trained model shipped inside the package.
DEFAULT_MODEL = MODELS_DIR / "default.onnx"
#: ``errors=`` choices of :meth:`Classifier.analyze_batch`.
ERROR_MODES = ("raise", "record")
DEFAULT_BATCH_SIZE = 32
#: Before face detection, very large JPEGs (see :data:`fer_edge.preprocess.REDUCE_ABOVE_PIXELS`)
#: are decoded reduced, keeping both sides at least this long: the default detector
#: looks at 384 px at most (:data:`fer_edge.blazeface.FINE_SIDE`), and the crops
#: keep at least ~4x the model's 48 px input for faces it can find.
DETECTION_MIN_SIDE = 2048

_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, stable for large logits.

    Args:
        logits: (..., classes) raw model outputs.
        temperature: The model's calibration temperature
            (:attr:`fer_edge.metadata.ModelInfo.temperature`); above 1 softens
            over-confident scores. It never changes which class is on top.

    Example:
        >>> softmax(np.array([[1000.0, 1000.0]])).tolist()
        [[0.5, 0.5]]
        >>> softmax(np.array([[2.0, 0.0]]), temperature=2.0).round(4).tolist()
        [[0.7311, 0.2689]]
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    # Subtracting the row maximum keeps exp() from overflowing; result unchanged.
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class _Graph:
    """The graph facts inference needs, checked against the metadata."""

    input_name: str
    input_dtype: type
    output_name: str
    static_batch: int | None


@dataclass(frozen=True)
class _Region:
    """A part of an image to classify: a detected face, or the whole image."""

    box: tuple[int, int, int, int]
    score: float | None
    image: Image.Image


def _model_file(model: str | os.PathLike | None) -> Path:
    if model is None and not DEFAULT_MODEL.is_file():
        raise ModelError(
            f"the default model is not installed ({DEFAULT_MODEL} is missing); "
            "pass a model file instead: Classifier('model.onnx') or fer-edge --model model.onnx "
            "(python -m export writes one)"
        )
    path = DEFAULT_MODEL if model is None else resolve_model(model)
    name = display_path(path)
    if path.is_dir():
        raise ModelError(f"{name}: is a directory, not an ONNX model file")
    if not path.exists():
        raise ModelError(f"{name}: no such model file")
    return path


def _check_graph(session: ort.InferenceSession, info: ModelInfo, name: str) -> _Graph:
    """Check the graph's input and output against the metadata."""
    inputs = session.get_inputs()
    by_name = {i.name: i for i in inputs}
    if info.input_name not in by_name:
        raise ModelError(f"{name}: metadata names input {info.input_name!r}, but the graph's "
                         f"inputs are {sorted(by_name)}")
    if len(inputs) != 1:
        raise ModelError(f"{name}: the graph has {len(inputs)} inputs {sorted(by_name)}; "
                         "a fer-edge model has exactly one")
    node = by_name[info.input_name]
    size = info.preprocess.input_size
    shape = list(node.shape)
    expected = [None, 3, size, size]
    fixed_mismatch = any(isinstance(d, int) and e is not None and d != e
                         for d, e in zip(shape, expected))
    if len(shape) != 4 or fixed_mismatch:
        raise ModelError(f"{name}: input {node.name!r} has shape {shape}, but the metadata "
                         f"(input_size {size}) needs [batch, 3, {size}, {size}]")
    if node.type not in _INPUT_DTYPES:
        raise ModelError(f"{name}: input type {node.type} is not one of {sorted(_INPUT_DTYPES)}")
    outputs = session.get_outputs()
    out_shape = list(outputs[0].shape)
    n_labels = len(info.labels)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != n_labels):
        raise ModelError(f"{name}: output {outputs[0].name!r} has shape {out_shape}, but the "
                         f"metadata lists {n_labels} labels {info.labels}: need [batch, {n_labels}]")
    static_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return _Graph(node.name, _INPUT_DTYPES[node.type], outputs[0].name, static_batch)


def _source_name(image: object) -> str | None:
    """The path of a file input (printable), ``None`` for in-memory images."""
    if isinstance(image, (str, os.PathLike)):
        return display_path(image)
    if isinstance(image, EncodedImage):
        # A file read elsewhere (fer_edge.distributed) is reported as that file.
        return display_path(image.name)
    return None


class Classifier:
    """Facial-expression classifier running an exported ONNX model.

    One instance may be shared by many threads: ``predict`` and ``analyze``
    keep no state between calls, and ONNX Runtime sessions are thread-safe.

    Args:
        model: A shipped model's name (``"default"``, ``"fast"``; see
            :func:`fer_edge.zoo.shipped_models`) or the path of an ONNX model
            written by ``python -m export``; names are resolved before paths.
            ``None`` loads the shipped ``default`` model (:data:`DEFAULT_MODEL`).
        providers: ``None`` to pick automatically (see
            :data:`fer_edge.providers.PREFERENCE`), or provider names/aliases
            (``"cuda"``, ``["TensorrtExecutionProvider", "cpu"]``), used
            exactly as given.
        threads: Intra-op threads for ONNX Runtime; 0 lets it decide.
        batch_size: Images per ``session.run`` in batched calls.
        detector: What finds faces for ``analyze(..., faces="on"|"auto")``:
            any :class:`fer_edge.detector.FaceDetector`. ``None``: the shipped
            :class:`fer_edge.blazeface.BlazeFace`, opened on first use on the
            providers this model's session got (so it runs on the GPU when the
            model does) and with the same ``threads``.

    Attributes:
        model_path: The model file in use.
        info: The model's metadata (labels, preprocessing, provenance).
        provider: The execution provider the model runs on.
        providers: All providers of the session, in priority order.

    Raises:
        ModelError: The model is missing, not ONNX, lacks fer-edge metadata,
            or its graph does not match the metadata.
        ProviderError: A requested provider is not available or failed to start.

    Example:
        >>> clf = Classifier(test_model_path, providers="cpu")
        >>> clf.labels, clf.provider
        (['happy', 'sad'], 'CPUExecutionProvider')
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        providers: ProvidersArg = None,
        threads: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        detector: FaceDetector | None = None,
    ) -> None:
        if detector is not None and not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector must have a detect(image) method, got {type(detector).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an int >= 0 (0 = automatic), got {threads!r}")
        self.model_path = _model_file(model)
        self._threads = threads  # kept to reopen the session after unpickling
        self._detector = detector
        # The default detector is opened lazily (most runs of face crops never
        # need it); the lock makes threads sharing this Classifier open one.
        self._detector_lock = threading.Lock()
        requested = resolve_providers(providers)
        self._session = _open_session(self.model_path, requested, threads)
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0]
        self._check_providers(requested, explicit=providers is not None)
        name = display_path(self.model_path)
        self.info = ModelInfo.from_props(self._session.get_modelmeta().custom_metadata_map, name)
        self._graph = _check_graph(self._session, self.info, name)
        self.batch_size = self._graph.static_batch or batch_size
        if self._graph.static_batch and self._graph.static_batch != batch_size:
            log.info("model has a fixed batch size of %d; using it", self._graph.static_batch)
        log.info("model %s (%s, %d labels, %dpx) running on %s", name, self.info.model_version,
                 len(self.info.labels), self.spec.input_size, self.provider)

    def _check_providers(self, requested: list[str], explicit: bool) -> None:
        missing = [p for p in requested if p not in self.providers]
        if explicit and missing:
            # ORT quietly drops providers whose libraries fail to load; an
            # explicit request must not end up somewhere else.
            raise ProviderError(
                f"execution provider(s) {missing} were requested but ONNX Runtime could not "
                f"start them; the session got {self.providers}"
            )
        if not explicit and self.provider != requested[0]:
            log.warning("%s is installed but failed to start; running on %s",
                        requested[0], self.provider)

    def __repr__(self) -> str:
        return (f"Classifier({display_path(self.model_path)!r}, labels={self.labels}, "
                f"provider={self.provider!r})")

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the ONNX Runtime session, which cannot be pickled.

        So a Classifier can be sent to ``spawn``/``forkserver`` worker
        processes (``multiprocessing``, ``concurrent.futures``); each worker
        reopens the model file, which must exist at the same path there.
        """
        state = self.__dict__.copy()
        del state["_session"]
        del state["_detector_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reopen the session on the same model file and providers, and recheck it."""
        self.__dict__.update(state)
        self._detector_lock = threading.Lock()
        self._session = _open_session(self.model_path, self.providers, self._threads)
        self._graph = _check_graph(self._session, self.info, display_path(self.model_path))

    @property
    def detector(self) -> FaceDetector:
        """The face detector ``analyze`` uses (the shipped BlazeFace unless one was given).

        Raises:
            ModelError: The shipped detector model is missing or corrupt.
        """
        if self._detector is None:
            with self._detector_lock:
                if self._detector is None:
                    # Explicit providers: exactly the ones the model runs on.
                    self._detector = BlazeFace(providers=self.providers, threads=self._threads)
        return self._detector

    @property
    def labels(self) -> list[str]:
        """Class names in the model's output order."""
        return list(self.info.labels)

    @property
    def spec(self) -> PreprocessSpec:
        """How images are turned into the model input (from the metadata)."""
        return self.info.preprocess

    def describe(self) -> dict[str, Any]:
        """What ``fer-edge info`` prints: versions, providers, model metadata.

        Example:
            >>> d = Classifier(test_model_path).describe()
            >>> d["provider"], d["model"]["labels"]
            ('CPUExecutionProvider', ['happy', 'sad'])
        """
        meta = self.info
        return {
            "fer_edge_version": __version__,
            "onnxruntime_version": ort.__version__,
            "model_path": display_path(self.model_path),
            "provider": self.provider,
            "session_providers": list(self.providers),
            "available_providers": available_providers(),
            "batch_size": self.batch_size,
            "model": {
                "labels": list(meta.labels),
                "preprocess": meta.preprocess.to_dict(),
                "model_name": meta.model_name,
                "model_version": meta.model_version,
                "precision": meta.precision,
                "tta": meta.tta,
                "temperature": meta.temperature,
                "training_data": meta.training_data,
                "val_accuracy": meta.val_accuracy,
                "val_macro_f1": meta.val_macro_f1,
                "export_date": meta.export_date,
                "exporter_version": meta.exporter_version,
                "extra": dict(meta.extra),
            },
        }

    # -- whole-image classification -------------------------------------

    def predict(
        self, image: ImageInput | Sequence[ImageInput]
    ) -> Prediction | list[Prediction]:
        """Classify one image (the whole image is taken as the face).

        Args:
            image: A path, PIL image, or numpy array (HxW gray, HxWx3 RGB);
                a list or tuple of them is classified with :meth:`predict_batch`.

        Returns:
            A :class:`Prediction`, or a list of them for a list input.

        Raises:
            ImageError: An image cannot be read (the message names it).

        Example:
            >>> import numpy as np
            >>> clf = Classifier(test_model_path)
            >>> p = clf.predict(np.full((48, 48), 200, dtype=np.uint8))
            >>> p.label in clf.labels, abs(sum(p.probabilities.values()) - 1) < 1e-6
            (True, True)
        """
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image)
        # Lists and tuples went above; what is left is one image (a str path is a
        # Sequence too, which is why mypy cannot narrow this by itself).
        return self.predict_batch([cast(ImageInput, image)])[0]

    def predict_batch(self, images: Iterable[ImageInput]) -> list[Prediction]:
        """Classify many images, ``batch_size`` per ``session.run``.

        Gives the same probabilities as calling :meth:`predict` on each
        (within float rounding, ~1e-6).

        Raises:
            ImageError: An image cannot be read; use :meth:`analyze_batch`
                with ``errors="record"`` to carry on past bad images.

        Example:
            >>> from PIL import Image
            >>> clf = Classifier(test_model_path)
            >>> [p.label in clf.labels for p in clf.predict_batch([Image.new("L", (9, 9))] * 3)]
            [True, True, True]
        """
        # Only the model-size grey arrays are kept; each decoded image is freed at once.
        grays = [self._gray(load_reduced(img, self.spec.input_size)[0], img) for img in images]
        return self._classify(grays)

    # -- face-aware analysis ---------------------------------------------

    def analyze(self, image: ImageInput, faces: str = "off") -> ImageResult:
        """Find the faces in one image (optionally) and classify each.

        Args:
            image: A path, PIL image, or numpy array.
            faces: ``"off"``: the whole image is one face; ``"on"``: detect
                faces with :attr:`detector` and classify each, cut out upright
                (:func:`fer_edge.faces.crop_face`); ``"auto"``: detect unless
                the image already looks like a face crop
                (:func:`fer_edge.faces.needs_detection`). No face found gives
                ``faces=[]``, not an error.

        Returns:
            An :class:`ImageResult` with one :class:`FaceResult` per face.

        Raises:
            ImageError: The image cannot be read.
            ValueError: ``faces`` is not one of :data:`FACE_MODES`.
            ModelError: Detection is needed and the face detector model is
                missing or corrupt (the message names the file).

        Example:
            >>> from PIL import Image
            >>> r = Classifier(test_model_path).analyze(Image.new("RGB", (64, 48)))
            >>> r.detected, r.faces[0].box, r.width, r.height
            (False, (0, 0, 64, 48), 64, 48)
        """
        return self.analyze_batch([image], faces=faces, errors="raise")[0]

    def analyze_batch(
        self, images: Iterable[ImageInput], faces: str = "off", errors: str = "raise"
    ) -> list[ImageResult]:
        """:meth:`analyze` many images; all their faces are classified in batches.

        Args:
            images: Paths, PIL images or numpy arrays.
            faces: As in :meth:`analyze`.
            errors: ``"raise"``: an unreadable image raises :class:`ImageError`;
                ``"record"``: it gets an :class:`ImageResult` with ``error``
                set and the other images are still classified.

        Returns:
            One :class:`ImageResult` per input, in input order.

        Example:
            >>> clf = Classifier(test_model_path)
            >>> [r.error for r in clf.analyze_batch(["missing.png"], errors="record")]
            ['missing.png: no such file']
        """
        check_mode(faces)
        _check_choice("errors", errors, ERROR_MODES)
        results: list[ImageResult] = []
        crops: list[np.ndarray] = []
        owners: list[tuple[ImageResult, tuple[int, int, int, int], float | None]] = []
        min_side = self.spec.input_size if faces == "off" else DETECTION_MIN_SIDE
        for image in images:
            try:
                img, full = load_reduced(image, min_side)
                detected, regions = self._regions(img, faces)
                grays = [self._gray(r.image, image) for r in regions]
            except ImageError as exc:
                if errors == "raise":
                    raise
                results.append(ImageResult.failed(_source_name(image), printable(str(exc))))
                continue
            result = ImageResult(_source_name(image), full[0], full[1], detected, [])
            results.append(result)
            crops.extend(grays)
            owners.extend((result, _scale_box(r.box, img.size, full), r.score) for r in regions)
            # Only the model-size crops and the boxes outlive this step; freed
            # now, the image is not alive while the next one is decoded.
            del img, regions
        for (result, box, score), pred in zip(owners, self._classify(crops)):
            result.faces.append(FaceResult(box, score, pred))
        return results

    def analyze_iter(
        self, images: Iterable[ImageInput], faces: str = "off", errors: str = "record"
    ) -> Iterator[ImageResult]:
        """:meth:`analyze_batch` over ``batch_size`` images at a time, lazily.

        For long lists (whole photo folders): memory stays bounded and results
        arrive while the rest is still being classified. Bad images are
        recorded, not raised, by default.

        Example:
            >>> clf = Classifier(test_model_path, batch_size=2)
            >>> from PIL import Image
            >>> [r.ok for r in clf.analyze_iter([Image.new("L", (8, 8))] * 3 + ["nope.jpg"])]
            [True, True, True, False]
        """
        check_mode(faces)
        _check_choice("errors", errors, ERROR_MODES)
        chunk: list[ImageInput] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == self.batch_size:
                yield from self.analyze_batch(chunk, faces=faces, errors=errors)
                chunk = []
        if chunk:
            yield from self.analyze_batch(chunk, faces=faces, errors=errors)

    def analyze_video(self, source: str | os.PathLike | None = None, **options: Any) -> VideoAnalysis:
        """Detect, classify and track the faces of a video file, camera or stream, lazily.

        Needs PyAV (``pip install av``, or ``pip install '.[video]'`` in a checkout). Memory does not grow
        with the video's length: a few decoded frames and the live tracks.

        Args:
            source: A video file or a URL FFmpeg can open (``rtsp://...``).
            **options: ``camera`` (a local camera's number, instead of
                ``source``), ``every`` (analyse every Nth frame), ``fps``
                (analyse at most F frames per second), ``start``/``end``
                (seconds, files), ``smooth`` (EMA weight of the newest frame,
                e.g. 0.3; ``None``: raw), ``all_frames`` (also yield frames not
                analysed), ``keep_images`` (attach the decoded frames),
                ``detect_every`` (run the detector on every Nth analysed
                frame only, carrying boxes forward in between; default 1),
                ``min_iou``/``max_missed`` (tracking); see
                :class:`fer_edge.video.VideoAnalysis`.

        Returns:
            A :class:`fer_edge.video.VideoAnalysis`: iterate it for
            :class:`fer_edge.video.VideoFrameResult` objects; ``.stats`` and
            ``.info`` say how far it got and what the video is.

        Raises:
            DependencyError: PyAV is not installed.
            VideoError: The source cannot be opened or is a still image (at
                once), or decoding stopped early (while iterating, after the frames that decoded).
        """
        from .video import VideoAnalysis  # lazy: PyAV is an optional extra

        return VideoAnalysis(self, source, **options)

    # -- internals -------------------------------------------------------

    def _gray(self, img: Image.Image, source: object) -> np.ndarray:
        name = _source_name(source) or f"<{type(source).__name__}>"
        return checked_gray(img, self.spec.input_size, name)

    def _regions(self, img: Image.Image, mode: str) -> tuple[bool, list[_Region]]:
        """Whether detection ran, and the regions to classify."""
        whole = [_Region((0, 0, img.width, img.height), None, img)]
        if mode == "off":
            return False, whole
        if not faces_module.needs_detection(img, mode):
            return False, whole
        boxes = self.detector.detect(img)
        return True, [
            _Region((int(b.x), int(b.y), int(b.w), int(b.h)),
                    None if b.score is None else float(b.score),
                    faces_module.crop_face(img, b))
            for b in boxes
        ]

    def _classify(self, grays: Sequence[np.ndarray]) -> list[Prediction]:
        """uint8 (S, S) images -> predictions, one ``session.run`` per chunk."""
        predictions: list[Prediction] = []
        for start in range(0, len(grays), self.batch_size):
            x = normalize(np.stack(grays[start:start + self.batch_size]), self.spec)
            predictions.extend(self._prediction(row) for row in self._probabilities(x))
        return predictions

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """Run the model on float32 (n, 3, S, S); returns (n, classes) calibrated probabilities."""
        return softmax(self.logits(x), self.info.temperature)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs for already-preprocessed input, in :attr:`labels` order.

        For callers that preprocess themselves (a distillation teacher, a
        benchmark): ``x`` is float32 (n, 3, S, S) as :func:`fer_edge.preprocess.normalize`
        returns. Any n works, also with a fixed-batch model.

        These are the graph's outputs as they are: the calibration temperature
        is *not* applied. ``softmax(logits, clf.info.temperature)`` gives the
        probabilities :meth:`predict` reports.

        Raises:
            ModelError: The run failed or produced non-finite values.

        Example:
            >>> from fer_edge.preprocess import normalize
            >>> clf = Classifier(test_model_path)
            >>> x = normalize(np.zeros((5, clf.spec.input_size, clf.spec.input_size), np.uint8), clf.spec)
            >>> clf.logits(x).shape
            (5, 2)
        """
        static = self._graph.static_batch
        if static and len(x) > static:
            return np.concatenate([self.logits(x[i:i + static]) for i in range(0, len(x), static)])
        n = len(x)
        if self._graph.static_batch and n < self._graph.static_batch:
            # A fixed-batch model needs full batches: pad, then drop the padding.
            pad = np.zeros((self._graph.static_batch - n, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        feed: dict[str, np.ndarray] = {self._graph.input_name: x.astype(self._graph.input_dtype, copy=False)}
        try:
            (logits,) = self._session.run([self._graph.output_name], feed)
        except _ORT_MODEL_ERRORS as exc:
            raise ModelError(f"{display_path(self.model_path)}: inference failed "
                             f"({_first_line(exc)})") from None
        logits = np.asarray(logits)[:n]
        if logits.shape != (n, len(self.info.labels)):
            raise ModelError(f"{display_path(self.model_path)}: output shape {logits.shape} "
                             f"does not match {n} images x {len(self.info.labels)} labels")
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"{display_path(self.model_path)}: model produced NaN or "
                             "infinite logits")
        return logits.astype(np.float32, copy=False)

    def _prediction(self, probs: np.ndarray) -> Prediction:
        labels = self.info.labels
        best = int(np.argmax(probs))
        return Prediction(
            label=labels[best],
            score=float(probs[best]),
            probabilities={label: float(p) for label, p in zip(labels, probs)},
        )


def _scale_box(box: tuple[int, int, int, int], size: tuple[int, int],
               full: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in an image of ``size`` mapped to the pixels of its ``full`` size."""
    if size == full:
        return box
    sx, sy = full[0] / size[0], full[1] / size[1]
    x, y, w, h = box
    return round(x * sx), round(y * sy), round(w * sx), round(h * sy)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
