"""Pad to the stride and crop back: the size arithmetic behind FoR-Net's "any H x W".

Sizes are Python ints (eager PyTorch, a static export: the graph gets constants, and no node
at all where there is nothing to pad or crop) or 0-d int64 tensors read from the runtime
shape (a dynamic export: ``Shape -> Gather``, then ``Add``/``Div``/``Mul``/``Sub`` on int64
scalars), so a dynamic graph pads and crops whatever size it is given and never bakes an
amount in.

In the traced form every shape a node reads is a 1-D tensor: TensorRT's shape tensors are 0-D
or 1-D ("IShuffleLayer applied to shape tensor must have 0 or 1 reshape dimensions",
onnx/onnx-tensorrt#264), and ``F.pad`` with traced amounts exports its pads through a
``Reshape`` to (-1, 2) and a ``Transpose`` (PyTorch 2.x ``_prepare_onnx_paddings``). So the
traced pad is, one axis at a time, a ``ConstantOfShape`` of the missing block (its shape a
1-D ``Concat`` of the runtime dims) and a ``Concat`` of the data along that axis; the crop is
one ``Slice`` per axis. Constant ``axes`` throughout, as the onnx-tensorrt operator matrix
requires of ``Slice`` and ``Pad``.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

Size = Union[int, torch.Tensor]  # a Python int, or a 0-d int64 tensor traced from the runtime shape

# What the padded pixels hold: "constant" (zeros: the mean colour once normalized) or
# "replicate" (the last row/column repeated). See FoRNet's docstring for the choice.
PAD_MODES = ("constant", "replicate")


def image_size(x: torch.Tensor, traced: bool) -> tuple[Size, Size]:
    """(H, W) of an NCHW batch: ints, or with ``traced`` 0-d int64 tensors (``Shape`` in a graph)."""
    if traced:
        shape = torch._shape_as_tensor(x)  # exports as Shape, even while the tracer knows the size
        return shape[2], shape[3]
    return int(x.shape[2]), int(x.shape[3])


def ceil_div(size: Size, step: int) -> Size:
    """``ceil(size / step)`` of a non-negative size (int64 ``Add`` and ``Div`` when traced)."""
    if isinstance(size, torch.Tensor):
        return torch.div(size + (step - 1), step, rounding_mode="trunc")  # non-negative: trunc == floor
    return -(-size // step)


def round_up(size: Size, step: int) -> Size:
    """``size`` rounded up to a multiple of ``step``."""
    return ceil_div(size, step) * step


def pad_bottom_right(x: torch.Tensor, height: Size, width: Size, mode: str = "constant") -> torch.Tensor:
    """``x`` (N, C, h, w) grown to (N, C, height, width) at the bottom and right.

    ``mode``: ``constant`` (zeros) or ``replicate`` (edge). With int sizes, one ``F.pad``
    (an ONNX ``Pad`` with constant pads), or ``x`` itself when nothing is missing; with traced
    sizes, per axis an ``Expand`` of the fill and a ``Concat`` (module docstring).
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if isinstance(height, int) and isinstance(width, int):
        rows, cols = height - int(x.shape[2]), width - int(x.shape[3])
        return F.pad(x, (0, cols, 0, rows), mode=mode) if rows or cols else x
    x = _extend(x, 2, height, mode)
    return _extend(x, 3, width, mode)


def _extend(x: torch.Tensor, axis: int, size: Size, mode: str) -> torch.Tensor:
    """``x`` grown along ``axis`` to ``size`` (traced): Concat of x and the fill expanded to the gap."""
    shape = torch._shape_as_tensor(x)
    block = [shape[0], shape[1], shape[2], shape[3]]
    block[axis] = size - shape[axis]
    fill = x.new_zeros(block)  # ConstantOfShape of a 1-D Concat
    if mode == "replicate":  # plus the last row or column (a constant Slice), broadcast
        fill = fill + x[(slice(None),) * axis + (slice(-1, None),)]
    return torch.cat([x, fill], dim=axis)


def crop_top_left(x: torch.Tensor, height: Size, width: Size) -> torch.Tensor:
    """The top-left (height, width) of the last two axes. With int sizes an axis that needs no
    crop is left alone (no node); traced sizes always crop both (one ``Slice`` per axis)."""
    whole = slice(None)
    rows = whole if isinstance(height, int) and height == int(x.shape[-2]) else slice(height)
    cols = whole if isinstance(width, int) and width == int(x.shape[-1]) else slice(width)
    return x if rows == cols == whole else x[..., rows, cols]
