"""How busy the machine was while a benchmark timed something.

A latency measured while other processes share the cores measures them too, and the
1-minute load average cannot tell: it lags by a minute and counts this process's own
threads (after a matrix's own runs it reads 1.5 on an otherwise idle 2-core machine).
:class:`LoadProbe` measures the timed window itself, from the kernel's counters:

* ``loadavg_before`` / ``loadavg_after``: the 1, 5 and 15-minute load averages, for the record;
* ``busy_cpu_s``: CPU time all processes used during the window (``/proc/stat``'s first line:
  user + nice + system + irq + softirq + steal), ``own_cpu_s``: this process's CPU time (all
  its threads, ``time.process_time``), ``steal_s``: time the hypervisor gave to other guests;
* ``foreign_share = (busy_cpu_s - own_cpu_s) / (wall_s * cpus)``: the share of the machine
  that others took while we timed (steal included), the number that says whether a ratio of
  two timings is a result;
* ``busy``: ``foreign_share`` above :data:`FOREIGN_SHARE_BUSY`.

``/proc/stat`` counts in clock ticks (10 ms), so a window of a second reads the share to about
1 % per CPU. Without ``/proc/stat`` (not Linux) the CPU fields and ``busy`` are ``None``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

# Other processes taking more than this share of all CPUs during a timing make it "busy":
# a speed-up measured then is not reported as a result (the tables say so instead).
FOREIGN_SHARE_BUSY = 0.10
PROC_STAT = Path("/proc/stat")


def cpu_seconds(stat: Path = PROC_STAT) -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of all CPUs since boot, from ``stat``'s aggregate line."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]] + [0] * (9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class LoadProbe:
    """``with LoadProbe() as probe: ...timed work...``, then ``probe.result()``."""

    def __init__(self, stat: Path = PROC_STAT):
        self.stat = stat
        self.cpus = os.cpu_count() or 1
        self._result: dict | None = None

    def __enter__(self) -> "LoadProbe":
        self._load_before = loadavg()
        self._stat_before = cpu_seconds(self.stat)
        self._own_before = time.process_time()
        self._wall_before = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall_before
        own = time.process_time() - self._own_before
        stat_after = cpu_seconds(self.stat)
        busy_cpu = steal = foreign = None
        if self._stat_before is not None and stat_after is not None and wall > 0:
            busy_cpu = stat_after[0] - self._stat_before[0]
            steal = stat_after[1] - self._stat_before[1]
            foreign = min(1.0, max(0.0, busy_cpu - own) / (wall * self.cpus))
        self._result = {
            "wall_s": wall, "cpus": self.cpus, "loadavg_before": self._load_before, "loadavg_after": loadavg(),
            "busy_cpu_s": busy_cpu, "own_cpu_s": own, "steal_s": steal, "foreign_share": foreign,
            "busy": None if foreign is None else foreign > FOREIGN_SHARE_BUSY,
        }

    def result(self) -> dict:
        if self._result is None:
            raise RuntimeError("LoadProbe.result() before the probed block ended")  # a bug guard
        return self._result


def load_summary(probes: Iterable[dict]) -> dict:
    """One row's ``machine_load`` from the probes of its timed stages: the largest foreign
    share, and busy when any stage was."""
    probes = list(probes)
    shares = [p["foreign_share"] for p in probes if p["foreign_share"] is not None]
    busy = [p["busy"] for p in probes if p["busy"] is not None]
    return {"foreign_share": max(shares) if shares else None, "busy": any(busy) if busy else None}


def busy_note(share: float | None) -> str:
    """The sentence a table prints instead of a speed-up measured on a busy machine."""
    taken = f" (other processes took {100 * share:.0f} % of the CPUs)" if share is not None else ""
    return f"measured on a busy machine{taken}: the ratios are not results"
