"""Timing the ``fer-edge classify`` command as users run it: cold start and a folder run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fer_edge.preprocess import PreprocessSpec, preprocess

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliTiming:
    """``fer-edge classify`` timings for one model.

    Attributes:
        model: The ONNX file.
        cold_start_s: Median wall time of a fresh process classifying one image
            (interpreter start, imports, model load, one prediction).
        cold_start_runs: Repetitions behind the median.
        folder_images: Images in the folder run.
        folder_wall_s: Wall time of the folder run (one process).
        folder_images_per_s: ``folder_images / folder_wall_s``, start-up included.
        steady_ms_per_image: Per-image time without start-up:
            ``(folder_wall_s - cold_start_s) / (folder_images - 1)``.
        preprocess_ms_per_image: :func:`fer_edge.preprocess.preprocess` alone on
            the same files (decode, grayscale, resize, normalise), in this process.
        preprocess_share: ``preprocess_ms_per_image / steady_ms_per_image``.
        command: The folder-run command line.
    """

    model: str
    cold_start_s: float
    cold_start_runs: int
    folder_images: int
    folder_wall_s: float
    folder_images_per_s: float
    steady_ms_per_image: float | None
    preprocess_ms_per_image: float
    preprocess_share: float | None
    command: list[str]


def child_env() -> dict[str, str]:
    """Environment for child Pythons: this checkout importable (fer_edge, benchmarks), quiet warnings.

    The working directory stays the caller's, so relative paths keep their meaning.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def classify_command(model: Path, paths: list[Path], threads: int) -> list[str]:
    """``fer-edge classify`` on face crops (no detection: FER images are crops), JSON lines out."""
    return [sys.executable, "-m", "fer_edge", "classify", *map(str, paths), "--model", str(model),
            "--faces", "off", "--format", "jsonl", "--threads", str(threads), "--no-progress"]


def _timed_run(cmd: list[str], expected_records: int) -> float:
    """Wall seconds of ``cmd``; raises ``RuntimeError`` unless it classified every image."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t0
    records = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or len(records) != expected_records:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode} with {len(records)} records "
                           f"(expected {expected_records}): {proc.stderr.strip()[-500:]}")
    return wall


def preprocess_ms(files: list[Path], spec: PreprocessSpec) -> float:
    """Mean ms per file of :func:`fer_edge.preprocess.preprocess`."""
    t0 = time.perf_counter()
    for f in files:
        preprocess(f, spec)
    return (time.perf_counter() - t0) * 1000.0 / max(len(files), 1)


def time_cli(model: Path, one_image: Path, folder_inputs: list[Path], n_images: int,
             files: list[Path], spec: PreprocessSpec, threads: int, runs: int) -> CliTiming:
    """Cold start on ``one_image`` and one run over ``folder_inputs`` (``n_images`` images).

    Args:
        model: ONNX file given to ``--model``.
        one_image: Image for the cold-start runs.
        folder_inputs: Folders (or files) for the folder run.
        n_images: How many images ``folder_inputs`` hold.
        files: The same images as files, for timing preprocessing alone.
        spec: The model's preprocessing.
        threads: ``--threads`` for ONNX Runtime.
        runs: Cold-start repetitions.
    """
    cold = statistics.median(_timed_run(classify_command(model, [one_image], threads), 1)
                             for _ in range(runs))
    cmd = classify_command(model, folder_inputs, threads)
    wall = _timed_run(cmd, n_images)
    steady = (wall - cold) * 1000.0 / (n_images - 1) if n_images > 1 and wall > cold else None
    pre = preprocess_ms(files, spec)
    return CliTiming(
        model=str(model), cold_start_s=cold, cold_start_runs=runs, folder_images=n_images,
        folder_wall_s=wall, folder_images_per_s=n_images / wall, steady_ms_per_image=steady,
        preprocess_ms_per_image=pre, preprocess_share=pre / steady if steady else None,
        command=cmd,
    )
