"""Q/DQ placement and precision rules for graphs meant for a strongly typed TensorRT build.

Pure ``onnx`` + shape inference (no TensorRT), used by ``fornet-deploy lint --target
tensorrt`` (:mod:`.lint`). Each rule is one precise graph pattern and returns the nodes it
is about; :mod:`.lint` turns them into findings with a severity.

What the rules encode (sources in docs/research/tensorrt-facts.md and int8-placement.md):

* Quantize the **inputs of weighted ops** (activation input and weight), not their outputs:
  NVIDIA's TensorFlow quantization toolkit states its recipe as "QDQ node placements:
  Inputs and Weights" (NVIDIA/TensorRT release/10.3
  ``tools/tensorflow-quantization/docs/source/docs/basics.md``), and TensorRT fuses
  Conv + BN + ReLU itself, so a Q/DQ pair after a conv and around its ReLU splits fusions
  and adds requantizations (developer guide, "Q/DQ Layer-Placement Recommendations").
* Residual Add: quantize the residual input only, "so that quantizing node after the
  Convolution node is fused with the Convolution node" (release/10.3
  ``tools/pytorch-quantization/docs/source/tutorials/quant_resnet50.rst``; "add Q/DQ nodes in
  the residual connection only (not between Add and Conv)",
  ``tools/tensorflow-quantization/docs/source/docs/add_custom_qdq_cases.md``).
* In a strongly typed network every tensor keeps the graph's type, so float32 compute in a
  quantized graph runs in FP32 (TensorRT 10.3 ``include/NvInfer.h``, strongly typed networks:
  "Setting layer precision and layer output types is not allowed").
* ``DataType::kUINT8``: "kUINT8 conversions are only supported for {kFLOAT, kHALF} ...
  not supported for {kINT8, kINT32, kBOOL}" (``include/NvInferRuntimeBase.h``, identical on
  release/10.3, release/10.16 and main = 11.x).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from .fp16 import in_fp32_scope

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "PRelu"})
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
POOLS = frozenset({"GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool"})
# Nodes that move or reinterpret data without arithmetic worth a precision finding.
NON_COMPUTE = QDQ | {"Cast", "Shape", "Constant", "ConstantOfShape", "Identity", "Reshape", "Flatten", "Squeeze",
                     "Unsqueeze", "Gather", "Slice", "Concat"}
INTEGER_TYPES = frozenset({TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
                           TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL})


@dataclass(frozen=True)
class Hit:
    """One rule match: the node it is about and what is wrong there."""

    rule: str
    node: str
    message: str


class Graph:
    """Producer / consumer maps, element types and shapes of a shape-inferred model."""

    def __init__(self, model: onnx.ModelProto):
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - the types of a partly inferable graph are still useful
            pass
        graph = model.graph
        self.nodes = [n for n in graph.node if n.output]  # a node without outputs computes nothing to place
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.initializers = {t.name for t in graph.initializer}
        self.types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
        self.shapes: dict[str, list] = {}
        for info in (*graph.input, *graph.output, *graph.value_info):
            tensor_type = info.type.tensor_type
            self.types[info.name] = tensor_type.elem_type
            self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                      for d in tensor_type.shape.dim]
        for n in graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.types[n.output[0]] = a.t.data_type
        self.graph_outputs = {o.name for o in graph.output}
        inputs = [i for i in graph.input if i.name not in self.initializers]
        dims = self.shapes.get(inputs[0].name, []) if inputs else []
        # H x W of the image input (ints, or dim_param names of a dynamic export)
        self.input_hw = tuple(dims[2:]) if len(dims) == 4 and all(dims[2:]) else None

    @staticmethod
    def name(node) -> str:
        return node.name or (node.output[0] if node.output else node.op_type)

    def prod(self, tensor: str):
        return self.producer.get(tensor)

    def cons(self, tensor: str) -> list:
        return self.consumers.get(tensor, [])

    def has_qdq(self) -> bool:
        return any(n.op_type in QDQ for n in self.nodes)

    def is_constant(self, tensor: str) -> bool:
        p = self.prod(tensor)
        return tensor in self.initializers or (p is not None and p.op_type == "Constant")

    def is_weight_dq(self, node) -> bool:
        """A DequantizeLinear of a constant (directly, or behind a Q of a constant)."""
        src = node.input[0]
        p = self.prod(src)
        behind_q = p is not None and p.op_type == "QuantizeLinear" and self.is_constant(p.input[0])
        return self.is_constant(src) or behind_q

    def reads_activation_dq(self, node, index: int = 0) -> bool:
        p = self.prod(node.input[index]) if len(node.input) > index else None
        return p is not None and p.op_type == "DequantizeLinear" and not self.is_weight_dq(p)

    def float32_data_input(self, node) -> bool:
        return any(i and self.types.get(i) == TensorProto.FLOAT and not self.is_constant(i) for i in node.input)


# --- helpers shared by the rules ------------------------------------------------------


def _residual_input(g: Graph, add, tensor: str) -> bool:
    """``tensor`` is the residual input of an Add whose other input is the single-consumer
    output of a weighted op (the branch TensorRT fuses into the conv)."""
    if add.op_type != "Add" or len(add.input) != 2 or tensor not in add.input:
        return False
    other = add.input[1] if add.input[0] == tensor else add.input[0]
    p = g.prod(other)
    return p is not None and p.op_type in WEIGHTED and len(g.cons(other)) == 1


def _epilogue(g: Graph, node, depth: int = 0) -> bool:
    """An activation or Add that TensorRT fuses into the weighted op in front of it
    (``Conv [-> Add] [-> Relu]``), reading a single-consumer tensor."""
    if depth > 2 or node.op_type not in ACTIVATIONS | {"Add"}:
        return False
    for i in node.input:
        p = g.prod(i)
        if p is not None and len(g.cons(i)) == 1 and (p.op_type in WEIGHTED or _epilogue(g, p, depth + 1)):
            return True
    return False


def _wrapped(g: Graph, node) -> bool:
    """``DQ -> node -> Q``: TensorRT runs a quantizable op between Q/DQ in INT8."""
    data = [i for i in node.input if i and not g.is_constant(i)]
    if not data or not all((p := g.prod(i)) is not None and p.op_type == "DequantizeLinear" for i in data):
        return False
    readers = [c for o in node.output for c in g.cons(o)]
    return bool(readers) and all(c.op_type == "QuantizeLinear" for c in readers)


# --- rules ----------------------------------------------------------------------------


def qdq_on_conv_output(g: Graph) -> list[Hit]:
    """``Conv -> Q -> DQ -> X`` with X not a weighted op (e.g. ``Relu``, ``Add``), unless the
    DQ is the residual input of an Add. ``Conv -> Q -> DQ -> Conv`` is the next conv's input
    quantization and is fine, and so is a pool reading the DQ: pooling is one of the ops
    TensorRT runs on INT8 input (a quantizable op in NVIDIA's placement guide; the trex ResNet
    example reaches zero reformat layers by quantizing the GlobalAveragePool input), and
    no fusion of the conv with it exists to split."""
    hits = []
    for conv in (n for n in g.nodes if n.op_type in WEIGHTED):
        for q in g.cons(conv.output[0]):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in (d for d in g.cons(q.output[0]) if d.op_type == "DequantizeLinear"):
                bad = sorted({c.op_type for c in g.cons(dq.output[0])
                              if c.op_type not in WEIGHTED | POOLS and not _residual_input(g, c, dq.output[0])})
                if bad:
                    hits.append(Hit("qdq-on-conv-output", g.name(conv),
                                    f"{conv.op_type} output -> Q -> DQ -> {'/'.join(bad)}: quantize the next weighted "
                                    "op's input instead (a pair here splits the conv's activation / Add fusion)"))
    return hits


def dq_activation_q(g: Graph) -> list[Hit]:
    """``DQ -> Relu (Clip, Sigmoid, ...) -> Q``: an activation wrapped in Q/DQ."""
    return [
        Hit("dq-relu-q", g.name(n), f"DQ -> {n.op_type} -> Q: TensorRT fuses the activation into the conv "
            "in front of it; the extra pair only adds a requantization")
        for n in g.nodes
        if n.op_type in ACTIVATIONS and g.reads_activation_dq(n)
        and any(c.op_type == "QuantizeLinear" for c in g.cons(n.output[0]))
    ]


def qdq_on_add_both_inputs(g: Graph) -> list[Hit]:
    """An Add whose two inputs both come from DQs while one of them quantizes a conv output."""
    hits = []
    for n in g.nodes:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        dqs = [g.prod(i) for i in n.input]
        if not all(p is not None and p.op_type == "DequantizeLinear" for p in dqs):
            continue
        quantized = [g.prod(p.input[0]) for p in dqs]
        behind = [g.prod(q.input[0]) for q in quantized if q is not None and q.op_type == "QuantizeLinear"]
        if any(b is not None and b.op_type in WEIGHTED for b in behind):
            hits.append(Hit("qdq-on-add-both-inputs", g.name(n),
                            "both Add inputs are Q/DQ and one is a conv output: quantize the residual input only, "
                            "so TensorRT fuses Conv + Add"))
    return hits


def fp32_island_nodes(g: Graph) -> list:
    """Compute nodes on float32 data outside the FP32 scopes that lie downstream of an
    activation DQ and upstream of a Q (excluding DQ-wrapped ops and conv epilogues, which
    TensorRT runs in INT8 or fuses into the conv)."""
    if not g.has_qdq():
        return []
    down: set[int] = set()
    activation_dqs = [n for n in g.nodes if n.op_type == "DequantizeLinear" and not g.is_weight_dq(n)]
    stack = [c for n in activation_dqs for c in g.cons(n.output[0])]
    while stack:
        n = stack.pop()
        if id(n) not in down:
            down.add(id(n))
            stack.extend(c for o in n.output for c in g.cons(o))
    up: set[int] = set()
    stack = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    while stack:
        n = stack.pop()
        if id(n) not in up:
            up.add(id(n))
            stack.extend(p for i in n.input if (p := g.prod(i)) is not None)
    return [n for n in g.nodes
            if id(n) in down and id(n) in up and n.op_type not in NON_COMPUTE | WEIGHTED
            and not in_fp32_scope(n.name) and g.float32_data_input(n) and not _wrapped(g, n) and not _epilogue(g, n)]


def fp32_islands(g: Graph) -> list[Hit]:
    """One hit per connected group of :func:`fp32_island_nodes`, with its size."""
    nodes = fp32_island_nodes(g)
    parent = {id(n): id(n) for n in nodes}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in nodes:
        for c in (c for o in n.output for c in g.cons(o) if id(c) in parent):
            parent[root(id(c))] = root(id(n))
    groups: dict[int, list] = defaultdict(list)
    for n in nodes:
        groups[root(id(n))].append(n)
    hits = []
    for members in groups.values():
        ops = Counter(m.op_type for m in members)
        first = min(members, key=lambda m: g.order[id(m)])
        hits.append(Hit("fp32-island", g.name(first),
                        f"{len(members)} node(s) between quantized regions compute in FP32 "
                        f"({', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}): build the INT8 graph from the "
                        "FP16 one"))
    return hits


def tail_nodes(g: Graph) -> list:
    """The full-resolution tail: a Resize producing the input's H x W (or a graph output)
    and the nodes reading it (ArgMax)."""
    out, seen = [], set()
    for n in (n for n in g.nodes if n.op_type == "Resize"):
        dims = g.shapes.get(n.output[0], [])
        full = g.input_hw is not None and len(dims) == 4 and tuple(dims[2:]) == g.input_hw
        if full or n.output[0] in g.graph_outputs:
            for m in (n, *g.cons(n.output[0])):
                if id(m) not in seen:
                    seen.add(id(m))
                    out.append(m)
    return out


def fp32_tail(g: Graph) -> list[Hit]:
    """In a quantized graph, full-resolution nodes that compute on float32 (FP16 in the FP16
    engine, so the INT8 engine would be slower there)."""
    if not g.has_qdq():
        return []
    return [Hit("fp32-tail", g.name(n), f"full-resolution {n.op_type} runs on float32 in an INT8 graph "
                "(FP16 in the FP16 engine): build the INT8 graph from the FP16 one")
            for n in tail_nodes(g) if n.op_type != "Cast" and g.types.get(n.input[0]) == TensorProto.FLOAT]


def int_to_uint8_cast(g: Graph) -> list[Hit]:
    """``Cast(to=UINT8)`` of an integer or bool tensor (e.g. ``ArgMax -> Cast``)."""
    hits = []
    for n in (n for n in g.nodes if n.op_type == "Cast"):
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        source = g.types.get(n.input[0])
        if to == TensorProto.UINT8 and source in INTEGER_TYPES:
            hits.append(Hit("int-to-uint8-cast", g.name(n),
                            f"Cast {TensorProto.DataType.Name(source)} -> UINT8: TensorRT converts to UINT8 only from "
                            "FLOAT and HALF (re-export: labels are ArgMax -> Cast(FLOAT16) -> Cast(UINT8))"))
    return hits


RULES = (qdq_on_conv_output, dq_activation_q, qdq_on_add_both_inputs, fp32_islands, fp32_tail, int_to_uint8_cast)


def rule_hits(model: onnx.ModelProto) -> list[Hit]:
    g = Graph(model)
    return [hit for rule in RULES for hit in rule(g)]


# --- counts for the report (not findings) ---------------------------------------------


def quantized_convs(g: Graph) -> list:
    """Weighted ops whose data input comes from an activation DequantizeLinear."""
    return [n for n in g.nodes if n.op_type in WEIGHTED and g.reads_activation_dq(n)]


def standalone_quantize_predicted(g: Graph) -> list[str]:
    """Activation Q nodes TensorRT cannot fold into the layer producing their input, so they
    run as a separate quantize kernel (a "Reformat" layer with Origin "QDQ" in the engine
    inspector): the tensor also feeds float consumers outside the FP32 scopes, or its
    producer is neither a weighted op, a conv epilogue, a DQ-wrapped pool / concat / resize,
    nor a concat of such outputs (TensorRT moves a Q backward through Concat). A static
    proxy for "reformat layers between INT8 convolutions", to be checked against the
    inspector on a GPU. The network input's Q is not counted (one unavoidable kernel)."""
    out = []
    for q in (n for n in g.nodes if n.op_type == "QuantizeLinear" and not g.is_constant(n.input[0])):
        tensor = q.input[0]
        p = g.prod(tensor)
        if p is None or (p.op_type == "Cast" and g.prod(p.input[0]) is None):
            continue
        others = [c for c in g.cons(tensor) if c is not q and not in_fp32_scope(c.name) and c.op_type != "Shape"]
        fusable = p.op_type in WEIGHTED or _epilogue(g, p) or _wrapped_input(g, p) or _concat_of_fusable(g, p)
        if others or not fusable:
            out.append(g.name(q))
    return out


def _wrapped_input(g: Graph, p) -> bool:
    if p.op_type not in POOLS | {"Concat", "Resize"}:
        return False
    data = [i for i in p.input if i and not g.is_constant(i)]
    data = data[:1] if p.op_type == "Resize" else data  # roi / scales / sizes are not data
    return bool(data) and all((d := g.prod(i)) is not None and d.op_type == "DequantizeLinear" for i in data)


def _concat_of_fusable(g: Graph, p) -> bool:
    if p.op_type != "Concat":
        return False
    return all((x := g.prod(i)) is not None and len(g.cons(i)) == 1 and (x.op_type in WEIGHTED or _epilogue(g, x))
               for i in p.input)


def qdq_counts(model: onnx.ModelProto) -> dict:
    """Quantization summary of a graph with Q/DQ (empty without): node counts and the
    predicted standalone quantize kernels."""
    g = Graph(model)
    if not g.has_qdq():
        return {}
    ops = Counter(n.op_type for n in g.nodes)
    return {
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "quantized_convs": len(quantized_convs(g)),
        "standalone_quantize_predicted": len(standalone_quantize_predicted(g)),
        "fp32_compute_nodes_outside_scopes": sum(
            1 for n in g.nodes
            if n.op_type not in NON_COMPUTE and not in_fp32_scope(n.name) and g.float32_data_input(n)),
    }
