import json

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.errors import ExitCode
from fornet_deploy.export.lint import TRT_MAX_TOPK_K, lint_file, lint_tensorrt
from fornet_deploy.export.qdq_lint import Graph, int_to_uint8_cast


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_threshold_bundle_passes_and_dynamic_dims_warn(tiny_bundle):
    report = lint_file(tiny_bundle / "model.onnx")
    assert report["passed"]
    assert [f["check"] for f in report["findings"]] == ["dynamic-shape"]


def test_topk_above_the_tensorrt_limit_is_a_blocker():
    k = numpy_helper.from_array(np.array([TRT_MAX_TOPK_K + 1], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")
    model = _model([node], [k], [_vi("x", [1, 8192])], [_vi("v", [1, TRT_MAX_TOPK_K + 1]), _vi("i", [1, TRT_MAX_TOPK_K + 1], TensorProto.INT64)])
    findings = lint_tensorrt(model)
    assert [(f.severity, f.check) for f in findings] == [("blocker", "topk")]
    assert "3841" in findings[0].message


def test_runtime_k_unsupported_ops_custom_domains_and_asymmetric_qdq():
    nodes = [
        helper.make_node("TopK", ["x", "kk"], ["v", "i"], name="dyn_topk"),
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("Gelu", ["x"], ["g"], name="custom", domain="com.microsoft"),
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    model = _model(nodes, inits, [_vi("x", [1, 16]), _vi("kk", [1], TensorProto.INT64)], [_vi("v", None)])
    checks = {(f.severity, f.check, f.node) for f in lint_tensorrt(model)}
    assert ("blocker", "topk", "dyn_topk") in checks
    assert ("blocker", "unsupported-op", "uniq") in checks
    assert ("warning", "data-dependent", "nz") in checks
    assert ("blocker", "custom-op", "custom") in checks
    assert ("blocker", "qdq", "q") in checks


def test_quantized_importance_map_into_topk_warns():
    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s"], ["x"], name="/focus/selector/dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="/focus/topk/ReduceMin"),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")]
    model = _model(nodes, inits, [_vi("xq", [1, 1, 4, 4], TensorProto.INT8)], [_vi("y", [1, 1, 4, 4])])
    assert [f.check for f in lint_tensorrt(model)] == ["fp32-selector"]


# What TensorRT consumes. The CPU graphs (model.cpu.onnx, the U8S8 model.int8.cpu.onnx) are for
# ONNX Runtime's CPU provider only and compute labels with the CPU tail (tests/export/test_tail.py).
GRAPHS = ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx")


def _labels_chain(proto: onnx.ModelProto) -> list[tuple[str, int | None]]:
    """(op, Cast target) from the ArgMax to the ``labels`` output."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    chain, node = [], producer["labels"]
    while True:
        chain.append((node.op_type, next((a.i for a in node.attribute if a.name == "to"), None)))
        if node.op_type == "ArgMax":
            return chain[::-1]
        node = producer[node.input[0]]


@pytest.mark.parametrize("labels_dtype, chain", [
    ("uint8", [("ArgMax", None), ("Cast", TensorProto.FLOAT16), ("Cast", TensorProto.UINT8)]),
    ("int32", [("ArgMax", None), ("Cast", TensorProto.INT32)]),
])
def test_every_exported_graph_keeps_labels_tensorrt_can_build(tmp_path, tiny_checkpoint, tiny_data, labels_dtype,
                                                              chain):
    """fp32 (simplified by onnxsim), the mixed-FP16 rewrite and the TensorRT INT8 graph:
    no integer -> UINT8 Cast anywhere, and ONNX Runtime's labels are the argmax of its logits."""
    from fornet_deploy.calibration.qdq import calibrate_bundle
    from fornet_deploy.export.fp16 import convert_fp16
    from fornet_deploy.export.onnx import ExportConfig, export_bundle
    from fornet_deploy.runtimes.ort_runner import OrtRunner

    bundle = tmp_path / "b"
    export_bundle(tiny_checkpoint, bundle, ExportConfig(height=128, width=256, labels_dtype=labels_dtype))
    convert_fp16(bundle)
    calibrate_bundle(bundle, tiny_data, num_images=2, target="tensorrt")
    batch = np.random.default_rng(0).normal(size=(1, 3, 128, 256)).astype(np.float32)
    for name in GRAPHS:
        proto = onnx.load(str(bundle / name))
        assert int_to_uint8_cast(Graph(proto)) == [], name
        assert _labels_chain(proto) == chain, name
        with OrtRunner(bundle / name) as runner:
            out = runner(batch)
        assert out["labels"].dtype == np.dtype(labels_dtype)
        np.testing.assert_array_equal(out["labels"], out["logits"].argmax(1), err_msg=name)
    for name in GRAPHS:
        report = lint_file(bundle / name)
        assert report["passed"] and report["counts"].get("int-to-uint8-cast") is None, (name, report["findings"])
    for name in GRAPHS[:3]:  # no placement finding, no FP32 tail or island in the INT8 graph either
        assert lint_file(bundle / name)["warnings"] == 0, (name, lint_file(bundle / name)["findings"])


def test_inputs_tensorrt_takes_only_as_constants():
    """onnx-tensorrt's operator matrix: Slice's and Pad's `axes` must be initializers."""
    nodes = [
        helper.make_node("Shape", ["x"], ["dims"], name="shape"),
        helper.make_node("Slice", ["dims", "zero", "one"], ["axis"], name="pick"),
        helper.make_node("Slice", ["x", "zero", "one", "axis"], ["computed"], name="computed_axes"),
        helper.make_node("Slice", ["x", "zero", "one", "one"], ["constant"], name="constant_axes"),
    ]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("one", 1))]
    model = _model(nodes, inits, [_vi("x", [4, 4])], [_vi("computed", None), _vi("constant", None)])
    assert [(f.severity, f.check, f.node) for f in lint_tensorrt(model)] == [
        ("blocker", "constant-input", "computed_axes")]


def _traced(module, dynamic: bool) -> onnx.ModelProto:
    import io
    import warnings

    import onnxsim
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 60, 60),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}} if dynamic else None)
    return onnxsim.simplify(onnx.load_from_string(buffer.getvalue()))[0]


def test_a_shape_computed_through_a_2d_tensor_warns():
    """F.pad with traced amounts exports its pads through a Reshape to (-1, 2) and a Transpose,
    which TensorRT's 0-D/1-D shape tensors refuse; FoR-Net's own traced pad (model/padding.py)
    keeps every shape 1-D, and constant pads are no shape computation at all."""
    import torch
    import torch.nn.functional as F

    from fornet_deploy.model.padding import pad_bottom_right, round_up

    class FPad(torch.nn.Module):
        def forward(self, x):
            return F.pad(x, (0, (-x.shape[-1]) % 32, 0, (-x.shape[-2]) % 32))

    class OwnPad(torch.nn.Module):
        def forward(self, x):
            shape = torch._shape_as_tensor(x)
            return pad_bottom_right(x, round_up(shape[2], 32), round_up(shape[3], 32))

    findings = lint_tensorrt(_traced(FPad(), dynamic=True))
    assert [f.check for f in findings if f.severity != "info"] == ["dynamic-shape", "shape-tensor"]
    assert "IShuffleLayer" in findings[1].message
    assert [f.check for f in lint_tensorrt(_traced(OwnPad(), dynamic=True))] == ["dynamic-shape"]
    assert lint_tensorrt(_traced(FPad(), dynamic=False)) == []


def _hostile(kind: str) -> onnx.ModelProto:
    """The issue-26 graphs that made lint raise, or say PASS on a graph TensorRT cannot read."""
    x, y = _vi("x", [1, 4]), _vi("y", [1, 4])
    identity = helper.make_node("Identity", ["x"], ["y"])
    if kind == "node without outputs":  # a custom-domain node: the ONNX checker has no schema to hold it to
        node = helper.make_node("Sink", ["x"], [], domain="my.domain")
        graph = helper.make_graph([node, identity], "g", [x], [y])
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)]
        return helper.make_model(graph, opset_imports=opsets)
    if kind == "empty TopK K":
        k = numpy_helper.from_array(np.array([], np.int64), "k")
    elif kind == "string TopK K":
        k = helper.make_tensor("k", TensorProto.STRING, [1], [b"three"])
    if kind in ("empty TopK K", "string TopK K"):
        return _model([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk")], [k], [x],
                      [y, _vi("i", [1, 4], TensorProto.INT64)])
    if kind == "string Q/DQ scale":
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s2"], ["y"], name="dq")]
        inits = [helper.make_tensor("s", TensorProto.STRING, [], [b"a"]),
                 numpy_helper.from_array(np.array(0.1, np.float32), "s2")]
        return _model(nodes, inits, [x], [y])
    assert kind == "opset 1"
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 1)])


@pytest.mark.parametrize("kind, check, fragment", [
    ("node without outputs", "custom-op", "my.domain::Sink"),
    ("empty TopK K", "topk", "TopK's K is not one integer"),
    ("string TopK K", "topk", "TopK's K is not one integer"),
    ("string Q/DQ scale", "qdq", "Q/DQ scale is object, not a float"),
    ("opset 1", "opset", "reads opset 9 and newer"),  # PASS before: TensorRT's ONNX parser needs 9+
])
def test_hostile_graphs_are_findings_not_tracebacks(tmp_path, kind, check, fragment):
    """Issue 26 (5, 6): lint raised on the first four (IndexError, ValueError, TypeError) and said
    PASS on the last; now each is a blocker in a FAIL report through the real entry point."""
    path = tmp_path / "model.onnx"
    onnx.save(_hostile(kind), str(path))
    result = run_cli("lint", str(path), "--json", str(tmp_path / "report.json"))
    assert result.returncode == ExitCode.CHECK_FAILED, result.stderr
    assert "Traceback" not in result.stderr and "FAIL: 1 blockers" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(f["severity"], f["check"]) for f in report["findings"]] == [("blocker", check)]
    assert fragment in report["findings"][0]["message"]
