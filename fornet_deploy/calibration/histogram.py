"""Activation histograms and range rules with ONNX Runtime's semantics, without its cost.

The INT8 ranges of ``fornet-deploy calibrate`` are those ONNX Runtime's calibrators
(``onnxruntime.quantization.calibrate``, 1.18 ... 1.32) compute, with the settings the
toolkit has always used: signed histograms (``symmetric=False``), 128 bins and 128
quantized bins for ``entropy``, 2048 bins for ``percentile``, plain min / max for
``minmax``. This module reproduces those rules bit for bit (tests compare it with ONNX
Runtime's own ``HistogramCollector``) and removes the two ways they fail on FoR-Net
(measured in docs/benchmarks.md section 9; data in docs/research/data/):

Growth (``HistogramCollector.merge_histogram``)
    The first calibration chunk makes ``num_bins`` bins over ``[-T1, T1]``, ``T1`` = that
    chunk's max |x|. A later chunk with a larger max |x| = ``T`` adds bins *at the first
    chunk's stride* on both sides, so the final count is about ``num_bins * T / T1``. A tensor
    whose first chunk had a tiny range (the Top-K bisection bounds: 1e-6 on most images,
    0.5 on a few) ends with millions of bins: ``get_entropy_threshold`` then runs for days
    (a Python loop over ``bins / 2`` candidates, each summing O(bins) elements with the
    builtin ``sum``), or, once the stride falls under float32's spacing, numpy raises
    ``Too many bins for data range``. Here the growth is capped (:data:`MAX_GROWTH`): a
    growth beyond it first merges adjacent bin pairs (stride doubled, the zero edge kept),
    the only case in which the histogram differs from ONNX Runtime's, which would not finish.
Threshold search (``get_entropy_threshold``)
    Same candidates, same float32 KL divergence, same first-minimum rule, but each candidate
    costs a few vectorised numpy calls (cumulative sums for the outliers, a reshape for the
    merge into quantized bins) instead of Python loops.

Everything here is pure numpy on arrays the caller provides (no ONNX Runtime import), so
it runs wherever the collection runs and is tested against the real ONNX Runtime.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..errors import FornetError

ENTROPY_BINS = 128  # create_calibrator's defaults for CalibrationMethod.Entropy
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE_BINS = 2048  # ... and for CalibrationMethod.Percentile
# Cap on a histogram's growth: at most this many times its first bin count (8192 bins for
# entropy, 131072 for percentile). Research: FoR-Net's quantized tensors grow at most 3.2x
# (412 entropy bins; the 2.47 M-bin histograms are Top-K tensors, which are not collected),
# so the cap only guards the calibration time against a model or data set that would grow
# further. The entropy search costs O(bins^2 / num_quantized_bins) numpy work (~0.3 s at
# 8192 bins); percentile is a cumulative sum.
MAX_GROWTH = 64


def chunk_minmax(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(nanmin, nanmax)`` over every array of a chunk, as 0-d arrays of their dtype (0 for
    an empty chunk, as ONNX Runtime has it).

    ``min`` / ``max`` first (faster; they propagate NaN), ``nanmin`` / ``nanmax`` only when a
    NaN showed up, which equals ONNX Runtime's ``np.nanmin`` / ``np.nanmax`` on the chunk.
    """
    dtype = arrays[0].dtype
    lows, highs = [np.array(0, dtype)], [np.array(0, dtype)]
    for a in (a for a in arrays if a.size):
        lo, hi = a.min(), a.max()
        if np.isnan(lo) or np.isnan(hi):
            a = a[~np.isnan(a)]
            if not a.size:
                lows.append(np.array(np.nan, dtype))  # ONNX Runtime's nanmin of NaNs only
                highs.append(np.array(np.nan, dtype))
                continue
            lo, hi = a.min(), a.max()
        lows.append(lo)
        highs.append(hi)
    if len(lows) > 1:  # data: the zeros stood only for an empty chunk
        lows, highs = lows[1:], highs[1:]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: NaN, refused by Histogram.add
        return np.array(np.nanmin(lows), dtype=dtype), np.array(np.nanmax(highs), dtype=dtype)


class Histogram:
    """One tensor's histogram with ``HistogramCollector.collect_value`` semantics.

    :meth:`add` takes every array of one calibration chunk (ONNX Runtime: one
    ``collect_data`` call); counts are summed per array, which equals ONNX Runtime's
    histogram of the stacked chunk (an element's bin depends only on the edges).
    Attributes after the first chunk: ``hist`` (int64 counts), ``edges``, ``min``, ``max``
    and ``threshold`` (0-d arrays of the data's dtype, as ONNX Runtime keeps them), and
    ``coarsened``, how often bin pairs were merged to stay within ``max_growth`` times
    ``num_bins``.
    """

    def __init__(self, num_bins: int, max_growth: int = MAX_GROWTH, name: str = "tensor"):
        if num_bins < 2 or num_bins % 2:
            raise ValueError(f"num_bins must be even and >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.max_bins = num_bins * max(1, max_growth)
        self.name = name
        self.hist: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.min = self.max = self.threshold = None
        self.coarsened = 0

    def add(self, arrays: Sequence[np.ndarray], minmax: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        new_min, new_max = minmax if minmax is not None else chunk_minmax(arrays)
        dtype = arrays[0].dtype
        threshold = np.array(max(abs(new_min), abs(new_max)), dtype=dtype)
        if not np.isfinite(threshold):
            raise FornetError(f"calibration tensor {self.name} holds infinite or NaN values: the model overflows "
                              "on a calibration image, so no INT8 range exists for it")
        if self.hist is None:
            self.hist, self.edges = self._histogram(arrays, self.num_bins, threshold)
            self.min, self.max, self.threshold = new_min, new_max, threshold
            return
        if threshold <= self.threshold:
            hist, _ = self._histogram(arrays, len(self.hist), self.threshold)
            self.hist = hist + self.hist
        elif self.threshold == 0:
            hist, self.edges = self._histogram(arrays, len(self.hist), threshold)
            self.hist = hist + self.hist
            self.threshold = threshold
        else:
            self._grow(arrays, threshold)
        self.min, self.max = min(self.min, new_min), max(self.max, new_max)

    def _grow(self, arrays: Sequence[np.ndarray], threshold: np.ndarray) -> None:
        """``merge_histogram``'s growth, float32 arithmetic as there; pairs merged first
        when the result would exceed ``max_bins``."""
        while True:
            old_hist, old_threshold = self.hist, self.threshold
            old_num_bins = len(old_hist)
            old_stride = 2 * old_threshold / old_num_bins
            half = int((threshold - old_threshold) // old_stride + 1)
            new_num_bins = old_num_bins + 2 * half
            if new_num_bins <= self.max_bins:
                break
            self._coarsen()
        new_threshold = half * old_stride + old_threshold
        hist, self.edges = self._histogram(arrays, new_num_bins, new_threshold)
        hist[half : new_num_bins - half] += old_hist
        self.hist, self.threshold = hist, new_threshold

    def _coarsen(self) -> None:
        """Merge adjacent bin pairs outward from zero (stride x2). With an odd number of
        bins per side, one empty bin is added at each end first (range + one stride)."""
        half = len(self.hist) // 2
        left, right = self.hist[:half], self.hist[half:]
        threshold = self.threshold
        if half % 2:
            stride = 2 * threshold / len(self.hist)
            left, right = np.concatenate([[0], left]), np.concatenate([right, [0]])
            threshold = np.array(threshold + stride, dtype=threshold.dtype)
        self.hist = np.concatenate([left.reshape(-1, 2).sum(1), right.reshape(-1, 2).sum(1)])
        self.threshold = threshold
        self.coarsened += 1

    def _histogram(self, arrays: Sequence[np.ndarray], bins: int,
                   threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Summed ``np.histogram`` of the arrays over ``[-threshold, threshold]``.

        A range too narrow for ``bins`` float32 edges (a tensor whose values all lie within a
        few subnormals of zero) makes numpy raise ``Too many bins for data range``; such a
        range gets float64 edges instead (ONNX Runtime stops there with that error).
        """
        limits = (-threshold, threshold)
        try:
            edges = np.histogram_bin_edges(arrays[0][:0], bins, range=limits)  # what np.histogram uses
        except ValueError:
            edges, limits = np.linspace(-float(threshold), float(threshold), bins + 1), None
        total = np.zeros(bins, dtype=np.int64)
        for a in arrays:
            total += np.histogram(a.reshape(-1), bins if limits is not None else edges, range=limits)[0]
        return total, edges

    def entropy_range(self, num_quantized_bins: int = ENTROPY_QUANTIZED_BINS) -> tuple[np.ndarray, np.ndarray]:
        return entropy_range(self.hist, self.edges, self.min, self.max, num_quantized_bins)

    def percentile_range(self, percentile: float) -> tuple[np.ndarray, np.ndarray]:
        return percentile_range(self.hist, self.edges, self.min, self.max, percentile)


def _clip_to_data(lo, hi, min_value, max_value, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Both ONNX Runtime rules end so: the range never reaches past the data."""
    lo, hi = np.array(lo, dtype=dtype), np.array(hi, dtype=dtype)
    if lo < min_value:
        lo = np.array(min_value, dtype=dtype)
    if hi > max_value:
        hi = np.array(max_value, dtype=dtype)
    return lo, hi


def percentile_range(hist: np.ndarray, edges: np.ndarray, min_value, max_value,
                     percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """``HistogramCollector.compute_percentile`` with ``symmetric=False``: cut
    ``(100 - percentile) / 2`` % of the counts on each side."""
    total = hist.sum()
    if not total:  # nothing counted (every image gave an empty tensor): the data's own range, no 0/0
        return _clip_to_data(min_value, max_value, min_value, max_value, edges.dtype)
    cdf = np.cumsum(hist / total)
    cut = (100.0 - percentile) / 200.0
    lo, hi = edges[np.searchsorted(cdf, cut)], edges[np.searchsorted(cdf, 1.0 - cut)]
    return _clip_to_data(lo, hi, min_value, max_value, edges.dtype)


def _smooth(p: np.ndarray, eps: float = 0.0001) -> np.ndarray | None:
    """``quant_utils.smooth_distribution``, same float32 arithmetic."""
    is_zeros = (p == 0).astype(np.float32)
    is_nonzeros = (p != 0).astype(np.float32)
    n_zeros = is_zeros.sum()
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    eps1 = eps * float(n_zeros) / float(n_nonzeros)
    hist = p.astype(np.float32)
    hist += eps * is_zeros + (-eps1) * is_nonzeros
    return hist


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> np.float32:
    """``calibrate.entropy(p, q)``: float32 KL divergence through ONNX Runtime's ``rel_entr``,
    rules in its order (zero where p = 0 <= q, then inf wherever not p > 0 < q, which also
    overrides the first rule; the smoothed inputs have no zeros, so it never matters)."""
    p = p.astype(np.float32)
    p = 1.0 * p / np.sum(p, axis=0, keepdims=True)
    q = q.astype(np.float32)
    q = 1.0 * q / np.sum(q, axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * np.log(p / q)
    terms[(p == 0) & (q >= 0)] = 0
    terms[~((p > 0) & (q > 0))] = np.inf
    return np.sum(terms, axis=0).astype(np.float32)


def entropy_range(hist: np.ndarray, edges: np.ndarray, min_value, max_value,
                  num_quantized_bins: int = ENTROPY_QUANTIZED_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``HistogramCollector.get_entropy_threshold``: the window ``[zero - i, zero + i + 1)``
    of bins whose KL divergence from its ``num_quantized_bins``-level quantization is
    smallest (first minimum wins), clipped to the data's min / max.

    The candidates and the float32 arithmetic are ONNX Runtime's; the per-candidate sums
    are cumulative sums and a reshape instead of Python loops over the builtin ``sum``.
    """
    num_bins = hist.size
    zero = num_bins // 2
    half_quantized = num_quantized_bins // 2
    dtype = edges.dtype
    counts = hist.astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    total = cumulative[-1]
    best, best_i = None, half_quantized
    for i in range(half_quantized, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        window = counts[start:end]
        p = window.copy()
        p[0] += cumulative[start]  # left outliers
        p[-1] += total - cumulative[end]  # right outliers
        merged = window.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = window[:body].reshape(num_quantized_bins, merged).sum(1)
        quantized[-1] += window[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(1)
        q = np.zeros(p.size, dtype=np.int64)  # ONNX Runtime truncates the mean into int64
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64)
        q[:body] = np.repeat(level, merged)
        p_smooth, q_smooth = _smooth(p), _smooth(q)
        if p_smooth is None or q_smooth is None:
            divergence = np.array(np.inf, dtype=dtype)
        else:
            divergence = np.array(_kl_divergence(p_smooth, q_smooth), dtype=dtype)
        if best is None or divergence < best:
            best, best_i = divergence, i
    start, end = zero - best_i, min(zero + best_i + 1, num_bins)
    return _clip_to_data(edges[start], edges[end], min_value, max_value, dtype)
