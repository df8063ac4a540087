"""``fornet-deploy lint MODEL.onnx --target tensorrt``: what TensorRT will reject or mishandle.

A static look at the graph, so it runs anywhere (no TensorRT needed). Findings are
``blocker`` (the TensorRT ONNX parser/builder fails, or the engine would be wrong),
``warning`` (works, but slow or needs an option such as an optimization profile; or known
to fail on some TensorRT versions) or ``info``. Op restrictions follow the onnx-tensorrt
operator matrix (docs/operators.md) for TensorRT 8.5-10.x, with the inputs it takes only as
constants; a shape computed through a tensor of rank 2 or more is a warning (TensorRT's
shape tensors are 0-D or 1-D). FoR-Net specifics (TopK K limit, FP32 selector) are added, and the
Q/DQ placement and precision rules of :mod:`.qdq_lint` (conv-output Q/DQ, wrapped ReLUs,
both Add inputs quantized, FP32 islands, an FP32 full-resolution tail: warnings, because
TensorRT builds the graph but slower; an integer -> UINT8 Cast: a blocker). The report
counts the findings per check.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..bundle import Bundle
from ..contract import PRECISIONS, TAIL_SCOPE, TOPK_SCOPE, onnx_graph
from ..errors import FornetError
from .onnx import load_onnx
from .qdq_lint import qdq_counts, rule_hits

# TensorRT's TopK (ITopKLayer) handles K <= 3840 (MAX_TOPK_K in NvInfer.h).
TRT_MAX_TOPK_K = 3840
TRT_MAX_OPSET = 21
# "Where possible, the parser is backward compatible to opset 9" (NVIDIA, TensorRT ONNX
# Opset Guide, docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html:
# minimum opset 9 and above; the TensorRT 10.x developer guides say the same).
TRT_MIN_OPSET = 9

# Ops the TensorRT ONNX parser does not implement (onnx-tensorrt operator matrix).
TRT_UNSUPPORTED_OPS = frozenset({
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "Hardmax", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
})
# Supported, but the output shape depends on the data (or the op runs as a slow loop).
TRT_DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Loop", "Scan", "If"})
TRT_RESIZE_TRANSFORMS = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
# Inputs the TensorRT ONNX parser takes only as constants, by op: input index (onnx-tensorrt
# docs/operators.md, 10.x: "`axes` must be an initializer" / "a constant tensor").
TRT_CONSTANT_INPUTS = {
    "Slice": 3, "Pad": 3, "Squeeze": 1, "Unsqueeze": 1, "CumSum": 1,
    **{op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}
# Inputs that TensorRT reads as a shape (shape tensors), by op: input indices.
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 4), "Pad": (1,),
                "Tile": (1,), "Resize": (3,)}
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
# Q/DQ placement and precision rules (qdq_lint) that break the build; the rest slow it down.
BLOCKING_RULES = frozenset({"int-to-uint8-cast"})


@dataclass(frozen=True)
class Finding:
    severity: str  # "blocker" | "warning" | "info"
    check: str
    node: str
    message: str


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _node_name(node: onnx.NodeProto, index: int) -> str:
    """How findings name a node: its name, else its first output, else its place in the graph."""
    return node.name or (node.output[0] if node.output else f"#{index} ({node.op_type})")


def _integer(value) -> int | None:
    """The one integer a constant holds (TopK's K), or None (empty, several, not integers)."""
    value = np.asarray(value)
    return int(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind in "iu" else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def lint_tensorrt(model: onnx.ModelProto) -> list[Finding]:
    """All TensorRT findings for one model (pure function, no TensorRT needed)."""
    findings: list[Finding] = []
    add = lambda sev, check, node, msg: findings.append(Finding(sev, check, node, msg))  # noqa: E731
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    ranks = _ranks(model)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < TRT_MIN_OPSET:
        add("blocker", "opset", "-", f"opset {opset}: TensorRT's ONNX parser reads opset {TRT_MIN_OPSET} and newer; "
            "re-export with --opset 17")
    if opset is not None and opset > TRT_MAX_OPSET:
        add("warning", "opset", "-", f"opset {opset} is newer than TensorRT 10.x is tested with ({TRT_MAX_OPSET}); export with --opset 17")

    for inp in model.graph.input:
        if inp.name in constants:
            continue
        dims = inp.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if dynamic:
            add("warning", "dynamic-shape", inp.name,
                f"input '{inp.name}' has dynamic dims {dynamic}: build-trt needs an optimization profile "
                "(--min-shape/--opt-shape/--max-shape)")
        if inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            add("blocker", "dtype", inp.name, f"input '{inp.name}' is float64; TensorRT has no FP64 I/O")

    for index, node in enumerate(model.graph.node):
        name = _node_name(node, index)
        if node.domain not in ("", "ai.onnx"):
            add("blocker", "custom-op", name, f"{node.domain}::{node.op_type} is not a standard ONNX op; TensorRT needs a plugin")
            continue
        if node.op_type in TRT_UNSUPPORTED_OPS:
            add("blocker", "unsupported-op", name, f"{node.op_type} is not supported by the TensorRT ONNX parser")
        elif node.op_type in TRT_DATA_DEPENDENT_OPS:
            add("warning", "data-dependent", name, f"{node.op_type} has data-dependent shapes or control flow (slow or unsupported on DLA)")
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                add("blocker", "topk", name, "TopK's K is computed at run time; TensorRT needs a build-time constant "
                    "(export with --topk threshold)")
            elif _integer(k) is None:
                add("blocker", "topk", name, f"TopK's K is not one integer (a {np.asarray(k).dtype} constant of "
                    f"{np.asarray(k).size} values)")
            elif _integer(k) > TRT_MAX_TOPK_K:
                add("blocker", "topk", name, f"TopK with K={_integer(k)} exceeds TensorRT's limit of "
                    f"{TRT_MAX_TOPK_K} (export with --topk threshold)")
            else:
                add("info", "topk", name, "TopK with a constant K: fixed to the export resolution")
        constant_input = TRT_CONSTANT_INPUTS.get(node.op_type)
        if constant_input is not None and len(node.input) > constant_input and node.input[constant_input] \
                and node.input[constant_input] not in constants:
            add("blocker", "constant-input", name, f"{node.op_type}'s input {constant_input} is computed at run time; "
                "the TensorRT ONNX parser takes it only as an initializer")
        wide = _wide_shape_source(node, producers, constants, ranks)
        if wide is not None:
            add("warning", "shape-tensor", name, f"{node.op_type} reads a shape computed through '{wide}' (rank >= 2): "
                "TensorRT's shape tensors are 0-D or 1-D (\"IShuffleLayer applied to shape tensor must have 0 or 1 "
                "reshape dimensions\", onnx/onnx-tensorrt#264), e.g. F.pad with traced amounts")
        if node.op_type == "Resize":
            mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode not in TRT_RESIZE_TRANSFORMS:
                add("blocker", "resize", name, f"Resize coordinate_transformation_mode={mode} is not supported by TensorRT")
        if node.op_type in QUANT_OPS:
            findings.extend(_lint_qdq(node, name, constants))
        if node.op_type == "DequantizeLinear" or TOPK_SCOPE not in name:
            continue
        # The Top-K must see the float importance map: a quantized one creates ties.
        # (The selector's own first conv may read a quantized neck output; that is fine.)
        for tensor in node.input:
            producer = producers.get(tensor)
            if producer is not None and producer.op_type == "DequantizeLinear" and tensor not in constants:
                add("warning", "fp32-selector", name, "the Top-K subgraph reads quantized selector scores, "
                    "which creates ties (exclude it from calibration)")
                break
    for hit in rule_hits(model):
        add("blocker" if hit.rule in BLOCKING_RULES else "warning", hit.rule, hit.node, hit.message)
    return findings


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference knows (graph inputs, outputs, intermediates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot type still gets the other checks
        inferred = model
    graph = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.output, *graph.value_info)
            if v.type.tensor_type.HasField("shape")}


def _wide_shape_source(node: onnx.NodeProto, producers: dict, constants: dict, ranks: dict[str, int]) -> str | None:
    """A tensor of rank >= 2 that a shape input of ``node`` is computed through, if any.

    Walks up from the shape inputs (:data:`SHAPE_INPUTS`) through computed tensors; a
    ``Shape`` node ends the walk (its input's values are not read), as do constants.
    """
    stack = [node.input[i] for i in SHAPE_INPUTS.get(node.op_type, ()) if i < len(node.input) and node.input[i]]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor in constants:
            continue
        seen.add(tensor)
        if ranks.get(tensor, 0) >= 2:
            return tensor
        producer = producers.get(tensor)
        if producer is not None and producer.op_type != "Shape":
            stack.extend(i for i in producer.input if i)
    return None


def _lint_qdq(node: onnx.NodeProto, name: str, constants: dict) -> list[Finding]:
    out = []
    if len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2])
        if zero_point is None:
            out.append(Finding("blocker", "qdq", name, "Q/DQ zero point is not a constant"))
        elif zero_point.dtype.kind not in "iu":
            out.append(Finding("blocker", "qdq", name, f"Q/DQ zero point is {zero_point.dtype}, not an integer"))
        else:
            if zero_point.dtype == np.uint8:
                out.append(Finding("blocker", "qdq", name, "unsigned (UINT8) Q/DQ: TensorRT takes symmetric INT8 only "
                                   "(the U8S8 graph is for ONNX Runtime on CPU)"))
            elif np.any(zero_point != 0):
                out.append(Finding("blocker", "qdq", name, "non-zero Q/DQ zero point: TensorRT supports symmetric quantization only"))
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and scale.dtype.kind != "f":
        out.append(Finding("blocker", "qdq", name, f"Q/DQ scale is {scale.dtype}, not a float"))
    elif scale is not None and np.any(np.asarray(scale) <= 0):
        out.append(Finding("blocker", "qdq", name, "Q/DQ scale <= 0"))
    return out


def cpu_graph(model: onnx.ModelProto) -> str | None:
    """What makes ``model`` a graph for ONNX Runtime on a CPU, not for TensorRT (the cheap
    full-resolution tail of ``model.cpu.onnx``, the unsigned activations of the U8S8 graph);
    None for a graph TensorRT may build from."""
    if any(node.name.startswith(TAIL_SCOPE) for node in model.graph.node):
        return "a CPU graph (its labels come from the cheap full-resolution tail, for ONNX Runtime on a CPU)"
    constants = _constants(model)
    if any(node.op_type == "QuantizeLinear" and len(node.input) > 2 and constants.get(node.input[2]) is not None
           and constants[node.input[2]].dtype == np.uint8 for node in model.graph.node):
        return "a U8S8 graph (unsigned activations, for ONNX Runtime on x86 CPUs)"
    return None


def tensorrt_graphs(bundle: Bundle) -> list[str]:
    """The bundle's graphs TensorRT builds engines from (one per precision it holds)."""
    return [fmt.artifact for fmt in (onnx_graph(p) for p in PRECISIONS) if bundle.has(fmt.artifact)]


def lint_file(path: str | Path, target: str = "tensorrt") -> dict:
    """The library function behind ``fornet-deploy lint``: findings + pass/fail. A graph meant
    for the CPU (:func:`cpu_graph`) is not linted: ``not_for_target`` says why (and it passes:
    nothing in it goes to TensorRT)."""
    if target != "tensorrt":
        raise FornetError(f"--target {target}: only 'tensorrt' is linted")
    model = load_onnx(path)
    reason = cpu_graph(model)
    if reason is not None:
        return {"model": str(path), "target": target, "passed": True, "blockers": 0, "warnings": 0, "counts": {},
                "qdq": qdq_counts(model), "findings": [],
                "not_for_target": f"{Path(path).name} is {reason}, not meant for TensorRT: TensorRT builds from "
                                  f"{', '.join(onnx_graph(p).artifact for p in PRECISIONS)}"}
    findings = lint_tensorrt(model)
    blockers = [f for f in findings if f.severity == "blocker"]
    return {
        "model": str(path),
        "target": target,
        "passed": not blockers,
        "blockers": len(blockers),
        "warnings": sum(1 for f in findings if f.severity == "warning"),
        "counts": dict(sorted(Counter(f.check for f in findings).items())),
        "qdq": qdq_counts(model),
        "findings": [asdict(f) for f in findings],
    }


def lint_bundle(bundle_dir: str | Path, target: str = "tensorrt") -> dict:
    """Lint of every graph of a bundle that TensorRT builds from: ``{"bundle", "passed",
    "graphs": {name: report}}``."""
    bundle = Bundle.open(bundle_dir)  # the graphs linted are the ones the manifest records
    graphs = {name: lint_file(bundle.path(name), target) for name in tensorrt_graphs(bundle)}
    return {"bundle": str(bundle.root), "target": target, "passed": all(r["passed"] for r in graphs.values()),
            "graphs": graphs}
