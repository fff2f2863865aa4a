"""Shared fixtures: tiny ONNX models (no torch) and the FER-2013 data location.

* ``make_model(tmp_path, labels, input_size=32, **options)``: build a test model.
* ``model_path`` / ``model7_path``: session-wide 2-class and 7-class models.
* ``fer_data``: the FER-2013 image folders (env ``FER_EDGE_DATA``, default
  ``../shared/data/fer2013`` from the repo root); tests using it are skipped
  when it is absent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
LABELS2 = ["happy", "sad"]  # model_path's labels
LABELS7 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # model7_path's


def load_helper(filename: str):
    """A helper module of tests/ imported by file path, so it works in any pytest import mode."""
    name = "fer_edge_test_" + Path(filename).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


onnx_models = load_helper("onnx_models.py")
ModelOptions = onnx_models.ModelOptions


@pytest.fixture(scope="session")
def ckpt_factory():
    """tests/checkpoint_factory.py: tiny training checkpoints and image folders (needs torch)."""
    return load_helper("checkpoint_factory.py")


@pytest.fixture(scope="session")
def make_model() -> Callable[..., Path]:
    """Factory: ``make_model(tmp_path, labels, input_size=32, **options) -> Path``.

    ``options`` are fields of tests/onnx_models.py's ``ModelOptions`` (e.g.
    ``metadata=False``, ``num_outputs=3``, ``graph_size=40``, ``rank=2``).
    """

    def factory(tmp_path: Path, labels: Sequence[str], input_size: int = 32,
                name: str = "model.onnx", **options) -> Path:
        opts = ModelOptions(input_size=input_size, **options)
        return onnx_models.build_model(Path(tmp_path) / name, labels, opts)

    return factory


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, make_model) -> Path:
    """A 2-class (happy, sad) model with 32px input."""
    return make_model(tmp_path_factory.mktemp("model2"), LABELS2)


@pytest.fixture(scope="session")
def model7_path(tmp_path_factory, make_model) -> Path:
    """A 7-class FER-2013 model with 48px input."""
    return make_model(tmp_path_factory.mktemp("model7"), LABELS7, input_size=48)


@pytest.fixture(scope="session")
def classifier(model_path):
    """A CPU classifier on the 2-class model, shared by tests that only read it."""
    from fer_edge import Classifier

    return Classifier(model_path, providers="cpu", batch_size=4)


@pytest.fixture(scope="session")
def fer_data() -> Path:
    """FER-2013 image folders (``train/<class>/``, ``val/<class>/``); skip if absent."""
    root = Path(os.environ.get("FER_EDGE_DATA", REPO.parent / "shared" / "data" / "fer2013"))
    if not (root / "val").is_dir():
        pytest.skip(f"FER-2013 data not found at {root} (set FER_EDGE_DATA)")
    return root
