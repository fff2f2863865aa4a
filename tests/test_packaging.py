"""Packaging promises: small runtime deps, the console script, the wheel's contents,
and a README whose set-up commands and Python example really work."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fer_edge import classifier as classifier_module

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the promises are the same on 3.9


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_are_exactly_the_small_set(project):
    assert _names(project["dependencies"]) == {"onnxruntime", "numpy", "pillow", "click"}
    assert project["requires-python"] == ">=3.9"


def test_extras(project):
    extras = project["optional-dependencies"]
    assert _names(extras["gpu"]) == {"onnxruntime-gpu"}
    assert extras["detect"] == ["opencv-python-headless>=4.8,<5"]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["train"])
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["export"])
    assert _names(extras["bench"]) == _names(extras["export"]) | {"matplotlib"}
    everything = set().union(*(_names(extras[e]) for e in ("detect", "train", "export", "bench")))
    assert everything | {"pytest", "hypothesis", "scikit-image"} <= _names(extras["dev"])
    assert "onnxruntime-gpu" not in _names(extras["dev"])


def test_console_script_points_at_the_click_entry_point(project):
    assert project["scripts"] == {"fer-edge": "fer_edge.cli:main"}
    from fer_edge.cli import main

    assert callable(main)


def _readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(heading, 1)[1]
    return re.search(r"```(?:bash|python)\n(.*?)```", after, re.S).group(1)


def test_readme_test_command_is_what_ci_runs():
    setup = _readme_block("**2. Install for development and run the tests**").strip()
    install, test_command = [part.strip() for part in setup.split("&&")]
    assert install == 'pip install -e ".[dev]"'
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command == "python -m pytest -q"
    assert test_command in ci_lines
    assert 'python -m pip install -e ".[dev]"' in ci_lines
    assert "set -euo pipefail" in ci_lines


def test_readme_first_command_classifies_photos():
    assert _readme_block("**1. Install and classify photos with the shipped model**").strip() \
        == 'pip install ".[detect]" && fer-edge classify photos/'


def test_readme_python_example_runs(monkeypatch, tmp_path, make_model):
    # The README uses the shipped model; until it exists, a test model stands in.
    model = make_model(tmp_path, ["happy", "neutral", "sad"], input_size=48)
    monkeypatch.setattr(classifier_module, "DEFAULT_MODEL", model)
    code = _readme_block("## Python API")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("['happy', 'neutral', 'sad'] running on ")
    assert any(line.startswith("error: ") and "broken.jpg" in line for line in lines)


def test_readme_has_the_sections_others_fill():
    text = (REPO / "README.md").read_text()
    for heading in ("## Model card", "## Training", "## Export", "## Benchmarks",
                    "## Face detection", "## GPU", "## Command line", "## Python API"):
        assert heading in text, heading


def test_wheel_ships_only_the_runtime_package(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "fer_edge", src / "fer_edge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for folder in ("train", "export", "benchmarks", "tests"):
        (src / folder).mkdir()
        (src / folder / "__init__.py").write_text("")
    (src / "fer_edge" / "models" / "default.onnx").write_bytes(b"stand-in model")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = (tmp_path / "dist").glob("fer_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"fer_edge", wheel.name.split("-py")[0] + ".dist-info"}, top
    assert "fer_edge/models/default.onnx" in names
    assert "fer_edge/py.typed" in names
    meta = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/METADATA").decode()
    runtime = [line for line in meta.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert _names([line.split(":", 1)[1].strip() for line in runtime]) == \
        {"onnxruntime", "numpy", "pillow", "click"}
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt")
    assert b"fer-edge = fer_edge.cli:main" in entry
