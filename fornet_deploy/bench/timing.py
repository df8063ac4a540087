"""Timing: one helper times every benchmark loop, one function turns latencies into stats."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


def latency_stats(seconds: Sequence[float]) -> dict:
    """Latencies in seconds -> ``{n, mean_ms, stdev_ms, min_ms, max_ms, p50_ms, p90_ms, p99_ms}``.

    Percentiles interpolate linearly between order statistics (numpy's default, as
    ``statistics.quantiles(method="inclusive")``); ``stdev`` is the sample standard
    deviation (n - 1), 0 for a single value.
    """
    if len(seconds) == 0:
        raise ValueError("latency_stats needs at least one latency")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "mean_ms": float(ms.mean()),
        "stdev_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
    }


@dataclass
class Timed:
    """Per-iteration latencies (perf_counter seconds) and the timed window on the
    ``time.monotonic`` clock, which tegrastats samples are stamped with."""

    seconds: list[float]
    window: tuple[float, float]


def time_iterations(step: Callable[[int], object], iters: int, warmup: int = 0,
                    on_iteration: Callable[[int], None] | None = None) -> Timed:
    """Call ``step(i)`` ``warmup`` times untimed, then ``iters`` times, timing each call.

    ``on_iteration(done)`` runs between timed calls, outside the measured span.
    """
    for i in range(warmup):
        step(i)
    seconds: list[float] = []
    start = time.monotonic()
    for i in range(iters):
        begin = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - begin)
        if on_iteration is not None:
            on_iteration(i + 1)
    return Timed(seconds, (start, time.monotonic()))


def timing_summary(timed: Timed, batch: int) -> dict:
    stats = latency_stats(timed.seconds)
    return {**stats, "throughput_ips": batch / (stats["mean_ms"] / 1e3)}


def device_split_summary(splits: Sequence[Mapping[str, float]]) -> dict | None:
    """Latency stats per part of the runners' device-event split (``Runner.last_timings()``:
    ``{"h2d_ms", "compute_ms", "d2h_ms"}`` per run) -> ``{"h2d": stats, "compute": ..., "d2h": ...}``;
    ``None`` when the runner does not measure it."""
    if not splits:
        return None
    return {key.removesuffix("_ms"): latency_stats([split[key] / 1e3 for split in splits]) for key in splits[0]}
