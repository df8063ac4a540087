"""The CPU tails (export/tail.py) against the export's own Resize + ArgMax tail, in ONNX Runtime.

The tails run alone here, on logits built to break them: small integers (bilinear weights
k/8 make every interpolated value exact, so ``refine`` must match ``full`` bit for bit,
ties included), label regions with noise (blocks whose corners agree next to blocks whose
corners do not), constant maps (no block to refine) and checkerboards (every block).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.contract import COARSE_LOGITS, LABELS, LOGITS, TAIL_SCOPE
from fornet_deploy.errors import FornetError, OptionError
from fornet_deploy.export.tail import calibrated_graph, cpu_graph, find_tail, phase_weights

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
COARSE_IN = "coarse_in"


def export_tail(labels_type: int = TensorProto.UINT8, with_logits: bool = True) -> onnx.ModelProto:
    """The export's tail alone, named and typed as torch.onnx writes it (export/onnx.py):
    classifier (an Identity here) -> Resize x4 (logits) -> ArgMax -> Cast(s) (labels)."""
    casts = [(TensorProto.FLOAT16, "/Cast"), (TensorProto.UINT8, "/Cast_1")] if labels_type == TensorProto.UINT8 \
        else [(labels_type, "/Cast")]
    nodes = [
        helper.make_node("Identity", [COARSE_IN], ["/head/classifier/Conv_output_0"], name="/head/classifier/Conv"),
        helper.make_node("Resize", ["/head/classifier/Conv_output_0", "", "scales"], [LOGITS], name="/Resize",
                         mode="linear", coordinate_transformation_mode="half_pixel"),
        helper.make_node("ArgMax", [LOGITS], ["/ArgMax_output_0"], name="/ArgMax", axis=1, keepdims=0),
    ]
    previous = "/ArgMax_output_0"
    for i, (to, name) in enumerate(casts):
        out = LABELS if i == len(casts) - 1 else f"{name}_output_0"
        nodes.append(helper.make_node("Cast", [previous], [out], name=name, to=to))
        previous = out
    outputs = [helper.make_tensor_value_info(LABELS, labels_type, ["n", "H", "W"])]
    if with_logits:
        outputs.insert(0, helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["n", "c", "H", "W"]))
    graph = helper.make_graph(
        nodes, "tail", [helper.make_tensor_value_info(COARSE_IN, TensorProto.FLOAT, ["n", "c", "h", "w"])], outputs,
        initializer=[numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(proto: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    run = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in run.get_outputs()]
    return lambda coarse: dict(zip(names, run.run(None, {COARSE_IN: coarse})))


@pytest.fixture(scope="module")
def runs():
    proto = export_tail()
    return {tail: session(cpu_graph(proto, tail)) for tail in ("full", "refine", "nearest")}


def bilinear_x4(coarse: np.ndarray, n: int, y: int, x: int) -> np.ndarray:
    """The exact (float64) half_pixel x4 interpolation of ``coarse`` at output pixel (y, x)."""
    h, w = coarse.shape[2:]
    sy, sx = max((y + 0.5) / 4 - 0.5, 0.0), max((x + 0.5) / 4 - 0.5, 0.0)
    y0, x0 = int(sy), int(sx)
    fy, fx = sy - y0, sx - x0
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    c = coarse[n].astype(np.float64)
    return (1 - fy) * ((1 - fx) * c[:, y0, x0] + fx * c[:, y0, x1]) + fy * ((1 - fx) * c[:, y1, x0] + fx * c[:, y1, x1])


def assert_refine_is_full(runs, coarse: np.ndarray, exact: bool = False) -> None:
    """``refine``'s labels are ``full``'s; with float logits, except where the two classes'
    exact interpolated logits are within float32 rounding of each other (the two graphs
    round the same sum in another order: a tie either way)."""
    want, got = runs["full"](coarse), runs["refine"](coarse)
    assert got[LABELS].dtype == np.uint8 and got[LABELS].shape == want[LABELS].shape
    np.testing.assert_array_equal(got[COARSE_LOGITS], coarse)  # the logits it starts from, untouched
    if exact:
        np.testing.assert_array_equal(got[LABELS], want[LABELS])
    for n, y, x in zip(*np.nonzero(got[LABELS] != want[LABELS])):
        value = bilinear_x4(coarse, n, y, x)
        a, b = value[got[LABELS][n, y, x]], value[want[LABELS][n, y, x]]
        assert abs(a - b) <= 4 * np.finfo(np.float32).eps * np.abs(value).max(), (n, y, x, a, b)


shapes = st.tuples(st.integers(1, 2), st.integers(2, 6), st.integers(1, 7), st.integers(1, 9))


@FAST
@given(shape=shapes, levels=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_refine_equals_full_on_exact_integer_logits(runs, shape, levels, seed):
    """Small integer logits: every interpolation is exact, ties are everywhere (also at
    the corners of one block), and the ArgMax's lowest-index rule must decide alike."""
    coarse = np.random.default_rng(seed).integers(0, levels, shape).astype(np.float32)
    assert_refine_is_full(runs, coarse, exact=True)


@FAST
@given(shape=shapes, noise=st.sampled_from([0.0, 0.05, 0.5, 3.0]), regions=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_refine_equals_full_on_label_regions_with_noise(runs, shape, noise, regions, seed):
    """Rectangles of one winning class in float noise: blocks inside a region (corners agree)
    take the shortcut, blocks on region edges or in noise are interpolated."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    coarse = rng.normal(0.0, noise, shape).astype(np.float32)
    for _ in range(regions):
        top, left = rng.integers(0, h), rng.integers(0, w)
        bottom, right = rng.integers(top, h) + 1, rng.integers(left, w) + 1
        coarse[:, rng.integers(0, c), top:bottom, left:right] += rng.uniform(0.5, 4.0)
    assert_refine_is_full(runs, coarse)


def test_refine_with_no_block_to_refine_and_with_every_block(runs):
    constant = np.zeros((2, 5, 6, 9), np.float32)
    constant[:, 3] = 1.0  # one class everywhere: no block has disagreeing corners
    assert_refine_is_full(runs, constant, exact=True)
    assert (runs["refine"](constant)[LABELS] == 3).all()
    checker = np.zeros((1, 2, 8, 8), np.float32)
    checker[0, 0] = (np.indices((8, 8)).sum(0) % 2) * 2.0 - 1.0  # neighbours always disagree
    assert_refine_is_full(runs, checker, exact=True)


def test_refine_at_a_real_resolution(runs):
    """A 512x1024 label map's worth of smooth random logits (19 classes), where float32 ties
    two classes at a pixel or so."""
    rng = np.random.default_rng(7)
    coarse = rng.normal(size=(1, 19, 16, 32)).astype(np.float32)
    noise = rng.normal(0, 0.3, (1, 19, 128, 256)).astype(np.float32)
    coarse = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) + noise
    assert_refine_is_full(runs, coarse)


def test_nearest_repeats_the_quarter_scale_argmax(runs):
    coarse = np.random.default_rng(3).normal(size=(2, 4, 5, 7)).astype(np.float32)
    quarter = coarse.argmax(1).astype(np.uint8)
    np.testing.assert_array_equal(runs["nearest"](coarse)[LABELS], quarter.repeat(4, axis=1).repeat(4, axis=2))


def test_cpu_graph_outputs_and_names():
    proto = export_tail()
    assert cpu_graph(proto, "full") is proto
    refined = cpu_graph(proto, "refine")
    assert [o.name for o in refined.graph.output] == [COARSE_LOGITS, LABELS]
    assert all(n.name.startswith(TAIL_SCOPE) for n in refined.graph.node if n.name != "/head/classifier/Conv")
    assert not {"Resize", "ArgMax"} & {n.op_type for n in refined.graph.node if not n.name.startswith(TAIL_SCOPE)}
    without_logits = cpu_graph(export_tail(with_logits=False), "refine")
    assert [o.name for o in without_logits.graph.output] == [LABELS]  # no logits asked for, none given


def test_int32_labels_keep_their_dtype():
    proto = export_tail(TensorProto.INT32)
    coarse = np.random.default_rng(1).normal(size=(1, 3, 4, 6)).astype(np.float32)
    want = session(proto)(coarse)[LABELS]
    for tail in ("refine", "nearest"):
        got = session(cpu_graph(proto, tail))(coarse)[LABELS]
        assert got.dtype == np.int32
    np.testing.assert_array_equal(session(cpu_graph(proto, "refine"))(coarse)[LABELS], want)


def test_phase_weights_are_the_bilinear_weights_of_a_block():
    weights = phase_weights()
    assert weights.shape == (16, 4)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    assert weights[0].tolist() == pytest.approx([49 / 64, 7 / 64, 7 / 64, 1 / 64])  # pixel nearest the top-left


def test_unknown_tail_and_foreign_graphs_are_one_line():
    with pytest.raises(OptionError, match="unknown tail"):
        cpu_graph(export_tail(), "bicubic")
    no_labels = export_tail()
    del no_labels.graph.output[1]
    with pytest.raises(FornetError, match="no 'labels' output"):
        find_tail(no_labels.graph)
    nearest = export_tail()
    next(n for n in nearest.graph.node if n.op_type == "Resize").attribute[0].s = b"nearest"
    with pytest.raises(FornetError, match="not bilinear"):
        cpu_graph(nearest, "refine")


def cropped_tail(height: int, width: int, start: int = 0) -> onnx.ModelProto:
    """export_tail with the crop of an export at a size that is not a multiple of the stride:
    the logits Sliced to height x width (one Slice per axis) between the Resize and the ArgMax."""
    proto = export_tail()
    graph = proto.graph
    resize = next(n for n in graph.node if n.op_type == "Resize")
    resize.output[0] = "/Resize_output_0"
    crops = [helper.make_node("Slice", ["/Resize_output_0", "start", "height", "axis2"], ["/Slice_output_0"],
                              name="/Slice"),
             helper.make_node("Slice", ["/Slice_output_0", "start", "width", "axis3"], [LOGITS], name="/Slice_1")]
    index = list(graph.node).index(resize) + 1
    for offset, node in enumerate(crops):
        graph.node.insert(index + offset, node)
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), name) for name, v in (
        ("start", start), ("height", height), ("width", width), ("axis2", 2), ("axis3", 3)))
    return proto


@pytest.mark.parametrize("tail", ["refine", "nearest"])
def test_a_cropped_tail_crops_labels_and_coarse_logits_alike(tail):
    coarse = np.random.default_rng(4).integers(-3, 4, size=(2, 5, 6, 9)).astype(np.float32)  # exact, with ties
    proto = cropped_tail(17, 29)
    want = session(proto)(coarse)
    got = session(cpu_graph(proto, tail))(coarse)
    uncropped = session(cpu_graph(export_tail(), tail))(coarse)
    assert want[LABELS].shape == got[LABELS].shape == (2, 17, 29)
    np.testing.assert_array_equal(got[LABELS], uncropped[LABELS][:, :17, :29])
    if tail == "refine":
        np.testing.assert_array_equal(got[LABELS], want[LABELS])
    np.testing.assert_array_equal(got[COARSE_LOGITS], coarse[:, :, :5, :8])  # ceil(17/4) x ceil(29/4)
    with pytest.raises(FornetError, match="not a crop of the logits"):
        find_tail(cropped_tail(17, 29, start=1).graph)


def test_calibrated_graph_applies_the_bundles_tail_to_the_cpu_target_only():
    proto = export_tail()
    assert calibrated_graph(proto, "tensorrt", {"cpu_tail": "refine"}) is proto
    assert calibrated_graph(proto, "cpu", {}) is proto  # a model.onnx exported before the CPU tail existed
    assert any(n.name.startswith(TAIL_SCOPE) for n in calibrated_graph(proto, "cpu", {"cpu_tail": "refine"}).graph.node)


# --- the tail through export and calibrate ------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """One dynamic-shape bundle per tail option."""
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("tails")
    return {tail: (root / tail, export_bundle(tiny_checkpoint, root / tail,
                                              ExportConfig(height=128, width=256, dynamic=True, tail=tail)))
            for tail in ("refine", "nearest", "full")}


@pytest.mark.parametrize("tail", ["refine", "nearest", "full"])
def test_export_writes_the_cpu_graph_of_each_tail(exported, tail):
    from fornet_deploy.bundle import Bundle
    from fornet_deploy.contract import ONNX_CPU, ONNX_FP32
    from fornet_deploy.export.onnx import read_metadata
    from fornet_deploy.runtimes.registry import resolve_format

    root, entries = exported[tail]
    bundle = Bundle.open(root)
    assert bundle.manifest["export"]["tail"] == bundle.manifest["export"]["cpu_tail"] == tail
    assert bundle.artifacts[ONNX_FP32]["tail"] == "full"
    assert read_metadata(onnx.load(str(root / ONNX_FP32)))["cpu_tail"] == tail  # what calibrate --target cpu reads
    if tail == "full":  # no CPU graph: ONNX Runtime runs model.onnx on a CPU too
        assert set(entries) == {ONNX_FP32} and not bundle.has(ONNX_CPU)
        assert resolve_format(bundle, "ort", "fp32", "cpu").artifact == ONNX_FP32
        return
    cpu = bundle.artifacts[ONNX_CPU]
    assert set(entries) == {ONNX_FP32, ONNX_CPU} and entries[ONNX_CPU] == cpu
    assert cpu["source"] == ONNX_FP32 and cpu["source_sha256"] == bundle.sha256(ONNX_FP32)
    assert cpu["tail"] == tail and cpu["outputs"] == [COARSE_LOGITS, LABELS, "importance", "topk_mask"]
    assert cpu["folded_concats"] == ["/focus/enhance/Concat", "/head/Concat"]
    assert resolve_format(bundle, "ort", "fp32", "cpu").artifact == ONNX_CPU
    assert resolve_format(bundle, "ort", "fp32", "cuda").artifact == ONNX_FP32


def test_refine_graph_gives_model_onnx_labels_at_any_size_and_batch(exported):
    from fornet_deploy.contract import ONNX_CPU, ONNX_FP32
    from fornet_deploy.runtimes.ort_runner import OrtRunner

    root, _ = exported["refine"]
    rng = np.random.default_rng(0)
    with OrtRunner(root / ONNX_FP32) as full, OrtRunner(root / ONNX_CPU) as cpu:
        for shape in ((2, 3, 128, 256), (1, 3, 96, 352), (3, 3, 32, 32)):
            x = rng.normal(size=shape).astype(np.float32)
            want, got = full(x), cpu(x)
            np.testing.assert_array_equal(got[LABELS], want[LABELS])
            np.testing.assert_array_equal(got["topk_mask"], want["topk_mask"])
            assert got[COARSE_LOGITS].shape == (shape[0], 19, shape[2] // 4, shape[3] // 4)
            assert LOGITS not in got


def test_outputs_decide_what_the_cpu_graph_gives(tmp_path, tiny_checkpoint):
    from fornet_deploy.bundle import Bundle
    from fornet_deploy.contract import ONNX_CPU
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    export_bundle(tiny_checkpoint, tmp_path / "labels", ExportConfig(height=64, width=128, outputs=(LABELS,)))
    assert Bundle.open(tmp_path / "labels").artifacts[ONNX_CPU]["outputs"] == [LABELS]
    # no labels: nothing for a tail to compute, so no CPU graph, whatever --tail says
    export_bundle(tiny_checkpoint, tmp_path / "logits", ExportConfig(height=64, width=128, outputs=(LOGITS,)))
    bundle = Bundle.open(tmp_path / "logits")
    assert not bundle.has(ONNX_CPU) and bundle.manifest["export"]["cpu_tail"] == "full"


def test_another_tail_makes_another_model_onnx_and_drops_the_old_cpu_graphs(tmp_path, tiny_checkpoint, tiny_data):
    from fornet_deploy.bundle import Bundle
    from fornet_deploy.calibration.qdq import calibrate_bundle
    from fornet_deploy.contract import ONNX_CPU, ONNX_FP32, ONNX_INT8_CPU
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path / "b"
    export_bundle(tiny_checkpoint, root, ExportConfig(height=128, width=256))
    calibrate_bundle(root, tiny_data, num_images=2, method="minmax", target="cpu")
    before = Bundle.open(root).sha256(ONNX_FP32)
    export_bundle(tiny_checkpoint, root, ExportConfig(height=128, width=256, tail="full"))
    bundle = Bundle.open(root)
    assert bundle.sha256(ONNX_FP32) != before  # its embedded cpu_tail changed
    assert not bundle.has(ONNX_CPU) and not bundle.has(ONNX_INT8_CPU)  # made for the other tail: removed
    assert not (root / ONNX_CPU).exists() and not (root / ONNX_INT8_CPU).exists()


@pytest.mark.parametrize("tail", ["refine", "full"])
def test_calibrate_cpu_puts_the_bundles_tail_on_the_u8s8_graph(exported, tmp_path, tiny_data, tail):
    import shutil

    from fornet_deploy.calibration.qdq import calibrate_bundle
    from fornet_deploy.contract import ONNX_INT8_CPU
    from fornet_deploy.export.onnx import read_metadata
    from fornet_deploy.runtimes.ort_runner import OrtRunner

    root = tmp_path / tail
    shutil.copytree(exported[tail][0], root)
    calibrate_bundle(root, tiny_data, num_images=2, method="minmax", target="cpu")
    proto = onnx.load(str(root / ONNX_INT8_CPU))
    assert read_metadata(proto)["cpu_tail"] == tail
    names = [o.name for o in proto.graph.output]
    x = np.random.default_rng(1).normal(size=(1, 3, 128, 256)).astype(np.float32)
    with OrtRunner(root / ONNX_INT8_CPU) as runner:
        out = runner(x)
    assert out[LABELS].shape == (1, 128, 256) and out[LABELS].dtype == np.uint8
    if tail == "full":
        assert names[0] == LOGITS and not any(n.name.startswith(TAIL_SCOPE) for n in proto.graph.node)
        return
    assert names[0] == COARSE_LOGITS and any(n.name.startswith(TAIL_SCOPE) for n in proto.graph.node)
    # the labels of the full tail on the same (quantized) 1/4-scale logits
    want = session(export_tail())(out[COARSE_LOGITS])[LABELS]
    assert np.mean(out[LABELS] == want) > 0.9999
