"""Q/DQ placement for TensorRT on the real exported FoR-Net graph: NVIDIA's rules, FP16
everywhere but the FP32 scopes, and nothing ``lint --target tensorrt`` objects to."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, numpy_helper

from fornet_deploy.calibration.placement import (
    INT8_MAX,
    OPSET,
    activation_scale,
    conv_supported,
    fp32_name,
    plan_qdq,
    range_tensors,
    tensorrt_graph,
    to_opset,
    weight_scales,
)
from fornet_deploy.contract import ONNX_FP16, ONNX_FP32
from fornet_deploy.errors import FornetError
from fornet_deploy.export.fp16 import in_fp32_scope
from fornet_deploy.export.lint import lint_tensorrt
from fornet_deploy.export.qdq_lint import qdq_counts

# What the default FoR-Net gives (docs/research/int8-placement.md, section 4: option (ii)).
FORNET_CONVS, FORNET_ACTIVATIONS = 44, 39
FORNET_RESIDUAL_ADDS = ["/backbone/stage1/stage1.0/Add", "/backbone/stage2/stage2.1/Add",
                        "/backbone/stage3/stage3.1/Add", "/backbone/stage3/stage3.2/Add",
                        "/backbone/stage4/stage4.1/Add"]


@pytest.fixture(scope="module")
def graphs(fornet_bundle):
    return onnx.load(str(fornet_bundle / ONNX_FP32)), onnx.load(str(fornet_bundle / ONNX_FP16))


@pytest.fixture(scope="module")
def quantized(graphs):
    """The TensorRT graph with made-up ranges (placement does not depend on them)."""
    fp32, fp16 = graphs
    tensors = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    ranges = {name: (-1.0 - len(name) % 7, 2.0 + len(name) % 5) for name in tensors}
    model, summary = tensorrt_graph(fp16, ranges)
    return model, summary, ranges


def _consumers(model):
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def test_every_conv_outside_the_scopes_is_quantized_on_its_inputs_only(graphs):
    _, fp16 = graphs
    plan = plan_qdq(to_opset(fp16))
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    outside = {n.name for n in convs if not in_fp32_scope(n.name)}
    assert set(plan.weights) == outside and len(outside) == FORNET_CONVS and not plan.skipped_convs
    assert len(plan.activations) == FORNET_ACTIVATIONS
    for tensor in plan.activations:  # each quantized tensor is some quantized conv's data input
        assert any(c.input[0] == tensor for c in convs if c.name in outside), tensor
    readers = [name for rs in plan.activations.values() for name, _ in rs]
    assert not any(in_fp32_scope(name) for name in readers)  # the scopes are never rewired
    assert sorted(plan.residual_adds) == FORNET_RESIDUAL_ADDS
    assert plan.pooled == ["/neck/context/context.0/GlobalAveragePool"]


def test_residual_adds_read_the_residual_through_its_dq_and_fuse_the_conv_side(graphs):
    _, fp16 = graphs
    model = to_opset(fp16)
    plan = plan_qdq(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    for name in plan.residual_adds:
        add = next(n for n in model.graph.node if n.name == name)
        residual = [t for t in add.input if (name, list(add.input).index(t)) in plan.activations.get(t, [])]
        conv_side = [t for t in add.input if t not in residual]
        assert len(residual) == 1 and len(conv_side) == 1
        assert producers[conv_side[0]].name in plan.weights and len(consumers[conv_side[0]]) == 1


def test_the_tensorrt_graph_lints_clean_and_computes_in_fp16_outside_the_scopes(quantized, graphs):
    model, summary, _ = quantized
    assert lint_tensorrt(model) == []  # no placement finding, no FP32 island or tail, no blocker
    counts = qdq_counts(model)
    assert counts["quantized_convs"] == FORNET_CONVS and counts["fp32_compute_nodes_outside_scopes"] == 0
    assert counts["quantize_linear"] == counts["dequantize_linear"] == FORNET_CONVS + FORNET_ACTIVATIONS
    assert summary["quantized_convs"] == FORNET_CONVS and summary["opset"] == OPSET
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {i.name: i.type.tensor_type.elem_type for i in (*inferred.graph.value_info, *inferred.graph.input)}
    tail = [n for n in model.graph.node if n.op_type in ("Resize", "ArgMax")]
    assert tail and all(types[n.input[0]] == TensorProto.FLOAT16 for n in tail)  # the full-resolution tail: FP16


def test_the_fp32_scopes_are_untouched(quantized, graphs):
    model, _, _ = quantized
    _, fp16 = graphs
    before = {n.name: n for n in fp16.graph.node if in_fp32_scope(n.name) and n.op_type != "Constant"}
    after = {n.name: n for n in model.graph.node if in_fp32_scope(n.name) and n.op_type != "Constant"}
    assert before.keys() == after.keys() and before
    for name, node in after.items():
        # opset 18 moved Reduce axes from an attribute to an input; nothing else changed
        kept = node.input[:1] if node.op_type.startswith("Reduce") else node.input
        assert list(kept) == list(before[name].input[: len(kept)]) and node.op_type == before[name].op_type, name
    assert not [n for n in model.graph.node if n.op_type.endswith("QuantizeLinear") and in_fp32_scope(n.name)]


def test_qdq_parameters_are_symmetric_int8_with_fp16_scales(quantized):
    model, _, ranges = quantized
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        scale, zero_point = constants[node.input[1]], constants[node.input[2]]
        assert scale.dtype == np.float16 and (scale > 0).all() and zero_point.dtype == np.int8 and not zero_point.any()
    for conv in (n for n in model.graph.node if n.op_type == "Conv" and not in_fp32_scope(n.name)):
        weight_dq, data_dq = producers[conv.input[1]], producers[conv.input[0]]
        weight_q = producers[weight_dq.input[0]]
        assert weight_q.op_type == "QuantizeLinear" and weight_q.input[0] in constants  # FP16 weight -> Q -> DQ
        assert {a.name: a.i for a in weight_dq.attribute}["axis"] == 0
        assert constants[weight_dq.input[1]].shape == (constants[weight_q.input[0]].shape[0],)
        tensor = producers[data_dq.input[0]].input[0]
        low, high = ranges[fp32_name(tensor, ranges)]
        assert constants[data_dq.input[1]] == activation_scale(max(abs(low), abs(high)))
        assert len(conv.input) < 3 or conv.input[2] in constants  # float bias: no INT32 DQ


def test_reduce_axes_are_initializers(quantized):
    model, _, _ = quantized
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    initializers = {t.name for t in model.graph.initializer}
    reduces = [n for n in model.graph.node if n.op_type.startswith("Reduce") and len(n.input) > 1]
    assert reduces and all(n.input[1] in initializers and n.input[1] not in constants for n in reduces)


def test_the_ranges_measured_on_the_fp32_graph_cover_the_fp16_graph(graphs):
    fp32, fp16 = graphs
    measured = set(range_tensors(fp32))
    assert {fp32_name(t, measured) for t in plan_qdq(to_opset(fp16)).activations} == measured
    with pytest.raises(FornetError, match="no calibration range"):
        fp32_name("not/a/tensor_fp16", measured)


def test_fanout_convs_keeps_fp16_consumers_on_the_fp16_tensor(graphs):
    fp32, fp16 = graphs
    ranges = {t: (-1.0, 1.0) for t in range_tensors(fp32)}
    shared, _ = tensorrt_graph(fp16, ranges)
    convs, summary = tensorrt_graph(fp16, ranges, fanout="convs")
    assert lint_tensorrt(convs) == [] and summary["fanout"] == "convs"

    def dq_readers(model) -> Counter:
        producers = {o: n for n in model.graph.node for o in n.output}
        return Counter(n.op_type for n in model.graph.node for i in n.input[:1]
                       if (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear"
                       and p.input[0].endswith("_QuantizeLinear_Output") and "_weight_" not in p.input[0])

    narrow, wide = dq_readers(convs), dq_readers(shared)
    assert set(narrow) <= {"Conv", "Add", "GlobalAveragePool"} and sum(narrow.values()) < sum(wide.values())
    with pytest.raises(ValueError):
        plan_qdq(fp16, fanout="all")


@pytest.mark.parametrize("shape, group, kernel, reads_input, supported", [
    ((64, 32, 3, 3), 1, [3, 3], False, True),  # wide enough
    ((8, 3, 3, 3), 1, [3, 3], True, True),  # the stem: 8-aligned, reads the image
    ((8, 8, 1, 1), 1, [1, 1], False, False),  # narrow, not the image
    ((24, 8, 1, 1), 1, [1, 1], False, True),  # 8-aligned with one side >= 16
    ((8, 8, 1, 3), 1, [1, 3], True, False),  # non-square kernel
    ((16, 1, 3, 3), 16, [3, 3], False, True),  # depthwise, 8-aligned, 3x3
    ((12, 1, 3, 3), 12, [3, 3], False, False),  # depthwise, not 8-aligned
    ((8, 1, 1, 1), 8, [1, 1], False, False),  # grouped 1x1
])
def test_narrow_convs_follow_modelopts_rule(shape, group, kernel, reads_input, supported):
    assert (conv_supported(shape, group, kernel, reads_input) is None) == supported


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 4), st.just(3), st.just(3)),
              elements=st.floats(-50, 50, width=32)),
       st.floats(0, 1e5))
def test_scales_are_positive_fp16_and_cover_the_range(weight, amax):
    scales = weight_scales(weight)
    assert scales.dtype == np.float16 and scales.shape == (weight.shape[0],) and (scales > 0).all()
    # Where the scale is a normal FP16 number, each channel's largest weight lands on +-127
    # within the scale's rounding; smaller ones (subnormal scales, down to the smallest
    # positive FP16) only quantize weights that FP16 itself flushes or rounds coarsely.
    channel_max = np.abs(weight.reshape(weight.shape[0], -1)).max(1)
    normal = channel_max / INT8_MAX >= np.finfo(np.float16).tiny
    peak = channel_max[normal] / scales[normal].astype(np.float32)
    assert (np.abs(peak - INT8_MAX) <= INT8_MAX * 2**-10).all()
    scale = activation_scale(amax)
    assert scale.dtype == np.float16 and scale > 0
    if amax / INT8_MAX >= np.finfo(np.float16).tiny:
        assert abs(amax / float(scale) - INT8_MAX) <= INT8_MAX * 2**-10


def test_the_padding_to_the_stride_leaves_the_first_conv_reading_the_image(tiny_config):
    """A narrow first conv (3 -> 8 channels) is quantized because it reads the image (ModelOpt's
    rule); padded to the stride (a Pad folded into it, or a dynamic graph's Concats) it still
    does: the same placement at 384x480, 360x480 and in a dynamic graph."""
    import torch

    from fornet_deploy.export.fp16 import to_mixed_fp16
    from fornet_deploy.export.onnx import ExportConfig, export_onnx_model
    from fornet_deploy.model.fornet import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    plans = [plan_qdq(to_mixed_fp16(export_onnx_model(model, ExportConfig(height=h, width=480, dynamic=d)))[0])
             for h, d in ((384, False), (360, False), (360, True))]
    assert "/backbone/stem/stem.0/stem.0.0/Conv" in plans[0].weights
    assert plans[0].summary() == plans[1].summary() == plans[2].summary()
