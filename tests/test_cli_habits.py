"""Habits and side effects (issue 25, items 6 and 7): one spelling per concept, TensorRT's device,
precision shorthands, the shipped weights by name, `inspect`, what a re-export removes, no empty
folder from a failed parity, videos as readable as PNGs, calibrate and bench naming what they
wrote and ran, progress lines in logs."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli
from typer.main import get_command

from fornet_deploy.cli import app
from fornet_deploy.contract import SHIPPED_WEIGHTS
from fornet_deploy.errors import ExitCode
from fornet_deploy.io import sha256_file

OLD_SPELLINGS = {"--iters", "--batch-size", "--bench-iters"}


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle (tests here write into it)."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("parity"))
    return copy


def test_one_spelling_per_concept_in_every_help():
    """--iterations and --batch everywhere; the old --iters / --batch-size / --bench-iters
    still parse (hidden) but no --help shows them."""
    group = get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            shown = set(getattr(param, "opts", [])) - OLD_SPELLINGS
            if OLD_SPELLINGS & set(getattr(param, "opts", [])):
                assert param.hidden and not shown, f"{name}: {param.opts}"
    assert "--iterations" in {o for p in group.commands["bench"].params for o in p.opts}
    assert "--batch" in {o for p in group.commands["train"].params for o in p.opts}
    assert "--bench-iterations" in {o for p in group.commands["demo"].params for o in p.opts}


def test_the_old_spellings_still_run_and_disagreeing_ones_are_a_usage_error(bundle, tmp_path):
    old = run_cli("bench", "--bundle", str(bundle), "--iters", "1", "--warmup", "0", "--json", str(tmp_path / "o.json"))
    assert old.returncode == 0, old.stderr
    assert json.loads((tmp_path / "o.json").read_text())["config"]["iters"] == 1
    both = run_cli("bench", "--bundle", str(bundle), "--iters", "1", "--iterations", "2")
    assert both.returncode == ExitCode.USAGE
    assert_one_line_error(both, "give --iterations once (--iters is its old spelling)")


def test_tensorrt_implies_cuda_and_refuses_the_cpu(bundle):
    on_cpu = run_cli("parity", "--bundle", str(bundle), "--runtime", "trt", "--device", "cpu")
    assert on_cpu.returncode == ExitCode.USAGE
    assert_one_line_error(on_cpu, "--runtime trt --precision fp32 does not run on --device cpu",
                          "use --device cuda or jetson")
    implied = run_cli("parity", "--bundle", str(bundle), "--runtime", "trt")  # goes for the GPU engine
    assert implied.returncode == ExitCode.INPUT
    assert_one_line_error(implied, "has no trt fp32 artefact", "build-trt --fp32")
    assert not (bundle / "parity").exists()  # a parity that could not start leaves no empty folder


def test_precision_shorthands(bundle, tiny_data, tmp_path):
    fp16 = run_cli("eval", "--bundle", str(bundle), "--data", str(tiny_data), "--fp16")
    assert fp16.returncode == ExitCode.INPUT
    assert_one_line_error(fp16, "has no ort fp16 artefact", "export --precision fp16")
    two = run_cli("bench", "--bundle", str(bundle), "--fp16", "--precision", "int8")
    assert two.returncode == ExitCode.USAGE
    assert_one_line_error(two, "bench: choose one precision")
    fp32 = run_cli("predict", str(next((tiny_data / "leftImg8bit").rglob("*.png"))), "--bundle", str(bundle),
                   "--fp32", "--out", str(tmp_path / "p"))
    assert fp32.returncode == 0, fp32.stderr
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["runner"]["precision"] == "fp32"


def test_export_checkpoint_shipped_is_the_shipped_weights(tmp_path):
    result = run_cli("export", "--checkpoint", "shipped", "--out", str(tmp_path / "b"), "--shape", "64x128")
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "b" / "checkpoint.safetensors") == sha256_file(SHIPPED_WEIGHTS)


def test_inspect_lists_artefacts_lineage_io_labels_and_sizes(bundle, tmp_path):
    result = run_cli("inspect", str(bundle), "--json", str(tmp_path / "inspect.json"))
    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "inspect.json").read_text())
    by_name = {a["name"]: a for a in found["artifacts"]}
    assert set(by_name) == {"checkpoint.safetensors", "model.onnx", "model.cpu.onnx"}
    assert by_name["model.cpu.onnx"]["source"] == "model.onnx" and by_name["model.onnx"]["status"] == "ok"
    assert [t["name"] for t in by_name["model.cpu.onnx"]["outputs"]][0] == "coarse_logits"
    assert by_name["model.onnx"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": "?x3x?x?"}]
    assert found["labels"]["classes"][:2] == ["road", "sidewalk"] and found["export"]["height"] == 128
    assert found["total_bytes"] == sum((bundle / name).stat().st_size for name in by_name)
    for line in ("model.cpu.onnx", "coarse_logits", "?x19x?x?", "cityscapes: 19 classes", "1x3x128x256 (dynamic"):
        assert line in result.stdout, line
    assert run_cli("inspect", str(tmp_path / "nothing")).returncode == ExitCode.INPUT


def test_reexport_says_what_it_removed_and_which_parity_reports_went_stale(bundle, tiny_data):
    from fornet_deploy.export.fp16 import convert_fp16

    convert_fp16(bundle)
    assert run_cli("parity", "--bundle", str(bundle), "--num-images", "1").returncode == 0
    same = run_cli("inspect", str(bundle))
    assert "no (stale" not in same.stdout  # the report describes the artefacts
    result = run_cli("export", "--checkpoint", "shipped", "--out", str(bundle), "--shape", "128x256")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "removed model.fp16.onnx: made from the model this export replaced" in out
    assert "stale parity reports (they checked artefacts the bundle no longer holds): parity/ort-fp32" in out
    assert not (bundle / "model.fp16.onnx").exists()
    assert "no (stale: run parity again)" in run_cli("inspect", str(bundle)).stdout
    again = run_cli("export", "--checkpoint", "shipped", "--out", str(bundle), "--shape", "128x256")
    assert "removed" not in again.stdout  # the same export again: nothing to say about the graphs


def test_predict_writes_videos_as_readable_as_its_pictures(bundle, tiny_data, tmp_path):
    frames = [cv2.imread(str(p)) for p in sorted((tiny_data / "leftImg8bit" / "val").rglob("*.png"))]
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 5.0, (256, 128))
    for frame in frames:
        writer.write(frame)
    writer.release()
    image = next((tiny_data / "leftImg8bit" / "val").rglob("*.png"))
    result = run_cli("predict", str(image), str(tmp_path / "clip.mp4"), "--bundle", str(bundle),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert modes[".mp4"] == modes[".png"] == 0o666 & ~umask


def test_calibrate_and_bench_name_the_file_they_wrote_and_ran(bundle, tiny_data, tmp_path):
    result = run_cli("calibrate", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2",
                     "--method", "minmax", "--target", "cpu", "--json", str(tmp_path / "calib.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "calib.json").read_text())["artifact"] == "model.int8.cpu.onnx"
    assert "INT8 (cpu): model.int8.cpu.onnx from model.onnx" in result.stdout
    bench = run_cli("bench", "--bundle", str(bundle), "--int8", "--iterations", "1", "--warmup", "0")
    assert bench.returncode == 0, bench.stderr
    assert "benchmark of model.int8.cpu.onnx (ort int8) on" in bench.stdout


def test_progress_is_a_line_per_stage_without_a_terminal(bundle, tiny_data):
    result = run_cli("eval", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2", "--fp32")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("eval ort fp32: 2/2 in ") and lines[0].endswith(" s, done")
    assert np.isfinite(float(lines[0].split(" in ")[1].split(" s")[0]))
