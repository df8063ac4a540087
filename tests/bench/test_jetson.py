"""Jetson board detection, tool parsers, tegrastats sampling and summary.

Fixtures are real outputs from many boards; tests/bench/fixtures/jetson/SOURCES.md says
where each came from. Tests marked ``jetson`` need a real board and are skipped (with the reason) elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.bench.jetson import (
    CpuCore,
    JetsonBoard,
    PowerMode,
    PowerRail,
    TegrastatsSampler,
    collect_jetson_info,
    detect_board,
    jetpack_for_l4t,
    parse_jetson_clocks_show,
    parse_nvpmodel_query,
    parse_tegra_release,
    parse_tegrastats_line,
    summarize,
)
from fornet_deploy.errors import FornetError, HardwareError

FIXTURES = Path(__file__).parent / "fixtures" / "jetson"
ROOTS = FIXTURES / "roots"


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def sample(name: str, index: int):
    parsed = parse_tegrastats_line(fixture_lines(name)[index])
    assert parsed is not None
    return parsed


ALL_LINES = [
    pytest.param(line, id=f"{path.stem}-{number}")
    for path in sorted(FIXTURES.glob("tegrastats_*.txt"))
    for number, line in enumerate(path.read_text().splitlines(), start=1)
]


# --------------------------------------------------------------------------------------
# tegrastats lines
# --------------------------------------------------------------------------------------


def test_fixtures_cover_the_boards_we_promise():
    boards = {p.stem.removeprefix("tegrastats_") for p in FIXTURES.glob("tegrastats_*.txt")}
    assert {"agx_orin", "orin_nx", "orin_nano", "agx_xavier", "xavier_nx", "nano"} <= boards


@pytest.mark.parametrize("line", ALL_LINES)
def test_every_fixture_line_parses_to_a_full_json_ready_sample(line):
    parsed = parse_tegrastats_line(line)
    assert parsed is not None
    assert parsed.ram_used_mb is not None and parsed.ram_total_mb is not None
    assert parsed.ram_used_mb <= parsed.ram_total_mb
    assert parsed.cpus and any(core.online for core in parsed.cpus)
    assert parsed.gpu_load_pct is not None
    assert parsed.temperatures_c and parsed.rails
    assert all(t > -100 for t in parsed.temperatures_c.values())  # -256C sentinels dropped
    json.dumps(parsed.to_dict(), allow_nan=False)


def test_agx_orin_jetpack6_line():
    s = sample("tegrastats_agx_orin.txt", 0)
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb) == (29114, 30697)
    assert (s.swap_used_mb, s.swap_total_mb, s.swap_cached_mb) == (4915, 15348, 1)
    assert len(s.cpus) == 12
    assert s.cpus[0] == CpuCore(online=True, load_pct=3, freq_mhz=729)
    assert s.cpus[5] == CpuCore(online=True, load_pct=100, freq_mhz=2201)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (1, 2133)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, 305)  # GR3D_FREQ 0%@[305,305]
    assert s.temperatures_c == {
        "cpu": 53.062, "soc2": 48.25, "soc0": 48.843, "gpu": 47.812, "tj": 53.062, "soc1": 48.968,
    }
    assert s.rails == {
        "VDD_GPU_SOC": PowerRail(3205, 3205),
        "VDD_CPU_CV": PowerRail(4405, 4405),
        "VIN_SYS_5V0": PowerRail(4767, 4767),
    }
    assert s.engines["APE"] == "174" and s.engines["NVDLA1"] == "off"
    assert s.unparsed == ""


def test_agx_orin_jetpack7_line_has_timestamp_and_running_maxima():
    s = sample("tegrastats_agx_orin.txt", 2)
    assert s.timestamp == "2026-07-25T09:08:28"
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (12, 1300)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (3, 3199)
    assert s.swap_used_mb is None  # this board has no swap line
    assert s.temperatures_c["cpu"] == 52.968  # the current value, not the max after "/"
    assert s.rails["VDD_CPU_CV"] == PowerRail(3268, 3268, 3268)


def test_agx_orin_line_without_gpu_clock():
    s = sample("tegrastats_agx_orin.txt", 1)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, None)  # "GR3D_FREQ 0%"
    assert (s.emc_load_pct, s.emc_freq_mhz) == (None, None)  # no EMC_FREQ field
    assert s.ram_total_mb == 62840


def test_orin_nx_line_with_offline_cores():
    s = sample("tegrastats_orin_nx.txt", 0)
    assert [c.online for c in s.cpus] == [True] * 4 + [False] * 4
    assert s.cpus[3] == CpuCore(online=True, load_pct=16, freq_mhz=729)
    assert s.cpus[4] == CpuCore(online=False)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, 611)
    assert s.temperatures_c["CV0"] == 45.812 and s.temperatures_c["tj"] == 48.875
    assert s.rails["VDD_IN"] == PowerRail(5299, 5299)
    assert s.rails["VDD_CPU_GPU_CV"] == PowerRail(773, 773)
    assert s.engines == {"VIC_FREQ": "729", "APE": "174"}


def test_orin_nano_jetpack6_line():
    s = sample("tegrastats_orin_nano.txt", 0)
    assert s.timestamp == "2026-04-27T14:59:41"
    assert (s.ram_used_mb, s.ram_total_mb) == (775, 7620)
    assert [c.freq_mhz for c in s.cpus] == [729] * 6
    assert s.rails["VDD_IN"] == PowerRail(4761, 4778)
    assert s.rails["VDD_CPU_GPU_CV"] == PowerRail(515, 501)
    assert s.rails["VDD_SOC"] == PowerRail(1428, 1428)
    assert s.temperatures_c["tj"] == 49.156


def test_orin_nano_jetpack7_line():
    s = sample("tegrastats_orin_nano.txt", 4)
    assert s.timestamp == "2026-09-19T13:33:03"
    assert s.rails["VDD_IN"] == PowerRail(3462, 3522, 3582)
    assert s.temperatures_c["cpu"] == 45.375
    assert (s.emc_load_pct, s.emc_freq_mhz) == (3, 665)
    assert s.engines["APE"] == "200" and s.engines["NVDEC0"] == "off"


def test_agx_xavier_jetpack4_line():
    s = sample("tegrastats_agx_xavier.txt", 0)
    assert [c.online for c in s.cpus] == [True] * 4 + [False] * 4
    assert s.cpus[0] == CpuCore(online=True, load_pct=2, freq_mhz=1190)
    assert (s.emc_load_pct, s.emc_freq_mhz, s.gpu_load_pct, s.gpu_freq_mhz) == (0, 665, 0, 318)
    # Rails without unit, named like the temperatures (GPU 0/0 vs GPU@37.5C).
    assert {name: r.current_mw for name, r in s.rails.items()} == {
        "GPU": 0, "CPU": 311, "SOC": 932, "CV": 0, "VDDRQ": 621, "SYS5V": 1482,
    }
    assert s.temperatures_c["GPU"] == 37.5 and s.temperatures_c["PMIC"] == 100.0
    assert s.unparsed == "MTS fg 0% bg 0%"  # kept raw


def test_agx_xavier_jetpack42_line():
    s = sample("tegrastats_agx_xavier.txt", 1)
    assert (s.swap_used_mb, s.swap_total_mb, s.swap_cached_mb) == (898, 8192, 23)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (0, None)
    assert s.rails["SOC"] == PowerRail(2936, 2936)


def test_xavier_nx_lines_jetpack4_and_5():
    old = sample("tegrastats_xavier_nx.txt", 0)
    assert (old.gpu_load_pct, old.gpu_freq_mhz) == (62, 306)
    assert (old.emc_load_pct, old.emc_freq_mhz) == (10, 1600)
    assert old.cpus[5] == CpuCore(online=True, load_pct=8, freq_mhz=1267)
    assert old.rails["VDD_IN"] == PowerRail(4067, 4067)  # "VDD_IN 4067/4067", no unit
    new = sample("tegrastats_xavier_nx.txt", 1)
    assert (new.gpu_load_pct, new.gpu_freq_mhz) == (0, 510)  # "GR3D_FREQ 0%@[510]"
    assert new.rails["VDD_IN"] == PowerRail(5079, 5079)  # "VDD_IN 5079mW/5079mW"
    assert new.temperatures_c["PMIC"] == 50.0


def test_nano_lines():
    s = sample("tegrastats_nano.txt", 0)
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (534, 3964, 5)
    assert [c.load_pct for c in s.cpus] == [16, 9, 0, 0]
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, 76)
    assert s.rails == {
        "POM_5V_IN": PowerRail(1022, 1022),
        "POM_5V_GPU": PowerRail(0, 0),
        "POM_5V_CPU": PowerRail(204, 204),
    }
    assert s.temperatures_c["PLL"] == 34.0
    assert s.unparsed == "IRAM 0/252kB(lfb 252kB)"  # not a rail: kept raw
    second = sample("tegrastats_nano.txt", 1)
    assert second.cpus == (
        CpuCore(True, 22, 518), CpuCore(True, 67, 518), CpuCore(False), CpuCore(False),
    )


def test_tx1_and_tx2_lines():
    tx2 = sample("tegrastats_tx2.txt", 0)
    assert [c.online for c in tx2.cpus] == [True, False, False, True, True, True]
    assert tx2.rails["VDD_IN"] == PowerRail(3056, 3056)
    assert tx2.temperatures_c["BCPU"] == 37.5
    tx1 = sample("tegrastats_tx1.txt", 0)
    assert tx1.rails["VDD_IN"] == PowerRail(2532, 2698)
    assert (tx1.emc_load_pct, tx1.emc_freq_mhz) == (7, 408)


def test_unknown_fields_are_kept_not_fatal():
    line = fixture_lines("tegrastats_nano.txt")[0] + " NEWENGINE 42%@[7,8] weird@token zz 1/2kB"
    s = parse_tegrastats_line(line)
    assert s is not None and s.ram_used_mb == 534
    assert s.engines["NEWENGINE"] == "42%@[7,8]"
    assert "weird@token" in s.unparsed and "zz 1/2kB" in s.unparsed
    assert "weird" not in s.temperatures_c and "zz" not in s.rails


def test_thor_style_gpu_field_without_load():
    # Format from rbonghi/jetson_stats jtop/tests/test_06_tegra_parse.py (TEGRASTATS_THOR).
    s = parse_tegrastats_line("RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ @[1000,1000,1000] APE 150")
    assert s is not None
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (None, 1000)
    assert (s.emc_load_pct, s.emc_freq_mhz) == (2, 1866)


@pytest.mark.parametrize("line", ["", "   \n", "NVPM WARN: fan mode is not set!", "Usage: tegrastats [-option]"])
def test_lines_without_known_fields_are_not_samples(line):
    assert parse_tegrastats_line(line) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_parser_never_raises(text):
    parse_tegrastats_line(text)


# --------------------------------------------------------------------------------------
# Board detection
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root, expected",
    [
        ("orin_nx", JetsonBoard("NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                                "36", "4.4", "6.2.1", "Orin NX", "tegra234")),
        ("agx_orin", JetsonBoard("NVIDIA Jetson AGX Orin Developer Kit", "39", "2.0", "7.2", "AGX Orin", "tegra234")),
        ("xavier_nx", JetsonBoard("NVIDIA Jetson Xavier NX Developer Kit", "35", "4.1", "5.1.2", "Xavier NX", "tegra194")),
        ("nano", JetsonBoard("NVIDIA Jetson Nano Developer Kit", "32", "7.4", "4.6.4", "Nano", "tegra210")),
    ],
)
def test_detect_board_on_fake_roots(root, expected):
    board = detect_board(ROOTS / root)
    assert board == expected
    json.dumps(board.to_dict(), allow_nan=False)


def test_l4t_version_is_three_numbers():
    assert detect_board(ROOTS / "agx_orin").l4t_version == "39.2.0"
    assert detect_board(ROOTS / "orin_nx").to_dict()["l4t_version"] == "36.4.4"


def test_non_jetson_board_is_a_one_line_hardware_error():
    with pytest.raises(HardwareError) as info:
        detect_board(ROOTS / "raspberry_pi")
    message = str(info.value)
    assert "not a Jetson board" in message and "'Raspberry Pi 4 Model B Rev 1.4'" in message
    assert "nv_tegra_release" in message and "\n" not in message
    assert isinstance(info.value, FornetError)


def test_machine_without_device_tree_is_not_a_jetson(tmp_path):
    with pytest.raises(HardwareError, match=r"no .*device-tree/model"):
        detect_board(tmp_path)


def test_board_without_release_file_is_recognised_by_its_device_tree(tmp_path):
    # Some custom images ship no /etc/nv_tegra_release; the compatible list still names the SoC.
    tree = tmp_path / "proc" / "device-tree"
    tree.mkdir(parents=True)
    (tree / "compatible").write_bytes(b"nvidia,p3737-0000+p3701-0000\0nvidia,p3701-0000\0nvidia,tegra234\0")
    board = detect_board(tmp_path)
    assert (board.soc, board.model, board.l4t_release, board.jetpack) == ("tegra234", None, None, None)


def test_tegra_release_and_jetpack_table():
    assert parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic") == ("36", "3.0")
    assert parse_tegra_release("not a release file") is None
    assert jetpack_for_l4t("36", "3.0") == "6.0"
    assert jetpack_for_l4t("35", "4.1") == "5.1.2"
    assert jetpack_for_l4t("36", "9.9") == "6.x"  # unlisted revision: its series
    assert jetpack_for_l4t("99", "1.0") is None


# --------------------------------------------------------------------------------------
# nvpmodel and jetson_clocks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nvpmodel_orin_nx.txt", PowerMode("MAXN_SUPER", 2)),
        ("nvpmodel_orin_nano.txt", PowerMode("25W", 1)),
        ("nvpmodel_warning.txt", PowerMode("MAXN", 0)),
    ],
)
def test_parse_nvpmodel_query(name, expected):
    mode = parse_nvpmodel_query((FIXTURES / name).read_text())
    assert mode == expected
    name_, id_ = mode  # unpacks as (name, id)
    assert (name_, id_) == tuple(expected)


def test_parse_nvpmodel_query_without_mode():
    assert parse_nvpmodel_query("nvpmodel: command failed\n") is None


def test_jetson_clocks_orin_nx():
    info = parse_jetson_clocks_show((FIXTURES / "jetson_clocks_orin_nx.txt").read_text())
    assert info["soc_family"] == "tegra234"
    assert info["machine"] == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert info["online_cpus"] == "0-5"
    assert list(info["cpus"]) == [f"cpu{i}" for i in range(6)]
    assert info["cpus"]["cpu1"] == {
        "online": True, "governor": "schedutil", "min_mhz": 729.6, "max_mhz": 1510.4, "current_mhz": 1497.6,
    }
    assert info["gpu"] == {"online": None, "governor": None, "min_mhz": 306.0, "max_mhz": 624.75, "current_mhz": 306.0}
    assert (info["emc"]["max_mhz"], info["emc"]["current_mhz"]) == (2133.0, 2133.0)
    assert info["fan"] == ["Dynamic Speed Control=nvfancontrol hwmon0_pwm1=65"]
    assert info["other"] == {"Active GPU TPCs": "2"}
    assert info["power_mode"] == "MAXN_SUPER"
    json.dumps(info, allow_nan=False)


def test_jetson_clocks_orin_nano_derives_online_from_the_cpu_list():
    info = parse_jetson_clocks_show((FIXTURES / "jetson_clocks_orin_nano.txt").read_text())
    assert info["online_cpus"] == "0-5"
    assert all(cpu["online"] for cpu in info["cpus"].values()) and len(info["cpus"]) == 6
    assert info["cpus"]["cpu0"]["current_mhz"] == 960.0
    assert info["emc"]["current_mhz"] == 665.6
    assert len(info["fan"]) == 2 and info["power_mode"] == "25W"


def test_jetson_clocks_agx_orin_accelerators():
    info = parse_jetson_clocks_show((FIXTURES / "jetson_clocks_agx_orin.txt").read_text())
    assert len(info["cpus"]) == 12 and info["cpus"]["cpu11"]["max_mhz"] == 2201.6
    assert info["gpu"]["current_mhz"] == 1300.5
    assert set(info["accelerators"]) == {
        "DLA0_CORE", "DLA0_FALCON", "DLA1_CORE", "DLA1_FALCON", "PVA0_VPS0", "PVA0_AXI",
    }
    assert info["accelerators"]["DLA0_CORE"] == {
        "online": True, "governor": None, "min_mhz": 0.0, "max_mhz": 1600.0, "current_mhz": 1600.0,
    }
    assert info["accelerators"]["PVA0_AXI"]["current_mhz"] == 985.6


def test_jetson_clocks_tx2_with_offline_cores():
    info = parse_jetson_clocks_show((FIXTURES / "jetson_clocks_tx2.txt").read_text())
    assert (info["soc_family"], info["machine"], info["online_cpus"]) == ("tegra186", "quill", "0,3-5")
    assert [info["cpus"][f"cpu{i}"]["online"] for i in range(6)] == [True, False, False, True, True, True]
    assert info["gpu"]["max_mhz"] == 1134.75 and info["emc"]["min_mhz"] == 40.8
    assert info["fan"] == ["speed=0"]
    assert info["other"] == {"CPU Cluster Switching": "Disabled"}
    assert info["power_mode"] == "MAXP_CORE_ARM"


# --------------------------------------------------------------------------------------
# collect_jetson_info
# --------------------------------------------------------------------------------------


class FakeRun:
    """Stands in for subprocess.run: answers each tool from a fixture, records calls."""

    def __init__(self, answers: dict[str, object]):
        self.answers = answers
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        answer = self.answers[argv[0]]
        if isinstance(answer, BaseException):
            raise answer
        returncode, fixture = answer
        return subprocess.CompletedProcess(argv, returncode, stdout=(FIXTURES / fixture).read_text(), stderr="")


def test_collect_jetson_info_on_an_orin_nx():
    run = FakeRun({"nvpmodel": (0, "nvpmodel_orin_nx.txt"), "jetson_clocks": (0, "jetson_clocks_orin_nx.txt")})
    info = collect_jetson_info(run=run, root=ROOTS / "orin_nx")
    assert info["board"]["jetpack"] == "6.2.1" and info["board"]["module"] == "Orin NX"
    assert info["power_mode"] == {"name": "MAXN_SUPER", "id": 2}
    assert info["clocks"]["gpu"]["max_mhz"] == 624.75
    assert info["notes"] == []
    assert [argv for argv, _ in run.calls] == [["nvpmodel", "-q"], ["jetson_clocks", "--show"]]
    assert all(isinstance(argv, list) and not kwargs.get("shell") for argv, kwargs in run.calls)
    json.dumps(info, allow_nan=False)


def test_collect_jetson_info_tolerates_missing_and_refusing_tools():
    run = FakeRun({
        "nvpmodel": FileNotFoundError("nvpmodel"),
        "jetson_clocks": (1, "jetson_clocks_not_root.txt"),
    })
    info = collect_jetson_info(run=run, root=ROOTS / "xavier_nx")
    assert info["board"]["module"] == "Xavier NX"
    assert info["power_mode"] is None and info["clocks"] is None
    assert info["notes"] == [
        "'nvpmodel' was not found on PATH",
        "'jetson_clocks --show' exited with 1: Error: Run this script(/usr/bin/jetson_clocks) as a root user",
    ]


def test_collect_jetson_info_off_a_jetson_raises():
    run = FakeRun({})
    with pytest.raises(HardwareError):
        collect_jetson_info(run=run, root=ROOTS / "raspberry_pi")
    assert run.calls == []


# --------------------------------------------------------------------------------------
# TegrastatsSampler
# --------------------------------------------------------------------------------------

EMITTER = """\
import signal, sys, time
lines = open(sys.argv[1]).read().splitlines()
mode = sys.argv[2]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("tegrastats: a warning that is not a sample", flush=True)
rounds = 1 if mode == "once" else 10_000
for _ in range(rounds):
    for line in lines:
        print(line, flush=True)
        time.sleep(0.005)
"""


@pytest.fixture
def emitter(tmp_path):
    script = tmp_path / "fake_tegrastats.py"
    script.write_text(textwrap.dedent(EMITTER))

    def command(fixture: str, mode: str) -> list[str]:
        return [sys.executable, str(script), str(FIXTURES / fixture), mode]

    return command


def wait_for(sampler: TegrastatsSampler, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(sampler.samples) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_sampler_collects_parsed_samples_and_terminates(emitter):
    expected = [parse_tegrastats_line(line) for line in fixture_lines("tegrastats_orin_nano.txt")]
    with TegrastatsSampler(command=emitter("tegrastats_orin_nano.txt", "forever")) as sampler:
        wait_for(sampler, 7)
    samples = sampler.samples
    assert len(samples) >= 7
    assert sampler.returncode is not None and sampler.returncode != 0  # terminated, not finished
    for got, want in zip(samples, expected + expected):
        assert got.host_time is not None
        assert got.rails == want.rails and got.timestamp == want.timestamp
    times = [s.host_time for s in samples]
    assert times == sorted(times)
    assert sampler.messages == ["tegrastats: a warning that is not a sample"]


def test_sampler_reads_to_the_end_when_the_tool_exits(emitter):
    with TegrastatsSampler(command=emitter("tegrastats_nano.txt", "once")) as sampler:
        wait_for(sampler, 2)
        time.sleep(0.1)
    assert [s.ram_used_mb for s in sampler.samples] == [534, 1409]
    assert sampler.returncode == 0


def test_sampler_kills_a_tool_that_ignores_terminate(emitter):
    sampler = TegrastatsSampler(command=emitter("tegrastats_agx_orin.txt", "stubborn"), stop_timeout_s=0.3)
    with sampler:
        wait_for(sampler, 2)
    assert sampler.returncode == -9  # SIGKILL after the terminate timeout
    assert len(sampler.samples) >= 2


def test_sampler_default_command_uses_list_args():
    assert TegrastatsSampler(interval_ms=250).command == ["tegrastats", "--interval", "250"]


def test_sampler_missing_binary_is_a_one_line_hardware_error(tmp_path):
    missing = str(tmp_path / "tegrastats")
    with pytest.raises(HardwareError) as info:
        with TegrastatsSampler(command=[missing, "--interval", "100"]):
            pass  # pragma: no cover - never entered
    assert missing in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------


def test_summarize_with_an_input_rail():
    samples = [sample("tegrastats_orin_nano.txt", i) for i in range(3)]
    summary = summarize(samples, frames=100, seconds=2.0)
    assert summary["samples"] == 3
    assert summary["gpu_load_pct"] == {"mean": 0.0, "max": 0}
    assert summary["emc_load_pct"] == {"mean": None, "max": None}  # JetPack 6 Orin Nano prints none
    assert summary["cpu_load_pct"]["mean"] == pytest.approx((1 / 6) / 3)
    assert summary["ram_used_mb"] == {"peak": 779, "total": 7620}
    # tj: 49.156, 49.218, 50.562
    assert summary["temperatures_c"]["tj"]["mean"] == pytest.approx((49.156 + 49.218 + 50.562) / 3)
    assert summary["temperatures_c"]["tj"]["max"] == 50.562
    power = summary["power"]
    assert power["total_source"] == "VDD_IN"
    # VDD_IN: 4761, 4761, 6626 mW
    assert power["total_w"]["mean"] == pytest.approx((4.761 + 4.761 + 6.626) / 3)
    assert power["total_w"]["max"] == pytest.approx(6.626)
    # VDD_SOC: 1428, 1428, 2380 mW
    assert power["rails_w"]["VDD_SOC"] == pytest.approx((1.428 + 1.428 + 2.380) / 3)
    # 5.38267 W x 2 s / 100 frames
    assert summary["energy_per_frame_j"] == pytest.approx(5.3826667 * 2.0 / 100)
    json.dumps(summary, allow_nan=False)


def test_summarize_sums_rails_when_there_is_no_input_rail():
    samples = [sample("tegrastats_agx_orin.txt", i) for i in range(2)]
    summary = summarize(samples, frames=50, seconds=1.0)
    power = summary["power"]
    assert power["total_source"] == "sum of VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    # (3205 + 4405 + 4767) and (4940 + 988 + 4442) mW
    assert power["total_w"]["mean"] == pytest.approx((12.377 + 10.370) / 2)
    assert summary["energy_per_frame_j"] == pytest.approx(11.3735 / 50)
    assert summary["temperatures_c"]["cpu"] == {"mean": pytest.approx(47.531), "max": 53.062}


def test_summarize_loads():
    samples = [sample("tegrastats_xavier_nx.txt", i) for i in range(2)]
    summary = summarize(samples, frames=10, seconds=1.0)
    assert summary["gpu_load_pct"] == {"mean": 31.0, "max": 62}
    assert summary["emc_load_pct"] == {"mean": 5.0, "max": 10}
    assert summary["power"]["total_source"] == "VDD_IN"


def test_summarize_nothing_is_json_ready():
    summary = summarize([], frames=0, seconds=0.0)
    assert summary["samples"] == 0 and summary["energy_per_frame_j"] is None
    assert summary["power"] == {"rails_w": {}, "total_w": {"mean": None, "max": None}, "total_source": None}
    json.dumps(summary, allow_nan=False)


# --------------------------------------------------------------------------------------
# On a real board
# --------------------------------------------------------------------------------------


@pytest.mark.jetson
def test_on_a_real_jetson():
    info = collect_jetson_info()
    assert info["board"]["l4t_release"] is not None
    with TegrastatsSampler(interval_ms=100) as sampler:
        time.sleep(1.0)
    assert sampler.samples, sampler.messages
    summary = summarize(sampler.samples, frames=1, seconds=1.0)
    assert summary["power"]["total_w"]["mean"] is not None
    json.dumps({"info": info, "summary": summary}, allow_nan=False)
