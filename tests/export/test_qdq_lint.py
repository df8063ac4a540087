"""The Q/DQ placement and precision rules of ``lint --target tensorrt`` on small hand-built
graphs: each rule fires on its pattern, with its severity and count, and stays silent on
the placement NVIDIA recommends (inputs of weighted ops, residual input only)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.errors import ExitCode
from fornet_deploy.export import qdq_lint
from fornet_deploy.export.lint import lint_file, lint_tensorrt

F, H, U8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8
SCALE_ZERO = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
              numpy_helper.from_array(np.array(0, np.int8), "z")]


def _model(nodes, inits, out="y", out_type=F, in_type=F, out_shape=None, extra_outputs=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info(out, out_type, out_shape), *extra_outputs],
                              [*inits, *SCALE_ZERO])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _w(name, c_out=16, c_in=16, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal((c_out, c_in, 1, 1)).astype(dtype), name)


def _qdq(t):
    return [helper.make_node("QuantizeLinear", [t, "s", "z"], [f"{t}_q"], name=f"{t}_Q"),
            helper.make_node("DequantizeLinear", [f"{t}_q", "s", "z"], [f"{t}_dq"], name=f"{t}_DQ")]


def _conv(x, w, y, name):
    return helper.make_node("Conv", [x, w], [y], name=name)


def _checks(model) -> dict[str, tuple[str, int]]:
    """check -> (severity, count) of the TensorRT lint."""
    found = {}
    for f in lint_tensorrt(model):
        severity, count = found.get(f.check, (f.severity, 0))
        found[f.check] = (severity, count + 1)
    return found


def test_conv_output_qdq_and_wrapped_relu_are_warnings():
    # x -> Q/DQ -> conv -> Q/DQ -> Relu -> Q/DQ -> conv2: the placement the issue found 29 times
    nodes = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"), *_qdq("c"),
             helper.make_node("Relu", ["c_dq"], ["r"], name="relu"), *_qdq("r"), _conv("r_dq", "w2", "y", "conv2")]
    assert _checks(_model(nodes, [_w("w"), _w("w2")])) == {
        "qdq-on-conv-output": ("warning", 1), "dq-relu-q": ("warning", 1)}


def test_input_only_placement_is_clean():
    nodes = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
             *_qdq("r"), _conv("r_dq", "w2", "y", "conv2")]
    assert lint_tensorrt(_model(nodes, [_w("w"), _w("w2")])) == []


def test_a_pool_reading_a_quantized_conv_output_is_clean():
    """Conv -> Q -> DQ -> {conv2, GlobalAveragePool}: the conv writes INT8 once and the pool
    reads it (NVIDIA's quantizable-op pattern); a Relu there is still a finding."""
    def graph(reader: str):
        return _model([*_qdq("x"), _conv("x_dq", "w", "c", "conv"), *_qdq("c"), _conv("c_dq", "w2", "y", "conv2"),
                       helper.make_node(reader, ["c_dq"], ["p"], name="reader")], [_w("w"), _w("w2")],
                      extra_outputs=[helper.make_tensor_value_info("p", F, None)])

    assert lint_tensorrt(graph("GlobalAveragePool")) == []
    assert _checks(graph("Relu")) == {"qdq-on-conv-output": ("warning", 1)}


def test_residual_add_both_inputs_vs_residual_input_only():
    both = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"), *_qdq("c"),
            helper.make_node("Add", ["c_dq", "x_dq"], ["y"], name="add")]
    assert _checks(_model(both, [_w("w")])) == {
        "qdq-on-add-both-inputs": ("warning", 1), "qdq-on-conv-output": ("warning", 1)}
    residual_only = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"),
                     helper.make_node("Add", ["c", "x_dq"], ["y"], name="add")]
    assert lint_tensorrt(_model(residual_only, [_w("w")])) == []


def test_fp32_island_between_quantized_convs_is_one_finding_per_group():
    # conv -> Mul(c, c) -> Div -> Q/DQ -> conv2: two FP32 nodes, connected, between INT8 regions
    nodes = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"), helper.make_node("Mul", ["c", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "c"], ["d"], name="div"), *_qdq("d"), _conv("d_dq", "w2", "y", "conv2")]
    findings = [f for f in lint_tensorrt(_model(nodes, [_w("w"), _w("w2")])) if f.check == "fp32-island"]
    assert len(findings) == 1 and findings[0].severity == "warning" and findings[0].node == "mul"
    assert "2 node(s)" in findings[0].message and "Div x1, Mul x1" in findings[0].message


def test_the_same_nodes_in_fp16_or_in_the_fp32_scopes_are_not_islands():
    scoped = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"),
              helper.make_node("Mul", ["c", "c"], ["m"], name="/focus/topk/Mul"), *_qdq("m"),
              _conv("m_dq", "w2", "y", "conv2")]
    assert lint_tensorrt(_model(scoped, [_w("w"), _w("w2")])) == []
    no_qdq = [_conv("x", "w", "c", "conv"), helper.make_node("Mul", ["c", "c"], ["y"], name="mul")]
    assert lint_tensorrt(_model(no_qdq, [_w("w")])) == []  # an FP32 graph is FP32 on purpose


def _tail(cast_via_half: bool, quantized: bool = True):
    """conv -> Resize to the input's H x W -> ArgMax -> labels, as the export writes it."""
    head = [*_qdq("x"), _conv("x_dq", "w", "c", "conv")] if quantized else [_conv("x", "w", "c", "conv")]
    casts = ([helper.make_node("Cast", ["a"], ["h"], name="to_half", to=H),
              helper.make_node("Cast", ["h"], ["y"], name="to_uint8", to=U8)] if cast_via_half
             else [helper.make_node("Cast", ["a"], ["y"], name="to_uint8", to=U8)])
    nodes = [*head, helper.make_node("Resize", ["c", "", "sc"], ["logits"], name="resize", mode="linear"),
             helper.make_node("ArgMax", ["logits"], ["a"], name="argmax", axis=1, keepdims=0), *casts]
    scales = numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), "sc")
    return _model(nodes, [_w("w"), scales], out_type=U8, out_shape=[1, 8, 8])


def test_integer_to_uint8_cast_is_a_blocker_and_the_fp32_tail_a_warning():
    assert _checks(_tail(cast_via_half=False)) == {"fp32-tail": ("warning", 2), "int-to-uint8-cast": ("blocker", 1)}
    assert _checks(_tail(cast_via_half=True)) == {"fp32-tail": ("warning", 2)}  # HALF -> UINT8 is documented
    assert _checks(_tail(cast_via_half=False, quantized=False)) == {"int-to-uint8-cast": ("blocker", 1)}
    assert _checks(_tail(cast_via_half=True, quantized=False)) == {}


def test_report_counts_every_check(tmp_path, monkeypatch):
    path = tmp_path / "old_labels.onnx"
    onnx.save(_tail(cast_via_half=False), str(path))
    report = lint_file(path)
    assert not report["passed"] and report["blockers"] == 1 and report["warnings"] == 2
    assert report["counts"] == {"fp32-tail": 2, "int-to-uint8-cast": 1}
    assert report["qdq"]["quantized_convs"] == 1 and report["qdq"]["quantize_linear"] == 1
    assert json.loads(json.dumps(report)) == report
    monkeypatch.setenv("COLUMNS", "240")  # a table row a line
    result = run_cli("lint", str(path))  # the command prints the counts and fails on the blocker
    assert result.returncode == ExitCode.CHECK_FAILED
    counts = {}  # the command's table of findings per check: check, severity, findings, first node
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 4 and cells[2].isdigit():
            counts[cells[0]] = (cells[1], int(cells[2]))
    assert counts == {"int-to-uint8-cast": ("blocker", 1), "fp32-tail": ("warning", 2)}


def test_standalone_quantize_prediction():
    # r = Relu(conv(x)) is quantized for conv2 and also read by an FP32 Sigmoid outside the
    # scopes: TensorRT must keep a float copy, so the Q cannot fold into conv + Relu.
    shared = [*_qdq("x"), _conv("x_dq", "w", "c", "conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
              *_qdq("r"), _conv("r_dq", "w2", "y", "conv2"), helper.make_node("Sigmoid", ["r"], ["p"], name="sig")]
    extra = [helper.make_tensor_value_info("p", F, None)]
    graph = qdq_lint.Graph(_model(shared, [_w("w"), _w("w2")], extra_outputs=extra))
    assert qdq_lint.standalone_quantize_predicted(graph) == ["r_Q"]  # x_Q quantizes the input: not counted
    alone = [n for n in shared if n.name != "sig"]
    assert qdq_lint.standalone_quantize_predicted(qdq_lint.Graph(_model(alone, [_w("w"), _w("w2")]))) == []
