"""The full-resolution tail of the CPU graphs: labels from the 1/4-scale logits, cheaply.

FoR-Net's head ends at 1/4 scale with ``C`` class logits; the export then upsamples them x4
(``Resize``, bilinear, ``half_pixel``: the ``logits`` output) and takes the ``ArgMax`` over
classes at full resolution (the ``labels`` output). On ONNX Runtime's CPU provider that tail
was a third of the FP32 graph's time and almost half of the U8S8 graph's at 512x1024 (C x H x W
floats written, reordered and read again, docs/benchmarks.md), for a label map the 1/4-scale
logits nearly decide. :func:`cpu_graph` swaps it for one of :data:`~fornet_deploy.contract.TAILS`:

``refine`` (the default)
    The labels of ``full``, without its full-resolution logits. Bilinear x4 with
    ``half_pixel`` makes every output pixel a convex combination (weights 1/8, 3/8, 5/8, 7/8
    per axis) of a 2x2 block of 1/4-scale logit vectors, and the output pixels of one block
    form a 4x4 tile, offset by 2 pixels (border blocks repeat the edge: ``Pad(edge)``, as the
    Resize clamps its coordinates). The argmax of a convex combination of vectors that share
    their argmax is that argmax (and ties go to the same lowest index), so a block whose four
    corners agree takes their label; about 92 % of the blocks of a SynthCity scene do. The
    others (``NonZero``: as many as the image has) are interpolated with all ``C`` classes
    at their 16 pixels (one ``GatherND``, one ``MatMul`` with the 16x4 weights, ``ArgMax``)
    and written back (``ScatterND`` of 4-pixel rows). Identical to ``full`` up to the order
    in which the two graphs round the interpolation: only exact ties can differ (none in
    FP32 on the SynthCity validation set; 0.001 % of the pixels of the U8S8 graph, whose
    quantized logits tie often).
``nearest``
    The 1/4-scale argmax, each label repeated on its 4x4 pixels: the cheapest, and blocky
    at label edges (measured cost in docs/benchmarks.md).
``full``
    The export's own tail, unchanged (and the full-resolution logits with it).

An export at a size that is not a multiple of the stride crops its full-resolution logits to
the image (one ``Slice`` per cropped axis between the Resize and the ArgMax, model/fornet.py):
a cheap tail computes its labels on the padded map the same way and crops them with the same
``ends`` (constants, or the runtime image size in a dynamic graph), and crops the
``coarse_logits`` it exposes to ``ceil(ends / 4)``, the cells that hold image, as the model does.

Only graphs that ONNX Runtime runs on a CPU get a cheap tail (``model.cpu.onnx``, written by
``export``, and the U8S8 ``model.int8.cpu.onnx`` made by ``calibrate --target cpu``):
``model.onnx`` keeps ``full``, so every graph TensorRT consumes (``model.onnx`` itself,
``model.fp16.onnx``, ``model.int8.qdq.onnx``) holds only the Resize + ArgMax tail TensorRT is
known to build. A CPU graph gives the logits at 1/4 scale (``coarse_logits``) where the
source graph gives them at full resolution, so parity still compares logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract import COARSE_LOGITS, LABELS, LOGITS, TAIL_SCOPE, TAILS, check_choice
from ..errors import FornetError

INT64_MAX = np.iinfo(np.int64).max
# Corners of an output block, in the order of the interpolation weights' columns:
# (row, column) offsets into the edge-padded 1/4-scale map.
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def phase_weights() -> np.ndarray:
    """(16, 4) bilinear weights: row ``4*sy + sx`` is output pixel (sy, sx) of a block's 4x4
    tile, column k the weight of corner k (top-left, top-right, bottom-left, bottom-right).

    With ``half_pixel`` and scale 4, output row ``4t - 2 + sy`` samples source row
    ``t - 1 + (sy + 0.5) / 4``: fractions 1/8, 3/8, 5/8, 7/8 between rows t - 1 and t.
    """
    frac = (np.arange(4) + 0.5) / 4
    wy, wx = np.meshgrid(frac, frac, indexing="ij")
    wy, wx = wy.reshape(16), wx.reshape(16)
    return np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Crop:
    """One ``Slice`` that crops the full-resolution logits to the image along ``axis`` (2 or 3)."""

    axis: int
    starts: str  # tensor names, as the Slice reads them (constant 0)
    ends: str  # the image's size along the axis: a constant, or computed from its runtime shape


@dataclass(frozen=True)
class Tail:
    """The export's tail in a graph: ``coarse`` (the 1/4-scale logits) -> ``nodes`` -> ``labels``."""

    coarse: str
    nodes: tuple[str, ...]  # the Resize, the crops, the ArgMax and the Casts behind labels
    labels_type: int  # TensorProto element type of the labels output
    crops: tuple[Crop, ...] = ()  # between the Resize and the ArgMax, in graph order


def find_tail(graph: onnx.GraphProto) -> Tail:
    """The tail behind the ``labels`` output: Cast(s) <- ArgMax(axis 1) [<- crop Slice(s)] <-
    Resize(x4, linear).

    Works on the FP32 export and on graphs derived from it (the quantizer keeps node names
    and the float Resize); anything else is one line.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    labels = next((o for o in graph.output if o.name == LABELS), None)
    if labels is None:
        raise FornetError(f"the graph has no {LABELS!r} output: there is no tail to replace")
    chain, node = [], producer.get(LABELS)
    while node is not None and node.op_type == "Cast":
        chain.append(node)
        node = producer.get(node.input[0])
    argmax = node
    node = producer.get(argmax.input[0]) if argmax is not None and argmax.op_type == "ArgMax" else None
    slices = []
    while node is not None and node.op_type == "Slice":
        slices.insert(0, node)
        node = producer.get(node.input[0])
    resize = node
    if resize is None or resize.op_type != "Resize" or _attr(argmax, "axis", 0) != 1:
        raise FornetError("the labels output is not Resize -> ArgMax(axis=1) -> Cast: not a FoR-Net export")
    if (_attr(resize, "mode", b"nearest") != b"linear"
            or _attr(resize, "coordinate_transformation_mode") != b"half_pixel"):
        raise FornetError("the tail's Resize is not bilinear with half_pixel coordinates")
    crops = tuple(_crop(s, _constants(graph)) for s in slices)
    tail = [resize, *slices, argmax, *chain]
    inside = {out for n in tail for out in n.output} - {LABELS, LOGITS}
    outside = [c.name for name in inside for c in consumers.get(name, []) if c not in tail]
    if outside or any(c not in tail for c in consumers.get(resize.output[0], [])):
        raise FornetError(f"the tail's tensors are read by other nodes ({outside}); cannot replace it")
    return Tail(resize.input[0], tuple(n.name for n in tail), labels.type.tensor_type.elem_type, crops)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _crop(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> Crop:
    """A crop of the logits to the image: Slice from 0 along one spatial axis, step 1."""
    starts, ends = node.input[1], node.input[2]
    axes = constants.get(node.input[3]) if len(node.input) > 3 else None
    steps = constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    start = constants.get(starts)
    if (axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) not in (2, 3, -2, -1) or start is None
            or np.any(start != 0) or steps is None or np.any(steps != 1)):
        raise FornetError(f"the tail's Slice {node.name} is not a crop of the logits from 0 along H or W")
    return Crop(int(axes.reshape(-1)[0]) % 4, starts, ends)


def _attr(node: onnx.NodeProto, name: str, default=None):
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def has_full_tail(proto: onnx.ModelProto) -> bool:
    """Whether ``proto`` computes ``labels`` with the export's Resize + ArgMax tail."""
    try:
        find_tail(proto.graph)
    except FornetError:
        return False
    return True


class _Builder:
    """Appends named nodes and constants to a graph (names under :data:`TAIL_SCOPE`)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.count = 0
        self.nodes: list[onnx.NodeProto] = []

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{TAIL_SCOPE}{base}_{self.count}"

    def const(self, value, dtype=np.int64, base: str = "const") -> str:
        name = self._name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, base: str | None = None, output: str | None = None, **attrs) -> str:
        name = self._name(base or op_type)
        out = output or f"{name}_output"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def scalar(self, shape: str, axis: int) -> str:
        """Dimension ``axis`` of a Shape output, as an int64 scalar."""
        return self.op("Gather", shape, self.const(axis), axis=0)

    def slice(self, data: str, starts, ends, axes) -> str:
        return self.op("Slice", data, self.const(starts), self.const(ends), self.const(axes))


def _write_labels(b: _Builder, labels: str, labels_type: int) -> None:
    """The ``labels`` output from the (N, H, W) uint8 ``labels`` the last node wrote: that node
    writes the output itself (no copy), or a Cast to the export's other labels dtype does."""
    if labels_type == TensorProto.UINT8:
        b.nodes[-1].output[0] = LABELS
    else:
        b.op("Cast", labels, output=LABELS, to=labels_type)


def _crop_like(b: _Builder, tensor: str, crops: tuple[Crop, ...], axis_shift: int = 0, scale: int = 1) -> str:
    """``tensor`` cropped as the logits were: per crop, a Slice along ``axis + axis_shift`` to
    ``ceil(ends / scale)`` (the same ``ends`` when ``scale`` is 1)."""
    for crop in crops:
        ends = crop.ends if scale == 1 else b.op("Div", b.op("Add", crop.ends, b.const([scale - 1])), b.const([scale]))
        tensor = b.op("Slice", tensor, crop.starts, ends, b.const([crop.axis + axis_shift]), base="crop")
    return tensor


def _nearest(b: _Builder, coarse: str) -> str:
    nhwc = b.op("Transpose", coarse, perm=[0, 2, 3, 1])
    quarter = b.op("ArgMax", nhwc, base="argmax_quarter", axis=3, keepdims=0)  # (N, h, w)
    return b.op("Resize", b.op("Cast", quarter, to=TensorProto.UINT8), "", b.const([1, 4, 4], np.float32),
                base="nearest_x4", mode="nearest", coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_floor")  # (N, 4h, 4w)


def _refine(b: _Builder, coarse: str) -> str:
    """The exact tail (module docstring); any batch, size and class count, no fixed budget."""
    nhwc = b.op("Transpose", coarse, perm=[0, 2, 3, 1])  # (N, h, w, C): classes contiguous
    quarter = b.op("ArgMax", nhwc, base="argmax_quarter", axis=3, keepdims=0)  # (N, h, w)
    padded = b.op("Pad", b.op("Unsqueeze", quarter, b.const([1])), b.const([0, 0, 1, 1, 0, 0, 1, 1]),
                  mode="edge")  # (N, 1, h + 2, w + 2)
    # The four corner labels of every block (h + 1) x (w + 1): block (t, u) has corners rows
    # t - 1, t and columns u - 1, u of the 1/4-scale map (padded: rows t, t + 1).
    corner = [b.slice(padded, [dy, dx], [dy - 1 if dy == 0 else INT64_MAX, dx - 1 if dx == 0 else INT64_MAX],
                      [2, 3]) for dy, dx in CORNERS]
    same = b.op("And", b.op("And", b.op("Equal", corner[0], corner[1]), b.op("Equal", corner[0], corner[2])),
                b.op("Equal", corner[0], corner[3]))
    # Every block's top-left label on its 4x4 tile, tiles offset by 2 pixels: right for
    # every block whose corners agree; the others are overwritten below.
    tiles = b.op("Resize", b.op("Cast", corner[0], to=TensorProto.UINT8), "",
                 b.const([1, 1, 4, 4], np.float32), base="tiles", mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # (N, 1, 4h + 4, 4w + 4)
    blocks = b.op("NonZero", b.op("Not", same), base="mixed_blocks")  # (4, M): n, 0, t, u
    n, t, u = (b.op("Gather", blocks, b.const(axis), axis=0) for axis in (0, 2, 3))  # (M,) each
    # Corner coordinates in the 1/4-scale map, clamped as the Resize clamps: (4, M) each.
    dims = b.op("Shape", quarter)
    last_row = b.op("Sub", b.scalar(dims, 1), b.const(1))
    last_col = b.op("Sub", b.scalar(dims, 2), b.const(1))
    zero = b.const(0)
    rows = b.op("Clip", b.op("Add", b.op("Unsqueeze", t, b.const([0])), b.const([[-1], [-1], [0], [0]])),
                zero, last_row)
    cols = b.op("Clip", b.op("Add", b.op("Unsqueeze", u, b.const([0])), b.const([[-1], [0], [-1], [0]])),
                zero, last_col)
    images = b.op("Expand", b.op("Unsqueeze", n, b.const([0])), b.op("Shape", rows))
    index = b.op("Concat", *(b.op("Unsqueeze", x, b.const([2])) for x in (images, rows, cols)), axis=2)  # (4, M, 3)
    values = b.op("GatherND", nhwc, index, base="gather_corners")  # (4, M, C)
    classes = b.op("Gather", b.op("Shape", nhwc), b.const([3]), axis=0)
    mixed = b.op("MatMul", b.const(phase_weights(), np.float32, "phase_weights"),
                 b.op("Reshape", values, b.const([4, -1])), base="interpolate")  # (16, M * C)
    mixed = b.op("Reshape", mixed, b.op("Concat", b.const([16, -1]), classes, axis=0))  # (16, M, C)
    refined = b.op("Cast", b.op("ArgMax", mixed, base="argmax_refine", axis=2, keepdims=0), to=TensorProto.UINT8)
    updates = b.op("Reshape", b.op("Transpose", refined, perm=[1, 0]), b.const([-1, 4, 4]))  # (M, sy, sx)
    # Write 4-pixel rows into the tiles seen as (N * (h + 1), 4, w + 1, 4): index [n*(h+1) + t, sy, u].
    tile_dims = b.op("Shape", corner[0])  # (N, 1, h + 1, w + 1)
    blocks_per_col = b.scalar(tile_dims, 2)
    block_row = b.op("Add", b.op("Mul", n, blocks_per_col), t)
    count = b.op("Shape", n)
    per_row = b.op("Concat", count, b.const([4, 1]), axis=0)

    def column(x: str) -> str:  # (M,) -> (M, 4, 1), the same for the tile's 4 rows
        return b.op("Expand", b.op("Reshape", x, b.const([-1, 1, 1])), per_row)

    sy = b.op("Expand", b.const(np.arange(4).reshape(1, 4, 1), base="tile_rows"), per_row)
    where = b.op("Concat", column(block_row), sy, column(u), axis=2)  # (M, 4, 3)
    view_shape = b.op("Concat", b.const([-1, 4]), b.op("Unsqueeze", b.scalar(tile_dims, 3), b.const([0])),
                      b.const([4]), axis=0)
    view = b.op("Reshape", tiles, view_shape)
    view = b.op("ScatterND", view, where, updates, base="write_refined")
    tiles = b.op("Reshape", view, b.op("Gather", b.op("Shape", tiles), b.const([0, 2, 3]), axis=0))  # (N, 4h+4, 4w+4)
    return b.op("Slice", tiles, *(b.const(v) for v in ([2, 2], [-2, -2], [1, 2])))  # (N, 4h, 4w)


_BUILDERS = {"refine": _refine, "nearest": _nearest}


def cpu_graph(proto: onnx.ModelProto, tail: str) -> onnx.ModelProto:
    """A copy of an exported graph (FP32, or the U8S8 Q/DQ graph made from it) with ``tail``.

    ``labels`` keeps its name, dtype and shape; a ``logits`` output becomes
    ``coarse_logits`` (N x C x ceil(H/4) x ceil(W/4): the tensor the tail starts from,
    cropped as the logits were). ``full`` returns the graph unchanged.
    """
    check_choice(tail, TAILS, "tail")
    if tail == "full":
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    found = find_tail(graph)
    kept = [n for n in graph.node if n.name not in found.nodes]
    del graph.node[:]
    graph.node.extend(kept)
    b = _Builder(graph)
    outputs = [o for o in graph.output if o.name != LOGITS]
    coarse = found.coarse
    if len(outputs) < len(graph.output) and not any(o.name == COARSE_LOGITS for o in outputs):
        if found.crops:  # the model's coarse_logits: the head's output, cropped to the image
            _crop_like(b, coarse, found.crops, scale=4)
            b.nodes[-1].output[0] = COARSE_LOGITS
        else:
            coarse = _expose(graph, coarse)
        outputs.insert(0, helper.make_tensor_value_info(COARSE_LOGITS, TensorProto.FLOAT, None))
    labels = _crop_like(b, _BUILDERS[tail](b, coarse), found.crops, axis_shift=-1)  # (N, H, W): no class axis
    _write_labels(b, labels, found.labels_type)
    graph.node.extend(b.nodes)
    del graph.output[:]
    graph.output.extend(outputs)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def calibrated_graph(proto: onnx.ModelProto, target: str, source_metadata: dict) -> onnx.ModelProto:
    """What ``calibrate`` writes for ``target``: the U8S8 CPU graph with the tail its source
    ``model.onnx`` was exported for (its embedded ``cpu_tail``; ``full`` for a graph exported
    before it existed), the TensorRT graph as quantized. Applied after quantization, so the
    calibration sees the tail every target shares."""
    return cpu_graph(proto, source_metadata.get("cpu_tail", "full")) if target == "cpu" else proto


def _expose(graph: onnx.GraphProto, name: str) -> str:
    """Rename tensor ``name`` to :data:`COARSE_LOGITS` (no copy: its producer writes it)."""
    if name == COARSE_LOGITS:
        return name
    for node in graph.node:
        for i, value in enumerate(node.output):
            if value == name:
                node.output[i] = COARSE_LOGITS
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = COARSE_LOGITS
    return COARSE_LOGITS


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
