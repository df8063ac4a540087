"""Issue 22's chain from the command line, with no Python: an 11-class CamVid-layout dataset
-> train -> export -> calibrate both targets -> parity fp32/fp16/int8 -> eval -> predict a
larger image -> bench -> package for Triton and DeepStream. Every step exits 0 and every
output names CamVid's classes and uses its palette."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.data.camvid import CAMVID

pytestmark = pytest.mark.slow


def _ok(*args: str):
    result = run_cli(*args)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.fixture(scope="module")
def camvid_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("chain")
    data, run, bundle = root / "camvid", root / "run", root / "bundle"
    _ok("synthcity", "--out", str(data), "--layout", "camvid", "--train", "8", "--val", "2", "--test", "2",
        "--shape", "90x120", "--seed", "5")
    # 60 iterations (~30 s): enough for a selector whose Top-K is not a coin toss between
    # near-equal scores, so reduced precision passes parity as it does on a trained model
    _ok("train", "--data", str(data), "--out", str(run), "--iterations", "60", "--batch", "4",
        "--shape", "64x96", "--val-interval", "60", "--train-split", "train+val", "--val-split", "test",
        "--device", "cpu", "--json", str(root / "train.json"))
    assert json.loads((root / "train.json").read_text())["iterations"] == 60
    _ok("export", "--checkpoint", str(run / "best.safetensors"), "--out", str(bundle), "--shape", "90x120",
        "--precision", "fp16")
    return data, bundle, root


def test_the_bundle_carries_camvid_labels(camvid_bundle):
    _, bundle, _ = camvid_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"] == CAMVID.to_dict() and manifest["model"]["num_classes"] == 11


def test_calibrate_parity_eval_on_the_camvid_bundle(camvid_bundle):
    data, bundle, root = camvid_bundle
    for target in ("tensorrt", "cpu"):
        _ok("calibrate", "--bundle", str(bundle), "--data", str(data), "--num-images", "4", "--target", target)
    for precision in ("fp32", "fp16", "int8"):
        _ok("parity", "--bundle", str(bundle), "--precision", precision, "--data", str(data), "--split", "test",
            "--json", str(root / f"parity_{precision}.json"))
    _ok("eval", "--bundle", str(bundle), "--data", str(data), "--split", "test", "--json", str(root / "eval.json"))
    evaluation = json.loads((root / "eval.json").read_text())
    assert list(evaluation["iou_per_class"]) == list(CAMVID.classes)
    assert list(evaluation["thin_iou_per_class"]) == list(CAMVID.thin_names)
    assert evaluation["format"] == "camvid" and evaluation["labels"] == "camvid"


def test_a_dynamic_export_of_the_camvid_model(camvid_bundle):
    data, _, root = camvid_bundle
    dynamic = root / "dynamic"
    _ok("export", "--checkpoint", str(root / "run" / "best.safetensors"), "--out", str(dynamic), "--dynamic",
        "--shape", "90x120")
    _ok("parity", "--bundle", str(dynamic), "--data", str(data), "--split", "test", "--json", str(root / "pd.json"))
    report = json.loads((root / "pd.json").read_text())
    assert report["summary"]["passed"] and report["resized"]["images"] == 0  # each image at its own 90x120


def test_predict_bench_package_on_the_camvid_bundle(camvid_bundle):
    data, bundle, root = camvid_bundle
    big = root / "big.png"
    image = cv2.resize(cv2.imread(str(next((data / "test").glob("*.png")))), (960, 720))
    cv2.imwrite(str(big), image)
    _ok("predict", "--bundle", str(bundle), str(big), "--out", str(root / "pred"))
    colours = cv2.imread(str(root / "pred" / "big_color.png"))[..., ::-1].reshape(-1, 3)
    assert colours.shape[0] == 720 * 960
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= set(CAMVID.palette) | {(0, 0, 0)}
    _ok("bench", "--bundle", str(bundle), "--iterations", "2", "--warmup", "1")
    _ok("package", "--bundle", str(bundle), "--target", "triton", "--out", str(root / "triton"), "--device", "cpu")
    config = next((root / "triton").rglob("config.pbtxt")).read_text()
    assert ",".join(CAMVID.classes) in config
    _ok("package", "--bundle", str(bundle), "--target", "deepstream", "--out", str(root / "ds"))
    assert (root / "ds" / "labels.txt").read_text().splitlines() == list(CAMVID.classes)


def test_the_demo_reports_on_a_camvid_folder(camvid_bundle):
    """Issue 24: ``demo --data DIR --split test`` runs every stage on the user's data and its
    report says so; the export size is the data's own (90x120)."""
    data, _, root = camvid_bundle
    out = root / "demo"
    result = run_cli("demo", "--data", str(data), "--split", "test", "--weights", str(root / "run" / "best.safetensors"),
                     "--out", str(out), "--num-images", "2", "--bench-iterations", "2")
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: a parity check of a 60-iteration model failed
    report = (out / "report.md").read_text()
    assert f"## Accuracy ({data} test)" in report and "SynthCity" not in report.split("## Parity")[0]
    evaluation = json.loads((out / "results" / "eval_ort_fp32.json").read_text())
    assert evaluation["split"] == "test" and evaluation["num_images"] == 2
    assert list(evaluation["iou_per_class"]) == list(CAMVID.classes)
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert (manifest["export"]["height"], manifest["export"]["width"]) == (90, 120)
    assert not (out / "synthcity").exists()


def test_the_demo_refuses_weights_of_other_classes_before_calibrating(camvid_bundle):
    data, _, root = camvid_bundle
    out = root / "demo-cityscapes"
    result = run_cli("demo", "--data", str(data), "--weights", str(root / "cityscapes.safetensors"), "--out", str(out))
    assert_one_line_error(result, "does not exist")
    from fornet_deploy.contract import SHIPPED_WEIGHTS

    result = run_cli("demo", "--data", str(data), "--weights", str(SHIPPED_WEIGHTS), "--out", str(out))
    assert_one_line_error(result, "camvid labels", "the model predicts cityscapes")
    assert not list(out.rglob("*int8*"))  # stopped after the export, before calibration


@pytest.mark.parametrize("args, fragment", [
    (["--split", "test"], "--split chooses a split of --data"),
    (["--data", "IMAGES"], "needs a labelled dataset"),
    (["--data", "IMAGES", "--shape", "64x64"], "needs a labelled dataset"),
    (["--data", "CAMVID", "--split", "nope"], "nope"),
    (["--data", "CAMVID", "--out", "CAMVID/demo"], "inside"),
])
def test_demo_option_errors_are_one_line(camvid_bundle, args, fragment):
    data, _, root = camvid_bundle
    images = root / "images"
    images.mkdir(exist_ok=True)
    (images / "a.png").write_bytes((data / "test" / sorted(p.name for p in (data / "test").iterdir())[0]).read_bytes())
    args = [a.replace("IMAGES", str(images)).replace("CAMVID", str(data)) for a in args]
    result = run_cli("demo", *args, *([] if "--out" in args else ["--out", str(root / "demo-errors")]))
    assert_one_line_error(result, fragment)
    assert result.returncode in (2, 3)
