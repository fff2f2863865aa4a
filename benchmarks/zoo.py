"""Every shipped model, its variants and a B0 reference in one run: the Pareto front.

``python -m benchmarks --data DIR`` (no ``--model``/``--checkpoint``) runs this.
Per shipped model (``fer_edge/models/*.onnx``) it measures val accuracy and
macro-F1, ms/image at batch 1/8/32, file size, peak memory, and
``fer-edge classify`` cold start and folder throughput. A model's variants
(``--variant fast=fast-fp32.onnx``) and its PyTorch checkpoint
(``--with-checkpoint fast=best.pt``) are timed round-robin with it; models of
different input sizes are timed one after another in the same run. The
reference row is a single-pass fp32 EfficientNet-B0 at 128 px (random
weights: latency only), against which the edge model's speed-up is stated.
The reference is timed in the rounds of every model's group (on its own
128 px inputs), so each speed-up is a ratio of times taken in the same
minutes: this machine's speed drifts 15-30% between hours, which moved a
reference timed on its own at the end by as much.

Writes ``zoo.json`` and ``zoo.png`` (accuracy against ms/image, Pareto front
marked) into ``--out``; a variant that fails gets a status row, not an abort.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export.evaluate import default_threads, load_labelled, random_inputs, score
from fer_edge.preprocess import PreprocessSpec
from fer_edge.zoo import shipped_models
from train.data import list_split

from .cli_timing import time_cli
from .config import BenchConfig
from .latency import measure_interleaved
from .runtimes import Runtime, onnx_runtime, predict_all, torch_runtime

log = logging.getLogger("benchmarks")

#: The edge model's targets (issue: an edge-class model), checked on the ``fast`` row.
FAST_TARGETS = {"val_accuracy_min": 0.81, "ms_b32_max": 0.5, "ms_b1_max": 0.7,
                "speedup_vs_b0_min": 5.0, "int8_drop_max_points": 0.5,
                "cli_images_per_s_min": 600.0, "cold_start_s_max": 0.3}


@dataclass
class ZooRow:
    """One measured runtime (a shipped model, a variant, PyTorch, or the reference)."""

    model: str
    name: str
    kind: str
    precision: str
    input_size: int
    tta: str
    path: str
    size_mb: float
    status: str = "ok"
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    val_images: int = 0
    ms_per_image: dict[int, float] = field(default_factory=dict)
    memory: dict | None = None
    cli: dict | None = None
    # The reference's ms/image timed in the same rounds as this row (shipped models' groups).
    reference_ms_per_image: dict[int, float] | None = None


def _row(model: str, rt: Runtime, size: int) -> ZooRow:
    return ZooRow(model, rt.name, rt.kind, rt.precision, size, rt.tta, str(rt.path),
                  rt.size_bytes / 1e6)


def reference_b0(out: Path, threads: int) -> Runtime:
    """A single-pass fp32 B0 at 128 px (random weights) exported to ONNX: the speed yardstick."""
    import torch

    from export.onnx_export import export_graph, simplify
    from train.model import build_model

    torch.manual_seed(0)
    model = build_model(3, arch="b0").eval()
    with tempfile.TemporaryDirectory() as tmp:
        graph = simplify(export_graph(model, 128, 17, Path(tmp) / "raw.onnx"))
    path = out / "reference-b0-128-fp32.onnx"
    path.write_bytes(graph.SerializeToString())
    from export.evaluate import make_session

    session = make_session(path, threads)
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return Runtime("B0 128px fp32 single pass (reference)", "onnx", "fp32", "none", path,
                   path.stat().st_size, threads, predict)


def _group(name: str, path: Path, variants: list[Path], checkpoint: Path | None,
           threads: int, rows: list[ZooRow]) -> list[Runtime]:
    """The runtimes timed together for one shipped model; failures become status rows."""
    runtimes = [onnx_runtime(path, threads)]
    runtimes[0].name = f"{name} (shipped, {runtimes[0].precision})"
    shipped = runtimes[0].model_info
    size = shipped.preprocess.input_size
    for v in variants:
        try:
            rt = onnx_runtime(v, threads)
            if rt.model_info.labels != shipped.labels or rt.model_info.preprocess != shipped.preprocess:
                raise ValueError("labels or preprocessing differ from the shipped model")
            rt.name = f"{name} variant {v.name} ({rt.precision})"
            runtimes.append(rt)
        except Exception as exc:  # a broken variant is a row with its status, not an abort
            rows.append(ZooRow(name, f"{name} variant {v.name}", "onnx", "?", size, "?", str(v), 0.0,
                               status=f"failed: {exc}"))
    if checkpoint is not None:
        try:
            rt = torch_runtime(checkpoint, runtimes[0].tta, threads)
            rt.name = f"{name} PyTorch eager fp32"
            runtimes.append(rt)
        except Exception as exc:
            rows.append(ZooRow(name, f"{name} PyTorch", "torch", "fp32", size, "?", str(checkpoint), 0.0,
                               status=f"failed: {exc}"))
    return runtimes


def _time_group(runtimes: list[Runtime], inputs: list[np.ndarray], cfg: BenchConfig) -> list[dict[int, float]]:
    per: list[dict[int, float]] = [{} for _ in runtimes]
    for batch in cfg.batches:
        for d, stats in zip(per, measure_interleaved(runtimes, inputs, batch, cfg.timing())):
            d[batch] = stats.median_ms
    return per


def _cli(path: Path, data: Path, labels: list[str], spec: PreprocessSpec, threads: int,
         cfg: BenchConfig) -> dict:
    files = [p for p, _ in list_split(data, "val", labels)]
    folders = [data / "val" / c for c in labels]
    if cfg.limit:
        files, folders = files[:cfg.limit], files[:cfg.limit]
    t = time_cli(path, files[0], folders, len(files), files, spec, threads, cfg.cold_start_runs)
    return {"cold_start_s": t.cold_start_s, "images": t.folder_images,
            "images_per_s": t.folder_images_per_s, "steady_ms_per_image": t.steady_ms_per_image,
            "preprocess_ms_per_image": t.preprocess_ms_per_image, "command": t.command}


def run_zoo(cfg: BenchConfig, variants: dict[str, list[Path]], checkpoints: dict[str, Path]) -> dict:
    """Measure every shipped model (see the module docstring); returns what ``zoo.json`` holds."""
    from .run import machine_info, probe_memory

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads()
    machine = machine_info()
    rows: list[ZooRow] = []
    unknown = sorted((set(variants) | set(checkpoints)) - set(shipped_models()))
    if unknown:
        raise ValueError(f"--variant/--with-checkpoint name(s) {unknown} are not shipped models: "
                         f"{list(shipped_models())}")
    ref = reference_b0(out, threads)
    ref_inputs = random_inputs(PreprocessSpec(input_size=128), 32, 0)
    ref_times: list[dict[int, float]] = []
    for name, path in shipped_models().items():
        log.info("model %s", name)
        group = _group(name, path, variants.get(name, []), checkpoints.get(name), threads, rows)
        info = group[0].model_info
        val = load_labelled(Path(cfg.data), "val", info.labels, info.preprocess,
                            max(1, cfg.limit // len(info.labels)) if cfg.limit else 0)
        *times, ref_ms = _time_group([*group, ref], [val.inputs] * len(group) + [ref_inputs], cfg)
        ref_times.append(ref_ms)
        for rt, ms in zip(group, times):
            row = _row(name, rt, info.preprocess.input_size)
            acc = score(predict_all(rt, val.inputs), val.labels, val.classes)
            row.val_accuracy, row.val_macro_f1, row.val_images = acc.accuracy, acc.macro_f1, acc.n
            row.ms_per_image, row.reference_ms_per_image = ms, ref_ms
            row.memory = probe_memory(rt, info.preprocess.input_size, max(cfg.batches), threads,
                                      1 if cfg.quick else 3)
            if rt.kind == "onnx" and (rt is group[0] or not cfg.quick):
                row.cli = _cli(rt.path, Path(cfg.data), info.labels, info.preprocess, threads, cfg)
            rows.append(row)
    ref_row = _row("reference", ref, 128)
    # Its row: the median over the groups it was timed in (timed alone when nothing ships).
    ref_times = ref_times or _time_group([ref], [ref_inputs], cfg)
    ref_row.ms_per_image = {b: float(np.median([t[b] for t in ref_times])) for b in cfg.batches}
    rows.append(ref_row)
    report = {"machine": machine, "threads": threads, "batches": list(cfg.batches),
              "rows": [asdict(r) for r in rows], "targets": fast_targets(rows)}
    # machine is report["machine"]: the end load goes into zoo.json with it.
    machine["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    (out / "zoo.json").write_text(json.dumps(report, indent=2, default=str))
    pareto_chart(rows, out / "zoo.png")
    return report


def fast_targets(rows: list[ZooRow]) -> list[dict]:
    """PASS/MISS for the ``fast`` model's targets (:data:`FAST_TARGETS`); N/A when unmeasured."""
    fast = next((r for r in rows if r.model == "fast" and "shipped" in r.name and r.status == "ok"), None)
    ref = next((r for r in rows if r.model == "reference"), None)
    fp32 = next((r for r in rows if r.model == "fast" and r.kind == "onnx" and r.precision == "fp32"
                 and "variant" in r.name), None)
    t = FAST_TARGETS
    big, small = 32, 1

    def check(what: str, value: float | None, ok: bool | None) -> dict:
        return {"target": what, "value": value,
                "status": "N/A" if value is None or ok is None else ("PASS" if ok else "MISS")}

    if fast is None:
        return [check("fast model present", None, None)]
    b32, b1 = fast.ms_per_image.get(big), fast.ms_per_image.get(small)
    # The reference timed in fast's own rounds when it was (same minutes), else its row.
    ref_ms = (fast.reference_ms_per_image or {}).get(big) or (ref.ms_per_image.get(big) if ref else None)
    speedup = ref_ms / b32 if ref_ms and b32 else None
    drop = ((fp32.val_accuracy - fast.val_accuracy) * 100
            if fp32 and fp32.val_accuracy is not None and fast.val_accuracy is not None else None)
    cli = fast.cli or {}
    return [
        check(f"val accuracy >= {t['val_accuracy_min']:.1%}", fast.val_accuracy,
              None if fast.val_accuracy is None else fast.val_accuracy >= t["val_accuracy_min"]),
        check(f"ms/image at batch {big} <= {t['ms_b32_max']}", b32, None if b32 is None else b32 <= t["ms_b32_max"]),
        check(f"ms/image at batch {small} <= {t['ms_b1_max']}", b1, None if b1 is None else b1 <= t["ms_b1_max"]),
        check(f">= {t['speedup_vs_b0_min']:.0f}x the B0 128px fp32 single pass at batch {big}", speedup,
              None if speedup is None else speedup >= t["speedup_vs_b0_min"]),
        check(f"int8 within {t['int8_drop_max_points']} points of its fp32 on val", drop,
              None if drop is None else drop <= t["int8_drop_max_points"]),
        check(f"fer-edge classify >= {t['cli_images_per_s_min']:.0f} images/s", cli.get("images_per_s"),
              None if not cli else cli["images_per_s"] >= t["cli_images_per_s_min"]),
        check(f"cold start <= {t['cold_start_s_max']} s", cli.get("cold_start_s"),
              None if not cli else cli["cold_start_s"] <= t["cold_start_s_max"]),
    ]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (ms, accuracy) points no other point beats on both axes.

    Example:
        >>> pareto_front([(1.0, 0.8), (0.5, 0.7), (2.0, 0.75)])
        [0, 1]
    """
    return [i for i, (ms, acc) in enumerate(points)
            if not any((m2 <= ms and a2 >= acc) and (m2, a2) != (ms, acc) for m2, a2 in points)]


def pareto_chart(rows: list[ZooRow], path: Path, batch: int = 32) -> None:
    """Accuracy against ms/image at ``batch``, one labelled point per measured row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no matplotlib: %s not drawn (pip install '.[bench]')", path)
        return
    pts: list[tuple[ZooRow, float, float]] = []
    for r in rows:
        ms = r.ms_per_image.get(batch)
        if r.status == "ok" and r.val_accuracy is not None and ms:
            pts.append((r, ms, r.val_accuracy))
    front = set(pareto_front([(ms, acc) for _, ms, acc in pts]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (r, ms, acc) in enumerate(pts):
        ax.scatter(ms, acc * 100, s=60, marker="o" if i in front else "x",
                   color="tab:green" if i in front else "tab:gray")
        ax.annotate(r.name, (ms, acc * 100), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ref = next((r for r in rows if r.model == "reference" and r.ms_per_image.get(batch)), None)
    if ref:
        ax.axvline(ref.ms_per_image[batch], color="tab:red", ls="--", lw=1)
        ax.annotate("B0 128px fp32 single pass", (ref.ms_per_image[batch], ax.get_ylim()[0]),
                    fontsize=7, color="tab:red", rotation=90, xytext=(3, 5), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per image at batch {batch} (log scale, CPU)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title("fer-edge models: accuracy vs cost (green: Pareto front)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def zoo_table(report: dict) -> str:
    """The printed summary: one row per runtime, then the targets."""
    batches = report["batches"]
    head = ["model", "runtime", "prec", "px", "MB", "val acc", "F1"] + [f"ms b{b}" for b in batches] + \
        ["peak MB", "CLI img/s", "cold s", "status"]
    lines = []
    for r in report["rows"]:
        mem = (r.get("memory") or {}).get("peak_mb")
        cli = r.get("cli") or {}
        cells = [r["model"], r["name"], r["precision"], str(r["input_size"]), f"{r['size_mb']:.1f}",
                 "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}",
                 "-" if r["val_macro_f1"] is None else f"{r['val_macro_f1']:.4f}"]
        cells += [f"{r['ms_per_image'][b]:.3f}" if b in r["ms_per_image"] else "-" for b in batches]
        cells += ["-" if mem is None else f"{mem:.0f}", f"{cli['images_per_s']:.0f}" if cli else "-",
                  f"{cli['cold_start_s']:.3f}" if cli else "-", r["status"]]
        lines.append(cells)
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *lines]]
    out.append("")
    out += [f"{t['status']:4s}  {t['target']}: {t['value'] if t['value'] is None else round(t['value'], 4)}"
            for t in report["targets"]]
    return "\n".join(out)
