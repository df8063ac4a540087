"""``calibrate --max-drop``: the search's maths, the held-out set, the float convolutions in both
targets' graphs, and the verdict driven each way on the shipped FoR-Net (64x128, real ONNX Runtime)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration import qdq
from fornet_deploy.calibration.budget import (
    AccuracyBudget,
    heldout_set,
    latency_ratio,
    miou_drop,
    noise_to_signal,
    open_heldout,
    sensitivity_order,
    smallest_passing_prefix,
)
from fornet_deploy.calibration.calibset import bundle_calibration_set, graph_input_dims
from fornet_deploy.calibration.placement import EXCLUDED, plan_qdq, to_opset
from fornet_deploy.calibration.qdq import GraphMaker, calibrate_bundle
from fornet_deploy.contract import CALIBRATION_DIR, ONNX_FP16, ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ
from fornet_deploy.data.labels import manifest_label_set
from fornet_deploy.errors import CheckFailed, FornetError, OptionError
from fornet_deploy.evaluation.evaluate import evaluate_bundle
from fornet_deploy.export.lint import lint_file
from fornet_deploy.runtimes.ort_runner import OrtRunner

SHAPE = (64, 128)  # small enough for ~50 graphs a test; the shipped model still segments at this size
CALIB = {"num_images": 2, "method": "minmax"}


@pytest.fixture(scope="module")
def fornet64(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle, data): the shipped FoR-Net at 64x128 with its FP16 graph, and SynthCity at that size
    (4 train images to calibrate on, 4 labelled val images to hold out). Read-only: copy to write."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.data.synthcity import SynthCityConfig, generate
    from fornet_deploy.export.fp16 import convert_fp16
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("budget")
    generate(root / "data", SynthCityConfig(train=4, val=4, height=SHAPE[0], width=SHAPE[1], seed=1))
    export_bundle(SHIPPED_WEIGHTS, root / "bundle", ExportConfig(height=SHAPE[0], width=SHAPE[1]))
    convert_fp16(root / "bundle")
    return root / "bundle", root / "data"


def _cli(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """The console entry point run in this process (the package is imported already: a
    subprocess would spend seconds importing it again), with its exit code, stdout and stderr."""
    from fornet_deploy.cli import main

    monkeypatch.setattr(sys, "argv", ["fornet-deploy", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, exited.value.code, out.out, out.err)


def _copy(bundle: Path, tmp: Path) -> Path:
    out = tmp / "bundle"
    shutil.copytree(bundle, out)
    return out


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def _assert_float(proto: onnx.ModelProto, convs: list[str]) -> None:
    """Each of ``convs`` reads a float input and float weights: nothing of it is rounded."""
    producer, initializers = _producers(proto), {t.name for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    for conv in convs:
        node = nodes[conv]
        assert node.input[1] in initializers, conv
        assert node.input[0] not in producer or producer[node.input[0]].op_type != "DequantizeLinear", conv


# --- the maths ------------------------------------------------------------------------------------


def test_the_drop_is_in_miou_points():
    assert miou_drop(0.50, 0.49) == pytest.approx(1.0)
    assert miou_drop(0.50, 0.51) == pytest.approx(-1.0)  # the INT8 graph scored better


@given(st.integers(1, 300), st.data())
def test_the_search_finds_the_first_passing_count_of_a_monotone_budget(count, data):
    threshold = data.draw(st.integers(1, count))
    calls = []

    def passes(k: int) -> bool:
        calls.append(k)
        return k >= threshold

    assert smallest_passing_prefix(passes, count) == threshold
    assert len(calls) == len(set(calls)) <= 2 * math.ceil(math.log2(count)) if count > 1 else calls == []
    assert all(0 < k < count for k in calls)  # the two ends are the caller's measurements


@given(st.lists(st.booleans(), max_size=100))
def test_any_budget_curve_gives_a_passing_count_after_a_failing_one(middle):
    curve = [False, *middle, True]  # drop(0) misses the budget, drop(all) meets it
    k = smallest_passing_prefix(lambda i: curve[i], len(curve) - 1)
    assert curve[k] and not curve[k - 1]


@given(arrays(np.float32, (2, 3, 4), elements=st.floats(-100, 100, width=32)),
       arrays(np.float32, (2, 3, 4), elements=st.floats(-1, 1, width=32)), st.floats(0.01, 100))
def test_noise_to_signal_is_a_relative_error_power(reference, noise, scale):
    assert noise_to_signal([reference], [reference]) == 0.0
    value = noise_to_signal([reference, reference], [reference + noise, reference])
    assert value >= 0.0
    if np.any(reference):  # relative: scaling both sides leaves it (scaled in float64: no rounding here)
        ref, cand = reference.astype(np.float64), reference.astype(np.float64) + noise
        assert noise_to_signal([ref * scale], [cand * scale]) == pytest.approx(noise_to_signal([ref], [cand]), rel=1e-9)


def test_noise_to_signal_of_a_zero_reference_is_the_plain_error():
    assert noise_to_signal([np.zeros(4, np.float32)], [np.full(4, 0.5, np.float32)]) == pytest.approx(1.0)


@given(st.lists(st.sampled_from([0.0, 1e-6, 0.5, 2.0]), max_size=20))
def test_the_most_sensitive_come_first_and_ties_keep_graph_order(values):
    sensitivity = {f"conv{i}": v for i, v in enumerate(values)}
    order = sensitivity_order(sensitivity)
    assert sorted(order) == sorted(sensitivity)
    for first, second in zip(order, order[1:]):
        assert sensitivity[first] > sensitivity[second] or (
            sensitivity[first] == sensitivity[second] and int(first[4:]) < int(second[4:]))


def test_the_latency_ratio_is_of_medians():
    assert latency_ratio([2.0, 2.0, 90.0], [1.0, 1.0, 1.0]) == 2.0  # one preempted run changes nothing


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": -0.5}, "--max-drop must be a number of mIoU points from 0 to 100, got -0.5"),
    ({"max_drop": 101}, "from 0 to 100"), ({"max_drop": float("nan")}, "from 0 to 100"),
    ({"max_drop": True}, "from 0 to 100"), ({"max_drop": "1"}, "from 0 to 100"),
    ({"max_drop": 1.0, "images": 0}, "--max-drop-images must be an integer >= 1, got 0"),
])
def test_a_budget_out_of_range_is_a_usage_error(kwargs, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        AccuracyBudget(**kwargs)


# --- float convolutions in both graphs -----------------------------------------------------------


def _shared_relu_conv(fp32: onnx.ModelProto, candidates: tuple[str, ...]) -> tuple[str, str]:
    """(conv, other): two candidate convolutions reading one ReLU output."""
    producer = _producers(fp32)
    readers: dict[str, list[str]] = {}
    for node in fp32.graph.node:
        if node.op_type == "Conv" and node.name in candidates:
            readers.setdefault(node.input[0], []).append(node.name)
    tensor = next(t for t, convs in readers.items() if len(convs) > 1 and producer[t].op_type == "Relu")
    return readers[tensor][0], readers[tensor][1]


def test_an_excluded_conv_gets_no_qdq_in_the_tensorrt_placement(fornet64):
    bundle, _ = fornet64
    fp16 = to_opset(onnx.load(str(bundle / ONNX_FP16)))
    full = plan_qdq(fp16)
    conv, other = _shared_relu_conv(onnx.load(str(bundle / ONNX_FP32)), tuple(full.weights))
    plan = plan_qdq(fp16, exclude=[conv])
    assert set(plan.weights) == set(full.weights) - {conv} and plan.skipped_convs == {conv: EXCLUDED}
    readers = {name for pairs in plan.activations.values() for name, _ in pairs}
    assert conv not in readers and other in readers  # the neighbour still reads the shared DQ


def test_a_float_conv_of_the_cpu_graph_reads_its_input_before_rounding(fornet64, tmp_path):
    """ONNX Runtime's quantizer folds a ReLU into the uint8 pair a neighbour reads: the float conv
    reads a ReLU of the unrounded tensor, within half a quantization step of what the neighbour reads."""
    bundle = _copy(fornet64[0], tmp_path)
    entry = calibrate_bundle(bundle, fornet64[1], target="cpu", **CALIB)
    cached = json.loads((bundle / CALIBRATION_DIR / f"calib_{entry['calibration']['key'][:16]}.minmax.ranges.json")
                        .read_text())["ranges"]
    fp32 = onnx.load(str(bundle / ONNX_FP32))
    _, aliases = qdq.needed_tensors(fp32)
    ranges = {**{k: tuple(v) for k, v in cached.items()}, **{s: tuple(cached[t]) for s, t in aliases.items()}}
    (tmp_path / "scratch").mkdir()
    maker = GraphMaker("cpu", fp32, bundle / ONNX_FP32, fp32, ranges, "minmax", "key", tmp_path / "scratch")
    conv, other = _shared_relu_conv(fp32, maker.candidates)
    single = tmp_path / "single.onnx"
    maker.write_single(single, other)  # a sensitivity graph: ONNX Runtime's pairs of that conv alone
    graph = onnx.load(str(single))
    assert {n.name for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in _producers(graph)} == {other}
    path = tmp_path / "one_float.onnx"
    maker.write(path, [conv])
    proto = onnx.load(str(path))
    _assert_float(proto, [conv])
    nodes, producer = {n.name: n for n in proto.graph.node}, _producers(proto)
    float_in, rounded = nodes[conv].input[0], nodes[other].input[0]
    assert producer[float_in].op_type == "Relu" and producer[rounded].op_type == "DequantizeLinear"
    scale = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == producer[rounded].input[1]))
    proto.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in (float_in, rounded)])
    onnx.save(proto, str(path))
    image = np.random.default_rng(0).normal(size=(1, 3, *SHAPE)).astype(np.float32)
    with OrtRunner(path) as runner:
        out = runner(image, outputs=[float_in, rounded])
    inside = out[float_in] <= 255 * scale  # beyond the range the pair clips
    assert out[float_in].min() >= 0 and not np.array_equal(out[float_in], out[rounded])
    assert np.abs(out[float_in] - out[rounded])[inside].max() <= scale / 2 * (1 + 1e-5)


# --- the held-out images ---------------------------------------------------------------------------


def test_the_heldout_images_are_never_calibration_images(fornet64, tmp_path):
    """A layout whose val split is the train split's files (links): calibration images are left out."""
    bundle, data = fornet64
    shared = tmp_path / "shared"
    shutil.copytree(data, shared)
    for kind in ("leftImg8bit", "gtFine"):
        shutil.rmtree(shared / kind / "val")
        for file in sorted((shared / kind / "train").rglob("*.png")):
            link = shared / kind / "val" / file.relative_to(shared / kind / "train")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    opened, budget = Bundle.open(bundle), AccuracyBudget(1.0)
    dims, labels = graph_input_dims(onnx.load(str(bundle / ONNX_FP32))), manifest_label_set(opened.manifest)
    dataset = open_heldout(budget, shared)
    calib = bundle_calibration_set(opened, dims, shared, num=2, seed=0)
    heldout = heldout_set(dataset, labels, budget, calib, seed=0)
    assert len(heldout.record["names"]) == 2 and set(heldout.record["names"]).isdisjoint(calib.names)
    assert heldout.record["excluded_calibration_images"] == 2 and len(heldout.examples) == 2
    every = bundle_calibration_set(opened, dims, shared, num=4, seed=0)
    with pytest.raises(FornetError, match="no held-out image: every val image .* is a calibration image"):
        heldout_set(dataset, labels, budget, every, seed=0)


def test_a_budget_without_labelled_images_is_one_line_and_writes_nothing(fornet64, video, tmp_path):
    import fornet_deploy as fd

    bundle = _copy(fornet64[0], tmp_path)
    before = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(FornetError, match=r"--max-drop needs labelled images: --data .*clip.mp4 is a file"):
        calibrate_bundle(bundle, video, budget=AccuracyBudget(1.0), **CALIB)
    no_val = tmp_path / "no_val"
    shutil.copytree(fornet64[1], no_val, ignore=shutil.ignore_patterns("val"))
    with pytest.raises(FornetError, match="--max-drop scores the labelled val split of --max-drop-data .* no leftImg"):
        calibrate_bundle(bundle, fornet64[1], budget=AccuracyBudget(1.0, data=no_val), **CALIB)
    with pytest.raises(OptionError, match="--max-drop-data and --max-drop-images apply with --max-drop POINTS"):
        fd.calibrate(bundle, fornet64[1], max_drop_images=8)
    assert sorted(p.name for p in bundle.iterdir()) == before


# --- the verdict, each way ----------------------------------------------------------------------


def test_the_tensorrt_budget_just_inside_and_just_past_the_drop(fornet64, tmp_path, monkeypatch):
    bundle, data = _copy(fornet64[0], tmp_path), fornet64[1]
    free = calibrate_bundle(bundle, data, budget=AccuracyBudget(100.0), **CALIB)["accuracy_budget"]
    drop = free["drop_before"]
    assert drop > 0, "the fixture's INT8 graph must lose accuracy for the budget to bite"
    assert free["excluded_layers"] == [] and free["sensitivity"] == {} and free["latency_ratio"] == 1.0
    assert free["trials"] == [{"float_convs": 0, "drop": drop}] and free["images"] == 4

    def no_collection(*args, **kwargs):
        raise AssertionError("ranges collected again")

    monkeypatch.setattr(qdq, "collect_ranges", no_collection)  # every graph below is built from the cache
    inside = calibrate_bundle(bundle, data, budget=AccuracyBudget(drop), **CALIB)
    assert inside["accuracy_budget"]["excluded_layers"] == [] and inside["accuracy_budget"]["drop_after"] == drop
    assert inside["calibration"]["ranges"]["cached"]

    past = calibrate_bundle(bundle, data, budget=AccuracyBudget(drop - 1e-6), **CALIB)
    budget = past["accuracy_budget"]
    left = budget["excluded_layers"]
    assert left and budget["drop_before"] == drop and budget["drop_after"] <= drop - 1e-6
    assert len(budget["sensitivity"]) == budget["candidates"] and left == list(budget["sensitivity"])[:len(left)]
    assert past["placement"]["skipped_convs"] == {conv: EXCLUDED for conv in left}
    assert past["placement"]["quantized_convs"] == budget["candidates"] - len(left)
    assert set(left) <= set(past["excluded_nodes"]) and 0 < budget["latency_ratio"] < math.inf
    assert Bundle.open(bundle).artifacts[ONNX_INT8_QDQ] == past  # what the manifest records
    _assert_float(onnx.load(str(bundle / ONNX_INT8_QDQ)), left)
    assert lint_file(bundle / ONNX_INT8_QDQ)["passed"]
    # the recorded drop is the written graph's, as `eval` measures it on the same (all 4) val images
    fp32 = evaluate_bundle(bundle, data, artifact=ONNX_FP32)["miou"]
    int8 = evaluate_bundle(bundle, data, artifact=ONNX_INT8_QDQ)["miou"]
    assert miou_drop(fp32, int8) == pytest.approx(budget["drop_after"], abs=1e-9)


def test_the_cpu_budget_from_the_command_line(fornet64, tmp_path, capsys, monkeypatch):
    bundle, data = _copy(fornet64[0], tmp_path), fornet64[1]
    common = ["calibrate", "--bundle", str(bundle), "--data", str(data), "--num-images", "2", "--method", "minmax",
              "--target", "cpu"]
    free = calibrate_bundle(bundle, data, target="cpu", budget=AccuracyBudget(100.0), **CALIB)["accuracy_budget"]
    drop = free["drop_before"]
    assert drop > 0, "the fixture's INT8 graph must lose accuracy for the budget to bite"
    past = _cli(capsys, monkeypatch, *common, "--max-drop", repr(drop - 1e-6), "--json", str(tmp_path / "past.json"))
    assert past.returncode == 0, past.stderr
    entry = json.loads((tmp_path / "past.json").read_text())
    budget = entry["accuracy_budget"]
    left = budget["excluded_layers"]
    assert left and budget["drop_after"] <= drop - 1e-6 and set(left) <= set(entry["excluded_nodes"])
    assert entry.pop("artifact") == ONNX_INT8_CPU and entry == Bundle.open(bundle).artifacts[ONNX_INT8_CPU]
    assert f"{drop:.2f} -> {budget['drop_after']:.2f} points" in past.stdout
    assert f"{len(left)} of {budget['candidates']} convs" in past.stdout and "latency (ORT CPU)" in past.stdout
    _assert_float(onnx.load(str(bundle / ONNX_INT8_CPU)), left)


def test_a_budget_that_cannot_be_met_writes_nothing_and_exits_1(fornet64, tmp_path, capsys, monkeypatch):
    """Heavy clipping (percentile 90) costs the CPU graph more than the budget even with every
    convolution float (its Adds, Concats and Resizes stay quantized)."""
    from cli_helpers import assert_one_line_error

    bundle, data = _copy(fornet64[0], tmp_path), fornet64[1]
    manifest = (bundle / "manifest.json").read_bytes()
    common = ["calibrate", "--bundle", str(bundle), "--data", str(data), "--num-images", "2", "--method", "percentile",
              "--percentile", "90", "--target", "cpu"]
    refused = _cli(capsys, monkeypatch, *common, "--max-drop", "1")
    assert_one_line_error(refused, "--max-drop 1 cannot be met: the INT8 cpu graph loses",
                          "with all 44 quantized convolutions left float; nothing was written")
    assert refused.returncode == CheckFailed.exit_code == 1
    assert (bundle / "manifest.json").read_bytes() == manifest and not (bundle / ONNX_INT8_CPU).exists()
    assert len(list((bundle / CALIBRATION_DIR).glob("*.ranges.json"))) == 1  # kept: a retry collects nothing
    retry = calibrate_bundle(bundle, data, target="cpu", method="percentile", percentile=90.0, num_images=2,
                             budget=AccuracyBudget(100.0))
    assert retry["calibration"]["ranges"]["cached"] and retry["accuracy_budget"]["drop_before"] > 1


def test_the_command_line_refuses_bad_budgets_in_one_line(fornet64, tmp_path, capsys, monkeypatch):
    from cli_helpers import assert_one_line_error

    bundle, data = fornet64  # nothing below writes
    images = tmp_path / "images"
    images.mkdir()
    for file in sorted((data / "leftImg8bit" / "train").rglob("*.png"))[:2]:
        shutil.copyfile(file, images / file.name)
    common = ["calibrate", "--bundle", str(bundle), "--num-images", "2"]
    unlabelled = _cli(capsys, monkeypatch, *common, "--data", str(images), "--max-drop", "1")
    assert_one_line_error(unlabelled, "--max-drop needs labelled images", "without labels", "--max-drop-data DIR")
    assert unlabelled.returncode == 3
    negative = _cli(capsys, monkeypatch, *common, "--data", str(data), "--max-drop", "-1")
    assert_one_line_error(negative, "--max-drop must be a number of mIoU points from 0 to 100, got -1.0")
    assert negative.returncode == 2
