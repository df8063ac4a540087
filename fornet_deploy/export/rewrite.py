"""Concat-free fusions for the CPU graph: a channel Concat folded into the convolution after it.

FoR-Net concatenates channels twice and mixes them at once: ``/head/Concat`` (the upsampled
focused features and the 1/4-scale detail branch -> depthwise 3x3 + ReLU -> 1x1) and
``/focus/enhance/Concat`` (three dilated branches -> 1x1). On ONNX Runtime's CPU provider the
Concat is a copy of every input, and in the FP32 graph the 144-channel 1/4-scale result is
then reordered into the NCHWc layout of the convolutions (``ReorderInput``). A convolution is
linear in its input channels, so

    conv(concat(a, b), W) + c = conv(a, W[:, :A]) + conv(b, W[:, A:]) + c

(any kernel, one group), and a per-channel op (a depthwise convolution, a ReLU) applied to a
concatenation is the concatenation of it applied to the parts. :func:`fold_concats` pushes a
Concat through per-channel ops down to the first full convolution and replaces it with one
convolution per part and Adds, which ONNX Runtime fuses into the NCHWc convolutions (``Sum``
input). Same arithmetic, summed in another order: the logits move by float rounding only
(measured and tested). Only ``model.cpu.onnx`` gets it (see :mod:`.onnx`): the quantized and
TensorRT graphs keep the exporter's structure.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

PER_CHANNEL_OPS = ("Relu",)  # elementwise ops that commute with a channel Concat


def _attr(node: onnx.NodeProto, name: str, default=None):
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _channels(graph: onnx.GraphProto, name: str) -> int | None:
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            return dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None
    return None


def _depthwise(node: onnx.NodeProto, channels: int, weights: dict[str, np.ndarray]) -> bool:
    """A Conv that maps each input channel to one output channel of its own."""
    w = weights.get(node.input[1])
    return w is not None and _attr(node, "group", 1) == channels and w.shape[:2] == (channels, 1)


def _chain(graph: onnx.GraphProto, concat: onnx.NodeProto, weights: dict[str, np.ndarray],
           consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> list[onnx.NodeProto] | None:
    """Per-channel nodes after ``concat`` up to a full Conv (the last element), or None."""
    if _attr(concat, "axis") != 1 or any(_channels(graph, part) is None for part in concat.input):
        return None
    total = sum(_channels(graph, part) for part in concat.input)
    chain, tensor = [], concat.output[0]
    while True:
        users = consumers.get(tensor, [])
        if tensor in outputs or len(users) != 1:
            return None
        node = users[0]
        if node.op_type == "Conv" and node.input[0] == tensor and node.input[1] in weights:
            if len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
                return None
            if _attr(node, "group", 1) == 1:
                return [*chain, node]
            if not _depthwise(node, total, weights):
                return None
        elif node.op_type not in PER_CHANNEL_OPS:
            return None
        chain.append(node)
        tensor = node.output[0]


def fold_concats(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``proto`` with every foldable channel Concat folded (module docstring);
    returns it and the names of the Concats folded (none: the graph is returned as is)."""
    model = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded = []
    for name in [n.name for n in graph.node if n.op_type == "Concat"]:
        concat = next(n for n in graph.node if n.name == name)
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for tensor in node.input:
                consumers.setdefault(tensor, []).append(node)
        chain = _chain(graph, concat, weights, consumers, {o.name for o in graph.output})
        if chain is None:
            continue
        new_nodes, new_weights = _fold(graph, concat, chain, weights)
        replaced = {concat.name, *(n.name for n in chain)}
        nodes = []
        for node in graph.node:  # the new nodes where the last one of the chain was
            if node.name == chain[-1].name:
                nodes += new_nodes
            elif node.name not in replaced:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_weights)
        weights.update({t.name: numpy_helper.to_array(t) for t in new_weights})
        folded.append(name)
    if not folded:
        return proto, []
    used = {name for node in graph.node for name in node.input}
    kept_weights = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model, folded


def _fold(graph: onnx.GraphProto, concat: onnx.NodeProto, chain: list[onnx.NodeProto],
          weights: dict[str, np.ndarray]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The per-part nodes that replace ``concat`` and ``chain``; their weights."""
    scope = concat.name.rsplit("/", 1)[0] + "/fold/"
    sizes = [_channels(graph, part) for part in concat.input]
    bounds = np.cumsum([0, *sizes])
    nodes: list[onnx.NodeProto] = []
    tensors: list[onnx.TensorProto] = []

    def weight(array: np.ndarray, name: str) -> str:
        tensors.append(numpy_helper.from_array(np.ascontiguousarray(array), f"{scope}{name}"))
        return f"{scope}{name}"

    def copy(node: onnx.NodeProto, inputs: list[str], output: str, name: str, **changes) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} | changes
        nodes.append(helper.make_node(node.op_type, inputs, [output], name=f"{scope}{name}", **attrs))

    parts = list(concat.input)
    for step, node in enumerate(chain[:-1]):  # per-channel: one node per part
        for k, part in enumerate(parts):
            lo, hi = bounds[k], bounds[k + 1]
            out = f"{scope}{step}_{k}_output"
            if node.op_type == "Conv":
                inputs = [part, weight(weights[node.input[1]][lo:hi], f"{step}_{k}_w")]
                if len(node.input) > 2 and node.input[2]:
                    inputs.append(weight(weights[node.input[2]][lo:hi], f"{step}_{k}_b"))
                copy(node, inputs, out, f"{step}_{k}/{node.op_type}", group=int(hi - lo))
            else:
                copy(node, [part], out, f"{step}_{k}/{node.op_type}")
            parts[k] = out
    conv = chain[-1]
    w = weights[conv.input[1]]
    bias = weights[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
    total = None
    for k, part in enumerate(parts):
        lo, hi = bounds[k], bounds[k + 1]
        inputs = [part, weight(w[:, lo:hi], f"conv_{k}_w")]
        if bias is not None and k == 0:  # the bias once
            inputs.append(weight(bias, "conv_b"))
        out = conv.output[0] if len(parts) == 1 else f"{scope}conv_{k}_output"
        copy(conv, inputs, out, f"conv_{k}/Conv")
        if total is None:
            total = out
        else:
            last = k == len(parts) - 1
            summed = conv.output[0] if last else f"{scope}sum_{k}_output"
            nodes.append(helper.make_node("Add", [total, out], [summed], name=f"{scope}sum_{k}/Add"))
            total = summed
    return nodes, tensors
