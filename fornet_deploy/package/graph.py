"""The inputs and outputs of an ONNX graph as a serving stack sees them.

Both serving configs are written from these (never from assumptions about the export), and
the Triton config is checked against them after it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from ..errors import FornetError
from ..export.onnx import load_onnx


@dataclass(frozen=True)
class Tensor:
    """One graph input or output; ``None`` marks a dynamic dimension."""

    name: str
    dtype: str  # numpy name: float32, float16, uint8, int32, ...
    dims: tuple[int | None, ...]

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.dims) and self.dims[0] is None


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def image(self) -> Tensor:
        if len(self.inputs) != 1:
            raise FornetError(f"expected one image input, the graph has {[t.name for t in self.inputs]}")
        return self.inputs[0]

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def _tensor(value: onnx.ValueInfoProto) -> Tensor:
    kind = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim)
    return Tensor(value.name, dtype, dims)


def graph_io(model: onnx.ModelProto | str | Path) -> GraphIO:
    """Inputs (initializers excluded) and outputs of an ONNX graph, as declared in the file."""
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    weights = {init.name for init in proto.graph.initializer}
    inputs = tuple(_tensor(v) for v in proto.graph.input if v.name not in weights)
    return GraphIO(inputs, tuple(_tensor(v) for v in proto.graph.output))


def graph_io_at(model: onnx.ModelProto, shapes: Sequence[Sequence[int]]) -> GraphIO:
    """The graph's I/O with its input fixed to each of ``shapes`` in turn (shape inference):
    a dimension equal at every shape is fixed, one that differs is dynamic (``None``).

    This is how a TensorRT engine's tensors are described from its source graph and its
    optimization profile (min and max): what the profile fixes is fixed in the engine.
    """
    found = []
    for shape in shapes:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        del proto.graph.value_info[:]
        image = next(v for v in proto.graph.input if v.name == graph_io(model).image.name)
        for dim, size in zip(image.type.tensor_type.shape.dim, shape):
            dim.Clear()
            dim.dim_value = int(size)
        for out in proto.graph.output:  # inference fills them from the fixed input
            out.type.tensor_type.ClearField("shape")
        found.append(graph_io(onnx.shape_inference.infer_shapes(_fold_shape_arithmetic(proto), data_prop=True)))

    def merge(tensors: Sequence[Tensor]) -> Tensor:
        dims = tuple(d[0] if len(set(d)) == 1 else None for d in zip(*(t.dims for t in tensors)))
        return Tensor(tensors[0].name, tensors[0].dtype, dims)

    return GraphIO(tuple(merge(ts) for ts in zip(*(g.inputs for g in found))),
                   tuple(merge(ts) for ts in zip(*(g.outputs for g in found))))


# What a dynamic graph computes from its input's runtime shape (the pad to the stride and the
# crops back, model/padding.py; the Top-K's k): ONNX shape inference does not read a Slice's or
# a ConstantOfShape's computed input, so once the input is fixed these are evaluated here.
SHAPE_ARITHMETIC = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Add", "Sub", "Mul", "Div", "Mod",
                              "Neg", "Cast", "Slice", "ReduceProd", "Clip", "Reshape", "Equal", "Where"})
MAX_SHAPE_VALUES = 64  # elements: a shape, not data


def _fold_shape_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the shape arithmetic its static shapes decide replaced by initializers,
    round after round (each round's shapes make more ``Shape`` nodes static)."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    while True:
        inferred = onnx.shape_inference.infer_shapes(model)
        static = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in (*inferred.graph.input, *inferred.graph.value_info)
                  if v.type.tensor_type.HasField("shape")
                  and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        values.update((n.output[0], numpy_helper.to_array(n.attribute[0].t)) for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value")
        folded = []
        for index, node in enumerate(model.graph.node):
            if node.op_type not in SHAPE_ARITHMETIC:
                continue
            if node.op_type == "Shape":
                if node.input[0] not in static:
                    continue
                attrs = {a.name: a.i for a in node.attribute}
                dims = static[node.input[0]][attrs.get("start", 0):attrs.get("end", None)]
                results = [np.array(dims, np.int64)]
            elif all(not name or name in values for name in node.input):
                results = ReferenceEvaluator(node).run(None, {name: values[name] for name in node.input if name})
            else:
                continue
            if any(np.asarray(r).size > MAX_SHAPE_VALUES for r in results):
                continue
            values.update(zip(node.output, (np.asarray(r) for r in results)))
            folded.append(index)
        if not folded:
            return model
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(n for i, n in enumerate(nodes) if i not in set(folded))
        model.graph.initializer.extend(numpy_helper.from_array(values[name], name)
                                       for i in folded for name in nodes[i].output)
