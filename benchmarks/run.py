"""Run every benchmark for one trained model and collect a :class:`BenchReport`."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from export.evaluate import LabelledImages, cpu_model, default_threads, load_labelled, score, stratified_sample
from train.data import list_split

from .cli_timing import CliTiming, child_env, time_cli
from .config import BenchConfig
from .latency import measure_interleaved
from .report import BenchReport, RuntimeResult, chart, target_ort_vs_torch, target_preprocess, target_variant
from .runtimes import Runtime, onnx_runtime, predict_all, torch_runtime

log = logging.getLogger("benchmarks")
#: 1-minute load average (before the run) above which timings are flagged as disturbed.
BUSY_LOAD = 0.5
#: Distribution names whose versions the figures depend on (read from package metadata,
#: without importing them).
_VERSIONED = ("torch", "torchvision", "onnxruntime", "onnx", "onnxsim", "numpy", "pillow", "fer-edge")


def machine_info() -> dict:
    """CPU, cores, load and library versions: what the figures depend on."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": default_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def ensure_fp32(cfg: BenchConfig, threads: int) -> list[Path]:
    """The given models, plus an fp32 export of the checkpoint when none was given."""
    models = [Path(m) for m in cfg.models]
    has_fp32 = any(onnx_runtime(m, 1).precision == "fp32" for m in models)
    if cfg.checkpoint is None or has_fp32 or not cfg.export_fp32:
        return models
    from export import ExportConfig, export_checkpoint

    path = Path(cfg.out) / "models" / "fp32.onnx"
    log.info("exporting %s to %s for the ONNX fp32 row", cfg.checkpoint, path)
    export_checkpoint(ExportConfig(checkpoint=Path(cfg.checkpoint), ensemble=tuple(cfg.ensemble), out=path,
                                   force=True, threads=threads))
    return [path, *models]


def load_runtimes(cfg: BenchConfig, models: list[Path], threads: int, notes: list[str]) -> list[Runtime]:
    """PyTorch (when a checkpoint is given) first, then one runtime per ONNX file.

    Raises:
        ValueError: the ONNX files disagree on labels or preprocessing (not one model).
    """
    onnx_rts = [onnx_runtime(m, threads) for m in models]
    if onnx_rts:
        ref = next((r for r in onnx_rts if r.precision == "fp32"), onnx_rts[0])
        for r in onnx_rts:
            info, ref_info = r.model_info, ref.model_info
            if info.labels != ref_info.labels or info.preprocess != ref_info.preprocess:
                raise ValueError(f"{r.path} and {ref.path} are not the same model: labels "
                                 f"{info.labels} vs {ref_info.labels}, preprocessing "
                                 f"{info.preprocess} vs {ref_info.preprocess}")
    if len({r.tta for r in onnx_rts}) > 1:
        notes.append("the ONNX models differ in TTA (" + ", ".join(f"{r.path.name}: {r.tta}" for r in onnx_rts)
                     + "): a +flip model does two forward passes per image")
    runtimes: list[Runtime] = []
    if cfg.checkpoint is not None:
        tta = onnx_rts[0].tta if onnx_rts else "none"
        torch_rt = torch_runtime(Path(cfg.checkpoint), tta, threads, cfg.ensemble)
        runtimes.append(torch_rt)
        _check_provenance(torch_rt, onnx_rts, notes)
    return runtimes + onnx_rts


def _check_provenance(torch_rt: Runtime, onnx_rts: list[Runtime], notes: list[str]) -> None:
    for r in onnx_rts:
        stored = r.model_info.extra.get("checkpoint_sha256")
        if stored and stored != torch_rt.sha256:
            notes.append(f"{r.path} was exported from different checkpoint(s) than {torch_rt.path} "
                         "(sha256 differs): comparisons with PyTorch are not like for like")


def load_val(cfg: BenchConfig, runtimes: list[Runtime]) -> LabelledImages:
    """The val images of the model's classes, preprocessed by fer_edge (capped by ``limit``)."""
    first = next((r.info for r in runtimes if r.info is not None), None)
    if first is not None:
        labels, spec = first.labels, first.preprocess
    else:
        from export.checkpoints import load_checkpoint_model

        # No ONNX runtime: validate() then only lets a run through with a checkpoint.
        assert cfg.checkpoint is not None, "no ONNX model and no checkpoint to read the classes from"
        loaded = load_checkpoint_model(Path(cfg.checkpoint))
        labels, spec = loaded.classes, loaded.spec
    per_class = math.ceil(cfg.limit / len(labels)) if cfg.limit else 0
    val = load_labelled(Path(cfg.data), "val", labels, spec, per_class)
    if cfg.limit and len(val) > cfg.limit:
        val = val.subset(np.sort(stratified_sample(val.labels, cfg.limit, seed=0)))
    return val


def probe_memory(rt: Runtime, input_size: int, batch: int, threads: int, iters: int) -> dict:
    """Peak RSS of a fresh process that loads ``rt`` and runs ``iters`` batches."""
    cmd = [sys.executable, "-m", "benchmarks.probe", rt.kind, str(rt.path), *map(str, rt.members),
           "--input-size", str(input_size),
           "--tta", rt.tta, "--batch", str(batch), "--threads", str(threads), "--iters", str(iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        return {"error": f"probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_latency(runtimes: list[Runtime], val: LabelledImages, cfg: BenchConfig) -> list[list]:
    """Per runtime, its :class:`LatencyStats` at every batch size (runtimes timed in turns)."""
    per_batch = []
    for batch in cfg.batches:
        log.info("timing batch %d", batch)
        per_batch.append(measure_interleaved(runtimes, val.inputs, batch, cfg.timing()))
    return [list(stats) for stats in zip(*per_batch)]


def score_runtime(rt: Runtime, latency: list, val: LabelledImages,
                  torch_top1: np.ndarray | None) -> tuple[RuntimeResult, np.ndarray]:
    """Accuracy on val and agreement with PyTorch for one runtime."""
    logits = predict_all(rt, val.inputs)
    top1 = logits.argmax(1)
    agreement = float((top1 == torch_top1).mean()) if torch_top1 is not None else None
    result = RuntimeResult(
        name=rt.name, kind=rt.kind, precision=rt.precision, tta=rt.tta, path=str(rt.path),
        size_mb=rt.size_bytes / 1e6, threads=rt.threads, latency=latency,
        accuracy=score(logits, val.labels, val.classes), top1_agreement_vs_torch=agreement,
    )
    return result, top1


def time_cli_runs(cfg: BenchConfig, runtimes: list[Runtime], val: LabelledImages, threads: int,
                  notes: list[str]) -> list[CliTiming]:
    """Cold start and folder run of ``fer-edge classify`` per ONNX model (first one only in quick mode)."""
    onnx_rts = [r for r in runtimes if r.kind == "onnx"]
    if not onnx_rts:
        notes.append("fer-edge classify not timed: no ONNX model")
        return []
    files = [Path(p) for p in val.paths]
    labels = onnx_rts[0].model_info.labels
    if cfg.limit:
        folder_inputs = files
    else:
        folder_inputs = [Path(cfg.data) / "val" / c for c in labels]
        files = [p for p, _ in list_split(Path(cfg.data), "val", labels)]
    timings = []
    for rt in onnx_rts[:1] if cfg.quick else onnx_rts:
        log.info("timing fer-edge classify with %s", rt.path)
        try:
            timings.append(time_cli(rt.path, files[0], folder_inputs, len(files), files,
                                    rt.model_info.preprocess, threads, cfg.cold_start_runs))
        except RuntimeError as exc:
            notes.append(f"fer-edge classify failed with {rt.path}: {exc}")
    return timings


def run_benchmarks(cfg: BenchConfig) -> BenchReport:
    """Measure everything, write ``benchmark.json`` and ``benchmark.png`` into ``cfg.out``.

    Raises:
        ValueError: bad settings or models that are not one trained model.
        train.data.DataLayoutError: ``cfg.data`` lacks ``val/<class>/``.
    """
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads()
    machine = machine_info()
    notes: list[str] = []
    runtimes = load_runtimes(cfg, ensure_fp32(cfg, threads), threads, notes)
    val = load_val(cfg, runtimes)
    size = val.inputs.shape[-1]

    results: list[RuntimeResult] = []
    torch_top1 = None
    for rt, latency in zip(runtimes, measure_latency(runtimes, val, cfg)):
        log.info("scoring %s on %d val images", rt.name, len(val))
        result, top1 = score_runtime(rt, latency, val, torch_top1)
        if rt.kind == "torch":
            torch_top1 = top1
        results.append(result)
    # PyTorch's median ms per batch size (every runtime is timed at every batch size).
    base_ms = {s.batch: s.median_ms for s in results[0].latency} if results[0].kind == "torch" else None
    for r in results:
        r.speedup_vs_torch = {s.batch: base_ms[s.batch] / s.median_ms for s in r.latency} if base_ms else {}
    for rt, r in zip(runtimes, results):
        r.memory = probe_memory(rt, size, max(cfg.batches), threads, 1 if cfg.quick else 3)

    cli = time_cli_runs(cfg, runtimes, val, threads, notes)
    small, big = min(cfg.batches), max(cfg.batches)
    targets = [target_ort_vs_torch(results, small), target_variant(results, big),
               target_preprocess(cli, next((n for n in notes if "not timed" in n), None))]
    machine["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    start_load = (machine["loadavg_at_start"] or [0.0])[0]
    # Taken before this run did any work, so it measures other processes.
    if start_load >= BUSY_LOAD:
        notes.append(f"the machine was busy before the run started (1-minute load average {start_load:.1f} "
                     f"on {machine['usable_cores']} cores): timings are disturbed; compare them only "
                     "with each other (runtimes were timed in turns, so ratios hold up better)")
    settings = {
        "threads": threads, "batches": list(cfg.batches), "warmup": cfg.warmup, "rounds": cfg.rounds,
        "min_iters": cfg.min_iters, "min_seconds": cfg.min_seconds, "quick": cfg.quick,
        "timing": "runtimes timed round-robin per batch size (see benchmarks/latency.py)",
        "val_images": len(val), "classes": val.classes, "input_size": size,
        "data": str(cfg.data), "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
        "ensemble": [str(p) for p in cfg.ensemble],
        "pytorch": "eager, fp32, NCHW, torch.inference_mode; size = serialized state_dict",
        "onnxruntime": "CPUExecutionProvider, ORT_ENABLE_ALL, inter-op 1",
        "cli": "python -m fer_edge classify --faces off --format jsonl (FER images are face crops)",
    }
    report = BenchReport(machine, settings, results, cli, targets, notes)
    report.to_json(out / "benchmark.json")
    chart(report, out / "benchmark.png")
    return report
