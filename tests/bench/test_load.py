"""How busy the machine was while a benchmark timed: the load probe and what tables make of it."""

from __future__ import annotations

import os
import sys
import time

import pytest

from fornet_deploy.bench.load import FOREIGN_SHARE_BUSY, LoadProbe, busy_note, cpu_seconds, load_summary
from fornet_deploy.bench.tables import BUSY_CELL, MATRIX_COLUMNS, busy_line, matrix_markdown

TICK = os.sysconf("SC_CLK_TCK")


def stat_text(user: int, system: int, idle: int, steal: int = 0) -> str:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (clock ticks)
    return (f"cpu  {user} 0 {system} {idle} 7 1 2 {steal} 0 0\n"
            f"cpu0 {user} 0 {system} {idle} 7 1 2 {steal} 0 0\nintr 12345\n")


def test_cpu_seconds_counts_busy_ticks_with_steal_and_without_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(stat_text(user=300, system=100, idle=5000, steal=20))
    busy, steal = cpu_seconds(stat)
    assert busy == pytest.approx((300 + 100 + 1 + 2 + 20) / TICK) and steal == pytest.approx(20 / TICK)
    stat.write_text("not a stat file\n")
    assert cpu_seconds(stat) is None
    assert cpu_seconds(tmp_path / "missing") is None


class FakeStat:
    """A /proc/stat whose counters move by ``busy_ticks`` between the probe's two reads."""

    def __init__(self, path, busy_ticks: int):
        self.path, self.busy_ticks = path, busy_ticks
        path.write_text(stat_text(1000, 500, 90000))

    def advance(self) -> None:
        self.path.write_text(stat_text(1000 + self.busy_ticks, 500, 90000))


@pytest.mark.parametrize("foreign_ticks_per_s, busy", [(0, False), (0.5, True)])
def test_probe_measures_what_others_took_in_the_window(tmp_path, foreign_ticks_per_s, busy):
    wall = 0.2
    cpus = os.cpu_count() or 1
    stat = FakeStat(tmp_path / "stat", busy_ticks=round(foreign_ticks_per_s * cpus * wall * TICK))
    with LoadProbe(stat.path) as probe:
        time.sleep(wall)  # sleeping: (almost) no CPU time of our own
        stat.advance()
    result = probe.result()
    assert result["wall_s"] >= wall and result["cpus"] == cpus and result["own_cpu_s"] < 0.05
    expected = max(0.0, stat.busy_ticks / TICK - result["own_cpu_s"]) / (result["wall_s"] * cpus)
    assert result["foreign_share"] == pytest.approx(expected)
    assert result["busy"] is busy and (result["foreign_share"] > FOREIGN_SHARE_BUSY) is busy
    assert result["steal_s"] == 0.0


def test_our_own_work_is_not_foreign(tmp_path):
    """CPU time this process spends counts as its own: a probe around a busy loop of ours,
    with the machine's counters moving by exactly that time, reads no foreign share."""
    stat = tmp_path / "stat"
    stat.write_text(stat_text(1000, 500, 90000))
    with LoadProbe(stat) as probe:
        start = time.process_time()
        while time.process_time() - start < 0.2:
            pass
        own = time.process_time() - start
        stat.write_text(stat_text(1000 + round(own * TICK), 500, 90000))
    assert probe.result()["foreign_share"] < 0.05


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_probe_on_this_machine():
    with LoadProbe() as probe:
        sum(i * i for i in range(200_000))
    result = probe.result()
    assert 0.0 <= result["foreign_share"] <= 1.0 and isinstance(result["busy"], bool)
    assert len(result["loadavg_before"]) == len(result["loadavg_after"]) == 3
    assert result["busy_cpu_s"] >= 0 and result["own_cpu_s"] > 0


def test_without_proc_stat_nothing_is_claimed(tmp_path):
    with LoadProbe(tmp_path / "missing") as probe:
        pass
    result = probe.result()
    assert result["foreign_share"] is None and result["busy"] is None and result["busy_cpu_s"] is None
    assert load_summary([result]) == {"foreign_share": None, "busy": None}


def _row(runtime: str, ms: float, share: float) -> dict:
    load = {"foreign_share": share, "busy": share > FOREIGN_SHARE_BUSY}
    return {"runtime": runtime, "precision": "fp32", "artifact": f"{runtime}.file", "status": "ok",
            "compute": {"p50_ms": ms, "p90_ms": ms, "p99_ms": ms, "mean_ms": ms, "throughput_ips": 1e3 / ms},
            "machine_load": {**load, "compute": load}}


def _matrix(rows: list[dict]) -> dict:
    for row in rows:
        row["speedup_vs_torch_fp32"] = rows[0]["compute"]["mean_ms"] / row["compute"]["mean_ms"]
        row["speedup_busy"] = bool(row["machine_load"]["busy"] or rows[0]["machine_load"]["busy"])
    return {"config": {"shape": [512, 1024], "batch": 1, "iters": 5, "warmup": 1}, "device": "cpu",
            "machine": {"cpu": {"model": "test CPU"}}, "accuracy": {"source": "none", "reference": "torch"},
            "rows": rows}


def test_tables_print_no_speed_up_measured_on_a_busy_machine():
    quiet = _matrix([_row("torch", 100.0, 0.01), _row("ort", 25.0, 0.02)])
    table = matrix_markdown(quiet)
    assert "| 4.00× |" in table and BUSY_CELL not in table and busy_line(quiet) is None
    busy = _matrix([_row("torch", 100.0, 0.01), _row("ort", 25.0, 0.45)])
    table = matrix_markdown(busy)
    assert "4.00×" not in table and f"| {BUSY_CELL} |" in table and "| 1.00× |" in table
    assert busy_note(0.45) in table and "45 %" in busy_note(0.45) and busy_line(busy) == busy_note(0.45)
    speedup = next(value for name, value, _ in MATRIX_COLUMNS if name.startswith("speed-up"))
    assert speedup(busy["rows"][1]) == BUSY_CELL and speedup(busy["rows"][0]) == 1.0
    single = _row("ort", 25.0, 0.3)
    assert busy_line(single) == busy_note(0.3) and busy_line(_row("ort", 25.0, 0.0)) is None
