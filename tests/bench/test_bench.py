"""Benchmark library: statistics, validation, single runs, the matrix, tables, sysinfo.

Runs use the tiny bundle with a handful of iterations: they check what is reported, not
how fast anything is (benchmarks are scripts, not timed tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fornet_deploy.bench import BenchConfig, BenchEnvironment, bench_rows, matrix_markdown, run_benchmark, run_matrix
from fornet_deploy.bench.frames import load_frames
from fornet_deploy.bench.sysinfo import describe_machine, parse_cpuinfo_model, parse_nvidia_smi
from fornet_deploy.bench.tables import BUSY_CELL, MATRIX_COLUMNS
from fornet_deploy.bench.timing import latency_stats, time_iterations
from fornet_deploy.bundle import Bundle
from fornet_deploy.errors import FornetError, HardwareError
from fornet_deploy.io import find_images as image_files

ROOTS = Path(__file__).parent / "fixtures" / "jetson" / "roots"
FIXTURES = ROOTS.parent
FAST = dict(iters=3, warmup=1)


def assert_json_ready(result: dict) -> None:
    json.dumps(result, allow_nan=False)


# --------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------


def test_latency_stats_hand_values():
    stats = latency_stats([0.004, 0.001, 0.010, 0.002, 0.003])  # order must not matter
    assert stats["n"] == 5
    assert stats["mean_ms"] == pytest.approx(4.0)
    assert stats["min_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(10.0)
    assert stats["p50_ms"] == pytest.approx(3.0)
    # sorted 1 2 3 4 10 ms; p90 at rank 0.9 * 4 = 3.6 -> 4 + 0.6 * (10 - 4)
    assert stats["p90_ms"] == pytest.approx(7.6)
    assert stats["p99_ms"] == pytest.approx(4 + 0.96 * 6)
    # deviations -3 -2 -1 0 6 -> 50 / (5 - 1)
    assert stats["stdev_ms"] == pytest.approx(12.5 ** 0.5)


def test_latency_stats_single_value_and_empty():
    stats = latency_stats([0.002])
    assert stats["stdev_ms"] == 0.0 and stats["p99_ms"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_iterations_warms_up_untimed_and_reports_between_calls():
    calls, ticks = [], []
    timed = time_iterations(calls.append, iters=4, warmup=2, on_iteration=ticks.append)
    assert calls == [0, 1, 0, 1, 2, 3]
    assert len(timed.seconds) == 4 and all(s >= 0 for s in timed.seconds)
    assert ticks == [1, 2, 3, 4]
    assert timed.window[0] <= timed.window[1]


def test_a_dynamic_bundle_benchmarks_a_size_that_is_not_a_multiple_of_32(tiny_bundle):
    result = run_benchmark(tiny_bundle, BenchConfig(shape=(250, 500), **FAST))
    assert result["config"]["shape"] == [250, 500]


# --------------------------------------------------------------------------------------
# Validation: before any work, one line
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, words", [
    (BenchConfig(shape=(9000, 500)), ["9000x500", "larger than the supported 8192"]),
    (BenchConfig(batch=0), ["--batch", ">= 1"]),
    (BenchConfig(iters=0), ["--iterations", "from 1 to 100000"]),
    (BenchConfig(warmup=-1), ["--warmup"]),
    # issue 26: --threads 100000 crashed ONNX Runtime (SIGSEGV); --warmup 10**12 ran until killed
    (BenchConfig(threads=100_000), ["--threads", f"from 1 to {os.cpu_count()}"]),
    (BenchConfig(warmup=10**12), ["--warmup", "from 0 to 100000"]),
    (BenchConfig(iters=100_001), ["--iterations", "from 1 to 100000"]),
    (BenchConfig(batch=8, shape=(1024, 2048)), ["8 x 1024x2048", "16.0 M pixels"]),
    (BenchConfig(device="tpu"), ["--device", "cpu, cuda, jetson"]),
    (BenchConfig(runtime="tflite"), ["tflite"]),
])
def test_bad_options_are_one_line_errors(tiny_bundle, cfg, words):
    with pytest.raises(FornetError) as info:
        run_benchmark(tiny_bundle, cfg)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_missing_artefact_names_the_command_that_makes_it(tiny_bundle):
    with pytest.raises(FornetError, match="build-trt"):
        run_benchmark(tiny_bundle, BenchConfig(device="jetson", runtime="trt"), env=BenchEnvironment(ROOTS / "orin_nx"))


def _has_cuda() -> bool:
    import onnxruntime
    import torch

    return torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_a_hardware_error(tiny_bundle):
    with pytest.raises(HardwareError) as info:
        run_benchmark(tiny_bundle, BenchConfig(device="cuda"))
    assert str(info.value).startswith("--device cuda: no NVIDIA GPU/CUDA here")
    with pytest.raises(HardwareError):
        run_matrix(tiny_bundle, device="cuda")


def test_device_jetson_off_a_jetson_is_a_hardware_error(tiny_bundle):
    with pytest.raises(HardwareError, match="not a Jetson"):
        run_benchmark(tiny_bundle, BenchConfig(device="jetson"), env=BenchEnvironment(ROOTS / "raspberry_pi"))


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this machine is a Jetson")
def test_device_jetson_here_is_a_hardware_error(tiny_bundle):
    with pytest.raises(HardwareError):
        run_benchmark(tiny_bundle, BenchConfig(device="jetson"))


def test_static_artefact_asked_for_another_shape(tmp_path, tiny_checkpoint):
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    export_bundle(tiny_checkpoint, tmp_path / "static", ExportConfig(height=64, width=128, dynamic=False))
    with pytest.raises(FornetError) as info:
        run_benchmark(tmp_path / "static", BenchConfig(shape=(128, 256), **FAST))
    message = str(info.value)
    assert "fixed input of 1x3x64x128" in message and "--shape 64x128" in message and "\n" not in message
    # Its own shape (the default: the export shape) runs.
    assert run_benchmark(tmp_path / "static", BenchConfig(**FAST))["config"]["shape"] == [64, 128]


# --------------------------------------------------------------------------------------
# One artefact
# --------------------------------------------------------------------------------------


def test_run_benchmark_reports_everything_json_ready(tiny_bundle, tmp_path):
    ticks = []
    out = tmp_path / "bench.json"
    result = run_benchmark(tiny_bundle, BenchConfig(**FAST), progress=lambda *a: ticks.append(a), json_out=out)

    assert {"created", "bundle", "config", "frames", "runtime", "precision", "artifact", "runner",
            "compute", "end_to_end", "memory", "machine"} <= set(result)
    assert (result["runtime"], result["precision"], result["artifact"]) == ("ort", "fp32", "model.cpu.onnx")
    load = result["machine_load"]  # how busy the machine was while each stage was timed
    for stage in ("compute", "end_to_end"):
        assert {"loadavg_before", "loadavg_after", "foreign_share", "busy", "wall_s"} <= set(load[stage])
    assert load["busy"] == any(load[stage]["busy"] for stage in ("compute", "end_to_end"))
    assert result["config"]["shape"] == [128, 256]  # the bundle's export shape
    assert "synthetic" in result["frames"]
    for stage in ("compute", "end_to_end"):
        stats = result[stage]
        assert stats["n"] == 3
        assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["throughput_ips"] == pytest.approx(1 / (stats["mean_ms"] / 1e3))
    memory = result["memory"]
    assert memory["process_peak_rss_mb"] > 0 and memory["cuda_max_allocated_mb"] is None
    if sys.platform.startswith("linux"):
        assert memory["peak_rss_increase_mb"] >= 0 and memory["rss_after_mb"] > 0
    assert "jetson" not in result
    assert_json_ready(result)
    assert json.loads(out.read_text())["compute"] == result["compute"]
    assert [t[0] for t in ticks] == list(range(1, 7)) and {t[1] for t in ticks} == {6}
    assert {t[2] for t in ticks} == {"compute", "end-to-end"}

    columns, rows = bench_rows(result)
    assert [r[0] for r in rows] == ["compute", "end-to-end"] and len(rows[0]) == len(columns)


def test_run_benchmark_torch_with_real_images_and_a_batch(tiny_bundle, tiny_data):
    cfg = BenchConfig(runtime="torch", shape=(64, 128), batch=2, threads=1, images=tiny_data, **FAST)
    result = run_benchmark(tiny_bundle, cfg)
    assert result["frames"] == f"3 of 3 images from {tiny_data}"  # leftImg8bit/val only, no labels
    assert result["runner"]["backend"] == "torch" and result["runner"]["threads"] == 1
    assert result["compute"]["throughput_ips"] == pytest.approx(2 / (result["compute"]["mean_ms"] / 1e3))
    assert_json_ready(result)


def test_image_files_and_corrupt_frames(tmp_path, tiny_data):
    assert all("leftImg8bit" in p.name and "/val/" in str(p) for p in image_files(tiny_data))
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(FornetError, match="cannot decode"):
        load_frames(tmp_path, (64, 128))
    with pytest.raises(FornetError, match="does not exist"):
        load_frames(tmp_path / "missing", (64, 128))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FornetError, match="no image files"):
        load_frames(tmp_path / "empty", (64, 128))


EMITTER = """\
import sys, time
lines = open(sys.argv[1]).read().splitlines()
print("tegrastats: not a sample", flush=True)
while True:
    for line in lines:
        print(line, flush=True)
        time.sleep(0.002)
"""


def test_jetson_run_with_fake_board_and_tegrastats(tiny_bundle, tmp_path):
    script = tmp_path / "fake_tegrastats.py"
    script.write_text(textwrap.dedent(EMITTER))
    cfg = BenchConfig(
        device="jetson", ort_device="cpu", iters=50, warmup=1, shape=(64, 128),  # ~30 ms: several samples
    )
    env = BenchEnvironment(ROOTS / "orin_nx", [sys.executable, str(script), str(FIXTURES / "tegrastats_orin_nx.txt")])
    result = run_benchmark(tiny_bundle, cfg, env=env)
    jetson = result["jetson"]
    assert jetson["board"]["module"] == "Orin NX" and jetson["board"]["jetpack"] == "6.2.1"
    assert any("nvpmodel" in note for note in jetson["notes"])  # no such tool here: noted, not fatal
    telemetry = jetson["tegrastats"]
    assert telemetry["samples"] >= 1 and telemetry["frames"] == 50
    assert telemetry["power"]["total_source"] == "VDD_IN" and telemetry["energy_per_frame_j"] > 0
    assert jetson["tegrastats_messages"] == ["tegrastats: not a sample"]
    assert result["machine"]["jetson"]["board"]["module"] == "Orin NX"
    assert_json_ready(result)


# --------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------


def _rows(result: dict) -> dict:
    return {(r["runtime"], r["precision"]): r for r in result["rows"]}


def test_matrix_on_cpu_with_accuracy(tiny_bundle, tiny_data, tmp_path):
    done = []
    cfg = BenchConfig(iters=2, warmup=1, threads=1)
    result = run_matrix(tiny_bundle, "cpu", data=tiny_data, accuracy_images=2, cfg=cfg,
                        progress=lambda *a: done.append(a), json_out=tmp_path / "matrix.json")
    rows = _rows(result)
    assert result["reference"] == "torch fp32"
    torch_row, ort_row = rows[("torch", "fp32")], rows[("ort", "fp32")]
    assert torch_row["status"] == ort_row["status"] == "ok"
    assert [r["artifact"] for r in result["rows"] if r["runtime"] == "ort"] == ["model.cpu.onnx", "model.onnx"]
    assert torch_row["speedup_vs_torch_fp32"] == 1.0
    assert ort_row["speedup_busy"] == (torch_row["machine_load"]["busy"] or ort_row["machine_load"]["busy"])
    assert ort_row["speedup_vs_torch_fp32"] == pytest.approx(
        torch_row["compute"]["mean_ms"] / ort_row["compute"]["mean_ms"])
    for row in (torch_row, ort_row):
        assert row["argmax_agreement"] > 0.99 and row["mask_agreement"] > 0.9
        assert row["miou"] is not None and 0 <= row["miou"] <= 1
    assert torch_row["argmax_agreement"] == 1.0 and torch_row["mask_agreement"] == 1.0
    assert result["accuracy"]["images"] == 2 and result["accuracy"]["note"] is None
    assert [d[0] for d in done] == list(range(1, len(result["rows"]) + 1))
    assert_json_ready(result)
    assert json.loads((tmp_path / "matrix.json").read_text())["rows"][0]["runtime"] == "torch"

    table = matrix_markdown(result)
    header = "| " + " | ".join(name for name, _, _ in MATRIX_COLUMNS) + " |"
    assert header in table
    # 1.00x, or "busy machine" when another process took the CPUs meanwhile (tests/bench/test_load.py)
    assert "| torch | fp32 | `checkpoint.safetensors` |" in table and ("| 1.00× |" in table or BUSY_CELL in table)
    assert "| ort | fp32 | `model.onnx` |" in table
    columns, table_rows = bench_rows(result)
    assert columns[:2] == ["artefact", "runtime"] and all(len(r) == len(columns) for r in table_rows)
    assert "GPU exec p50 ms" not in columns  # empty in every row on a CPU
    assert [r[:2] for r in table_rows[:2]] == [["checkpoint.safetensors", "torch fp32"], ["model.cpu.onnx", "ort fp32"]]


def test_matrix_without_data_and_with_a_broken_artefact(tiny_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    bundle = Bundle.open(bundle_dir, verify=False)
    (bundle_dir / "model.fp16.onnx").write_bytes(b"\x08garbage, not a protobuf")
    bundle.record("model.fp16.onnx", kind="onnx", precision="fp16")

    cfg = BenchConfig(iters=1, warmup=0, shape=(64, 128), threads=1)
    result = run_matrix(bundle_dir, "cpu", accuracy_images=1, cfg=cfg)
    rows = _rows(result)
    broken = rows[("ort", "fp16")]
    assert broken["status"] == "skipped" and "model.fp16.onnx" in broken["reason"]
    assert rows[("ort", "fp32")]["miou"] is None  # synthetic scenes carry no labels
    assert rows[("ort", "fp32")]["argmax_agreement"] > 0.99
    assert "synthetic" in result["accuracy"]["source"]
    table = matrix_markdown(result)
    assert "- ort fp16 (`model.fp16.onnx`) skipped:" in table
    assert_json_ready(result)


# --------------------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------------------


class FakeRun:
    """subprocess.run stand-in: answers per tool, records argv."""

    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        answer = self.answers.get(argv[0], FileNotFoundError(argv[0]))
        if isinstance(answer, BaseException):
            raise answer
        return subprocess.CompletedProcess(argv, answer[0], stdout=answer[1], stderr="")


def test_parse_nvidia_smi_and_cpuinfo():
    text = "NVIDIA H100 80GB HBM3, 550.54.15, 81559\nOrin (nvgpu), [N/A], [N/A]\n"
    assert parse_nvidia_smi(text) == [
        {"name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "memory_total_mb": 81559.0},
        {"name": "Orin (nvgpu)", "driver_version": None, "memory_total_mb": None},
    ]
    assert parse_cpuinfo_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpuinfo_model("processor\t: 0\nBogoMIPS\t: 62.50\n") is None


def test_describe_machine_with_a_fake_gpu_and_board(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "ARMV8")
    run = FakeRun({"nvidia-smi": (0, "NVIDIA A2, 535.1, 15356\n")})
    machine = describe_machine(jetson_root=ROOTS / "agx_orin", run=run)
    assert machine["env"]["OPENBLAS_CORETYPE"] == "ARMV8"
    assert machine["packages"]["numpy"] and "tensorrt" in machine["packages"]
    assert machine["gpus"]["driver_version"] == "535.1"
    assert machine["jetson"]["board"]["module"] == "AGX Orin"
    assert all(isinstance(argv, list) and not kwargs.get("shell") for argv, kwargs in run.calls)
    assert_json_ready(machine)

    plain = describe_machine(jetson_root=ROOTS / "raspberry_pi", run=FakeRun({}))
    assert plain["jetson"] is None and plain["notes"] == []


def test_device_split_of_a_runner_that_measures_it(tiny_bundle):
    """A runner with device events (TensorRT) gets transfers and execution reported apart,
    over the timed iterations only."""
    from fornet_deploy.bench.frames import bench_preprocessing
    from fornet_deploy.bench.run import _measure
    from fornet_deploy.data.cityscapes import CITYSCAPES
    from fornet_deploy.runtimes.registry import load_runner

    bundle = Bundle.open(tiny_bundle)
    cfg = BenchConfig(warmup=2, iters=3)
    frames, _ = load_frames(None, (64, 128))
    executions = iter(range(100))
    with load_runner(bundle, "ort", "fp32", "cpu") as runner:
        runner.last_timings = lambda: {"h2d_ms": 1.0, "compute_ms": float(next(executions)), "d2h_ms": 0.5}
        result, _ = _measure(runner, cfg, BenchEnvironment(), bench_preprocessing(bundle, (64, 128)), frames,
                              CITYSCAPES, None)
    split = result["device_split"]
    assert set(split) == {"h2d", "compute", "d2h"} and split["compute"]["n"] == 3
    assert split["compute"]["p50_ms"] == 3.0 and split["h2d"]["mean_ms"] == 1.0  # warm-up runs 0, 1 left out
    _, rows = bench_rows({**result, "config": {}})
    assert [row[0] for row in rows] == ["compute", "end-to-end", "  h2d (device)", "  compute (device)",
                                       "  d2h (device)"]
