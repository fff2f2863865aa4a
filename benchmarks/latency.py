"""Latency of one runtime at one batch size."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .config import BenchConfig
from .runtimes import Runtime


@dataclass
class LatencyStats:
    """Per-image latency at one batch size (call time / batch).

    Attributes:
        batch: Images per call.
        iters: Timed calls.
        median_ms: Median ms per image.
        p90_ms: 90th percentile ms per image.
        p99_ms: 99th percentile ms per image.
        images_per_s: Throughput at the median call time.
    """

    batch: int
    iters: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float


def make_batch(inputs: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` real inputs (repeating them when there are fewer), contiguous."""
    return np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])


def measure(runtime: Runtime, inputs: np.ndarray, batch: int, cfg: BenchConfig) -> LatencyStats:
    """Warm up, then time calls until both ``min_iters`` and ``min_seconds`` are reached."""
    x = make_batch(inputs, batch)
    for _ in range(cfg.warmup):
        runtime.predict(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < cfg.max_iters and (
        len(times) < cfg.min_iters or time.perf_counter() - start < cfg.min_seconds
    ):
        t0 = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - t0)
    per_image_ms = np.asarray(times) * 1000.0 / batch
    median = float(np.median(per_image_ms))
    return LatencyStats(
        batch=batch, iters=len(times), median_ms=median,
        p90_ms=float(np.percentile(per_image_ms, 90)), p99_ms=float(np.percentile(per_image_ms, 99)),
        images_per_s=1000.0 / median if median > 0 else float("inf"),
    )
