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
    POOL_OPS,
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


@pytest.fixture(scope="module")
def graphs(fornet_bundle):
    return onnx.load(str(fornet_bundle / ONNX_FP32)), onnx.load(str(fornet_bundle / ONNX_FP16))


@pytest.fixture(scope="module")
def expected(graphs) -> dict:
    """What the rules give on the real FoR-Net, derived from the graph and the model, not read
    off a run of the placement (docs/research/int8-placement.md, section 4, option (ii))."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.model.checkpoint import load_checkpoint

    _, fp16 = graphs
    convs = [n for n in fp16.graph.node if n.op_type == "Conv" and not in_fp32_scope(n.name)]
    model = load_checkpoint(SHIPPED_WEIGHTS)[0]
    residual = [onnx_scope(name) + "/Add" for name, m in model.named_modules() if getattr(m, "residual", False)]
    return {
        "convs": len(convs),  # every conv outside the FP32 scopes (all are wide enough)
        "activations": len({n.input[0] for n in convs}),  # one pair per conv data input
        "residual_blocks": residual,
        "pools": sorted(n.name for n in fp16.graph.node if n.op_type in POOL_OPS and not in_fp32_scope(n.name)),
    }


def onnx_scope(module: str) -> str:
    """PyTorch's exporter names a module's nodes by its path, a list's items as ``list.index``:
    ``backbone.stage1.0`` -> ``/backbone/stage1/stage1.0``."""
    parts: list[str] = []
    for part in module.split("."):
        parts.append(f"{parts[-1]}.{part}" if part.isdigit() else part)
    return "/" + "/".join(parts)


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


def test_every_conv_outside_the_scopes_is_quantized_on_its_inputs_only(graphs, expected):
    _, fp16 = graphs
    model = to_opset(fp16)
    plan = plan_qdq(model)
    convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    outside = {n.name for n in convs if not in_fp32_scope(n.name)}
    assert set(plan.weights) == outside and len(outside) == expected["convs"] and not plan.skipped_convs
    assert len(plan.activations) == expected["activations"]
    for tensor in plan.activations:  # each quantized tensor is some quantized conv's data input
        assert any(c.input[0] == tensor for c in convs if c.name in outside), tensor
    readers = [name for rs in plan.activations.values() for name, _ in rs]
    assert not any(in_fp32_scope(name) for name in readers)  # the scopes are never rewired
    assert plan.pooled == expected["pools"] and plan.pooled  # the neck's context pooling
    # Every residual block of the backbone is routed; the neck's (smooth16, smooth8) are not:
    # their result goes on to a float op (an upsampling), so no Conv + Add writes INT8 there.
    nodes, consumers = {n.name: n for n in model.graph.node}, _consumers(model)
    assert set(expected["residual_blocks"]) <= set(nodes)
    backbone = [add for add in expected["residual_blocks"] if add.startswith("/backbone/")]
    assert sorted(plan.residual_adds) == sorted(backbone) and len(backbone) >= 4
    for add in set(expected["residual_blocks"]) - set(backbone):
        result = nodes[add].output[0]
        after = consumers[result]
        if [c.op_type for c in after] == ["Relu"]:
            after = consumers[after[0].output[0]]
        assert any(c.name not in plan.weights for c in after), add


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


def test_the_tensorrt_graph_lints_clean_and_computes_in_fp16_outside_the_scopes(quantized, graphs, expected):
    model, summary, _ = quantized
    assert lint_tensorrt(model) == []  # no placement finding, no FP32 island or tail, no blocker
    counts = qdq_counts(model)
    convs, pairs = expected["convs"], expected["convs"] + expected["activations"]  # a pair per weight and input
    assert counts["quantized_convs"] == convs and counts["fp32_compute_nodes_outside_scopes"] == 0
    assert counts["quantize_linear"] == counts["dequantize_linear"] == pairs
    assert summary["quantized_convs"] == convs and summary["opset"] == OPSET
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


# --- one rule at a time, on small hand-built graphs ------------------------------------------

C = 16  # channels: wide enough that every conv has INT8 kernels (conv_supported)


class Net:
    """A small FP16 graph (as placement sees it: the mixed FP16 export) built node by node;
    the image ``x`` is 1 x 16 x 8 x 8."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)

    def conv(self, name: str, x: str) -> str:
        weight = f"{name}.weight"
        values = self.rng.standard_normal((C, C, 3, 3)).astype(np.float16)
        self.initializers.append(numpy_helper.from_array(values, weight))
        return self.op("Conv", name, x, weight, kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    def op(self, op_type: str, name: str, *inputs: str, **attributes) -> str:
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [f"{name}:out"], name=name, **attributes))
        return f"{name}:out"

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float16), name))
        return name

    def model(self, *outputs: str) -> onnx.ModelProto:
        image = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, C, 8, 8])
        results = [onnx.helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
        graph = onnx.helper.make_graph(self.nodes, "rules", [image], results, self.initializers)
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def readers(plan, tensor: str) -> set[str]:
    return {name for name, _ in plan.activations.get(tensor, [])}


def stem(net: Net) -> str:
    """x -> Conv -> Relu: ``r``, a tensor the next conv quantizes."""
    return net.op("Relu", "stem/relu", net.conv("stem", "x"))


def test_rule_qdq_on_the_inputs_of_weighted_ops_only():
    net = Net()
    r = stem(net)
    b = net.conv("b", r)
    out = net.op("Mul", "scale", net.op("Sigmoid", "gate", b), net.constant("k", np.array(2.0)))
    plan = plan_qdq(net.model(out))
    assert plan.weights == {"stem": "stem.weight", "b": "b.weight"}  # each conv's weight, per channel
    assert set(plan.activations) == {"x", r}  # each conv's data input, once
    assert readers(plan, "x") == {"stem"} and readers(plan, r) == {"b"}
    # what the rule derives for the whole graph: a pair per conv weight and per conv data input
    model, summary = tensorrt_graph(net.model(out), {t: (-1.0, 1.0) for t in ("x", r)})
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == len([n for n in net.nodes if n.op_type == "Conv"]) + len({"x", r})
    conv_inputs = {i for n in net.nodes if n.op_type == "Conv" for i in n.input}
    assert {q.input[0] for q in quantize} == conv_inputs  # never a conv output, Sigmoid or Mul
    assert lint_tensorrt(model) == [] and summary["quantized_convs"] == 2


def test_rule_no_qdq_around_relu_or_batchnorm():
    net = Net()
    r = stem(net)
    bn = net.op("BatchNormalization", "b/bn", net.conv("b", r), *(net.constant(f"bn.{p}", np.full(C, v))
                                                                  for p, v in (("scale", 1), ("bias", 0),
                                                                               ("mean", 0), ("var", 1))))
    relu = net.op("Relu", "b/relu", bn)
    out = net.conv("c", relu)
    plan = plan_qdq(net.model(out))
    assert set(plan.activations) == {"x", r, relu}  # what the convs read, after the ReLU
    assert not {"stem:out", "b:out", bn} & set(plan.activations)  # not the conv / BN outputs the ReLUs read
    model, _ = tensorrt_graph(net.model(out), {t: (-1.0, 1.0) for t in plan.activations})
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("Relu", "BatchNormalization")):
        assert producers[node.input[0]].op_type not in ("DequantizeLinear", "QuantizeLinear"), node.name


def residual_block(net: Net, r: str, name: str) -> tuple[str, str]:
    """``relu(conv(r) + r)``: (the Add's name, the block's output)."""
    return name, net.op("Relu", f"{name}/relu", net.op("Add", name, net.conv(f"{name}/conv", r), r))


def test_rule_a_residual_add_reads_its_residual_through_the_dq_when_its_result_is_requantized():
    net = Net()
    r = stem(net)
    add, z = residual_block(net, r, "block")
    plan = plan_qdq(net.model(net.conv("next", z)))
    assert plan.residual_adds == [add]
    assert ("block", 1) in plan.activations[r]  # the residual (input 1) through r's DQ
    assert "block/conv:out" not in plan.activations  # the conv side stays fused into Conv + Add


def test_rule_residual_adds_that_cannot_fuse_keep_their_float_inputs():
    def plan_of(build) -> list[str]:
        net = Net()
        outputs = build(net, stem(net))
        return plan_qdq(net.model(*outputs), fanout="convs").residual_adds

    def not_requantized(net, r):  # the result feeds a float op only
        return [net.op("Sigmoid", "out", residual_block(net, r, "block")[1])]

    def conv_side_read_twice(net, r):  # the conv output has a second reader: no Conv + Add fusion
        y = net.conv("block/conv", r)
        z = net.op("Relu", "block/relu", net.op("Add", "block", y, r))
        return [net.conv("next", z), net.op("Sigmoid", "probe", y)]

    def broadcast(net, r):  # the residual is a pooled 1 x 1 map (quantized: a conv reads it too)
        pooled = net.op("GlobalAveragePool", "gap", r)
        z = net.op("Relu", "block/relu", net.op("Add", "block", net.conv("block/conv", r), pooled))
        return [net.conv("next", z), net.conv("context", pooled)]

    def constant(net, r):
        z = net.op("Relu", "block/relu", net.op("Add", "block", net.conv("block/conv", r),
                                                 net.constant("bias", np.ones((1, C, 1, 1)))))
        return [net.conv("next", z)]

    def residual_not_quantized(net, r):  # no conv reads the residual: there is no DQ to read
        s = net.op("Sigmoid", "s", r)
        z = net.op("Relu", "block/relu", net.op("Add", "block", net.conv("block/conv", r), s))
        return [net.conv("next", z)]

    def fused(net, r):  # the positive case, for contrast
        return [net.conv("next", residual_block(net, r, "block")[1])]

    assert plan_of(fused) == ["block"]
    for build in (not_requantized, conv_side_read_twice, broadcast, constant, residual_not_quantized):
        assert plan_of(build) == [], build.__name__


def test_rule_a_residual_read_by_a_kept_add_counts_as_requantized():
    """Chained blocks: the first Add's result is re-quantized by the second block's conv and
    read as the second Add's residual; it stays only while the second Add stays."""
    def plan_of(last_reader) -> list[str]:
        net = Net()
        first, z = residual_block(net, stem(net), "first")
        second, w = residual_block(net, z, "second")
        return sorted(plan_qdq(net.model(last_reader(net, w))).residual_adds)

    assert plan_of(lambda net, w: net.conv("next", w)) == ["first", "second"]
    assert plan_of(lambda net, w: net.op("Sigmoid", "out", w)) == []  # the second goes, and with it the first


@pytest.mark.parametrize("fanout", ["shared", "convs"])
def test_rule_a_shape_reads_the_float_tensor(fanout):
    net = Net()
    r = stem(net)
    outputs = [net.conv("b", r), net.op("Shape", "size", r), net.op("Sigmoid", "probe", r)]
    plan = plan_qdq(net.model(*outputs), fanout=fanout)
    assert "size" not in readers(plan, r)  # shape arithmetic never reads a DQ
    assert readers(plan, r) == ({"b", "probe"} if fanout == "shared" else {"b"})


@pytest.mark.parametrize("fanout", ["shared", "convs"])
def test_rule_pools_read_the_dq_except_inside_the_fp32_scopes(fanout):
    net = Net()
    r = stem(net)
    outputs = [net.conv("b", r), net.op("GlobalAveragePool", "/neck/gap", r),
               net.op("GlobalAveragePool", "/focus/selector/gap", r)]
    plan = plan_qdq(net.model(*outputs), fanout=fanout)
    assert plan.pooled == ["/neck/gap"]
    assert readers(plan, r) == {"b", "/neck/gap"}


@pytest.mark.parametrize("fanout", ["shared", "convs"])
def test_rule_the_selector_and_topk_scopes_are_never_quantized(fanout):
    net = Net()
    r = stem(net)
    importance = net.op("Sigmoid", "/focus/selector/Sigmoid", net.conv("/focus/selector/score/Conv", r))
    threshold = net.op("ReduceMax", "/focus/topk/ReduceMax", importance, keepdims=1)
    mask = net.op("GreaterOrEqual", "/focus/topk/GreaterOrEqual", importance, threshold)
    cell = net.op("Mul", "/focus/topk/Mul", r, net.op("Cast", "/focus/topk/Cast", mask, to=TensorProto.FLOAT16))
    plan = plan_qdq(net.model(net.conv("b", r), cell), fanout=fanout)
    assert set(plan.weights) == {"stem", "b"}  # not the selector's conv
    assert readers(plan, r) == {"b"}  # neither the selector conv nor the Top-K reads r's DQ
    only_selector = Net()
    r = stem(only_selector)
    scores = only_selector.conv("/focus/selector/score/Conv", r)
    assert set(plan_qdq(only_selector.model(scores), fanout=fanout).activations) == {"x"}  # r is not quantized


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
