"""Root pytest configuration: names available to the doctests in fer_edge/.

``test_model_path`` is a tiny untrained 2-class (happy, sad) model built with
tests/onnx_models.py, so the docstring examples run without a trained model.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    # Imported here, not at the top: onnx is a dev dependency, and this file is
    # loaded for every pytest run in the repository.
    from tests.constants import LABELS2
    from tests.onnx_models import build_model

    path = tmp_path_factory.mktemp("doctest_model") / "test_model.onnx"
    doctest_namespace["test_model_path"] = build_model(path, LABELS2)
