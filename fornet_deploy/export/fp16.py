"""``model.onnx`` -> ``model.fp16.onnx``: a mixed FP16 graph whose precision is explicit.

TensorRT 11 builds strongly typed networks only, so FP16 has to be in the ONNX graph itself
(docs/design.md section 5). This module rewrites the FP32 export:

* weights and activations become float16; the graph inputs and outputs stay float32
  ("keep_io_types"), so every runner feeds and reads the same tensors;
* the selector / Top-K threshold subgraph (any node whose name contains one of
  :data:`~fornet_deploy.contract.FP32_SCOPES`) stays float32: a half-precision
  importance map (10-bit mantissa) creates ties and changes which regions are selected,
  and the Top-K search counts ``ReduceSum(s >= t)`` over up to 32768 positions, past the
  2048 up to which float16 holds every integer;
* ops in :data:`FP32_OPS` stay float32 wherever they are (see there for why);
* Casts are inserted only where a float tensor crosses between the two regions.

Converter choice. Three candidates were tried on a real export (ONNX 1.23, ORT 1.32):

* ``onnxconverter_common.float16.convert_float_to_float16`` (1.16) with ``keep_io_types``
  and the selector nodes in ``node_block_list`` writes a graph ONNX Runtime rejects
  (a blocked node's output is declared float16 but produced as float32).
* ONNX Runtime's fork of it (``onnxruntime.transformers.float16``) appends its Casts at the
  end of the node list (the ONNX checker rejects the unsorted graph) and, worse, puts an
  FP32 -> FP16 -> FP32 round trip on every edge *between* two blocked nodes: the Top-K
  search would run on half-precision values after all.
* NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast``) is NVIDIA's answer for TensorRT
  11, but its ``[onnx]`` extra pins onnx and installs onnxruntime-gpu, which shadows the
  CPU onnxruntime this toolkit depends on.

So the rewrite is done here with plain ``onnx`` helpers (~150 lines, no new dependency):
the graph this toolkit exports uses a small set of standard ops, and every decision
(which node is FP32, where a Cast goes) is a plain function a test can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._version import __version__
from ..bundle import transaction
from ..contract import FP32_SCOPES, ONNX_FP16, ONNX_FP32, in_fp32_scope
from ..errors import FornetError
from .onnx import check_runs, embed_metadata, load_onnx, read_metadata

CONVERTER = "fornet-deploy mixed-fp16"
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

# Ops kept FP32 wherever they are, beyond the FP32 scopes: none. On the SynthCity model
# (fornet_deploy/weights/fornet_synthcity.safetensors, 256x512, val split) the largest activation
# outside the scopes is |x| = 27 (float16 holds 65504; convolutions are local and
# GlobalAveragePool is a mean, so this does not grow with the resolution), and keeping
# Resize, GlobalAveragePool or ArgMax in FP32 changed argmax agreement by < 0.001 %
# (99.997 % with none). What can overflow or round badly in FP16 is inside the scopes:
# the Top-K search's ReduceSum counts (up to 32768 at 1024x2048; float16 holds integers
# exactly only up to 2048) and the selector's Sigmoid, whose ties would change the mask.
FP32_OPS: frozenset[str] = frozenset()

# Inputs that the ONNX spec types as float32 whatever the data type (Resize roi/scales).
FIXED_FP32_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2)}
# Ops that take a float input of any type and set their output type by an attribute:
# their inputs are left as they are and their outputs keep the attribute's type.
TYPE_FROM_ATTRIBUTE = ("Cast", "EyeLike", "RandomNormalLike", "RandomUniformLike")


def fp32_scope_nodes(proto: onnx.ModelProto, scopes: tuple[str, ...] = FP32_SCOPES) -> list[str]:
    """Names of the nodes of the FP32 scopes (also the quantizer's exclusions)."""
    return [node.name for node in proto.graph.node if in_fp32_scope(node.name, scopes)]


def keeps_fp32(node: onnx.NodeProto, fp32_ops: frozenset[str] = FP32_OPS) -> bool:
    return node.op_type in fp32_ops or in_fp32_scope(node.name)


@dataclass
class _Rewrite:
    """One pass over the nodes in topological order, emitting the mixed-precision graph."""

    graph: onnx.GraphProto
    keep_fp32: Callable[[onnx.NodeProto], bool]
    types: dict[str, int] = field(init=False)  # elem type of every tensor of the FP32 graph
    static: dict[str, np.ndarray] = field(init=False)  # initializers and Constant outputs
    produced: dict[str, int] = field(default_factory=dict)  # float tensor -> type in new graph
    converted: dict[tuple[str, int], str] = field(default_factory=dict)  # (tensor, type) -> name
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    clipped: int = 0

    def __post_init__(self):
        self.types = _tensor_types(self.graph)
        self.static = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            value = [a.t for a in node.attribute if a.name == "value"]
            if node.op_type == "Constant" and value and value[0].data_type == FLOAT:
                self.static[node.output[0]] = numpy_helper.to_array(value[0])

    def run(self) -> None:
        outputs = {o.name for o in self.graph.output}
        for node in self.graph.node:
            self._node(node, outputs)

    def _is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == FLOAT

    def _node(self, node: onnx.NodeProto, graph_outputs: set[str]) -> None:
        if node.op_type == "Constant" and node.output[0] in self.static:
            self.nodes.append(node)  # consumers take it as is or as an FP16 initializer
            return
        fixed = FIXED_FP32_INPUTS.get(node.op_type, ())
        float_inputs = [i for i, name in enumerate(node.input) if self._is_float(name) and i not in fixed]
        fp32 = self.keep_fp32(node)
        if fp32 and (float_inputs or any(self._is_float(o) for o in node.output)):
            self.fp32_nodes.append(node.name)
        precision = FLOAT if fp32 or not float_inputs or node.op_type in TYPE_FROM_ATTRIBUTE else FLOAT16
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(node.input):
            if self._is_float(name) and node.op_type not in TYPE_FROM_ATTRIBUTE:
                new.input[i] = self._as_type(name, FLOAT if i in fixed else precision)
        for name in node.output:
            if self._is_float(name):
                self.produced[name] = precision
        self.nodes.append(new)
        for j, name in enumerate(node.output):
            if name in graph_outputs and self.produced.get(name) == FLOAT16:
                self._cast_graph_output(new, j)

    def _as_type(self, name: str, want: int) -> str:
        """Name of a tensor holding ``name`` as ``want``; adds a Cast or initializer once."""
        have = self.produced.get(name, FLOAT)  # graph inputs and static tensors are FP32
        if have == want:
            return name
        if (name, want) not in self.converted:
            suffix = "fp16" if want == FLOAT16 else "fp32"
            target = f"{name}_{suffix}"
            if name in self.static:  # constant data: convert once, no Cast at run time
                self.initializers.append(numpy_helper.from_array(self._to_fp16(self.static[name]), target))
            else:
                self.nodes.append(helper.make_node("Cast", [name], [target], name=f"{name}/Cast_{suffix}", to=want))
            self.converted[name, want] = target
        return self.converted[name, want]

    def _to_fp16(self, array: np.ndarray) -> np.ndarray:
        # Out-of-range weights would become inf; saturate them instead (counted in the manifest).
        self.clipped += int(np.count_nonzero(np.abs(array) > FP16_MAX))
        return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)

    def _cast_graph_output(self, node: onnx.NodeProto, index: int) -> None:
        """Graph outputs stay float32: the node writes an FP16 twin, a Cast writes the output.

        FP16 consumers read the twin, FP32 consumers the output itself: no second Cast.
        """
        name = node.output[index]
        half = f"{name}_fp16"
        node.output[index] = half
        self.nodes.append(helper.make_node("Cast", [half], [name], name=f"{name}/Cast_output", to=FLOAT))
        self.produced[name] = FLOAT
        self.converted[name, FLOAT16] = half


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor of a shape-inferred graph (Constants included)."""
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.output, *graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _prune(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> None:
    """Drop Constants and initializers the rewrite left without consumers."""
    used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    kept_nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    kept_inits = [t for t in (*graph.initializer, *initializers) if t.name in used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


def to_mixed_fp16(proto: onnx.ModelProto, fp32_ops: frozenset[str] = FP32_OPS) -> tuple[onnx.ModelProto, dict]:
    """The mixed-precision rewrite of a checked FP32 model; returns (model, summary)."""
    model = onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # types of every tensor
    rewrite = _Rewrite(model.graph, lambda node: keeps_fp32(node, fp32_ops))
    rewrite.run()
    _prune(model.graph, rewrite.nodes, rewrite.initializers)
    del model.graph.value_info[:]  # stale types; inferred again below
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    summary = {"fp32_nodes": len(rewrite.fp32_nodes), "fp32_node_names": rewrite.fp32_nodes,
               "fp32_ops": sorted(fp32_ops), "clipped_weights": rewrite.clipped}
    return model, summary


def convert_fp16(bundle_dir: str | Path, fp32_ops: frozenset[str] = FP32_OPS) -> dict:
    """Write ``model.fp16.onnx`` beside the bundle's ``model.onnx``; returns its manifest entry."""
    with transaction(bundle_dir, "export --precision fp16") as txn:
        bundle = txn.bundle
        source = bundle.artifacts.get(ONNX_FP32)
        if source is None:
            raise FornetError(f"bundle {bundle.root} has no {ONNX_FP32}; run `fornet-deploy export` first")
        proto = load_onnx(bundle.path(ONNX_FP32))  # its hash and lineage checked
        if not fp32_scope_nodes(proto) and bundle.manifest.get("topk", {}).get("focus") != "none":
            raise FornetError(f"{ONNX_FP32} has no node named after {FP32_SCOPES}: cannot keep the selector in FP32")
        fp16, summary = to_mixed_fp16(proto, frozenset(fp32_ops))
        embed_metadata(fp16, {**read_metadata(proto), "precision": "fp16"})
        out = txn.path(ONNX_FP16)
        onnx.save(fp16, str(out))
        check_runs(out, source["export_shape"], "the FP16 graph")
        shared = ("opset", "topk", "input_shape", "export_shape", "dynamic", "outputs")
        inherited = {k: source[k] for k in shared if k in source}
        return txn.record(
            ONNX_FP16, kind="onnx", precision="fp16", source=ONNX_FP32, source_sha256=source["sha256"], **inherited,
            fp32_nodes=summary["fp32_nodes"], fp32_ops=summary["fp32_ops"], fp32_scopes=list(FP32_SCOPES),
            clipped_weights=summary["clipped_weights"],
            converter={"name": CONVERTER, "version": __version__, "onnx": onnx.__version__},
        )
