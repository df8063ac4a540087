"""Top-K activation: a binary mask of the most important positions of an importance map.

Two interchangeable implementations, switchable on a loaded model (``set_topk_mode``):

``exact``
    ``torch.topk`` on the flattened map, mask by scatter. The training/reference form.
    Ties at the k-th value are broken by ``torch.topk``'s (unspecified) order, so exactly
    ``k`` positions are selected.

``threshold`` (default for export)
    Per image, find a threshold ``t`` with ``count(s >= t) >= k`` by a fixed number of
    bisection steps over ``[min(s), max(s)]`` and select ``s >= t``. The graph holds only
    ReduceMin/ReduceMax/ReduceSum, comparisons, Where and Add/Mul: no TopK, Sort, NonZero
    or Loop, so it exports to any opset, any resolution and dynamic shapes, and TensorRT
    takes it whatever ``k`` is (its TopK is limited to K <= 3840).

When the two agree
    Let ``v_k`` and ``v_{k+1}`` be the k-th and (k+1)-th largest values of one image's map.
    Bisection keeps ``count(s >= lo) >= k > count(s >= hi)`` (or ``hi`` is the max and
    already holds ``k`` positions), so ``v_k`` lies in ``[lo, hi)`` and the interval halves
    each step. The masks are identical whenever ``v_k - v_{k+1} > (max - min) / 2**steps``;
    with the default 32 steps on a sigmoid map the interval reaches adjacent float32
    values, so *every tie-free map* gives identical masks. With ties at ``v_k`` the
    threshold form selects every tied position: a superset of the exact mask with
    ``count(s >= v_k)`` positions, never a subset.

``k`` is never a Python constant baked into the graph: it is computed from the runtime
size ``L = h*w`` of the map as ``k = ceil(ratio * L)`` *exactly*. Float32 cannot do this
(``float32(0.3) * 50`` rounds to 15.000001, whose ceil is 16), so ratios are given in
steps of 1/1000 (``ratio = p / 1000``) and ``k = (p*L + 999) // 1000`` is computed in int32
(exact for ``L`` up to 2.1 million positions, i.e. a 1/8-scale map of a 130-megapixel
input). :func:`topk_count` is the same formula in Python.

Adaptive selection (beyond the paper's fixed ratio): ``k_i = clamp(count(s_i >= tau),
ceil(min_ratio*h*w), ceil(max_ratio*h*w))`` per image, then the same exact/threshold
selection with a per-image ``k``.
"""

from __future__ import annotations

import torch
from torch import nn

TOPK_MODES = ("exact", "threshold")
SELECTIONS = ("fixed", "adaptive")


RATIO_DENOMINATOR = 1000  # ratios are multiples of 1/1000


def ratio_numerator(ratio: float) -> int:
    """``p`` with ``ratio == p / 1000``; rejects ratios outside (0, 1] or between steps."""
    p = round(ratio * RATIO_DENOMINATOR)
    if not 0 < p <= RATIO_DENOMINATOR or abs(ratio * RATIO_DENOMINATOR - p) > 1e-6:
        raise ValueError(f"Top-K ratios must be in (0, 1] in steps of 1/{RATIO_DENOMINATOR}, got {ratio}")
    return p


def topk_count(ratio: float, numel: int) -> int:
    """``ceil(ratio * numel)``, exactly as the graph computes it (at least 1)."""
    p = ratio_numerator(ratio)
    return max(1, (p * numel + RATIO_DENOMINATOR - 1) // RATIO_DENOMINATOR)


def _count_k(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-image k (N, 1) float32 from the runtime size of the (N, L) map.

    The number of positions is a ReduceSum of ones rather than a shape read, so no
    Shape/Gather ops and no Python int enter the exported graph; the ceil is integer
    arithmetic (see the module docstring for why not float32).
    """
    numel = torch.ones_like(importance).sum(dim=1, keepdim=True).to(torch.int32)
    scaled = numel * ratio_numerator(ratio) + (RATIO_DENOMINATOR - 1)
    k = torch.div(scaled, RATIO_DENOMINATOR, rounding_mode="trunc")  # non-negative: trunc == floor
    return torch.clamp(k.to(importance.dtype), min=1.0)


def _count_at_least(importance: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return (importance >= threshold).to(importance.dtype).sum(dim=1, keepdim=True)


def threshold_topk_mask(importance: torch.Tensor, k: torch.Tensor, steps: int = 32) -> torch.Tensor:
    """Mask (N, L) of the k largest values per row by bisection; superset on ties."""
    lo = importance.amin(dim=1, keepdim=True)
    hi = importance.amax(dim=1, keepdim=True)
    for _ in range(steps):  # unrolled at export: a fixed chain of ops, no Loop node
        mid = (lo + hi) * 0.5
        enough = _count_at_least(importance, mid) >= k
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid)
    # hi is still the max when the max alone is tied k times or more: select exactly those.
    threshold = torch.where(_count_at_least(importance, hi) >= k, hi, lo)
    return (importance >= threshold).to(importance.dtype)


def exact_topk_mask(importance: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mask (N, L) with exactly k_i ones per row at the positions of the k_i largest values."""
    k_max = k.max().to(torch.int64)
    _, index = torch.topk(importance, k_max, dim=1)  # k from the map's size, not a constant
    rank = torch.arange(index.shape[1], device=importance.device).unsqueeze(0)
    keep = (rank < k.to(torch.int64)).to(importance.dtype)  # per-image k <= k_max
    return torch.zeros_like(importance).scatter(1, index, keep)


class TopK(nn.Module):
    """Binary Top-K mask (N, 1, h, w) of an importance map (N, 1, h, w)."""

    def __init__(
        self,
        ratio: float = 0.25,
        mode: str = "exact",
        steps: int = 32,
        selection: str = "fixed",
        adaptive_threshold: float = 0.5,
        min_ratio: float = 0.05,
        max_ratio: float = 0.5,
    ):
        super().__init__()
        ratio_numerator(ratio)  # validates the ratio (and min/max below) early
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if selection == "adaptive":
            ratio_numerator(min_ratio), ratio_numerator(max_ratio)
            if min_ratio > max_ratio:
                raise ValueError(f"need min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
        self.ratio = ratio
        self.steps = steps
        self.selection = selection
        self.adaptive_threshold = adaptive_threshold
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in TOPK_MODES:
            raise ValueError(f"topk mode must be one of {TOPK_MODES}, got {mode!r}")
        self._mode = mode

    def count(self, importance: torch.Tensor) -> torch.Tensor:
        """Per-image number of positions to select, (N, 1) float32, for a flat (N, L) map."""
        if self.selection == "fixed":
            return _count_k(importance, self.ratio)
        above = _count_at_least(importance, torch.full_like(importance[:, :1], self.adaptive_threshold))
        lower = _count_k(importance, self.min_ratio)
        upper = _count_k(importance, self.max_ratio)
        return torch.minimum(torch.maximum(above, lower), upper)

    def forward(self, importance: torch.Tensor) -> torch.Tensor:
        flat = importance.flatten(1).float()  # FP32 even in a half-precision model: ties
        k = self.count(flat)
        if self.mode == "exact":
            mask = exact_topk_mask(flat, k)
        else:
            mask = threshold_topk_mask(flat, k, self.steps)
        return mask.view_as(importance).to(importance.dtype)

    def extra_repr(self) -> str:
        extra = f", tau={self.adaptive_threshold}, range=[{self.min_ratio}, {self.max_ratio}]"
        return (
            f"ratio={self.ratio}, mode={self.mode}, steps={self.steps}, selection={self.selection}"
            + (extra if self.selection == "adaptive" else "")
        )
