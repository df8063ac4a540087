"""``model.fp16.onnx`` + activation ranges -> ``model.int8.qdq.onnx``: Q/DQ where TensorRT wants it.

TensorRT builds strongly typed networks from an explicitly quantized graph: every tensor
keeps the type the graph gives it, so the INT8 graph is built on the *mixed FP16* graph
(``export --precision fp16``): what is not an INT8 convolution runs in FP16, including the
full-resolution tail (Resize to H x W, ArgMax), and only the selector / Top-K scopes
(:data:`~fornet_deploy.contract.FP32_SCOPES`) stay FP32, as in the FP16 engine.

Placement (NVIDIA's recommendations; sources and measurements in
docs/research/int8-placement.md and docs/research/tensorrt-facts.md):

* Q/DQ on the **inputs of convolutions** only: the activation input per tensor (symmetric
  INT8, scale = amax / 127) and the weight per output channel (symmetric INT8, axis 0, an
  FP16 weight behind a Q -> DQ pair that TensorRT folds). Nothing on conv outputs and
  nothing around ReLU or BatchNorm: TensorRT fuses Conv + BN + ReLU itself and, when the
  next op reads a quantized tensor, writes INT8 straight out of the conv.
* A **residual Add** whose conv-side input is the single-consumer output of a quantized conv
  and whose result (through a ReLU) is re-quantized gets its *residual* input through the
  DQ that already quantizes that tensor, so TensorRT fuses Conv + Add (+ ReLU) with an INT8
  output ("insert a pair of Q/DQ nodes between the residual-input and the Elementwise-Addition
  node", NVIDIA/TensorRT release/10.3 tools/pytorch-quantization quant_resnet50.rst).
* **Pools** reading a quantized tensor read its DQ (TensorRT runs DQ -> pool -> Q in INT8),
  which lets the residual rule reach the last backbone stage.
* **One pair per tensor.** ``fanout="shared"`` (default): every consumer outside the FP32
  scopes reads the DQ, so the producing conv writes INT8 once and FP16 consumers dequantize
  (the fewest standalone quantize kernels predicted by ``lint``); ``fanout="convs"``: only
  the quantized convs, pools and routed residual Adds read it (for a comparison on a GPU).
* The FP32 scopes are never touched; Concat, Resize, broadcast Adds and the tail stay FP16.

Data types: QuantizeLinear / DequantizeLinear take FP16 scales (and inputs) from opset 19
on, and TensorRT types a DQ's output by its scale, so the FP16 graph is converted to
:data:`OPSET` first (``onnx.version_converter``; TensorRT 10.0 parses opsets 9-20). Reduce
axes that opset 18 turned into inputs become initializers, as TensorRT requires.

Ranges come from the FP32 graph (:mod:`.collect`, shared with the CPU target); the FP16
graph names its tensors as the FP32 one, except Casts of graph inputs and of tensors that
cross into FP16, which carry a ``_fp16`` suffix (:func:`fp32_name`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import FornetError
from ..export.fp16 import in_fp32_scope

QUANTIZED_OPS = ("Conv",)  # weighted ops whose inputs get Q/DQ
# Non-weighted ops TensorRT runs in INT8 between a DQ and a Q (NVIDIA's "quantizable ops").
POOL_OPS = ("GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool")
FANOUTS = ("shared", "convs")
OPSET = 19  # first opset with FP16 Q/DQ scales
INT8_MAX = 127.0
FP16_TINY = np.float16(6e-8)  # smallest positive float16 (a subnormal): TensorRT rejects scales <= 0
FP16_SUFFIX = "_fp16"  # export/fp16.py's name for a tensor converted to FP16
EXCLUDED = "left unquantized by the accuracy budget (calibrate --max-drop)"  # a skipped conv's reason


@dataclass
class QdqPlan:
    """Where the Q/DQ pairs go: activation tensor -> the (node, input index) pairs that read
    its DQ; quantized conv -> its weight initializer; what the rules decided, for reports."""

    activations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    residual_adds: list[str] = field(default_factory=list)
    pooled: list[str] = field(default_factory=list)
    skipped_convs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"quantized_convs": len(self.weights), "activation_qdq": len(self.activations),
                "residual_adds": list(self.residual_adds), "pools": list(self.pooled),
                "skipped_convs": dict(self.skipped_convs)}


# Ops between the graph input and the first conv that leave it the image: the FP16 Cast and
# the padding to the stride (a Pad in a static graph, Concats along H and W in a dynamic one).
IMAGE_PASSTHROUGH = ("Cast", "Pad", "Concat")


def conv_supported(weight_shape: tuple[int, ...], group: int, kernel: list[int], reads_graph_input: bool) -> str | None:
    """Why TensorRT's INT8 kernels would not pay for this conv, or None.

    NVIDIA ModelOpt's rule (0.47, ``graph_utils.find_nodes_from_convs_to_exclude``): convs
    with fewer than 16 input or output channels stay unquantized unless their channels are
    8-aligned in a shape TensorRT has INT8 kernels for. Every conv of the default FoR-Net
    passes; a narrower user configuration may not.
    """
    out_channels, in_channels = weight_shape[0], weight_shape[1]
    if out_channels >= 16 and in_channels >= 16:
        return None
    if group == 1 and (out_channels % 8 == 0 or in_channels % 8 == 0) \
            and (reads_graph_input or out_channels >= 16 or in_channels >= 16) and len(set(kernel)) == 1:
        return None
    if group > 1 and out_channels % 8 == 0 and all(k >= 3 for k in kernel):
        return None
    return f"{in_channels} -> {out_channels} channels: below 16 without an INT8-friendly alignment"


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            for info in (*graph.input, *graph.output, *graph.value_info)}


def plan_qdq(model: onnx.ModelProto, fanout: str = "shared", exclude: Collection[str] = ()) -> QdqPlan:
    """The placement on a graph (FP16 or FP32: the same tensors), without data.

    ``exclude``: convolutions left unquantized (``calibrate --max-drop``, :mod:`.budget`): no
    Q/DQ on their weight, and they read their input tensor itself, not the DQ other readers
    share, so nothing of theirs is rounded to INT8."""
    if fanout not in FANOUTS:
        raise ValueError(f"fanout must be one of {FANOUTS}, got {fanout!r}")
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    graph_inputs = {i.name for i in graph.input}
    plan = QdqPlan()

    def reads_graph_input(tensor: str) -> bool:
        """The image itself, cast, or padded to the stride (model/padding.py: a Pad, or a Concat
        whose first input is the image side)."""
        while tensor not in graph_inputs and tensor in producer and producer[tensor].op_type in IMAGE_PASSTHROUGH:
            tensor = producer[tensor].input[0]
        return tensor in graph_inputs

    quantized: set[str] = set()
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS or in_fp32_scope(node.name):
            continue
        if node.name in exclude:
            plan.skipped_convs[node.name] = EXCLUDED
            continue
        weight = node.input[1]
        if weight not in initializers:
            plan.skipped_convs[node.name] = "its weight is not an initializer"
            continue
        attrs = _attributes(node)
        why = conv_supported(tuple(initializers[weight].dims), attrs.get("group", 1),
                             list(attrs.get("kernel_shape", [1, 1])), reads_graph_input(node.input[0]))
        if why:
            plan.skipped_convs[node.name] = why
            continue
        plan.activations.setdefault(node.input[0], []).append((node.name, 0))
        plan.weights[node.name] = weight
        quantized.add(node.name)

    pooled: set[str] = set()
    for tensor, readers in plan.activations.items():
        for c in consumers.get(tensor, []):
            if c.op_type in POOL_OPS and not in_fp32_scope(c.name):
                readers.append((c.name, 0))
                pooled.add(c.name)
    plan.pooled = sorted(pooled)

    if fanout == "shared":
        for tensor, readers in plan.activations.items():
            listed = {name for name, _ in readers}
            for c in consumers.get(tensor, []):
                if c.name not in listed and c.name not in exclude and not in_fp32_scope(c.name) \
                        and c.op_type != "Shape":
                    readers.append((c.name, list(c.input).index(tensor)))
                    listed.add(c.name)

    _route_residuals(plan, graph, producer, consumers, initializers, quantized, pooled, _shapes(model))
    return plan


def _route_residuals(plan: QdqPlan, graph: onnx.GraphProto, producer: dict, consumers: dict, initializers: dict,
                     quantized: set[str], pooled: set[str], shapes: dict) -> None:
    """Residual Adds whose fused Conv + Add (+ ReLU) writes INT8 read their residual input
    through its DQ (module docstring)."""
    # Candidates: same-shape inputs, one the single-consumer output of a quantized conv (the
    # input TensorRT fuses), the other (the residual) a tensor a conv input already quantizes.
    candidates: dict[str, tuple[onnx.NodeProto, str]] = {}
    for add in graph.node:
        if add.op_type != "Add" or in_fp32_scope(add.name) or len(add.input) != 2:
            continue
        a, b = add.input
        if a in initializers or b in initializers or shapes.get(a) != shapes.get(b):
            continue  # a constant or a broadcast: no Conv + Add fusion to enable
        conv_side = [t for t in (a, b) if (p := producer.get(t)) is not None and p.name in quantized
                     and len(consumers.get(t, [])) == 1]
        if conv_side:
            residual = b if conv_side[0] == a else a
            if residual in plan.activations:
                candidates[add.name] = (add, residual)
    # Keep an Add only if its result (through a ReLU) is re-quantized: every reader is a
    # quantized conv, a pool reading a DQ, or a kept Add reading it as its residual.
    changed = True
    while changed:
        changed = False
        for name, (add, _) in list(candidates.items()):
            out = add.output[0]
            after = consumers.get(out, [])
            if len(after) == 1 and after[0].op_type == "Relu":
                out = after[0].output[0]
                after = consumers.get(out, [])
            requantized = bool(after) and all(
                (c.name in quantized and c.input[0] == out) or (c.name in pooled and c.input[0] == out)
                or (c.name in candidates and candidates[c.name][1] == out) for c in after)
            if not requantized:
                del candidates[name]
                changed = True
    for name, (add, residual) in candidates.items():
        reader = (name, list(add.input).index(residual))
        if reader not in plan.activations[residual]:
            plan.activations[residual].append(reader)
        plan.residual_adds.append(name)


def fp32_name(tensor: str, known: set[str] | Mapping) -> str:
    """The FP32 graph's name of an FP16-graph tensor (see the module docstring)."""
    if tensor in known:
        return tensor
    if tensor.endswith(FP16_SUFFIX) and tensor[: -len(FP16_SUFFIX)] in known:
        return tensor[: -len(FP16_SUFFIX)]
    raise FornetError(f"no calibration range for tensor {tensor}: the FP16 graph does not match model.onnx "
                      "(re-run `fornet-deploy export --precision fp16`)")


def range_tensors(fp32_model: onnx.ModelProto) -> list[str]:
    """The FP32-graph tensors whose ranges the TensorRT graph needs (its activation Q/DQ)."""
    return list(plan_qdq(fp32_model).activations)


def activation_scale(amax: float) -> np.float16:
    """Per-tensor symmetric INT8 scale, rounded to FP16 (never zero)."""
    return max(np.float16(max(amax, 0.0) / INT8_MAX), FP16_TINY)


def weight_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric INT8 scales of a weight, FP16 (an all-zero channel gets 1)."""
    amax = np.abs(weight.astype(np.float32).reshape(weight.shape[0], -1)).max(axis=1)
    scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float16)
    return np.maximum(scales, FP16_TINY)


def to_opset(model: onnx.ModelProto, opset: int = OPSET) -> onnx.ModelProto:
    """``model`` at ``opset``, with Reduce axes as initializers (TensorRT reads them there)."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current > opset:
        raise FornetError(f"the FP16 graph has opset {current}; the INT8 graph for TensorRT is written at {opset}")
    converted = onnx.version_converter.convert_version(model, opset) if current != opset else model
    graph = converted.graph
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    moved = {}
    for node in graph.node:
        if node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] in constants:
            constant = constants[node.input[1]]
            if constant.output[0] not in moved:
                value = numpy_helper.to_array(next(a.t for a in constant.attribute if a.name == "value"))
                graph.initializer.append(numpy_helper.from_array(value, constant.output[0]))
                moved[constant.output[0]] = constant
    for constant in moved.values():
        graph.node.remove(constant)
    return converted


def insert_qdq(model: onnx.ModelProto, plan: QdqPlan, amax: Mapping[str, float]) -> onnx.ModelProto:
    """Apply ``plan`` in place: activation Q/DQ (``amax`` per tensor) and per-channel weights.

    Nodes are emitted in topological order: an activation's Q/DQ right after the node that
    produces it (first for a graph input), a weight's Q/DQ right before its conv.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    new_initializers: list[onnx.TensorProto] = []
    after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> nodes to emit after it
    before: dict[str, list[onnx.NodeProto]] = {}  # conv name -> weight Q/DQ
    first: list[onnx.NodeProto] = []  # Q/DQ of graph inputs
    producer = {o: n.name for n in graph.node for o in n.output}
    zero = np.array(0, dtype=np.int8)

    for tensor, readers in plan.activations.items():
        scale, zero_point = f"{tensor}_scale", f"{tensor}_zero_point"
        new_initializers += [numpy_helper.from_array(np.array(activation_scale(amax[tensor])), scale),
                             numpy_helper.from_array(zero, zero_point)]
        quantized, dequantized = f"{tensor}_QuantizeLinear_Output", f"{tensor}_DequantizeLinear_Output"
        pair = [helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [quantized],
                                 name=f"{tensor}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                                 name=f"{tensor}_DequantizeLinear")]
        if tensor in producer:
            after.setdefault(producer[tensor], []).extend(pair)
        else:
            first.extend(pair)
        for node_name, index in readers:
            by_name[node_name].input[index] = dequantized

    for conv_name, weight in plan.weights.items():
        scales = weight_scales(numpy_helper.to_array(initializers[weight]))
        prefix = f"{conv_name}_weight"  # one pair per conv, also where two convs share a weight
        scale, zero_point = f"{prefix}_scale", f"{prefix}_zero_point"
        new_initializers += [numpy_helper.from_array(scales, scale),
                             numpy_helper.from_array(np.zeros(scales.shape, np.int8), zero_point)]
        quantized, dequantized = f"{prefix}_QuantizeLinear_Output", f"{prefix}_DequantizeLinear_Output"
        before[conv_name] = [
            helper.make_node("QuantizeLinear", [weight, scale, zero_point], [quantized],
                             name=f"{prefix}_QuantizeLinear", axis=0),
            helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                             name=f"{prefix}_DequantizeLinear", axis=0)]
        by_name[conv_name].input[1] = dequantized

    nodes = list(first)
    for node in graph.node:
        nodes += before.get(node.name, []) + [node] + after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    del graph.value_info[:]  # stale where inputs were rewired; inferred again by the caller
    return model


def tensorrt_graph(fp16_model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                   fanout: str = "shared", exclude: Collection[str] = ()) -> tuple[onnx.ModelProto, dict]:
    """The INT8 Q/DQ graph for TensorRT from the mixed FP16 graph and FP32-graph ``ranges``
    (tensor -> (low, high)), the ``exclude`` convolutions left FP16 (:func:`plan_qdq`);
    returns the checked model and the placement summary."""
    model = to_opset(fp16_model)
    plan = plan_qdq(model, fanout, exclude)
    amax = {}
    for tensor in plan.activations:
        low, high = ranges[fp32_name(tensor, ranges)]
        amax[tensor] = max(abs(low), abs(high))
    insert_qdq(model, plan, amax)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model, {"opset": OPSET, "fanout": fanout, "scales": "float16", **plan.summary()}
