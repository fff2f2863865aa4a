"""The Ray engine (fer_edge.distributed, ``fer-edge classify --engine ray``).

The tests that run Ray share one local Ray instance (2 CPUs, ~3 s to start)
for the module; they skip, with the reason, when Ray is not installed
(``pip install '.[ray]'``; the ``dev`` extra has it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer_edge import distributed
from fer_edge.cli import cli
from fer_edge.errors import DependencyError
from tests.constants import REPO

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed "
                               "(pip install '.[ray]'; the dev extra has it)")


def _photos(root: Path) -> Path:
    """A folder like a user's: crops, a larger photo, a sub-folder, bad and skipped files."""
    rng = np.random.default_rng(7)
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(9):
        arr = rng.integers(0, 255, (48, 48), dtype=np.uint8)
        Image.fromarray(arr, "L").save(root / f"crop{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8), "RGB").save(
        root / "sub" / "colour.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), "RGB").save(
        root / "sub" / "photo.jpg")
    (root / "sub" / "empty.jpg").write_bytes(b"")
    (root / "sub" / "text.jpg").write_bytes(b"not an image at all")
    good = (root / "crop0.png").read_bytes()
    (root / "sub" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("skipped: not an image extension")
    (root / ".hidden.png").write_bytes(good)
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (ray.init ~3 s); the engine reuses it."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install '.[ray]'; the dev extra has it)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # 2 logical CPUs whatever the machine: the pool sizing below is then known.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def _records(output: str) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, output.splitlines())}


def _assert_same(ray_records: dict[str, dict], local_records: dict[str, dict]) -> None:
    """Same files, same errors, same labels; scores within 1e-6."""
    assert set(ray_records) == set(local_records)
    for path, local in local_records.items():
        got = ray_records[path]
        assert set(got) == set(local), path
        if "error" in local:
            assert got["error"] == local["error"]
            continue
        assert got["label"] == local["label"], path
        assert (got["width"], got["height"], got["detected"]) == (
            local["width"], local["height"], local["detected"])
        assert [f["box"] for f in got["faces"]] == [f["box"] for f in local["faces"]]
        if local["probabilities"] is None:  # detection ran and found no face
            assert got["score"] is None and got["probabilities"] is None
            continue
        assert got["score"] == pytest.approx(local["score"], abs=1e-6)
        assert got["probabilities"].keys() == local["probabilities"].keys()
        for label, p in local["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-6)


# -- without Ray ---------------------------------------------------------------


def test_local_engine_and_import_never_load_ray(tmp_path: Path, model_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("L", (48, 48), 90).save(img)
    code = ("import sys; import fer_edge, fer_edge.cli; "
            "from fer_edge.cli import main\n"
            "try:\n"
            f"    main(['classify', {str(img)!r}, '--model', {str(model_path)!r}, '--format', 'jsonl'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "assert not any(m == 'ray' or m.startswith('ray.') or m == 'pyarrow' "
            "for m in sys.modules), 'Ray was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"label"' in proc.stdout


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     model_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DependencyError, match=r"pip install '\.\[ray\]' in a fer-edge checkout"):
        distributed.classify_dataset([tmp_path])
    result = CliRunner().invoke(cli, ["classify", str(tmp_path), "--engine", "ray",
                                      "--model", str(model_path)])
    assert result.exit_code == 1
    assert "pip install '.[ray]' in a fer-edge checkout" in result.output
    assert "--faces off" not in result.output  # that hint is for OpenCV, not Ray


@pytest.mark.parametrize("args, message", [
    (["--format", "parquet"], "parquet needs --engine ray"),
    (["--workers", "2"], "needs --engine ray"),
    (["--ray-address", "auto"], "needs --engine ray"),
    (["--engine", "ray", "--format", "parquet"], "give a file with -o"),
    (["--engine", "ray", "--annotate", "out"], "--engine local only"),
])
def test_engine_usage_errors_exit_2(tmp_path: Path, model_path: Path, args: list[str],
                                    message: str) -> None:
    result = CliRunner().invoke(cli, ["classify", str(tmp_path), "--model", str(model_path),
                                      *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


# -- with Ray ------------------------------------------------------------------


@needs_ray
def test_unreachable_address_is_one_line_and_exit_1_within_30s(tmp_path: Path,
                                                               model_path: Path) -> None:
    # A fresh process, as a user runs it: nothing of Ray is running there.
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fer_edge", "classify", str(tmp_path), "--engine", "ray",
         "--ray-address", "127.0.0.1:1", "--model", str(model_path)],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: cannot reach the Ray cluster at 127.0.0.1:1")


@needs_ray
def test_ray_engine_gives_the_local_engines_records(ray_session, tmp_path: Path,
                                                    model7_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    runner = CliRunner()
    base = ["classify", str(photos), str(tmp_path / "missing.jpg"), "--model", str(model7_path),
            "--format", "jsonl", "--batch-size", "4"]
    local = runner.invoke(cli, base)
    remote = runner.invoke(cli, [*base, "--engine", "ray", "--workers", "2"])
    assert local.exit_code == remote.exit_code == 1  # bad files are failures, not a failed job
    local_records, ray_records = _records(local.stdout), _records(remote.stdout)
    assert len(local_records) == 15  # 9 crops, 2 photos, 3 bad files, 1 missing path
    assert sum("error" in r for r in local_records.values()) == 4
    _assert_same(ray_records, local_records)
    # One stderr line per failure, as the local engine prints them (order aside).
    assert sorted(line for line in remote.stderr.splitlines() if "error:" in line) == sorted(
        line for line in local.stderr.splitlines() if "error:" in line)


@needs_ray
def test_file_unreadable_at_read_time_is_an_error_record(ray_session, tmp_path: Path,
                                                         model_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    plan = distributed.plan_classification([photos], model=model_path, faces="off", workers=1)
    # Listed, then gone before Ray reads it (deleted, or unreadable: what
    # read_binary_files would fail the whole job for).
    (photos / "crop3.png").unlink()
    rows = plan.dataset.take_all()
    results = {r["path"]: distributed.result_from_row(r) for r in rows}
    gone = results[str(photos / "crop3.png")]
    assert gone.error == f"{photos / 'crop3.png'}: no such file"
    assert sum(r.ok for r in results.values()) == 10
    assert plan.workers == 1 and plan.cpus_per_worker == 1.0  # 2 CPUs, 1 kept for reads


@needs_ray
def test_classify_dataset_and_parquet_output(ray_session, tmp_path: Path,
                                             model_path: Path) -> None:
    import pyarrow.parquet as pq

    photos = _photos(tmp_path / "photos")
    ds = distributed.classify_dataset(photos, model=model_path, workers=2, preserve_order=True)
    assert isinstance(ds, ray.data.Dataset)
    from_dataset = {r["path"]: distributed.result_from_row(r).to_record() for r in ds.take_all()}

    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(cli, ["classify", str(photos), "--model", str(model_path),
                                      "--engine", "ray", "--format", "parquet", "-o", str(out)])
    assert result.exit_code == 1, result.output
    table = pq.read_table(out)
    assert table.schema.equals(distributed.record_schema(["happy", "sad"]))
    from_parquet = {r["path"]: distributed.result_from_row(r).to_record()
                    for r in table.to_pylist()}
    local = CliRunner().invoke(cli, ["classify", str(photos), "--model", str(model_path),
                                     "--format", "jsonl"])
    _assert_same(from_parquet, _records(local.stdout))
    _assert_same(from_dataset, _records(local.stdout))


def test_pool_sizing_leaves_a_cpu_for_reading() -> None:
    # 2 cores: 2 actors x 0.5 CPU (2 x 1 CPU starved the read tasks and hung).
    assert distributed.size_pool(2, {"CPU": 2.0}) == (2, 0.5, 0.0)
    assert distributed.size_pool(None, {"CPU": 16.0}) == (16, 0.94, 0.0)
    assert distributed.size_pool(4, {"CPU": 16.0}) == (4, 1.0, 0.0)
    assert distributed.size_pool(None, {"CPU": 32.0, "GPU": 8.0}) == (8, 1.0, 1.0)
    assert distributed.size_pool(None, {"CPU": 32.0, "GPU": 8.0}, "cpu")[2] == 0.0


def test_ray_paths_are_shown_as_given() -> None:
    names = distributed._Names()
    names.add("/home/u/photos", "photos")
    names.add("bucket/in", "s3://bucket/in")
    assert names.shown("/home/u/photos/a/b.jpg") == "photos/a/b.jpg"
    assert names.shown("bucket/in/x.png") == "s3://bucket/in/x.png"
    assert names.shown("/home/u/photos2/c.jpg") == "/home/u/photos2/c.jpg"
