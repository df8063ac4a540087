"""The DeepStream package: nvinfer's single-scale arithmetic reproduces the bundle's
preprocessing where it can, its cost is measured where it cannot, and every key written is a
documented nvinfer property."""

from __future__ import annotations

import configparser
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.bundle import Bundle, transaction
from fornet_deploy.contract import TRT_CALIBRATION_CACHE
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.transforms import Preprocessing, normalize
from fornet_deploy.errors import FornetError
from fornet_deploy.io import read_image
from fornet_deploy.package import package
from fornet_deploy.package.deepstream import (
    NVINFER_PROPERTIES,
    PROBABILITIES,
    DeepStreamOptions,
    NvinferScaling,
    check_app,
    check_nvinfer,
    nvinfer_input,
    nvinfer_scaling,
)


def float32_close(a: np.ndarray, b: np.ndarray, ulps: int = 4) -> bool:
    """Equal up to a few float32 roundings of the largest value."""
    return float(np.max(np.abs(a - b))) <= ulps * np.finfo(np.float32).eps * float(np.max(np.abs(a)))


def with_preprocessing(bundle_dir: Path, tmp_path: Path, pre: Preprocessing) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    with transaction(copy, "test") as txn:
        txn.update(preprocessing=pre.to_dict())
    return copy


def written_scaling(folder: Path) -> NvinferScaling:
    """net-scale-factor, offsets and colour format as nvinfer reads them from the file."""
    ini = configparser.ConfigParser()
    ini.read(folder / "config_infer_fornet.txt")
    prop = ini["property"]
    return NvinferScaling(float(prop["net-scale-factor"]), tuple(float(v) for v in prop["offsets"].split(";")),
                          int(prop["model-color-format"]), True, 0.0)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_equal_std_is_reproduced_on_a_real_image(order, tiny_bundle, tiny_data, tmp_path):
    pre = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25), channel_order=order)
    bundle = with_preprocessing(tiny_bundle, tmp_path, pre)
    summary = package(bundle, "deepstream", tmp_path / "ds", DeepStreamOptions())
    assert summary["single_scale_cost"] is None  # nothing to measure: it is exact
    image = read_image(open_dataset(tiny_data).samples("val")[0].image)  # a SynthCity frame, 128x256
    exact = normalize(image, pre)[None]
    scaling = written_scaling(tmp_path / "ds")
    assert scaling.color_format == (0 if order == "RGB" else 1)
    assert float32_close(nvinfer_input(image, scaling), exact)
    assert "reproduces the bundle's pre-processing exactly" in (tmp_path / "ds" / "README.md").read_text()


@settings(max_examples=50, deadline=None)
@given(mean=st.tuples(*[st.floats(0, 1)] * 3), std=st.floats(0.05, 2), scale=st.sampled_from([1 / 255, 1.0, 0.5]),
       order=st.sampled_from(["RGB", "BGR"]))
def test_equal_std_arithmetic_is_exact_for_any_preprocessing(mean, std, scale, order):
    pre = Preprocessing(mean=mean, std=(std, std, std), channel_order=order, scale=scale)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    scaling = nvinfer_scaling(pre)
    assert scaling.exact and float32_close(nvinfer_input(pixels, scaling), normalize(pixels, pre)[None], ulps=8)


def test_per_channel_std_cost_is_measured(tiny_bundle, tiny_data, tmp_path):
    """ImageNet's std (0.229 / 0.224 / 0.225): nvinfer uses their mean; the labels agreement of
    that approximation with the exact preprocessing is measured on real SynthCity images."""
    summary = package(tiny_bundle, "deepstream", tmp_path / "ds", DeepStreamOptions(data=tiny_data, num_images=3))
    cost = summary["single_scale_cost"]
    print(f"\nsingle net-scale-factor on {cost['images_from']}: labels agreement {cost['labels_agreement']:.4%} "
          f"(worst image {cost['labels_agreement_min']:.4%}), mIoU {cost['miou_exact']:.4f} exact vs "
          f"{cost['miou_deepstream']:.4f} ({cost['miou_difference']:+.4f})")
    assert cost["images"] == 3 and not cost["exact"] and cost["std_used"] == pytest.approx(0.226)
    assert 0.5 < cost["labels_agreement_min"] <= cost["labels_agreement"] <= 1.0
    assert abs(cost["miou_difference"]) < 0.1
    readme = (tmp_path / "ds" / "README.md").read_text()
    assert f"{cost['labels_agreement']:.4%}" in readme and "net-scale-factor = scale / std" in readme
    marker = json.loads((tmp_path / "ds" / "fornet-package.json").read_text())
    assert marker["single_scale_cost"]["labels_agreement"] == cost["labels_agreement"]


def test_written_keys_are_documented_nvinfer_properties(tiny_bundle, tmp_path):
    summary = package(tiny_bundle, "deepstream", tmp_path / "ds", DeepStreamOptions(num_images=1, shape=(64, 128)))
    ini = configparser.ConfigParser()
    ini.read(tmp_path / "ds" / "config_infer_fornet.txt")
    prop = dict(ini["property"])
    assert set(prop) <= NVINFER_PROPERTIES
    assert prop["network-type"] == "2" and prop["network-mode"] == "0" and prop["infer-dims"] == "3;64;128"
    assert prop["num-detected-classes"] == "19" and prop["output-blob-names"] == PROBABILITIES
    assert (tmp_path / "ds" / prop["labelfile-path"]).read_text().splitlines()[:2] == ["road", "sidewalk"]
    app = configparser.ConfigParser()
    app.read(tmp_path / "ds" / "deepstream_app_config.txt")
    assert app["primary-gie"]["config-file"] == "config_infer_fornet.txt" and app["source0"]["type"] == "3"
    assert summary["network_size"] == [64, 128]
    with pytest.raises(FornetError, match="not documented Gst-nvinfer properties"):
        check_nvinfer({"property": {**prop, "net-scale": 1}})
    with pytest.raises(FornetError, match="network-type=7"):
        check_nvinfer({"property": {"network-type": 7}})
    with pytest.raises(FornetError, match="not documented"):
        check_app({"primary-gie": {"enable": 1, "engine": "x"}})


def test_the_packaged_graph_outputs_probabilities_whose_argmax_is_the_bundles_labels(tiny_bundle, tiny_data,
                                                                                       tmp_path):
    import onnxruntime as ort

    from fornet_deploy.evaluation.examples import dataset_examples

    summary = package(tiny_bundle, "deepstream", tmp_path / "ds", DeepStreamOptions(num_images=1))
    model = onnx.load(tmp_path / "ds" / "model.onnx")
    assert [o.name for o in model.graph.output] == [PROBABILITIES]
    packaged, source = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                        for path in (tmp_path / "ds" / "model.onnx", tiny_bundle / summary["source"]))
    pre = Preprocessing.from_dict(Bundle.open(tiny_bundle).section("preprocessing"))
    examples = list(dataset_examples(tiny_data, "val", pre, None))
    assert len(examples) == 3
    for example in examples:  # real scenes, not the one the package checks itself on
        (probabilities,) = packaged.run(None, {"image": example.batch})
        (labels,) = source.run(["labels"], {"image": example.batch})
        assert probabilities.shape[1] == 19 and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(probabilities.argmax(axis=1), labels), example.name


def test_int8_needs_the_tensorrt_calibration_cache(tiny_bundle, tmp_path):
    with pytest.raises(FornetError, match="build-trt --int8 --legacy-calibrator"):
        package(tiny_bundle, "deepstream", tmp_path / "ds", DeepStreamOptions(precision="int8"))
    assert not (tmp_path / "ds").exists()
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / TRT_CALIBRATION_CACHE).write_text("TRT-10300-EntropyCalibration2\nimage: 3c010a14\n")
    Bundle.open(copy).record(TRT_CALIBRATION_CACHE, kind="trt-calibration-cache")
    summary = package(copy, "deepstream", tmp_path / "ds", DeepStreamOptions(precision="int8", num_images=1))
    assert summary["nvinfer"]["network-mode"] == 1 and summary["nvinfer"]["int8-calib-file"] == TRT_CALIBRATION_CACHE
    assert (tmp_path / "ds" / TRT_CALIBRATION_CACHE).is_file() and summary["source"] == "model.onnx"


def test_cli_package_deepstream(tiny_bundle, tiny_data, tmp_path):
    result = run_cli("package", "--bundle", str(tiny_bundle), "--target", "deepstream", "--out", str(tmp_path / "ds"),
                     "--data", str(tiny_data), "--num-images", "2")
    assert result.returncode == 0, result.stderr
    assert "labels agreement" in result.stdout and (tmp_path / "ds" / "deepstream_app_config.txt").is_file()
    wrong = run_cli("package", "--bundle", str(tiny_bundle), "--target", "deepstream", "--out", str(tmp_path / "x"),
                    "--instances", "2")
    assert_one_line_error(wrong, "--instances does not apply to --target deepstream")
    assert wrong.returncode == 2 and not (tmp_path / "x").exists()
