"""The inputs and outputs of an ONNX graph as a serving stack sees them.

Both serving configs are written from these (never from assumptions about the export), and
the Triton config is checked against them after it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
        found.append(graph_io(onnx.shape_inference.infer_shapes(proto, data_prop=True)))

    def merge(tensors: Sequence[Tensor]) -> Tensor:
        dims = tuple(d[0] if len(set(d)) == 1 else None for d in zip(*(t.dims for t in tensors)))
        return Tensor(tensors[0].name, tensors[0].dtype, dims)

    return GraphIO(tuple(merge(ts) for ts in zip(*(g.inputs for g in found))),
                   tuple(merge(ts) for ts in zip(*(g.outputs for g in found))))
