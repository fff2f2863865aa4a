"""Root pytest configuration: names available to the doctests in fer_edge/.

``test_model_path`` is a tiny untrained 2-class (happy, sad) model built with
tests/onnx_models.py, so the docstring examples run without a trained model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _model_factory():
    name = "fer_edge_test_onnx_models"  # same cache key as tests/conftest.py
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "tests" / "onnx_models.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session", autouse=True)
def _doctest_names(doctest_namespace, tmp_path_factory):
    factory = _model_factory()
    path = tmp_path_factory.mktemp("doctest_model") / "test_model.onnx"
    doctest_namespace["test_model_path"] = factory.build_model(path, ["happy", "sad"])
