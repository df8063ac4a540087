"""Each command's success path as a user runs it (the real entry point in a subprocess): exit 0,
the printed table and the JSON written. The error paths are in test_cli.py; `parity` is in
tests/evaluation/test_parity.py, `calibrate` in tests/calibration/test_qdq.py, `package` in
tests/package/, `predict` in tests/test_predict.py, `build-trt` (TensorRT and a GPU) in
tests/build/test_trt_fornet_gpu.py."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from fornet_deploy.cli import _fmt


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch):
    """rich fits tables to the terminal (80 columns in a pipe) and wraps cells; a wide one
    keeps each row on one line, so a row can be found with its values."""
    monkeypatch.setenv("COLUMNS", "240")


def row(stdout: str, label: str) -> list[str]:
    """The cells of the table row whose first cell is ``label``."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_info(tmp_path, tiny_checkpoint):
    stdout = ok(run_cli("info", "--checkpoint", str(tiny_checkpoint), "--shape", "64x128",
                        "--json", str(tmp_path / "info.json")))
    summary = json.loads((tmp_path / "info.json").read_text())
    assert summary["source"] == str(tiny_checkpoint) and summary["output stride"] == 32
    assert 0 < summary["parameters"] < 1_000_000 and summary["config"]["stem_channels"] == 8
    assert row(stdout, "parameters")[1] == str(summary["parameters"])
    assert row(stdout, "GFLOPs at 64x128")[1] == _fmt(summary["GFLOPs at 64x128"])


def test_synthcity(tmp_path):
    from fornet_deploy.data.formats import open_dataset

    stdout = ok(run_cli("synthcity", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--shape", "64x128"))
    assert f"wrote 2 train + 1 val + 0 test images (cityscapes layout) to {tmp_path / 'd'}" in stdout.replace("\n", "")
    dataset = open_dataset(tmp_path / "d")
    assert len(dataset.samples("train")) == 2 and len(dataset.samples("val")) == 1


def test_train_then_export_the_trained_checkpoint(tmp_path, tiny_data):
    from fornet_deploy.bundle import Bundle

    run = tmp_path / "run"
    stdout = ok(run_cli("train", "--data", str(tiny_data), "--out", str(run), "--iterations", "2", "--batch", "2",
                        "--shape", "64x64", "--val-interval", "2", "--device", "cpu",
                        "--json", str(tmp_path / "train.json")))
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["rank"] == 0 and summary["iterations"] == 2 and summary["out"] == str(run)
    (validation,) = summary["history"]  # one validation, at iteration 2
    assert validation["iteration"] == 2 and 0.0 <= validation["miou"] <= 1.0
    assert summary["best_miou"] == validation["miou"] and summary["last_loss"] > 0
    assert f"trained to iteration 2 in {summary['seconds']:.0f} s; val mIoU {_fmt(validation['miou'])}" in stdout
    assert {"last.safetensors", "best.safetensors", "log.jsonl"} <= {p.name for p in run.iterdir()}

    stdout = ok(run_cli("export", "--checkpoint", str(run / "last.safetensors"), "--out", str(tmp_path / "b"),
                        "--shape", "64x128", "--json", str(tmp_path / "export.json")))
    entries = json.loads((tmp_path / "export.json").read_text())
    assert set(entries) == {"model.onnx", "model.cpu.onnx"}
    assert entries == {name: Bundle.open(tmp_path / "b").artifacts[name] for name in entries}
    for name, entry in entries.items():
        assert row(stdout, name) == [name, "fp32", entry["sha256"][:12], str(entry["bytes"])]


def test_lint(tmp_path, tiny_bundle):
    stdout = ok(run_cli("lint", str(tiny_bundle / "model.onnx"), "--json", str(tmp_path / "lint.json")))
    report = json.loads((tmp_path / "lint.json").read_text())
    assert report["passed"] is True and report["blockers"] == 0
    assert report["warnings"] == sum(f["severity"] == "warning" for f in report["findings"])
    assert f"PASS: 0 blockers, {report['warnings']} warnings" in stdout


def test_eval(tmp_path, tiny_bundle, tiny_data):
    stdout = ok(run_cli("eval", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--num-images", "2",
                        "--json", str(tmp_path / "eval.json")))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["num_images"] == 2 and result["split"] == "val" and result["data"] == str(tiny_data)
    assert result["runner"]["backend"] == "onnxruntime" and result["runner"]["precision"] == "fp32"
    assert len(result["iou_per_class"]) == 19 and 0.0 <= result["miou"] <= 1.0
    assert result["topk_selection"]["images"] == 2
    for label, key in [("mIoU", "miou"), ("boundary IoU", "boundary_iou"), ("pixel accuracy", "pixel_accuracy"),
                       ("Top-K coverage of boundaries", "topk_coverage_boundary"), ("images", "num_images")]:
        assert row(stdout, label)[1] == _fmt(result[key]), label
    road = result["iou_per_class"]["road"]
    assert row(stdout, "road")[1:] == [_fmt(road), _fmt(result["boundary_iou_per_class"]["road"])]
    assert "ort fp32 (model.cpu.onnx) on val" in stdout and f"JSON written to {tmp_path / 'eval.json'}" in stdout


def test_bench_matrix(tmp_path, tiny_bundle, tiny_data):
    stdout = ok(run_cli("bench", "--bundle", str(tiny_bundle), "--matrix", "--iterations", "2", "--warmup", "0",
                        "--threads", "1", "--data", str(tiny_data), "--num-images", "1",
                        "--json", str(tmp_path / "bench.json")))
    result = json.loads((tmp_path / "bench.json").read_text())
    measured = [r for r in result["rows"] if r.get("status") != "skipped"]
    # an FP32 bundle: every runtime's FP32, and OpenVINO's bf16 of the same graph on a CPU with BF16
    # (on one without, a skipped row that says so)
    expected = {("torch", "fp32"), ("ort", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")}
    bf16 = next(r for r in result["rows"] if (r["runtime"], r["precision"]) == ("openvino", "bf16"))
    if bf16.get("status") == "skipped":
        assert "bf16" in bf16["reason"] and "artefact, not bf16" not in bf16["reason"], bf16
        expected.remove(("openvino", "bf16"))
    assert {(r["runtime"], r["precision"]) for r in measured} == expected
    table = [line.split("│")[1:3] for line in stdout.splitlines() if line.startswith("│ ")]
    table = [(name.strip(), what.strip()) for name, what in table]
    for r in measured:
        assert r["compute"]["p50_ms"] > 0 and 0.0 <= r["miou"] <= 1.0
        assert (r["artifact"], f"{r['runtime']} {r['precision']}") in table, r
    assert "benchmark on" in stdout


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    """The real pipeline with the shipped weights, at 64x128 on 4 val images."""
    from fornet_deploy.demo import load_results

    out = tmp_path / "demo"
    stdout = ok(run_cli("demo", "--out", str(out), "--shape", "64x128", "--num-images", "4",
                        "--bench-iterations", "2"))
    results = load_results(out)
    config = json.loads((out / "results" / "demo.json").read_text())["config"]
    assert (config["height"], config["width"], config["synth_val"]) == ("64", "128", "4")
    for precision in ("fp32", "fp16", "int8"):
        for name, artefact in results[f"results/parity_ort_{precision}/parity.json"]["artifacts"].items():
            s = artefact["summary"]
            assert s["passed"] is True and s["images"] == 4
            assert row(stdout, name) == [name, _fmt(s["argmax_agreement"]), _fmt(s["mask_agreement"]), "yes"]
    for runtime, precision in [("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16"), ("ort", "int8")]:
        e = results[f"results/eval_{runtime}_{precision}.json"]
        accuracy = stdout.split("accuracy (SynthCity val)")[1]  # the second table: its rows, not parity's
        assert row(accuracy, f"{runtime} {precision}")[1:] == [_fmt(e[k]) for k in ("miou", "boundary_iou", "thin_iou")]
    assert f"report: {out / 'report.md'}" in stdout and (out / "report.md").is_file()
    assert "FAIL" not in stdout


def test_demo_refuses_a_shape_too_small_for_its_scenes_before_writing(tmp_path):
    from cli_helpers import assert_one_line_error

    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--shape", "60x128")
    assert_one_line_error(result, "need 64 to 8192 pixels per side")
    assert result.returncode == 2
    assert not (tmp_path / "demo").exists()


def test_eval_bench_and_predict_run_the_artefact_named_by_artifact(tmp_path, tiny_bundle, tiny_data):
    """On a CPU, ONNX Runtime FP32 runs model.cpu.onnx unless --artifact names model.onnx
    (what Triton and DeepStream ship); the precision follows the artefact."""
    from fornet_deploy.io import read_image

    image = str(next((tiny_data / "leftImg8bit" / "val").rglob("*.png")))
    for artifact in ("model.cpu.onnx", "model.onnx"):
        ok(run_cli("eval", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--num-images", "1",
                   "--artifact", artifact, "--json", str(tmp_path / f"eval-{artifact}.json")))
        assert json.loads((tmp_path / f"eval-{artifact}.json").read_text())["runner"]["artifact"] == artifact
        ok(run_cli("bench", "--bundle", str(tiny_bundle), "--iterations", "1", "--warmup", "0",
                   "--artifact", artifact, "--json", str(tmp_path / f"bench-{artifact}.json")))
        bench = json.loads((tmp_path / f"bench-{artifact}.json").read_text())
        assert bench["artifact"] == artifact and bench["precision"] == "fp32"
        ok(run_cli("predict", image, "--bundle", str(tiny_bundle), "--artifact", artifact,
                   "--out", str(tmp_path / artifact)))
        summary = json.loads((tmp_path / artifact / "predictions.json").read_text())
        assert summary["runner"]["artifact"] == artifact
    cpu, full = (read_image(next((tmp_path / a).rglob("*_trainIds.png"))) for a in ("model.cpu.onnx", "model.onnx"))
    assert cpu.shape == full.shape
