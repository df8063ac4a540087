"""Round-robin timing of several variants in one process, and speed ratios over quiet rounds only
(benchmarks/cpu_speed.py and benchmarks/openvino_speed.py).

In each round every variant runs 2 untimed calls, then ``block`` timed calls (the inputs cycle,
the same sequence for every variant), inside a ``LoadProbe`` (the CPU share other processes
took meanwhile). A ratio is the median over the quiet rounds (both blocks timed while other
processes took at most 10 % of the CPUs) of the per-round ratio of block medians; with no
quiet round it is ``busy``, not a result. The median over all rounds, busy ones included, is
kept beside it (``all_rounds``: both sides of a ratio run interleaved, so they share the load,
but a busy machine is not a measurement of this one), and each variant's block medians and
their load, so any ratio can be recomputed from the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fornet_deploy.bench.load import LoadProbe, load_summary


def timing_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every round-robin timing script takes (a script adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path, help="dataset whose first val images are timed")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--json", type=Path)
    return parser


@dataclass
class Rounds:
    """Per variant: every timed call's wall and CPU seconds, each round's block median and load."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    blocks: dict[str, list[float]] = field(default_factory=dict)
    loads: dict[str, list[dict]] = field(default_factory=dict)
    rounds: int = 0
    machine_load: dict = field(default_factory=dict)  # over the whole timing


def time_rounds(calls: dict[str, Callable], batches: Sequence[np.ndarray], rounds: int, block: int) -> Rounds:
    result = Rounds(**{name: {call: [] for call in calls} for name in ("wall", "cpu", "blocks", "loads")},
                    rounds=rounds)
    with LoadProbe() as whole:
        for _ in range(rounds):
            for name, call in calls.items():
                for i in range(2):
                    call(batches[i % len(batches)])
                times = []
                with LoadProbe() as probe:
                    for i in range(block):
                        start_cpu, start = time.process_time(), time.perf_counter()
                        call(batches[i % len(batches)])
                        times.append(time.perf_counter() - start)
                        result.cpu[name].append(time.process_time() - start_cpu)
                result.wall[name] += times
                result.blocks[name].append(statistics.median(times))
                result.loads[name].append(probe.result())
    result.machine_load = whole.result()
    return result


def variant_row(timed: Rounds, name: str, artefact: str) -> dict:
    """Median / p10 / p90 ms and the median CPU ms of one variant's timed calls; printed."""
    ms = 1e3 * np.asarray(timed.wall[name])
    row = {"artefact": artefact, "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
           "p90_ms": float(np.percentile(ms, 90)), "cpu_median_ms": 1e3 * statistics.median(timed.cpu[name]),
           "machine_load": load_summary(timed.loads[name]),
           "block_medians_ms": [1e3 * b for b in timed.blocks[name]],
           "block_foreign_shares": [load.get("foreign_share") for load in timed.loads[name]]}
    print(f"{name:22s} {row['median_ms']:8.2f} ms (p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}) "
          f"cpu {row['cpu_median_ms']:8.2f} ms  foreign max {row['machine_load']['foreign_share']:.0%}  "
          f"[{artefact}]", flush=True)
    return row


def quiet_ratio(timed: Rounds, label: str, fast: str, slow: str) -> dict:
    """``slow``'s time over ``fast``'s (the speed-up of ``fast``) over the quiet rounds; printed."""
    pairs = list(zip(timed.blocks[fast], timed.blocks[slow], timed.loads[fast], timed.loads[slow]))
    quiet = [s / f for f, s, lf, ls in pairs if not lf["busy"] and not ls["busy"]]
    every = [s / f for f, s, _, _ in pairs]
    all_rounds = {"median": statistics.median(every), "min": min(every), "max": max(every)}
    # CPU time per call: with one thread, nearly independent of other processes (only cache and
    # memory bandwidth are shared); with more, it also counts the spinning of idle workers.
    cpu_ratio = statistics.median(timed.cpu[slow]) / statistics.median(timed.cpu[fast])
    if not quiet:
        print(f"{label:42s} measured on a busy machine in every round: not a result (all rounds "
              f"{all_rounds['median']:.2f}x, CPU time {cpu_ratio:.2f}x)")
        return {"busy": True, "quiet_rounds": 0, "cpu_time_ratio": cpu_ratio, "all_rounds": all_rounds}
    print(f"{label:42s} {statistics.median(quiet):.2f}x (range {min(quiet):.2f}-{max(quiet):.2f} over "
          f"{len(quiet)} quiet rounds of {timed.rounds}; CPU time {cpu_ratio:.2f}x)")
    return {"median": statistics.median(quiet), "min": min(quiet), "max": max(quiet), "quiet_rounds": len(quiet),
            "rounds": timed.rounds, "busy": False, "cpu_time_ratio": cpu_ratio, "all_rounds": all_rounds}


def print_targets(report: dict, percent_word: str, decimals: int, width: int) -> None:
    """The load line and the target rows of a speed report (a target whose name holds
    ``percent_word`` is a share, printed as a percentage with ``decimals``)."""
    load = report["machine_load"]
    print(f"load average at the start {report['loadavg_start']}, at the end {report['loadavg_end']}; while timing, "
          f"other processes took {100 * (load['foreign_share'] or 0):.0f} % of the {load['cpus']} CPUs")
    for row in report["targets"]:
        value = row.get("value")
        shown = "-" if value is None else (f"{100 * value:.{decimals}f} %" if percent_word in row["target"]
                                           else f"{value:.2f}")
        print(f"{row['target']:{width}s} {shown:>9s}  {row['status']}")


def speed_target(ratio: dict | None, label: str, minimum: float) -> dict:
    """A speed-up target's row: met / NOT MET over the quiet rounds, busy, or missing."""
    if ratio is None:
        return {"target": label, "status": "missing"}
    if ratio["busy"]:
        return {"target": label, "value": None, "status": "busy"}
    return {"target": label, "value": ratio["median"], "status": "met" if ratio["median"] >= minimum else "NOT MET"}
