"""Top-K activation: a binary mask of the ``k`` highest-scoring positions of a score map.

The scores are the selector's **logits** (``importance = sigmoid(logit)`` is monotone, so
the order is the same, but logits do not saturate into ties at 0.0 and 1.0 and keep
float32 resolution where the sigmoid has none). Two interchangeable implementations,
switchable on a loaded model (``FoRNet.set_topk_mode``), select the *same* positions:

``exact`` (training / reference)
    A stable descending sort of the flattened map (``torch.sort(stable=True)``, NaN moved
    behind ``-inf``); the first ``k`` positions of that order are selected.

``threshold`` (default for export)
    Finds the k-th largest value ``v`` exactly by a fixed number of counting rounds in
    float32 *order* (not value) space, then selects ``s > v`` plus the lowest-index
    positions tied at ``v`` until there are ``k``. No TopK/Sort/NonZero/Loop/Scan/Unique
    and no CumSum; any resolution, dynamic shapes, and TensorRT takes it whatever ``k`` is
    (its TopK is limited to K < 3840).

Selection rule (both modes, PyTorch and the exported ONNX graph)
    Positions are ranked by value, descending; ``+inf`` and ``-inf`` are ordinary extremes;
    ``-0.0 == +0.0``; **NaN ranks below ``-inf``**; equal values (and NaNs among themselves)
    are ranked by flat row-major index, lowest first. The mask holds the first
    ``k`` positions of that ranking: **always exactly ``k``** ones per image, ties or not.
    On a map of distinct values this is ``torch.topk``'s selection.

What the map is, in FoR-Net
    The selector's logits of the 1/8-scale cells that hold image: ``h x w = ceil(H/8) x
    ceil(W/8)`` for an H x W input. An input that is not a multiple of the stride is padded
    inside the network (model/fornet.py), and the padding's cells are cropped off *before*
    this module sees the map: they are never ranked, ``k = ceil(ratio * h * w)`` counts the
    image's cells only (adaptive K counts and clamps on them too), and the mask output is
    that ``h x w`` map, so "exactly k per image" holds on it as it stands.

The search (``threshold``), and why a fixed number of rounds is exact
    Every float32 value (±inf included, ±0 as one value) lies in one of 512 *slots*: -inf;
    the 254 negative binades; [-(2^-126 - 2^-149), 0] (negative denormals and zero); the
    positive denormals; the 254 positive binades; +inf. Slot ``s`` holds the values
    ``LB[s] + j*ULP[s]`` (``j < 2^23``; ULP is the binade's spacing, 0 for ±inf), and the
    slots enumerate all float32 values in increasing order. ``P(t) = count(s >= t) >= k``
    is monotone in ``t`` and holds exactly for ``t <= v`` (``v`` the k-th largest non-NaN
    value), so ``v`` is the largest float32 ``t`` with ``P(t)``:

    1. slot search (9 bits): the largest ``s`` with ``P(LB[s])``;
    2. in-slot search (23 bits): the largest ``j`` with ``P(LB[s] + j*ULP[s])``.

    Each round compares the map against ``2^b - 1`` thresholds at once (a broadcast
    GreaterOrEqual, Cast, ReduceSum over the map: one full-map reduction per round) and
    keeps the largest threshold that still holds ``>= k`` positions (GreaterOrEqual, Where,
    ReduceMax on (N, T, 1, 1)): ``b`` bits per round. Invariant: the kept value ``lo``
    satisfies ``P(lo)`` (or is the slot-0 default) and the answer lies in
    ``[lo, lo + 2^(remaining bits) steps)``; a round of ``b`` bits splits that block into
    ``2^b`` equal parts and keeps the part holding the answer, so ``steps`` rounds whose bits
    add up to 9 + 23 = 32 end on ``v`` itself — for every map, ties or not
    (:func:`search_schedule`; the default 16 rounds = (3, 2, 2, 2) + (2 x 11, 1) bits, 51
    thresholds in all, counting -inf; 12 rounds: 69; 9 rounds: 104; 32 rounds: a binary
    search). Round 1 compares against constants (and slot 0, -inf, which gives the non-NaN
    count for free); later slot rounds Gather their thresholds from the constant 512-entry
    table; in-slot thresholds are ``LB + (j*ULP)``, computed exactly (``j < 2^23`` times a
    power of two, and a sum that is a float32 value of the slot). If fewer than ``k``
    values are non-NaN no slot holds and ``v = -inf``; the remaining positions are NaNs.

    Ties at ``v`` (and NaNs in that case) are taken in row-major order: whole rows while
    their tie count fits in what is still needed (row counts, and the ties in the rows above
    as an h x h 0/1-weighted sum), then, in the one row where the count runs out, the ties
    whose in-row prefix count (that row times a w x w 0/1 upper-triangular matrix: a MatMul
    exact in FP32 and TF32) is below what is left. Cost O(h*w + h^2 + w^2). Not CumSum:
    TensorRT's ONNX parser turns CumSum into an L-iteration loop before ICumulativeLayer
    (TensorRT 10.8), e.g. on JetPack 6 (TensorRT 10.3).

    Cost, for the record: rounds are sequential (kernel launches on a GPU, per-node overhead
    in ONNX Runtime); thresholds per round are work (``(2^b - 1) * h*w`` comparisons). The
    legacy value-space bisection did 32 rounds of one threshold and was inexact.

Where the guarantee ends
    * IEEE-754 binary32 with gradual underflow is assumed (PyTorch and ONNX Runtime on CPU
      by default). A backend that flushes denormals to zero (CUDA ``-ftz``, which TensorRT
      kernels may use) sees denormal scores as 0 and denormal thresholds/spacings as 0: the
      mask may then differ where ``|v| < 2^-103`` (about 1e-31; the in-slot spacing is
      denormal below that). Logit maps practically never get there; sigmoid maps of a
      confident selector do, which is one reason to select on logits.
    * Counts are float32 sums, exact up to 2^24 positions per map (a 1/8-scale map of a
      1-gigapixel image); ``k`` is exact for any size (int64 shape arithmetic).
    * The mask is a function of the logits, not of ``importance`` (the sigmoid, an output
      only): distinct logits can round to one float32 sigmoid value. Where the importance
      map has no tie at the k-th value the selection equals ``torch.topk`` on it.
    * The map must be 2-D per image: an (N, L) input is treated as one row of L, which makes
      the in-row matrix L x L.

The exported graph's shape-related ops, as they are (dynamic export, after onnxsim)
    ``k``: Shape -> Slice (dims 1..) -> ReduceProd (``h*w``, int64) -> Mul/Add/Div (int64,
    ``(p*h*w + 999) // 1000``: ratios are multiples of 1/1000 so ``ceil(ratio*h*w)`` is exact
    where float32 gets ``0.3 * 50`` wrong) -> Cast to float -> Clip (min 1) -> Reshape to
    (1, 1, 1, 1). The tie ranking: Shape -> Gather (h, w) -> Range -> Unsqueeze -> Less ->
    Cast builds the h x h and w x w 0/1 matrices. A static export (``export_bundle``
    without ``--dynamic``) folds all of these into constants. Everything else is
    elementwise on the map or on (N, T, 1, 1) per-image tensors, ReduceSum/ReduceMax,
    Where, a Slice, Gather of the constant slot tables and one MatMul. The per-image ``k``
    is never a Python int baked into the graph. Operators (all listed "Y" in onnx-tensorrt
    docs/operators.md, TensorRT 10.x, for the types used): Add, Sub, Mul, Div, Max, Min,
    Less, LessOrEqual, Greater, GreaterOrEqual, Equal, And, Or, Not, IsNaN, Where, Cast,
    Clip (float only), ReduceSum, ReduceMax, ReduceProd, Gather, MatMul, Shape, Slice,
    Range, Unsqueeze, Reshape, Constant (``axes`` are constants where required).

Adaptive selection (beyond the paper's fixed ratio): ``k_i = clamp(count(logit_i >=
tau_logit), ceil(min_ratio*h*w), ceil(max_ratio*h*w))`` where ``tau_logit`` is the smallest
float32 logit whose exact sigmoid is ``>= tau`` (0.0 for tau = 0.5). Counting in logit
space is exact and identical in every runtime (a runtime's float32 sigmoid may round
differently at ``tau``), then the same selection with a per-image ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn

TOPK_MODES = ("exact", "threshold")
SELECTIONS = ("fixed", "adaptive")

RATIO_DENOMINATOR = 1000  # ratios are multiples of 1/1000
# The selection both modes make, as recorded in a bundle's manifest and ONNX metadata.
SELECTION_RULE = ("exactly k = ceil(ratio*h*w) positions per image (adaptive: clamp(count(s >= tau))) of the "
                  "h x w = ceil(H/8) x ceil(W/8) cells that hold image (padding never ranked): the k highest "
                  "selector logits; ties at the k-th value by lowest row-major index; +-inf ordinary extremes; "
                  "NaN ranks below -inf")

SLOT_BITS = 9  # 512 slots: -inf, 254 negative binades, 2 denormal slots, 254 positive binades, +inf
MANTISSA_BITS = 23  # 2^23 values per slot
MAX_BITS_PER_STEP = 8  # at most 255 thresholds compared in one round
MIN_STEPS = 2 + 3  # 9 bits in >= 2 rounds, 23 in >= 3
MAX_STEPS = SLOT_BITS + MANTISSA_BITS  # one bit per round (binary search)
# Chosen with benchmarks/topk_overhead.py on ONNX Runtime CPU (512x1024 and 1024x2048, five
# runs on a shared 2-core machine): of 9/12/16 rounds, 16 had the least CPU time in every run
# and the lowest or near-lowest profiler share (which moves by +-0.5 points run to run); 32
# costs the least CPU time but has as many rounds as the old bisection. Fewer rounds (5..9)
# mean fewer sequential kernels on a GPU at more comparisons per round: set
# topk_search_steps for a GPU export.
DEFAULT_STEPS = 16


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


def _split(bits: int, rounds: int) -> tuple[int, ...]:
    q, r = divmod(bits, rounds)
    return (q + 1,) * r + (q,) * (rounds - r)


def search_schedule(steps: int = DEFAULT_STEPS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bits per round of the slot search and of the in-slot search for ``steps`` rounds.

    The bits add up to 9 and 23, which is what makes the search exact; rounds are shared
    in proportion (at most 8 bits, i.e. 255 thresholds, per round). ``steps`` trades
    sequential rounds (kernel launches on a GPU, per-node overhead in ONNX Runtime)
    against thresholds per round (work per round): 16 (default) -> (3,2,2,2) +
    (2,2,2,2,2,2,2,2,2,2,2,1); 12 -> (3,3,3) + (3,3,3,3,3,2,2,2,2); 9 -> (3,3,3) +
    (4,4,4,4,4,3); 5 -> (5,4) + (8,8,7).
    """
    if not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"Top-K search steps must be an integer in [{MIN_STEPS}, {MAX_STEPS}], got {steps!r}")
    slot_rounds = round(steps * SLOT_BITS / MAX_STEPS)
    slot_rounds = min(max(slot_rounds, 2, steps - MANTISSA_BITS), SLOT_BITS, steps - 3)
    return _split(SLOT_BITS, slot_rounds), _split(MANTISSA_BITS, steps - slot_rounds)


@lru_cache(maxsize=None)
def slot_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(LB, ULP)``, float32 (512,): slot ``s`` holds the float32 values ``LB[s] + j*ULP[s]``.

    In increasing order: -inf; negative binades (magnitudes [2^e, 2^(e+1)), e = 127 .. -126;
    the slot starts at -(2^(e+1) - 2^(e-23)), its most negative value, so the first is
    -FLT_MAX); [-(2^-126 - 2^-149), 0] (negative denormals and zero, spacing 2^-149);
    [2^-149, 2^-126) (positive denormals); positive binades e = -126 .. 127; +inf.
    All entries are exact in float32 (computed in float64, where they are exact too).
    """
    lb = np.empty(512, np.float64)
    ulp = np.empty(512, np.float64)
    lb[0], ulp[0] = -np.inf, 0.0
    for s in range(1, 255):
        e = 127 - (s - 1)
        lb[s], ulp[s] = -(2.0 ** (e + 1) - 2.0 ** (e - 23)), 2.0 ** (e - 23)
    lb[255], ulp[255] = -(2.0**-126 - 2.0**-149), 2.0**-149
    lb[256], ulp[256] = 2.0**-149, 2.0**-149
    for s in range(257, 511):
        e = -126 + (s - 257)
        lb[s], ulp[s] = 2.0**e, 2.0 ** (e - 23)
    lb[511], ulp[511] = np.inf, 0.0
    lb32, ulp32 = lb.astype(np.float32), ulp.astype(np.float32)
    assert np.array_equal(lb32.astype(np.float64), lb) and np.array_equal(ulp32.astype(np.float64), ulp)
    lb32.setflags(write=False)
    ulp32.setflags(write=False)
    return lb32, ulp32


def _as_map(scores: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) float32 view of an (N, 1, h, w), (N, h, w) or (N, L) score map."""
    if scores.ndim == 4 and scores.shape[1] == 1:
        x = scores
    elif scores.ndim == 3:
        x = scores.unsqueeze(1)
    elif scores.ndim == 2:
        x = scores.unsqueeze(1).unsqueeze(1)
    else:
        raise ValueError(f"Top-K takes an (N, 1, h, w), (N, h, w) or (N, L) map, got shape {tuple(scores.shape)}")
    return x.float()  # FP32 even in a half-precision model


def _count_k(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``ceil(ratio * positions per image)`` as (1, ..., 1) float32, from the runtime shape.

    int64 arithmetic on the shape (``torch._shape_as_tensor`` exports as a Shape op, so the
    size stays dynamic): exact at any size, where float32 gets ``0.3 * 50`` wrong.
    """
    numel = torch._shape_as_tensor(scores)[1:].prod()
    scaled = numel * ratio_numerator(ratio) + (RATIO_DENOMINATOR - 1)
    k = torch.div(scaled, RATIO_DENOMINATOR, rounding_mode="trunc")  # non-negative: trunc == floor (one Div)
    # clamp in float: TensorRT's Clip takes float types only. The shape tensor lives on the CPU
    # whatever the map's device: move k to the map (a no-op, and no node, in the CPU export).
    return torch.clamp(k.to(torch.float32), min=1.0).reshape((1,) * scores.ndim).to(scores.device)


def _count_at_least(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """count(x >= t) per image and threshold: (N, T, 1, 1) for x (N, 1, h, w), t (N|1, T, 1, 1)."""
    return (x >= threshold).to(torch.float32).sum(dim=(2, 3), keepdim=True)


def kth_largest(x: torch.Tensor, k: torch.Tensor, steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """The k-th largest non-NaN value of each map, exactly (``-inf`` if fewer than k are non-NaN).

    ``x`` (N, 1, h, w) float32, ``k`` (N|1, 1, 1, 1) float32 holding integers in [1, h*w].
    Returns (N, 1, 1, 1). See the module docstring for the search and its proof.
    """
    return _search(x, k, steps)[0]


def _search(x: torch.Tensor, k: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k-th largest value, "fewer than k non-NaN values") per image, both (N, 1, 1, 1)."""
    slot_bits, mantissa_bits = search_schedule(steps)
    lb_np, ulp_np = slot_tables()
    lb = torch.from_numpy(lb_np.copy()).to(x.device)
    ulp = torch.from_numpy(ulp_np.copy()).to(x.device)

    # 1. the largest slot s with count(x >= LB[s]) >= k (slot 0, -inf, if none). Round 1 also
    #    tests slot 0 itself (count(x >= -inf) = the non-NaN count): one more threshold
    #    instead of a separate full-map count for the NaN case.
    slot = torch.zeros((1, 1, 1, 1), dtype=torch.int64, device=x.device)
    short = None
    done = 0
    for bits in slot_bits:
        done += bits
        first = 0 if short is None else 1
        offsets = torch.arange(first, 1 << bits, device=x.device).view(1, -1, 1, 1) << (SLOT_BITS - done)
        candidates = slot + offsets  # (N|1, T, 1, 1); constant in round 1
        holds = _count_at_least(x, lb[candidates]) >= k
        if short is None:
            short = ~holds[:, :1]
        slot = torch.where(holds, candidates, slot).amax(dim=1, keepdim=True)

    # 2. the largest j with count(x >= LB[s] + j*ULP[s]) >= k
    value, spacing = lb[slot], ulp[slot]  # (N, 1, 1, 1)
    done = 0
    for bits in mantissa_bits:
        done += bits
        stride = float(1 << (MANTISSA_BITS - done))
        steps_j = (torch.arange(1, 1 << bits, device=x.device, dtype=torch.float32) * stride).view(1, -1, 1, 1)
        thresholds = value + spacing * steps_j  # exact: a float32 value of the slot
        holds = _count_at_least(x, thresholds) >= k
        value = torch.where(holds, thresholds, value).amax(dim=1, keepdim=True)
    return value, short


def _first_ties(tie: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """The first ``need`` ones of a 0/1 map (N, 1, h, w) in row-major order, as a boolean mask.

    Rows are taken whole while their ties fit in what is still needed; in the one row where
    the count runs out, ties are ranked by an exclusive in-row prefix count (that row times
    a w x w 0/1 matrix). Cost O(h*w + h^2 + w^2); counts are integers < 2^24, exact in FP32.
    No CumSum (see the module docstring).
    """
    h, w = tie.shape[-2], tie.shape[-1]
    rows = torch.arange(h, device=tie.device)
    cols = torch.arange(w, device=tie.device)
    row_ties = tie.sum(dim=3)  # (N, 1, h)
    above = (rows.unsqueeze(0) < rows.unsqueeze(1)).to(tie.dtype)  # [r, q] = q < r
    before = (row_ties.unsqueeze(2) * above).sum(dim=3, keepdim=True)  # (N, 1, h, 1) ties in rows above
    left = need - before  # ties still wanted when row r starts
    whole = row_ties.unsqueeze(3) <= left  # (N, 1, h, 1)
    part = (left > 0) & ~whole  # the row where the count runs out (at most one)
    row = (tie * part.to(tie.dtype)).sum(dim=2, keepdim=True)  # (N, 1, 1, w) that row's ties
    left_of = (cols.unsqueeze(1) < cols.unsqueeze(0)).to(tie.dtype)  # [i, j] = i < j
    in_row = torch.matmul(row, left_of)  # (N, 1, 1, w) ties to the left, exact for 0/1 inputs
    return (tie > 0) & (whole | (part & (in_row < left)))


def select_at_threshold(
    x: torch.Tensor, value: torch.Tensor, k: torch.Tensor, short: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask (N, 1, h, w) of exactly k positions given the k-th largest value.

    ``value`` from :func:`kth_largest`. If ``count(x >= value) >= k``: every ``x > value``
    and the lowest-index positions equal to ``value``; otherwise (``short``: fewer than k
    non-NaN values, ``value = -inf``): every non-NaN position and the lowest-index NaNs.
    """
    if short is None:
        short = _count_at_least(x, value) < k
    sure = (x > value) | ((x >= value) & short)
    # Logical ops rather than Where on booleans, which the exporter wraps in unscoped Casts.
    tie = ((x == value) & ~short) | (torch.isnan(x) & short)
    need = k - sure.to(torch.float32).sum(dim=(2, 3), keepdim=True)
    return sure | _first_ties(tie.to(torch.float32), need)


def threshold_topk_mask(scores: torch.Tensor, k: torch.Tensor, steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """Mask (same shape as ``scores``) of the k highest positions per image, by counting only.

    ``scores``: (N, 1, h, w), (N, h, w) or (N, L) (treated as one row of L: prefer 2-D
    maps, the tie ranking builds an L x L matrix then). ``k``: per-image counts, any shape
    with N elements (or one), integers in [1, positions].
    """
    x = _as_map(scores)
    kk = (k if k.ndim == 4 else k.reshape(-1, 1, 1, 1)).to(torch.float32)
    value, short = _search(x, kk, steps)
    mask = select_at_threshold(x, value, kk, short)
    mask = mask.to(scores.dtype if scores.is_floating_point() else torch.float32)
    return mask if mask.shape == scores.shape else mask.view(scores.shape)


def _stable_descending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of (N, L) descending, equal values in index order."""
    if torch.onnx.is_in_onnx_export():
        # The exporter has no stable sort; ONNX TopK breaks ties by the lower index
        # ("the element with the lower index will appear first", TopK-11 and later).
        return torch.topk(values, values.shape[1], dim=1).indices
    return torch.argsort(values, dim=1, descending=True, stable=True)


def exact_topk_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mask (same shape as ``scores``) with exactly ``k_i`` ones per image, by stable sorting.

    The reference for :func:`threshold_topk_mask`: a stable ascending sort on "is NaN"
    (non-NaN first, index order kept), then a stable descending sort on the value with
    NaN as -inf; the first ``k_i`` positions of that order are selected (the rule of the
    module docstring). Exports as two ONNX TopK nodes (k = the map size), which break ties
    by the lower index.
    """
    flat = scores.flatten(1).float()
    nan = torch.isnan(flat)
    first = _stable_descending_order((~nan).to(torch.float32))  # non-NaN first
    keyed = torch.where(nan, torch.full_like(flat, -math.inf), flat).gather(1, first)
    order = first.gather(1, _stable_descending_order(keyed))
    rank = torch.arange(flat.shape[1], device=flat.device).unsqueeze(0)
    keep = (rank < k.reshape(-1, 1).to(torch.int64)).to(torch.float32).expand_as(order)  # per-image k
    mask = torch.zeros_like(flat).scatter(1, order, keep)
    return mask.to(scores.dtype if scores.is_floating_point() else torch.float32).view(scores.shape)


def logit_threshold(tau: float) -> float:
    """The smallest float32 ``z`` whose exact sigmoid is ``>= tau`` (0 < tau < 1)."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"the adaptive threshold tau must be in (0, 1), got {tau}")
    z = math.log(tau) - math.log1p(-tau)
    z32 = np.float32(z)
    if float(z32) < z:
        z32 = np.nextafter(z32, np.float32(np.inf))
    return float(z32)


class TopK(nn.Module):
    """Binary Top-K mask (N, 1, h, w) of a score map (N, 1, h, w) — the selector's logits."""

    def __init__(
        self,
        ratio: float = 0.25,
        mode: str = "exact",
        steps: int = DEFAULT_STEPS,
        selection: str = "fixed",
        adaptive_threshold: float = 0.5,
        min_ratio: float = 0.05,
        max_ratio: float = 0.5,
    ):
        super().__init__()
        ratio_numerator(ratio)  # validates the ratio (and min/max below) early
        search_schedule(steps)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if selection == "adaptive":
            ratio_numerator(min_ratio), ratio_numerator(max_ratio)
            if min_ratio > max_ratio:
                raise ValueError(f"need min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
            self.score_threshold = logit_threshold(adaptive_threshold)
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

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, steps: int) -> None:
        search_schedule(steps)
        self._steps = steps

    def count(self, scores: torch.Tensor) -> torch.Tensor:
        """Number of positions to select, float32, shaped to broadcast against ``scores``:
        (1, 1, ..., 1) for a fixed ratio (the same k for every image), (N, 1, ..., 1) adaptive."""
        scores = scores.float()
        if self.selection == "fixed":
            return _count_k(scores, self.ratio)
        dims = tuple(range(1, scores.ndim))
        above = (scores >= self.score_threshold).to(torch.float32).sum(dim=dims, keepdim=True)
        lower = _count_k(scores, self.min_ratio)
        upper = _count_k(scores, self.max_ratio)
        return torch.minimum(torch.maximum(above, lower), upper)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        k = self.count(scores)
        if self.mode == "exact":
            return exact_topk_mask(scores, k)
        return threshold_topk_mask(scores, k, self.steps)

    def extra_repr(self) -> str:
        extra = f", tau={self.adaptive_threshold}, range=[{self.min_ratio}, {self.max_ratio}]"
        return (
            f"ratio={self.ratio}, mode={self.mode}, steps={self.steps}, selection={self.selection}"
            + (extra if self.selection == "adaptive" else "")
        )


# --- reporting ------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionCount:
    """Selected cells of one image's mask against the k it should hold."""

    selected: int
    k: int

    @property
    def extra(self) -> int:
        """Cells beyond k (negative: fewer than k)."""
        return self.selected - self.k

    @property
    def extra_pct(self) -> float:
        return 100.0 * self.extra / self.k if self.k else 0.0


def selection_counts(mask, k) -> list[SelectionCount]:
    """Per image: cells selected by ``mask`` (values > 0.5) against ``k``.

    ``mask``: (N, ...) array-like (numpy or torch). ``k``: one int for every image
    (``topk_count(ratio, h8*w8)``) or N ints (adaptive K: e.g. the reference mask's
    counts, since the reference selects exactly k). Pure: no model, no runtime.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    selected = (m.reshape(m.shape[0], -1) > 0.5).sum(axis=1)
    if isinstance(k, torch.Tensor):
        k = k.detach().cpu().numpy()
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64).reshape(-1), selected.shape)
    return [SelectionCount(int(s), int(kk)) for s, kk in zip(selected, ks)]


def summarize_selection(counts: Sequence[SelectionCount]) -> dict:
    """What a parity/eval report shows: total extra cells, worst image, images off k."""
    return {
        "images": len(counts),
        "extra_cells": int(sum(max(c.extra, 0) for c in counts)),
        "max_extra_pct": max((c.extra_pct for c in counts), default=0.0),
        "images_over_k": sum(1 for c in counts if c.extra > 0),
        "images_under_k": sum(1 for c in counts if c.extra < 0),
    }
