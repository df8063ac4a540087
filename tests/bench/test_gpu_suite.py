"""benchmarks/gpu_suite.sh without a GPU (one line, exit 5) and its summary table on
constructed results (the suite itself runs only on a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_the_suite_says_so_in_one_line(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"  # installed driver tools, no device
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    for path in (f"{fake_bin}:/usr/bin:/bin", "/usr/bin:/bin"):
        result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True,
                                env={**os.environ, "PATH": path, "OUT": str(tmp_path / "out")}, timeout=60)
        assert result.returncode == 5 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            "gpu_suite: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with one"]
    assert not (tmp_path / "out").exists()  # nothing written


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def test_summary_checks_the_goals(tmp_path):
    latency = {"trt_fp32": 6.0, "trt_fp16": 2.0, "trt_int8": 1.5, "ort_cuda_fp32": 7.0}
    for run, exec_ms in latency.items():
        precision = run.rsplit("_", 1)[1]
        if run.startswith("trt"):
            engine = f"model.{precision}.engine"
            _write(tmp_path, f"build_{run}.json", {"engine": engine, "tf32": False, "build_seconds": 30.0})
            _write(tmp_path, f"layers_{engine}.json", {"reformats": 3, "reformats_between_int8_convs": 1})
        split = {"device_split": {"compute": {"p50_ms": exec_ms}, "h2d": {"p50_ms": 0.9}, "d2h": {"p50_ms": 0.1}}}
        _write(tmp_path, f"bench_{run}.json", {"compute": {"p50_ms": exec_ms + 1.0}, "end_to_end": {"p50_ms": 40.0},
                                               **(split if run.startswith("trt") else {})})
        artefact = f"model.{precision}.engine" if run.startswith("trt") else "model.onnx"  # one artefact a run
        _write(tmp_path, f"parity_{run}.json",
               {"summary": {"passed": True}, "artifacts": {artefact: {"summary": {"passed": True,
                                                                                  "argmax_agreement": 0.9999}}}})
    (tmp_path / "steps.txt").write_text("pytest rc=0 90s (budget 180s)\n")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    goals = summary["goals"]
    assert goals["int8_faster_than_fp16 (GPU exec p50)"] is True
    assert goals["zero_reformats_between_int8_convs"] is False  # 1 reformat between INT8 convs
    assert goals["fp16_speedup_vs_ort_cuda_fp32 (compute p50)"] == 8.0 / 3.0
    assert goals["fp16_at_least_3x_ort_cuda_fp32"] is False
    assert summary["runs"]["trt_int8"]["h2d_p50_ms"] == 0.9 and summary["runs"]["trt_fp32"]["miou"] is None
    table = (tmp_path / "summary.md").read_text()
    assert "| trt_int8 | pass |" in table and "pytest rc=0" in table
