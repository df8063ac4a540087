"""``calibrate``: the TensorRT graph from the FP16 graph (lineage, lint, accuracy), the CPU U8S8
graph, ranges collected once and shared, byte-identical reruns, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fornet_deploy.bundle import Bundle, remake_command
from fornet_deploy.calibration import calibset, qdq
from fornet_deploy.calibration.qdq import calibrate_bundle, excluded_nodes, quantize_cpu
from fornet_deploy.contract import (
    CALIBRATION_DIR,
    COARSE_LOGITS,
    LABELS,
    ONNX_FP16,
    ONNX_FP32,
    ONNX_INT8_CPU,
    ONNX_INT8_QDQ,
    TOPK_MASK,
)
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.errors import FornetError
from fornet_deploy.evaluation.agreement import compare_outputs, pooled
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.export.fp16 import in_fp32_scope
from fornet_deploy.export.lint import lint_file
from fornet_deploy.export.onnx import read_metadata
from fornet_deploy.export.tail import calibrated_graph
from fornet_deploy.runtimes.ort_runner import OrtRunner

NUM = 3  # calibration images: fast on the tiny model


def _copy(bundle: Path, tmp: Path) -> Path:
    out = tmp / "bundle"
    shutil.copytree(bundle, out)
    return out


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tiny_data, tmp_path_factory) -> tuple[Path, dict, dict]:
    """The tiny bundle (no FP16 graph yet), calibrated for TensorRT, then for the CPU."""
    bundle = _copy(tiny_bundle, tmp_path_factory.mktemp("qdq"))
    trt = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="tensorrt")
    cpu = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="cpu")
    return bundle, trt, cpu


def _graph(path: Path):
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return proto, producers, constants


def test_the_tensorrt_graph_is_made_from_the_fp16_graph(calibrated):
    bundle, trt, _ = calibrated
    opened = Bundle.open(bundle)  # every sha256 and lineage link checks out
    assert ONNX_FP16 in opened.artifacts  # calibrate made it first
    assert trt["source"] == ONNX_FP16 and trt["source_sha256"] == opened.sha256(ONNX_FP16)
    assert trt["opset"] == 19 and trt["quantized_ops"] == ["Conv"] and trt["calibration"]["ranges_from"] == ONNX_FP32
    assert remake_command(ONNX_INT8_QDQ, opened.artifacts) == "fornet-deploy calibrate"
    proto, _, _ = _graph(bundle / ONNX_INT8_QDQ)
    assert not [n for n in proto.graph.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")]
    report = lint_file(bundle / ONNX_INT8_QDQ)
    assert report["passed"] and report["counts"] == {"dynamic-shape": 1}, report["findings"]  # a dynamic export
    assert report["qdq"]["fp32_compute_nodes_outside_scopes"] == 0


def test_the_second_target_reuses_the_ranges(calibrated, tiny_data, monkeypatch):
    bundle, trt, cpu = calibrated
    assert trt["calibration"]["key"] == cpu["calibration"]["key"]
    assert trt["calibration"]["ranges"]["cached"] is False and cpu["calibration"]["ranges"]["cached"] is True
    key = trt["calibration"]["key"]
    assert (bundle / CALIBRATION_DIR / f"calib_{key[:16]}.minmax.ranges.json").is_file()
    before = (bundle / ONNX_INT8_QDQ).read_bytes()

    def no_collection(*args, **kwargs):
        raise AssertionError("ranges collected again")

    monkeypatch.setattr(qdq, "collect_ranges", no_collection)
    monkeypatch.setattr(calibset, "read_image", no_collection)  # not even the images are decoded
    again = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="tensorrt")
    assert again["calibration"]["ranges"]["cached"] and (bundle / ONNX_INT8_QDQ).read_bytes() == before


def test_the_cpu_graph_is_u8s8_and_runs(calibrated):
    bundle, _, cpu = calibrated
    proto, producers, constants = _graph(bundle / ONNX_INT8_CPU)
    activations = {constants[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    weights = {constants[producers[n.input[1]].input[2]].dtype for n in proto.graph.node
               if n.op_type == "Conv" and n.input[1] in producers}
    assert activations == {np.dtype(np.uint8)} and weights == {np.dtype(np.int8)}
    session = ort.InferenceSession(str(bundle / ONNX_INT8_CPU), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"image": np.zeros((1, 3, 128, 256), np.float32)})))
    # the CPU tail (export/tail.py): logits at 1/4 scale, labels at full resolution
    assert outputs["coarse_logits"].shape == (1, 19, 32, 64) and outputs["labels"].shape == (1, 128, 256)
    assert cpu["calibration"]["num_images"] == NUM and cpu["precision"] == "int8" and cpu["target"] == "cpu"
    assert cpu["source"] == ONNX_FP32 and cpu["opset"] == Bundle.open(bundle).artifacts[ONNX_FP32]["opset"]


def test_the_selector_topk_and_outputs_stay_float(calibrated, tiny_bundle):
    bundle, _, cpu = calibrated
    assert cpu["excluded_nodes"] == excluded_nodes(onnx.load(str(tiny_bundle / ONNX_FP32)))
    for artifact in (ONNX_INT8_QDQ, ONNX_INT8_CPU):
        proto, producers, constants = _graph(bundle / artifact)
        for node in (n for n in proto.graph.node if in_fp32_scope(n.name)):
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            if node.op_type == "Conv":  # float weights, not dequantized ones
                assert node.input[1] in constants
            if "/topk/" in node.name:  # the bisection reads the float importance map
                assert all(producers.get(t) is None or producers[t].op_type != "DequantizeLinear" for t in node.input)
        for output in proto.graph.output:
            # The CPU graph's 1/4-scale logits are the classifier's output, which ONNX Runtime's
            # QDQ format quantizes (its consumer, the tail, reads it quantized in every tail):
            # exposing it adds no rounding the labels do not already see.
            if artifact == ONNX_INT8_CPU and output.name == COARSE_LOGITS:
                continue
            assert producers[output.name].op_type != "DequantizeLinear", (artifact, output.name)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_reruns_are_byte_identical(tiny_bundle, tiny_data, tmp_path, method):
    graphs = []
    for run in ("first", "second"):  # fresh bundles: no cache, the whole calibration again
        bundle = _copy(tiny_bundle, tmp_path / run)
        for target in ("tensorrt", "cpu"):
            calibrate_bundle(bundle, tiny_data, num_images=NUM, method=method, target=target, seed=3)
        graphs.append([(bundle / name).read_bytes() for name in (ONNX_INT8_QDQ, ONNX_INT8_CPU)])
    (bundle / ONNX_INT8_QDQ).unlink()  # from the cached ranges
    calibrate_bundle(bundle, tiny_data, num_images=NUM, method=method, target="tensorrt", seed=3)
    assert graphs[0] == graphs[1] and (bundle / ONNX_INT8_QDQ).read_bytes() == graphs[0][0]


def test_a_damaged_or_foreign_range_cache_is_collected_again(calibrated, tiny_data, tmp_path):
    bundle = _copy(calibrated[0], tmp_path)
    key = calibrated[1]["calibration"]["key"]
    cache = bundle / CALIBRATION_DIR / f"calib_{key[:16]}.minmax.ranges.json"
    good = json.loads(cache.read_text())
    for damage in ("{not json", json.dumps({**good, "key": "0" * 64}), json.dumps({**good, "ranges": {}}),
                   json.dumps({**good, "version": 0})):
        cache.write_text(damage)
        entry = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="cpu")
        assert entry["calibration"]["ranges"]["cached"] is False
        assert json.loads(cache.read_text())["ranges"] == good["ranges"]
    entry = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="percentile", target="cpu", percentile=99.9)
    assert entry["percentile"] == 99.9 and not entry["calibration"]["ranges"]["cached"]
    assert (bundle / CALIBRATION_DIR / f"calib_{key[:16]}.percentile-99.9.ranges.json").is_file()


def test_bad_arguments_are_clear_errors_and_write_nothing(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    before = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(FornetError, match="does not exist"):
        calibrate_bundle(bundle, tmp_path / "no-data")  # before the FP16 graph is made
    (tmp_path / "empty" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FornetError, match="no"):
        calibrate_bundle(bundle, tmp_path / "empty", target="cpu")
    with pytest.raises(FornetError, match="calibration method"):
        calibrate_bundle(bundle, tmp_path / "empty", method="kl")
    with pytest.raises(FornetError, match="calibration target"):
        calibrate_bundle(bundle, tmp_path / "empty", target="gpu")
    with pytest.raises(FornetError, match="percentile"):
        calibrate_bundle(bundle, tmp_path / "empty", method="percentile", percentile=0)
    assert sorted(p.name for p in bundle.iterdir()) == before


def test_calibrating_the_real_fornet_lints_clean_and_agrees_with_fp32(fornet_bundle, tiny_data, tmp_path):
    """The shipped SynthCity model: the TensorRT graph lints with no finding (placement, FP32
    islands, FP32 tail, casts) and keeps the labels of the FP32 graph on the val images."""
    bundle = _copy(fornet_bundle, tmp_path)
    entry = calibrate_bundle(bundle, tiny_data, num_images=6, target="tensorrt")  # entropy, the default
    fp16 = onnx.load(str(bundle / ONNX_FP16)).graph.node
    convs = len([n for n in fp16 if n.op_type == "Conv" and not in_fp32_scope(n.name)])  # all quantized
    assert entry["placement"]["quantized_convs"] == convs and not entry["placement"]["skipped_convs"]
    report = lint_file(bundle / ONNX_INT8_QDQ)
    assert report["passed"] and report["findings"] == [] and report["qdq"]["quantized_convs"] == convs
    examples = list(dataset_examples(tiny_data, "val", Preprocessing(), None))
    with OrtRunner(bundle / ONNX_FP32) as fp32, OrtRunner(bundle / ONNX_INT8_QDQ) as int8:
        agreement = pooled([compare_outputs(e.name, fp32(e.batch, outputs=(LABELS, TOPK_MASK)),
                                            int8(e.batch, outputs=(LABELS, TOPK_MASK)), e.labels.shape)
                            for e in examples])
    assert agreement["argmax_agreement"] >= 0.98 and agreement["mask_agreement"] >= 0.97, agreement


def test_both_quantizer_routes_write_the_same_graph(calibrated, tiny_bundle, tmp_path):
    """quantize_static(calibration_cache_path) (ONNX Runtime 1.32+) and QDQQuantizer (1.18+)."""
    bundle, _, cpu = calibrated
    key = cpu["calibration"]["key"]
    cached = json.loads((bundle / CALIBRATION_DIR / f"calib_{key[:16]}.minmax.ranges.json").read_text())
    source = onnx.load(str(tiny_bundle / ONNX_FP32))
    measured, aliases = qdq.needed_tensors(source)
    ranges = {**{k: tuple(v) for k, v in cached["ranges"].items()}, **{s: tuple(cached["ranges"][t])
                                                                        for s, t in aliases.items()}}
    graphs = {}
    for route in ("cache", "direct"):
        (tmp_path / route).mkdir()
        shutil.copyfile(tiny_bundle / ONNX_FP32, tmp_path / route / ONNX_FP32)
        out = tmp_path / route / "int8.onnx"
        quantize_cpu(tmp_path / route / ONNX_FP32, out, ranges, "minmax", excluded_nodes(source), route=route)
        graphs[route] = onnx.load(str(out))
    assert graphs["cache"].graph == graphs["direct"].graph
    embedded = onnx.load(str(bundle / ONNX_INT8_CPU))
    del embedded.metadata_props[:]
    # the bundle's graph: these ranges, this quantizer, then the CPU tail the export chose
    tailed = calibrated_graph(graphs["cache"], "cpu", read_metadata(source))
    assert embedded.graph == tailed.graph


def test_the_quantizer_scratch_file_never_lands_in_the_bundle(tiny_bundle, tiny_data, tmp_path):
    """Issue 14 defect 4: ONNX Runtime's quantizer writes `<model>-inferred.onnx` beside its
    input; a symlink planted there made calibrate overwrite a file outside the bundle."""
    precious = tmp_path / "precious.txt"
    # The hazard is real: run the quantizer on a graph inside a folder with the planted link.
    exposed = _copy(tiny_bundle, tmp_path / "exposed")
    precious.write_text("keep me")
    (exposed / "model-inferred.onnx").symlink_to(precious)
    source = onnx.load(str(exposed / ONNX_FP32))
    measured, aliases = qdq.needed_tensors(source)
    ranges = {name: (-1.0, 1.0) for name in [*measured, *aliases]}
    quantize_cpu(exposed / ONNX_FP32, tmp_path / "out.onnx", ranges, "minmax", excluded_nodes(source))
    assert precious.read_bytes() != b"keep me"  # ONNX Runtime wrote through the link

    bundle = _copy(tiny_bundle, tmp_path / "guarded")
    precious.write_text("keep me")
    (bundle / "model-inferred.onnx").symlink_to(precious)
    before = sorted(p.name for p in bundle.iterdir())
    calibrate_bundle(bundle, tiny_data, num_images=2, method="minmax", target="cpu")
    assert precious.read_text() == "keep me" and (bundle / "model-inferred.onnx").is_symlink()
    assert sorted(p.name for p in bundle.iterdir()) == sorted({*before, ONNX_INT8_CPU, "calibration"})


def test_the_calibrate_command_end_to_end(tiny_bundle, tiny_data, tmp_path):
    from cli_helpers import assert_one_line_error, run_cli

    bundle = _copy(tiny_bundle, tmp_path)
    common = ["--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2", "--method", "minmax"]
    first = run_cli("calibrate", *common, "--json", str(tmp_path / "trt.json"))
    assert first.returncode == 0, first.stderr
    assert "from model.fp16.onnx" in first.stdout and "collected in" in first.stdout
    assert "quantized convs" in first.stdout
    entry = json.loads((tmp_path / "trt.json").read_text())
    assert entry.pop("artifact") == ONNX_INT8_QDQ and entry == Bundle.open(bundle).artifacts[ONNX_INT8_QDQ]
    second = run_cli("calibrate", *common, "--target", "cpu")
    assert second.returncode == 0 and "cached in the bundle" in second.stdout, second.stderr
    lint = run_cli("lint", str(bundle / ONNX_INT8_QDQ), "--target", "tensorrt")
    assert lint.returncode == 0 and "PASS: 0 blockers" in lint.stdout, lint.stdout
    bad = run_cli("calibrate", *common[:-2], "--method", "percentile", "--percentile", "120")
    assert_one_line_error(bad, "--percentile must be in (0, 100]")
    assert bad.returncode == 2


def test_a_bundle_exported_at_one_size_calibrates_on_images_of_another(small_bundle, tiny_data, tmp_path):
    """Issue 22: a 64x128 export on 128x256 images (it refused: "calibration images preprocess
    to [3, 128, 256] but model.onnx takes [3, 64, 128]"); the resize is recorded."""
    bundle = _copy(small_bundle, tmp_path)
    for target in ("tensorrt", "cpu"):
        entry = calibrate_bundle(bundle, tiny_data, num_images=2, method="minmax", target=target)
        calibration = entry["calibration"]
        assert calibration["network_size"] == [64, 128]
        assert calibration["resized"] == {"images": 2, "sizes": {"128x256->64x128": 2}}
        assert calibration["source"]["kind"] == "dataset" and calibration["source"]["format"] == "cityscapes"
    assert Bundle.open(bundle).artifacts[ONNX_INT8_CPU]["calibration"]["ranges"]["cached"] is True
    with OrtRunner(bundle / ONNX_INT8_QDQ) as runner:
        assert runner(np.zeros((1, 3, 64, 128), np.float32))[LABELS].shape == (1, 64, 128)


def test_a_dynamic_bundle_calibrates_at_its_export_shape(tiny_bundle, camvid_data, tmp_path):
    """``export --dynamic`` at 128x256, CamVid-layout images of 96x128: fed at 128x256."""
    bundle = _copy(tiny_bundle, tmp_path)
    entry = calibrate_bundle(bundle, camvid_data, num_images=2, method="minmax", target="cpu")
    calibration = entry["calibration"]
    assert calibration["network_size"] == [128, 256] and calibration["ranges"]["images"] == 2
    assert calibration["resized"] == {"images": 2, "sizes": {"96x128->128x256": 2}}
    assert calibration["source"]["format"] == "camvid"


def _plant_float32_cache(bundle: Path) -> list[str]:
    """What calibrate kept in a bundle before: normalised float32 images and their sidecar."""
    folder = bundle / CALIBRATION_DIR
    folder.mkdir(exist_ok=True)
    np.save(folder / "calib_0123456789abcdef.npy", np.zeros((2, 3, 128, 256), np.float32))
    (folder / "calib_0123456789abcdef.json").write_text(json.dumps({"key": "0123456789abcdef" * 4}))
    return ["calib_0123456789abcdef.npy", "calib_0123456789abcdef.json"]


def test_the_bundle_keeps_no_calibration_images(tiny_bundle, tiny_data, tmp_path):
    """Issue 22: the bundle's calibration folder holds the range caches (a few KB), not the images;
    an older bundle's float32 cache goes on the next calibrate, with or without a collection."""
    bundle = _copy(tiny_bundle, tmp_path)
    old = _plant_float32_cache(bundle)
    entry = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="cpu")
    key = entry["calibration"]["key"]
    cache = bundle / CALIBRATION_DIR / f"calib_{key[:16]}.minmax.ranges.json"
    assert sorted(p.name for p in (bundle / CALIBRATION_DIR).iterdir()) == [cache.name]
    assert cache.stat().st_size < 64 << 10
    stored = json.loads(cache.read_text())["calibration_set"]  # what the key was made of
    assert [name for name, _ in stored["images"]] == entry["calibration"]["images"]
    assert stored["network_size"] == [128, 256]

    assert not set(old) & {p.name for p in (bundle / CALIBRATION_DIR).iterdir()}
    _plant_float32_cache(bundle)
    again = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="tensorrt")
    assert again["calibration"]["ranges"]["cached"]
    assert sorted(p.name for p in (bundle / CALIBRATION_DIR).iterdir()) == [cache.name]


def test_calibration_on_an_unlabelled_folder_and_a_video(tiny_bundle, tiny_data, video, tmp_path):
    """Issue 25: frames from the user's own camera, no labels."""
    bundle = _copy(tiny_bundle, tmp_path)
    folder = tmp_path / "frames"
    folder.mkdir()
    for image in sorted((tiny_data / "leftImg8bit" / "train").rglob("*.png"))[:4]:
        shutil.copyfile(image, folder / image.name)
    from_folder = calibrate_bundle(bundle, folder, num_images=3, method="minmax", target="cpu")["calibration"]
    assert from_folder["source"] == {"kind": "images", "path": str(folder), "format": "images",
                                     "selection": "seeded random (no labels)"}
    assert from_folder["num_images"] == 3 and not from_folder["ranges"]["cached"]
    from_video = calibrate_bundle(bundle, video, num_images=3, method="minmax", target="cpu")["calibration"]
    assert from_video["source"] == {"kind": "video", "path": str(video), "frames": 20,
                                    "selection": "3 frames spread evenly"}
    assert from_video["images"] == ["clip_000003", "clip_000010", "clip_000016"]
    assert from_video["resized"] == {"images": 3, "sizes": {"96x128->128x256": 3}}
    assert from_video["key"] != from_folder["key"] and not from_video["ranges"]["cached"]
    assert Bundle.open(bundle).artifacts[ONNX_INT8_CPU]["calibration"] == from_video


def test_the_calibrate_command_on_a_video(tiny_bundle, video, tmp_path):
    from cli_helpers import assert_one_line_error, run_cli

    bundle = _copy(tiny_bundle, tmp_path)
    common = ["calibrate", "--bundle", str(bundle), "--num-images", "2", "--method", "minmax"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # cut short: no index
    before = sorted(p.name for p in bundle.iterdir())
    bad = run_cli(*common, "--data", str(broken))  # the default target would make the FP16 graph first
    assert_one_line_error(bad, "cannot open video", str(broken))
    assert bad.returncode == 3 and sorted(p.name for p in bundle.iterdir()) == before
    ok = run_cli(*common, "--data", str(video), "--target", "cpu", "--json", str(tmp_path / "cpu.json"))
    assert ok.returncode == 0, ok.stderr
    assert "from video" in ok.stdout and "2 resized 96x128->128x256" in ok.stdout
    assert json.loads((tmp_path / "cpu.json").read_text())["calibration"]["source"]["kind"] == "video"
