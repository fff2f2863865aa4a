"""The models shipped inside the package, by short name.

Every ``*.onnx`` file in ``fer_edge/models/`` is a shipped model; its name is
the file's stem (``default``: the accurate model; ``fast``: the edge model).
Everything else about a model (labels, input size, precision, val accuracy,
measured speed) is read from its metadata, never from its name.

Example:
    >>> "default" in shipped_models()
    True
    >>> is_model_name("fast"), is_model_name("models/fast.onnx")
    (True, False)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelError
from .metadata import ModelInfo
from .providers import open_session

#: Folder of the shipped models.
MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The model used when none is named.
DEFAULT_NAME = "default"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def shipped_models() -> dict[str, Path]:
    """Shipped model names and their files, sorted by name (``default`` first)."""
    found = {p.stem: p for p in MODELS_DIR.glob("*.onnx") if _NAME.match(p.stem)}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT_NAME, kv[0])))


def is_model_name(text: str | os.PathLike) -> bool:
    """Whether ``text`` reads as a model name (no folder, no suffix) rather than a path."""
    return isinstance(text, str) and bool(_NAME.match(text))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A shipped model name or a path -> the model file. Names win over files.

    Raises:
        ModelError: An unknown name that is not a file either (the shipped
            names are listed).
    """
    if model is None:
        model = DEFAULT_NAME
    if is_model_name(model):
        models = shipped_models()
        if model in models:
            return models[model]
        if not Path(model).is_file():
            hint = ", ".join(models) or "none installed"
            raise ModelError(f"{model!r} is not a shipped model (shipped: {hint}); "
                             "give a model name or the path of an .onnx file written by "
                             "python -m export")
    elif isinstance(model, str) and not Path(model).exists():
        models = shipped_models()
        if model.lower() in models:
            # `--model FAST`: names are lower case; say so rather than "no such model file".
            raise ModelError(f"{model!r} is not a shipped model; model names are lower case: "
                             f"did you mean {model.lower()!r}? (shipped: {', '.join(models)})")
    return Path(model)


def _read_info(path: Path) -> ModelInfo:
    session = open_session(path, ["CPUExecutionProvider"], threads=1)
    return ModelInfo.from_props(session.get_modelmeta().custom_metadata_map, str(path))


def model_card(name: str, path: Path) -> dict:
    """What ``fer-edge models`` shows of one model, all read from its file and metadata.

    Speed figures are those export measured and stored (``extra["speed"]``);
    ``None`` when the file has none. ``temperature`` is the softmax temperature
    the runtime applies; ``weights`` the type the file stores its weights in
    (``fp16`` for an fp32 model exported with ``--weights fp16``); ``calibration`` what fitting it measured on val
    (``extra["calibration"]``: ECE before and after, 2-fold CV), ``None`` if never fitted.

    Example:
        >>> card = model_card("test", test_model_path)
        >>> card["labels"], card["ms_per_image_b32"], card["temperature"]
        (['happy', 'sad'], None, 1.0)
    """
    info = _read_info(path)
    stored = info.extra.get("speed")
    speed: dict = stored if isinstance(stored, dict) else {}
    calibration = info.extra.get("calibration")
    return {
        "name": name,
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "architecture": info.model_name,
        "version": info.model_version,
        "labels": list(info.labels),
        "input_size": info.preprocess.input_size,
        "precision": info.precision,
        "weights": str(info.extra.get("weights_storage", info.precision)),
        "tta": info.tta,
        "val_accuracy": info.val_accuracy,
        "val_macro_f1": info.val_macro_f1,
        "ms_per_image_b1": speed.get("ms_per_image_b1"),
        "ms_per_image_b32": speed.get("ms_per_image_b32"),
        "speed_threads": speed.get("threads"),
        "speed_machine": speed.get("machine"),
        "temperature": info.temperature,
        "calibration": calibration if isinstance(calibration, dict) else None,
    }


def model_cards() -> list[dict]:
    """:func:`model_card` of every shipped model, ``default`` first."""
    return [model_card(name, path) for name, path in shipped_models().items()]
