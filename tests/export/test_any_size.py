"""Exports at sizes that are not multiples of the stride (CamVid's 360x480), static and dynamic:
FP32 parity with PyTorch, the CPU graph's labels, TensorRT lint, and what a stride multiple keeps."""

import cv2
import numpy as np
import onnx
import pytest

from fornet_deploy.contract import COARSE_LOGITS, LABELS, ONNX_CPU, ONNX_FP16, ONNX_FP32, ONNX_INT8_QDQ, TOPK_MASK
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.examples import synthetic_examples
from fornet_deploy.evaluation.parity import THRESHOLDS, parity_bundle, run_parity
from fornet_deploy.export.lint import lint_file
from fornet_deploy.export.onnx import ExportConfig, export_bundle
from fornet_deploy.model.topk import topk_count
from fornet_deploy.runtimes.ort_runner import OrtRunner
from fornet_deploy.runtimes.registry import load_runner

CAMVID = (360, 480)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_checkpoint):
    """A static and a dynamic export at 360x480 (360 is not a multiple of 32)."""
    root = tmp_path_factory.mktemp("any_size")
    for name, dynamic in (("static", False), ("dynamic", True)):
        export_bundle(tiny_checkpoint, root / name, ExportConfig(height=CAMVID[0], width=CAMVID[1], dynamic=dynamic))
    return {"static": root / "static", "dynamic": root / "dynamic"}


def check_parity(report: dict, h: int, w: int) -> None:
    assert report["summary"]["passed"], report["summary"]
    # parity_bundle reports each artefact (model.cpu.onnx and model.onnx); run_parity one
    for checked in report["artifacts"].values() if "artifacts" in report else [report]:
        s = checked["summary"]
        assert s["passed"] and s["argmax_agreement"] == 1.0 and s["max_abs_logit"] <= 1e-4, s
        assert s["mask_agreement"] == 1.0
        cells = -(-h // 8) * -(-w // 8)
        assert {i["mask_count_reference"] for i in checked["images"]} == {topk_count(0.25, cells)}


def test_static_export_at_360x480_has_fp32_parity_with_pytorch(bundles):
    report = parity_bundle(bundles["static"], "ort", "fp32", "cpu", limit=2)
    check_parity(report, *CAMVID)


@pytest.mark.parametrize("h, w", [CAMVID, (33, 47), (100, 70)])
def test_dynamic_export_has_fp32_parity_at_sizes_other_than_the_traced_one(bundles, h, w):
    with load_runner(bundles["dynamic"], "torch", "fp32", topk="exact") as reference, \
            load_runner(bundles["dynamic"], "ort", "fp32") as candidate:
        examples = synthetic_examples(2, h, w, Preprocessing(), seed=h)
        report = run_parity(reference, candidate, examples, THRESHOLDS["fp32"], topk_ratio=0.25)
    check_parity(report, h, w)


@pytest.mark.parametrize("name, shapes", [("static", [(1, 3, *CAMVID)]),
                                          ("dynamic", [(1, 3, *CAMVID), (2, 3, 33, 47), (1, 3, 1, 1)])])
def test_cpu_graph_labels_equal_model_onnx_labels(bundles, name, shapes):
    rng = np.random.default_rng(0)
    with OrtRunner(bundles[name] / ONNX_FP32) as full, OrtRunner(bundles[name] / ONNX_CPU) as cpu:
        for shape in shapes:
            x = rng.normal(size=shape).astype(np.float32)
            want, got = full(x), cpu(x)
            np.testing.assert_array_equal(got[LABELS], want[LABELS])
            np.testing.assert_array_equal(got[TOPK_MASK], want[TOPK_MASK])
            assert got[LABELS].shape == (shape[0], *shape[2:])
            assert got[COARSE_LOGITS].shape == (shape[0], 19, -(-shape[2] // 4), -(-shape[3] // 4))


def test_every_tensorrt_graph_at_360x480_lints_clean(bundles, tmp_path, tiny_checkpoint):
    """model.onnx (static, dynamic), model.fp16.onnx and model.int8.qdq.onnx: no blocker, and no
    warning but the dynamic input's profile; the selector's crop stays in the FP32 scope."""
    from fornet_deploy.calibration.qdq import calibrate_bundle
    from fornet_deploy.data.synthcity import SynthCityConfig, generate
    from fornet_deploy.export.fp16 import convert_fp16

    data = tmp_path / "camvid_sized"
    generate(data, SynthCityConfig(train=2, val=1, height=384, width=512, seed=2))
    for png in data.rglob("*.png"):  # SynthCity draws multiples of 32: crop its scenes to 360x480
        cv2.imwrite(str(png), cv2.imread(str(png), cv2.IMREAD_UNCHANGED)[:CAMVID[0], :CAMVID[1]])
    static = tmp_path / "static"
    export_bundle(tiny_checkpoint, static, ExportConfig(height=CAMVID[0], width=CAMVID[1]))
    convert_fp16(static)
    fp16 = onnx.load(str(static / ONNX_FP16))
    types = {v.name: v.type.tensor_type.elem_type for v in (*fp16.graph.value_info, *fp16.graph.output)}
    crops = [n.output[0] for n in fp16.graph.node if n.name.startswith("/focus/selector/Slice")]
    assert len(crops) == 2 and {types[c] for c in crops} == {onnx.TensorProto.FLOAT}
    calibrate_bundle(static, data, num_images=2, method="minmax", target="tensorrt")
    graphs = [bundles["static"] / ONNX_FP32, bundles["dynamic"] / ONNX_FP32, static / ONNX_FP16, static / ONNX_INT8_QDQ]
    for path in graphs:
        report = lint_file(path)
        assert report["passed"], (path, report["findings"])
        dynamic = path.parent == bundles["dynamic"]
        assert [f["check"] for f in report["findings"]] == (["dynamic-shape"] if dynamic else []), path


def test_what_the_pad_and_crop_add_to_a_graph(bundles, tmp_path, tiny_checkpoint):
    """At a multiple of 32 nothing (no Pad, crop Slice or shape arithmetic outside the Top-K);
    static at 360x480 constant amounts only; dynamic: shape arithmetic from the input's Shape."""
    export_bundle(tiny_checkpoint, tmp_path / "aligned", ExportConfig(height=128, width=256))

    def outside_topk(path):
        return [n for n in onnx.load(str(path)).graph.node if "/focus/topk/" not in n.name]

    def ops(nodes):
        return {n.op_type for n in nodes}

    aligned = outside_topk(tmp_path / "aligned" / ONNX_FP32)
    assert not ops(aligned) & {"Pad", "Slice", "ConstantOfShape", "Shape"}
    static = outside_topk(bundles["static"] / ONNX_FP32)
    assert not ops(static) & {"Shape", "ConstantOfShape"}  # constants: the amounts are known
    # 360 -> 384 rows, 480 kept: a row crop of the selector's logits and importance and of the
    # logits, the gate's pad back (the image's Pad is folded into the first convolution's pads)
    scopes = sorted(n.name.rsplit("/", 1)[0] + "/" + n.op_type for n in static if n.op_type in ("Pad", "Slice"))
    assert scopes == ["/Slice", "/focus/Pad", "/focus/selector/Slice", "/focus/selector/Slice"]
    dynamic = outside_topk(bundles["dynamic"] / ONNX_FP32)
    assert {"Shape", "ConstantOfShape", "Concat", "Slice"} <= ops(dynamic) and "Pad" not in ops(dynamic)
