"""Memory of one benchmarked artefact: process RSS and peak, and CUDA allocator peak."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path


def _proc_status_mb() -> dict[str, float]:
    """``VmRSS`` (current) and ``VmHWM`` (peak) of this process in MiB, Linux only."""
    values: dict[str, float] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM") and rest.split() and rest.split()[0].isdigit():
            values[key] = int(rest.split()[0]) / 1024
    return values


def _rss_snapshot() -> dict[str, float | None]:
    status = _proc_status_mb()
    rss, peak = status.get("VmRSS"), status.get("VmHWM")
    if rss is None:
        with contextlib.suppress(ImportError):  # psutil is optional, never a dependency
            import psutil

            rss = psutil.Process().memory_info().rss / 2**20
    return {"rss": rss, "peak": peak}


def _ru_maxrss_mb() -> float:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


class MemoryProbe:
    """Memory around one artefact's run (from before its runner loads to after timing).

    The process peak (``ru_maxrss``) covers the whole process life, imports included; the
    increase of the peak (``VmHWM``) is what this run added on top of earlier peaks, so in
    a matrix a later, smaller artefact may show 0 there while ``rss_increase_mb`` (resident
    memory held by the loaded runner) still shows its size.
    """

    def __init__(self, cuda_allocator: bool):
        self.cuda_allocator = cuda_allocator
        self.before = _rss_snapshot()
        if cuda_allocator:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        after = _rss_snapshot()

        def delta(key: str) -> float | None:
            return after[key] - self.before[key] if after[key] is not None and self.before[key] is not None else None

        cuda_peak = None
        if self.cuda_allocator:
            import torch

            cuda_peak = torch.cuda.max_memory_allocated() / 2**20
        return {
            "process_peak_rss_mb": _ru_maxrss_mb(),
            "peak_rss_increase_mb": delta("peak"),
            "rss_before_mb": self.before["rss"],
            "rss_after_mb": after["rss"],
            "rss_increase_mb": delta("rss"),
            "cuda_max_allocated_mb": cuda_peak,
        }
