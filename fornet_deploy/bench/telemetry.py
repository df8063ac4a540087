"""tegrastats around the timed loops on a Jetson, and the per-stage telemetry summary."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .jetson import TegrastatsSample, TegrastatsSampler, summarize
from .timing import Timed


@dataclass(frozen=True)
class BenchEnvironment:
    """Where the benchmark reads board facts and how it samples telemetry: the real
    machine by default; tests (or a chroot) point these at fixtures and a fake emitter."""

    jetson_root: Path = Path("/")
    tegrastats_command: Sequence[str] | None = None  # None: tegrastats --interval MS


@contextlib.contextmanager
def telemetry(device: str, interval_ms: int, env: BenchEnvironment) -> Iterator[TegrastatsSampler | None]:
    """tegrastats in the background on a Jetson, nothing elsewhere."""
    if device != "jetson":
        yield None
        return
    with TegrastatsSampler(interval_ms, env.tegrastats_command) as sampler:
        # tegrastats needs a moment to print its first line; without waiting, the start of
        # a short timed window would have no sample at all.
        deadline = time.monotonic() + max(2.0, 5 * interval_ms / 1000)
        while not sampler.samples and time.monotonic() < deadline:
            time.sleep(0.01)
        yield sampler


def _in_window(samples: Sequence[TegrastatsSample], window: tuple[float, float]) -> list[TegrastatsSample]:
    return [s for s in samples if s.host_time is not None and window[0] <= s.host_time <= window[1]]


def jetson_section(sampler: TegrastatsSampler, timings: dict[str, Timed], interval_ms: int, batch: int) -> dict:
    samples, notes, summaries = sampler.samples, [], {}
    for stage, timed in timings.items():
        start, end = timed.window
        within = _in_window(samples, timed.window)
        if not within:
            notes.append(f"no tegrastats sample fell in the {stage} window ({end - start:.3f} s, interval "
                         f"{interval_ms} ms): raise --iterations for power and load figures")
        summaries[stage] = summarize(within, frames=len(timed.seconds) * batch, seconds=end - start)
    return {
        "tegrastats_interval_ms": interval_ms,
        "tegrastats": summaries["compute"],
        "tegrastats_end_to_end": summaries["end_to_end"],
        "tegrastats_messages": sampler.messages[:20],
        "tegrastats_notes": notes,
    }


def with_jetson_board(result: dict, machine: dict) -> None:
    """Board, power mode and clocks (read once, in the machine description) beside telemetry."""
    if machine.get("jetson") and "jetson" in result:
        result["jetson"] = {**machine["jetson"], **result["jetson"]}
