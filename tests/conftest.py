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
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import pytest

from tests import onnx_models
from tests.constants import LABELS2, LABELS7, REPO
from tests.onnx_models import ModelOptions

#: Test modules of train/, export/ and benchmarks/, and their helper (collected for
#: its doctests): they import torch at the top.
TORCH_MODULES = ("test_train.py", "test_export.py", "test_benchmarks.py", "checkpoint_factory.py",
                 "test_edge.py", "test_recover.py")


def _torch_tests_not_run() -> bool:
    """Whether to leave out :data:`TORCH_MODULES`: torch is not installed, and this is not CI.

    A developer on the small install (the ``test`` extra, README "A small install
    without torch") runs everything else. Only an absent torch counts: a torch
    that is installed but fails to import still fails those tests, and CI
    (``CI`` set, the ``dev`` extra installed) never leaves them out, so a
    broken install cannot turn into skipped tests there.
    """
    return not os.environ.get("CI") and importlib.util.find_spec("torch") is None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name in TORCH_MODULES and _torch_tests_not_run():
        return True
    return None  # let pytest decide as usual


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _torch_tests_not_run():
        terminalreporter.write_line(
            f"not run: {', '.join(TORCH_MODULES)} (torch is not installed; "
            'pip install -e ".[dev]" runs them)', yellow=True)


@pytest.fixture(scope="session")
def ckpt_factory() -> ModuleType:
    """tests/checkpoint_factory.py: tiny training checkpoints and image folders (needs torch)."""
    # Imported on first use: it imports torch, which only the train/export/benchmarks tests need.
    from tests import checkpoint_factory

    return checkpoint_factory


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
