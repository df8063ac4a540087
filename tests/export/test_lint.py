import numpy as np
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.export.lint import TRT_MAX_TOPK_K, lint_file, lint_tensorrt


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


def test_shipped_precision_graphs_pass_lint(tmp_path, tiny_checkpoint, tiny_data):
    from fornet_deploy.calibration.qdq import calibrate_bundle
    from fornet_deploy.export.fp16 import convert_fp16
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(height=128, width=256))
    convert_fp16(tmp_path / "b")
    calibrate_bundle(tmp_path / "b", tiny_data, num_images=2)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx"):
        report = lint_file(tmp_path / "b" / name)
        assert report["passed"] and report["warnings"] == 0, (name, report["findings"])
