"""Benchmark results: targets, the printed table, the JSON file and the chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.evaluate import EvalResult

from .cli_timing import CliTiming
from .latency import LatencyStats

#: Goals from the project brief: (name, threshold).
ORT_VS_TORCH_B1 = 3.0
VARIANT_VS_FP32_BIG_BATCH = 1.5
MAX_VARIANT_ACCURACY_LOSS = 0.01
MAX_PREPROCESS_SHARE = 0.20


@dataclass
class RuntimeResult:
    """Everything measured for one runtime.

    Attributes:
        name: Row label.
        kind: ``torch`` or ``onnx``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        tta: ``none`` or ``flip``.
        path: Model file.
        size_mb: Weights on disk in MB.
        threads: Threads used (torch.get_num_threads / ORT intra-op).
        latency: One entry per batch size.
        accuracy: On the labelled val images.
        top1_agreement_vs_torch: Share of val images with PyTorch's arg-max (None without PyTorch).
        speedup_vs_torch: Batch size -> PyTorch median ms / this median ms.
        memory: Output of :mod:`benchmarks.probe` or ``{"error": ...}``.
    """

    name: str
    kind: str
    precision: str
    tta: str
    path: str
    size_mb: float
    threads: int
    latency: list[LatencyStats]
    accuracy: EvalResult
    top1_agreement_vs_torch: float | None = None
    speedup_vs_torch: dict[int, float] = field(default_factory=dict)
    memory: dict | None = None

    def at(self, batch: int) -> LatencyStats | None:
        """Latency at ``batch``, if measured."""
        return next((s for s in self.latency if s.batch == batch), None)


@dataclass
class Target:
    """One goal and whether it was met (``PASS``, ``MISS`` or ``N/A``)."""

    name: str
    goal: str
    measured: str
    status: str


@dataclass
class BenchReport:
    """The whole run: machine, settings, per-runtime results, CLI timings, targets."""

    machine: dict
    settings: dict
    runtimes: list[RuntimeResult]
    cli: list[CliTiming]
    targets: list[Target]
    notes: list[str]

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str))


def _find(runtimes: list[RuntimeResult], kind: str, precision: str) -> RuntimeResult | None:
    return next((r for r in runtimes if r.kind == kind and r.precision == precision), None)


def _speedup(base: RuntimeResult, other: RuntimeResult, batch: int) -> float | None:
    a, b = base.at(batch), other.at(batch)
    return a.median_ms / b.median_ms if a and b and b.median_ms > 0 else None


def target_ort_vs_torch(runtimes: list[RuntimeResult], batch: int) -> Target:
    """ORT fp32 at least 3x faster than PyTorch eager at batch 1."""
    goal = f"ONNX fp32 >= {ORT_VS_TORCH_B1:g}x faster than PyTorch eager at batch {batch}"
    torch_r, fp32 = _find(runtimes, "torch", "fp32"), _find(runtimes, "onnx", "fp32")
    ratio = _speedup(torch_r, fp32, batch) if torch_r and fp32 else None
    if ratio is None:
        return Target("ort_vs_torch", goal, "needs both --checkpoint and an fp32 model", "N/A")
    return Target("ort_vs_torch", goal, f"{ratio:.2f}x", "PASS" if ratio >= ORT_VS_TORCH_B1 else "MISS")


def target_variant(runtimes: list[RuntimeResult], batch: int) -> Target:
    """Best fp16/int8 variant >= 1.5x faster than ORT fp32 at batch 32 with <= 1 point loss."""
    goal = (f"best fp16/int8 >= {VARIANT_VS_FP32_BIG_BATCH:g}x faster than ONNX fp32 at batch {batch}, "
            f"<= {MAX_VARIANT_ACCURACY_LOSS * 100:g} point accuracy loss")
    fp32 = _find(runtimes, "onnx", "fp32")
    variants = [r for r in runtimes if r.kind == "onnx" and r.precision != "fp32"]
    if fp32 is None or not variants:
        return Target("variant_vs_fp32", goal, "needs an fp32 model and an fp16/int8 model", "N/A")
    scored = []
    for v in variants:
        loss = fp32.accuracy.accuracy - v.accuracy.accuracy
        scored.append((v, _speedup(fp32, v, batch) or 0.0, loss))
    ok = [s for s in scored if s[2] <= MAX_VARIANT_ACCURACY_LOSS]
    best = max(ok or scored, key=lambda s: s[1])
    measured = "; ".join(f"{v.name}: {sp:.2f}x, {loss * 100:+.2f} points lost" for v, sp, loss in scored)
    passed = bool(ok) and best[1] >= VARIANT_VS_FP32_BIG_BATCH
    return Target("variant_vs_fp32", goal, measured, "PASS" if passed else "MISS")


def target_preprocess(cli: list[CliTiming], note: str | None) -> Target:
    """Preprocessing under 20% of per-image time in the fp32 folder run."""
    goal = f"preprocessing < {MAX_PREPROCESS_SHARE:.0%} of per-image time in the `fer-edge classify` folder run"
    first = next((c for c in cli if c.preprocess_share is not None), None)
    if first is None or first.preprocess_share is None:
        return Target("preprocess_share", goal, note or "folder run not measured", "N/A")
    status = "PASS" if first.preprocess_share < MAX_PREPROCESS_SHARE else "MISS"
    measured = (f"{first.preprocess_share:.1%} ({first.preprocess_ms_per_image:.2f} of "
                f"{_fmt(first.steady_ms_per_image, '.2f')} ms/img, {Path(first.model).name})")
    return Target("preprocess_share", goal, measured, status)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(runtimes: list[RuntimeResult], small: int, big: int) -> str:
    """Ultralytics-style table, one row per runtime."""
    head = (f"{'Format':<16}{'Size MB':>9}{'Accuracy':>10}{'Macro-F1':>10}{'Agree':>8}"
            f"{f'ms/img b{small}':>12}{f'ms/img b{big}':>13}{f'FPS b{big}':>10}"
            f"{f'x PT b{small}':>9}{f'x PT b{big}':>10}{'Peak MB':>9}")
    rows = [head, "-" * len(head)]
    for r in runtimes:
        s, b = r.at(small), r.at(big)
        peak = (r.memory or {}).get("peak_mb")
        rows.append(
            f"{r.name:<16}{r.size_mb:>9.2f}{r.accuracy.accuracy:>10.4f}{r.accuracy.macro_f1:>10.4f}"
            f"{_fmt(r.top1_agreement_vs_torch, '.2%'):>8}{_fmt(s.median_ms if s else None, '.3f'):>12}"
            f"{_fmt(b.median_ms if b else None, '.3f'):>13}{_fmt(b.images_per_s if b else None, '.0f'):>10}"
            f"{_fmt(r.speedup_vs_torch.get(small), '.2f'):>9}{_fmt(r.speedup_vs_torch.get(big), '.2f'):>10}"
            f"{_fmt(peak, '.0f'):>9}"
        )
    return "\n".join(rows)


def summary(report: BenchReport) -> str:
    """Table, latency details, CLI timings and targets as printed text."""
    batches = report.settings["batches"]
    small, big = min(batches), max(batches)
    lines = [table(report.runtimes, small, big), ""]
    for r in report.runtimes:
        lat = ", ".join(f"b{s.batch} {s.median_ms:.3f}/{s.p90_ms:.3f}/{s.p99_ms:.3f} ms ({s.images_per_s:.0f} img/s)"
                        for s in r.latency)
        lines.append(f"{r.name} [{r.threads} threads] median/p90/p99 per image: {lat}")
    for c in report.cli:
        lines.append(f"fer-edge classify {Path(c.model).name}: cold start {c.cold_start_s:.2f} s; folder "
                     f"{c.folder_images} images in {c.folder_wall_s:.2f} s ({c.folder_images_per_s:.0f} img/s, "
                     f"steady {_fmt(c.steady_ms_per_image, '.2f')} ms/img, preprocessing "
                     f"{c.preprocess_ms_per_image:.2f} ms/img = {_fmt(c.preprocess_share, '.1%')})")
    lines.append("")
    lines += [f"{t.status:<5} {t.goal}: {t.measured}" for t in report.targets]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def chart(report: BenchReport, path: Path) -> None:
    """PNG: ms/img vs batch size per runtime; accuracy vs ms/img at the largest batch."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    big = max(report.settings["batches"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in report.runtimes:
        left.plot([s.batch for s in r.latency], [s.median_ms for s in r.latency], marker="o", label=r.name)
        b = r.at(big)
        if b is not None:
            right.scatter([b.median_ms], [r.accuracy.accuracy * 100])
            right.annotate(r.name, (b.median_ms, r.accuracy.accuracy * 100), textcoords="offset points",
                           xytext=(4, 4), fontsize=8)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median ms / image",
             title=f"latency ({report.settings['threads']} threads)")
    left.set_xticks(report.settings["batches"], [str(b) for b in report.settings["batches"]])
    left.legend(fontsize=8)
    right.set(xlabel=f"median ms / image at batch {big}", ylabel="val accuracy (%)",
              title="accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
