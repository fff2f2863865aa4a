"""What export/ writes into an ONNX file and the runtime reads back.

Everything inference needs (labels in order, input size, colour mode,
normalisation) plus provenance lives in the ONNX ``metadata_props`` under one
key, ``fer_edge``, as JSON. No side files, no facts hidden in file names.

Example:
    >>> from fer_edge.metadata import ModelInfo
    >>> from fer_edge.preprocess import PreprocessSpec
    >>> info = ModelInfo(labels=["happy", "sad"], preprocess=PreprocessSpec(input_size=32))
    >>> ModelInfo.from_props(info.to_props()).labels
    ['happy', 'sad']
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any, Mapping

from .errors import ModelError
from .preprocess import PreprocessSpec

METADATA_KEY = "fer_edge"
FORMAT_VERSION = 1

#: What each ``PreprocessSpec.color_mode`` means, in words (``fer-edge info``).
COLOR_MODE_TEXT = {"gray3": "8-bit grey (luma) repeated on 3 channels"}

# Data sets known by their folder name -> their published name.
_DATASET_NAMES = {"fer2013": "FER-2013", "fer-2013": "FER-2013", "fer_2013": "FER-2013"}
# How exports up to fer-edge 0.1.0 recorded the data: "<split> split of <local path>",
# optionally followed by " (classes ...)".
_OLD_TRAINING_DATA = re.compile(r"^(?P<split>\w+) split of (?P<path>.+?)(?P<rest> \(.*\))?$")


def describe_color_mode(mode: str) -> str:
    """``mode`` in words, with the stored name kept for reference.

    Example:
        >>> describe_color_mode("gray3")
        '8-bit grey (luma) repeated on 3 channels (gray3)'
    """
    text = COLOR_MODE_TEXT.get(mode)
    return f"{text} ({mode})" if text else mode


def describe_training_data(recorded: str) -> str:
    """The training data as a reader wants it: data set name and split, no local path.

    Older exports recorded ``"train split of <path on the training machine>"``;
    that path means nothing elsewhere, so only its last folder name is kept,
    mapped to the data set's published name where known. Anything else is
    returned unchanged (newer exports record the name themselves).

    Example:
        >>> describe_training_data("train split of ../shared/data/fer2013 (classes happy, sad)")
        'FER-2013, train split (classes happy, sad)'
        >>> describe_training_data("train split of /home/me/faces")
        'faces, train split'
        >>> describe_training_data("FER-2013, Training split")
        'FER-2013, Training split'
    """
    match = _OLD_TRAINING_DATA.match(recorded)
    if not match:
        return recorded
    # Either separator: the file may have been exported on another system.
    folder = PurePath(match["path"].replace("\\", "/").rstrip("/")).name or match["path"]
    name = _DATASET_NAMES.get(folder.lower(), folder)
    return f"{name}, {match['split']} split{match['rest'] or ''}"


def check_temperature(value: object) -> float:
    """``value`` if it is a usable softmax temperature: a finite number above 0.

    Checked when the metadata is read, so a bad file fails at load, naming
    itself, rather than giving NaN probabilities at the first image.

    Raises:
        ValueError: naming the bad value.

    Example:
        >>> check_temperature(1.5)
        1.5
        >>> check_temperature(float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number > 0, got nan
    """
    bad = ValueError(f"temperature must be a finite number > 0, got {value!r}")
    # bool is an int to Python, but "temperature": true is a broken file, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if not math.isfinite(value) or value <= 0:
        raise bad
    return float(value)


@dataclass
class ModelInfo:
    """Facts about an exported model, stored in (and read from) the ONNX file.

    Attributes:
        labels: Class names in logit order.
        preprocess: How to turn an image into the input tensor.
        model_name: Architecture, e.g. ``"efficientnet_b0"``.
        model_version: Version string of this trained model.
        precision: ``fp32``, ``fp16`` or ``int8``.
        input_name: Name of the graph input.
        output: What the graph outputs; always ``"logits"`` (softmax is applied by the runtime).
        temperature: The runtime's probabilities are ``softmax(logits / temperature)``;
            fitted on val at export (``python -m export.calibrate``) so that a score of
            0.8 is right about 80% of the time. 1.0 (the default, also for files
            written before it existed) leaves the logits as they are.
        tta: Test-time augmentation folded into the graph (``"none"`` or ``"flip"``).
        training_data: Where the training images came from.
        val_accuracy: Accuracy on the validation split, if measured.
        val_macro_f1: Macro-F1 on the validation split, if measured.
        export_date: ISO date of export.
        exporter_version: fer-edge version that wrote the file.
        extra: Anything else worth keeping (free-form, JSON-safe).
    """

    labels: list[str]
    preprocess: PreprocessSpec
    model_name: str = "efficientnet_b0"
    model_version: str = "unversioned"
    precision: str = "fp32"
    input_name: str = "input"
    output: str = "logits"
    tta: str = "none"
    temperature: float = 1.0
    training_data: str = ""
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    export_date: str = ""
    exporter_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temperature = check_temperature(self.temperature)

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        if self.temperature == 1.0:
            # Uncalibrated files stay readable by runtimes older than the field;
            # calibrated ones are refused there rather than read with wrong scores.
            del d["temperature"]
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries to write into the ONNX model."""
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Parse ``metadata_props`` (e.g. ONNX Runtime's ``custom_metadata_map``).

        Raises:
            ModelError: the key is missing or its content is invalid; the
                message names ``source``.
        """
        raw = props.get(METADATA_KEY)
        if raw is None:
            raise ModelError(
                f"{source}: no '{METADATA_KEY}' metadata; this ONNX file was not exported by "
                "fer-edge's export/ (python -m export CHECKPOINT --out model.onnx)"
            )
        try:
            d = json.loads(raw)
            version = d.pop("format_version", None)
            if version != FORMAT_VERSION:
                raise ValueError(f"metadata format_version {version!r}, this runtime reads {FORMAT_VERSION}")
            d["preprocess"] = PreprocessSpec.from_dict(d["preprocess"])
            labels = d.get("labels")
            if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
                raise ValueError(f"labels must be a list of at least 2 strings, got {labels!r}")
            if len(set(labels)) != len(labels):
                raise ValueError(f"labels are not unique: {labels}")
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{source}: invalid '{METADATA_KEY}' metadata: {exc}") from None
