"""The docstring examples of train/, export/, benchmarks/ and tools/ run and pass.

pytest collects doctests from ``fer_edge/`` only (``testpaths``: the wheel), so
without this file the examples in the training, export and benchmark code
could rot unseen. Each module with an example is imported and run through
:func:`doctest.testmod`; a module that needs torch is skipped where torch is
not installed (the small ``test`` install), never in CI (``CI`` set).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.constants import REPO

PACKAGES = ("train", "export", "benchmarks")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _with_examples() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).glob("*.py"))]
    files += sorted((REPO / "tools").glob("*.py"))
    return [p for p in files if ">>> " in p.read_text(encoding="utf-8")]


def _import(path: Path):
    if path.parent.name == "tools":  # scripts, not a package: import by path
        spec = importlib.util.spec_from_file_location(f"tools_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(f"{path.parent.name}.{path.stem}")


def test_modules_with_examples_are_found() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in _with_examples()}
    assert {"train/teacher.py", "export/calibrate.py", "tools/average_models.py"} <= names


@pytest.mark.parametrize("path", _with_examples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_docstring_examples_pass(path: Path) -> None:
    try:
        module = _import(path)
    except ModuleNotFoundError as exc:
        if exc.name == "torch" and not os.environ.get("CI"):
            pytest.skip("needs torch (the dev extra)")
        raise
    result = doctest.testmod(module, optionflags=FLAGS, report=True)
    assert result.attempted > 0, f"{path}: no example ran"
    assert result.failed == 0, f"{path}: {result.failed} of {result.attempted} examples failed (printed above)"
