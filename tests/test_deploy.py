"""`fornet-deploy deploy`: checkpoint to verified bundle for a target in one command (issue 25)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cli_helpers import run_cli

from fornet_deploy.deploy import TARGETS, DeployConfig, failures, run_deploy
from fornet_deploy.errors import ExitCode, OptionError

SMALL = dict(height=128, width=256, num_images=2, calib_images=4, calib_method="minmax", bench_iterations=2)


def test_deploy_for_the_cpu_checks_every_artefact_and_writes_one_report(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    bundle = tmp_path / "bundle"
    result = run_cli("deploy", "--checkpoint", "shipped", "--target", "cpu", "--data", str(tiny_data),
                     "--out", str(bundle), "--shape", "128x256", "--num-images", "2", "--calib-images", "4",
                     "--method", "minmax", "--iterations", "2", "--json", str(tmp_path / "deploy.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "deploy.json").read_text())
    assert summary == json.loads((bundle / "deploy" / "deploy.json").read_text())
    assert summary["passed"] is True and summary["failed"] == [] and summary["lint"] == {}
    assert set(summary["parity"]) == {"model.cpu.onnx", "model.onnx", "model.int8.cpu.onnx"}  # all that ships
    assert set(summary["evaluation"]) == {"ort fp32", "ort int8"}
    measured = {r["artifact"] for r in summary["bench"]["rows"] if r["status"] == "ok"}
    assert measured >= {"model.cpu.onnx", "model.onnx", "model.int8.cpu.onnx"}
    report = (bundle / "deploy" / "report.md").read_text()
    assert "**PASS**" in report
    for section in ("## TensorRT lint", "## Parity against PyTorch FP32", "## Accuracy", "## Speed"):
        assert section in report, section
    for name in summary["parity"]:
        assert f"| {name} |" in report
    e = summary["evaluation"]["ort int8"]
    assert f"| ort int8 | model.int8.cpu.onnx | {100 * e['miou']:.2f} |" in report
    assert result.stdout.strip().splitlines()[-1] == f"PASS; report {bundle / 'deploy' / 'report.md'}"


def test_deploy_for_tensorrt_lints_and_checks_the_graphs_tensorrt_builds_from(tmp_path, tiny_data):
    summary = run_deploy(DeployConfig(checkpoint="shipped", target="tensorrt", data=tiny_data,
                                      out=tmp_path / "bundle", **SMALL), log=lambda line: None)
    assert set(summary["lint"]) == {"model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx"}
    assert set(summary["parity"]) == {"model.cpu.onnx", "model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx"}
    assert summary["passed"] == (not failures(summary["lint"], summary["parity"]))
    assert any("build-trt --bundle" in note and str(tmp_path / "bundle") in note for note in summary["notes"])


def test_deploy_on_unlabelled_images_skips_only_the_evaluation(tmp_path, tiny_data):
    images = tmp_path / "camera"
    images.mkdir()
    for path in sorted((tiny_data / "leftImg8bit").rglob("*.png")):
        shutil.copy(path, images / path.name)
    summary = run_deploy(DeployConfig(checkpoint="shipped", target="cpu", data=images, out=tmp_path / "bundle",
                                      **SMALL), log=lambda line: None)
    assert summary["evaluation"] == {} and "no labels" in summary["notes"][0]
    assert set(summary["parity"]) == {"model.cpu.onnx", "model.onnx", "model.int8.cpu.onnx"}
    assert "Not measured (no labels)." in (tmp_path / "bundle" / "deploy" / "report.md").read_text()


def test_a_failed_check_fails_the_run():
    passed = {"passed": True, "checks": {"argmax_agreement": True}}
    failed = {"passed": False, "checks": {"argmax_agreement": False, "topk_count": True}}
    assert failures({"model.onnx": {"passed": True, "blockers": 0}}, {"model.onnx": passed}) == []
    assert failures({"model.int8.qdq.onnx": {"passed": False, "blockers": 2}}, {"model.onnx": failed}) == [
        "lint model.int8.qdq.onnx (2 blockers)", "parity model.onnx (argmax_agreement)"]


def test_the_command_exits_1_naming_the_failed_checks(tmp_path):
    """(The pipeline is replaced by its result; the tests above run the real one.)"""
    fake = ("import fornet_deploy.api as api\n"
            "api.deploy_checkpoint = lambda *a, **k: {'lint': {}, 'parity_reports': {}, 'evaluation': {},\n"
            "    'bench': {'machine': {}, 'rows': [], 'config': {'shape': [64, 128], 'batch': 1}}, 'notes': [],\n"
            "    'passed': False, 'failed': ['parity model.onnx (max_abs_logit)'], 'report': 'r.md'}\n"
            "from fornet_deploy.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", fake, "deploy", "--checkpoint", "shipped", "--target", "cpu",
                             "--data", str(tmp_path), "--out", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == ExitCode.CHECK_FAILED, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "FAIL: parity model.onnx (max_abs_logit); report r.md"


def test_targets_are_one_row_each_and_options_are_checked_before_any_work(tmp_path, tiny_data):
    assert set(TARGETS) == {"cpu", "tensorrt"}
    for target in TARGETS.values():
        assert set(target.precisions) <= {"fp32", "fp16", "int8"} and target.calibrate in ("cpu", "tensorrt")
    with pytest.raises(OptionError, match="unknown deploy target 'tpu'"):
        run_deploy(DeployConfig(checkpoint="shipped", target="tpu", data=tiny_data, out=tmp_path / "b"))
    with pytest.raises(OptionError, match="--num-images"):
        run_deploy(DeployConfig(checkpoint="shipped", target="cpu", data=tiny_data, out=tmp_path / "b",
                                num_images=0))
    assert not (tmp_path / "b").exists()
    wrong = run_cli("deploy", "--checkpoint", "shipped", "--target", "tpu", "--data", str(tiny_data),
                    "--out", str(tmp_path / "b"))
    assert wrong.returncode == ExitCode.USAGE


def test_the_readme_quick_start_shows_deploy_as_the_one_command_path():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Commands")]
    assert "fornet-deploy deploy --checkpoint" in quick_start and "--target" in quick_start
