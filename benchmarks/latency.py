"""Latency of several runtimes at one batch size, timed in turns.

Sequential timing on a shared machine can hand one runtime a quiet minute and
the next a busy one; round-robin spreads whatever load comes and goes over all
runtimes alike, so their ratios stay meaningful.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

    @classmethod
    def from_call_times(cls, batch: int, seconds: list[float]) -> LatencyStats:
        per_image_ms = np.asarray(seconds) * 1000.0 / batch
        median = float(np.median(per_image_ms))
        return cls(batch=batch, iters=len(seconds), median_ms=median,
                   p90_ms=float(np.percentile(per_image_ms, 90)),
                   p99_ms=float(np.percentile(per_image_ms, 99)),
                   images_per_s=1000.0 / median if median > 0 else float("inf"))


@dataclass
class TimingPlan:
    """How long to time each runtime at each batch size.

    Attributes:
        warmup: Untimed calls per runtime before timing.
        rounds: Turns; each runtime is timed once per round.
        min_iters: Timed calls per runtime at least.
        max_iters: Timed calls per runtime at most.
        min_seconds: Timed seconds per runtime at least (spread over the rounds).
    """

    warmup: int = 10
    rounds: int = 5
    min_iters: int = 30
    max_iters: int = 2000
    min_seconds: float = 2.0


def make_batch(inputs: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` real inputs (repeating them when there are fewer), contiguous."""
    return np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])


def _timed(rt: Runtime, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    rt.predict(x)
    return time.perf_counter() - t0


def calls_per_round(call_s: float, plan: TimingPlan) -> int:
    """Calls per round so a runtime gets ``min_iters`` calls and ``min_seconds`` of timing."""
    by_time = math.ceil(plan.min_seconds / plan.rounds / call_s) if call_s > 0 else 1
    by_count = math.ceil(plan.min_iters / plan.rounds)
    return max(1, min(max(by_time, by_count), plan.max_iters // plan.rounds or 1))


def measure_interleaved(runtimes: list[Runtime], inputs: np.ndarray | Sequence[np.ndarray], batch: int,
                        plan: TimingPlan) -> list[LatencyStats]:
    """Warm up each runtime, then time them round-robin; one :class:`LatencyStats` each.

    A slow runtime gets fewer calls per round than a fast one, so every
    runtime is timed for about the same wall time in every round.

    Args:
        runtimes: Timed in this order in every round.
        inputs: One array for all, or one per runtime (runtimes of different
            input sizes, e.g. a model and the reference it is compared with).
        batch: Images per call.
        plan: Warm-up, rounds and timing budget.
    """
    per_runtime = [inputs] * len(runtimes) if isinstance(inputs, np.ndarray) else list(inputs)
    if len(per_runtime) != len(runtimes):
        raise ValueError(f"{len(per_runtime)} input arrays for {len(runtimes)} runtimes")
    xs = [make_batch(a, batch) for a in per_runtime]
    calls = []
    for rt, x in zip(runtimes, xs):
        for _ in range(plan.warmup):
            rt.predict(x)
        calls.append(calls_per_round(_timed(rt, x), plan))
    times: list[list[float]] = [[] for _ in runtimes]
    for _ in range(plan.rounds):
        for rt, x, n, acc in zip(runtimes, xs, calls, times):
            acc.extend(_timed(rt, x) for _ in range(n))
    return [LatencyStats.from_call_times(batch, acc) for acc in times]
