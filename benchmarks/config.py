"""Benchmark settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .latency import TimingPlan

BATCH_SIZES = (1, 8, 32)


@dataclass
class BenchConfig:
    """What to benchmark and how long.

    Attributes:
        data: Image-folder root with ``val/<class>/`` (and ``train/`` for exports).
        models: Exported ONNX files of one trained model (fp32 and/or variants).
        checkpoint: Its training checkpoint, for the PyTorch eager baseline.
        ensemble: Further checkpoints when the models are an ensemble export
            (``python -m export A B ...``); PyTorch then averages all members' logits.
        out: Folder for ``benchmark.json``, ``benchmark.png`` and exported models.
        quick: Few iterations and few images: keeps the script working in tests.
        limit: Images for accuracy and the folder run (0 = the whole val split
            of the model's classes).
        batches: Batch sizes for latency.
        threads: Threads for PyTorch and ONNX Runtime alike; 0 = all cores.
        warmup: Untimed calls before timing each (runtime, batch).
        rounds: Round-robin turns over the runtimes (see benchmarks.latency).
        min_iters: Timed calls per (runtime, batch) at least.
        min_seconds: Timed seconds per (runtime, batch) at least.
        max_iters: Timed calls per (runtime, batch) at most.
        cold_start_runs: Repetitions of the one-image CLI run (median reported).
        export_fp32: With ``checkpoint`` and no fp32 model given, export one into ``out``.
    """

    data: Path
    models: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None
    ensemble: list[Path] = field(default_factory=list)
    out: Path = Path("runs/benchmark")
    quick: bool = False
    limit: int = 0
    batches: tuple[int, ...] = BATCH_SIZES
    threads: int = 0
    warmup: int = 10
    rounds: int = 5
    min_iters: int = 30
    min_seconds: float = 2.0
    max_iters: int = 2000
    cold_start_runs: int = 3
    export_fp32: bool = True

    def __post_init__(self) -> None:
        if self.quick:
            # Enough to exercise every code path, not to measure anything.
            self.limit = self.limit or 20
            self.warmup, self.rounds, self.min_iters, self.min_seconds = 1, 1, 3, 0.0
            self.cold_start_runs = 1

    def timing(self) -> TimingPlan:
        """The latency timing settings."""
        return TimingPlan(warmup=self.warmup, rounds=self.rounds, min_iters=self.min_iters,
                          max_iters=self.max_iters, min_seconds=self.min_seconds)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work."""
        if not self.models and self.checkpoint is None:
            raise ValueError("nothing to benchmark: give --model ONNX (one or more) and/or --checkpoint PT")
        if self.ensemble and self.checkpoint is None:
            raise ValueError("ensemble members given without a first checkpoint")
        if any(b < 1 for b in self.batches) or not self.batches:
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        if self.limit < 0 or self.threads < 0:
            raise ValueError("limit and threads must be >= 0")
        if self.min_iters < 1 or self.max_iters < self.min_iters or self.rounds < 1:
            raise ValueError(f"need rounds >= 1 and 1 <= min_iters <= max_iters, got {self.rounds}, "
                             f"{self.min_iters}, {self.max_iters}")
