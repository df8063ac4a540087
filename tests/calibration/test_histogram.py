"""Histograms and range rules against ONNX Runtime's own HistogramCollector (the real one)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnxruntime.quantization import calibrate as ort_calibrate

from fornet_deploy.calibration.histogram import ENTROPY_BINS, PERCENTILE_BINS, Histogram, entropy_range
from fornet_deploy.errors import FornetError

ort_calibrate.print = lambda *args, **kwargs: None  # its collectors print progress lines


def _ort(method: str, chunks: list[np.ndarray], bins: int, percentile: float = 99.999):
    collector = ort_calibrate.HistogramCollector(method, False, bins, 128, percentile, "same")
    for chunk in chunks:
        collector.collect_value({"t": chunk})
    return collector


def _ours(chunks: list[np.ndarray], bins: int, **kwargs) -> Histogram:
    ours = Histogram(bins, **kwargs)
    for chunk in chunks:
        ours.add(np.array_split(chunk, 3))  # a chunk's images as separate arrays, as the collector has them
    return ours


def _same_histogram(ours: Histogram, theirs: tuple) -> bool:
    hist, edges, low, high, threshold = theirs
    return (np.array_equal(ours.hist, hist) and np.array_equal(ours.edges, edges) and ours.edges.dtype == edges.dtype
            and ours.min == low and ours.max == high and ours.threshold == threshold)


def _as_floats(pair) -> tuple[float, float]:
    return float(pair[0]), float(pair[1])


# Chunks of activations: float32 data of a random scale (zero included: a dead tensor on some
# images), with ReLU-like one-sided chunks, offsets and outliers. Scales stay within 8x of the
# first chunk, so ONNX Runtime's own search stays fast; a chunk of a few values can still span far
# less than its scale, and when a later chunk then grows the histogram past the cap, ours merges
# bins by design (tested separately below): the equality tests skip those draws.
@st.composite
def chunk_lists(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0]))
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        scale = base * draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]))
        data = rng.standard_normal(draw(st.integers(1, 3000))) * scale + draw(st.floats(-0.5, 0.5)) * scale
        if draw(st.booleans()):
            data = np.maximum(data, 0)
        if draw(st.booleans()) and data.size:
            data[rng.integers(data.size)] *= 20  # an outlier
        chunks.append(data.astype(np.float32))
    return chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_lists())
def test_entropy_histogram_and_threshold_equal_onnxruntime(chunks):
    theirs = _ort("entropy", chunks, ENTROPY_BINS)
    ours = _ours(chunks, ENTROPY_BINS)
    assume(ours.coarsened == 0)
    assert _same_histogram(ours, theirs.histogram_dict["t"])
    want = theirs.get_entropy_threshold(theirs.histogram_dict["t"], 128)
    got = ours.entropy_range()
    assert _as_floats(got) == _as_floats(want) and got[0].dtype == np.float32


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_lists(), st.sampled_from([99.0, 99.9, 99.99, 99.999, 100.0]))
def test_percentile_histogram_and_range_equal_onnxruntime(chunks, percentile):
    theirs = _ort("percentile", chunks, PERCENTILE_BINS, percentile)
    ours = _ours(chunks, PERCENTILE_BINS)
    assume(ours.coarsened == 0)
    assert _same_histogram(ours, theirs.histogram_dict["t"])
    assert _as_floats(ours.percentile_range(percentile)) == _as_floats(theirs.compute_percentile()["t"][:2])


@pytest.mark.parametrize("bins", [256, 1024, 4096])
def test_entropy_search_equals_onnxruntime_on_grown_histograms(bins):
    """Histograms as growth leaves them (more bins, counts far from the centre)."""
    rng = np.random.default_rng(bins)
    hist = rng.poisson(np.exp(-np.linspace(-4, 4, bins) ** 2) * 1000).astype(np.int64)
    hist[rng.integers(bins, size=5)] += 7
    edges = np.linspace(-3, 3, bins + 1, dtype=np.float32)
    low, high = np.array(-2.9, np.float32), np.array(2.7, np.float32)
    collector = ort_calibrate.HistogramCollector("entropy", False, 128, 128, 99.999, "same")
    want = collector.get_entropy_threshold((hist, edges, low, high, np.array(3, np.float32)), 128)
    assert _as_floats(entropy_range(hist, edges, low, high)) == _as_floats(want)


def test_growth_past_the_cap_merges_bins_instead_of_taking_days():
    """The calibration wall (docs/benchmarks.md, section 9): a tiny first range makes ONNX
    Runtime's histogram millions of bins; ours stays within the cap."""
    tiny, big = np.array([2e-4, -3e-4], np.float32), np.array([0.1, 0.5], np.float32)
    assert _ort("entropy", [tiny, big], ENTROPY_BINS).histogram_dict["t"][0].size > 200_000  # days of search
    ours = _ours([tiny, big], ENTROPY_BINS, max_growth=32)
    assert ours.hist.size <= 32 * ENTROPY_BINS and ours.coarsened > 0
    assert ours.hist.sum() == 4 and ours.threshold >= 0.5 and ours.hist.size % 2 == 0
    low, high = ours.entropy_range()
    assert -3e-4 <= low < 0 < high <= 0.5


def test_the_too_many_bins_crash_class_is_gone():
    """ONNX Runtime: ``ValueError: Too many bins for data range`` once the first chunk's stride
    falls under float32's spacing at the final range (``calibrate --num-images 16``, seed 5)."""
    tiny, big = np.array([1e-6, -2e-6], np.float32), np.array([0.4, 0.6], np.float32)
    with pytest.raises(ValueError, match="Too many bins"):
        _ort("entropy", [tiny, big], ENTROPY_BINS)
    ours = _ours([tiny, big], ENTROPY_BINS)
    assert ours.max == np.float32(0.6) and ours.hist.sum() == 4
    assert 0 < float(ours.entropy_range()[1]) <= 0.6
    # a range of a few subnormals: too narrow for 128 float32 bins even in the first chunk
    subnormal = np.array([1e-44, -2e-44, 0.0], np.float32)
    ours = _ours([subnormal, subnormal], ENTROPY_BINS)
    assert ours.hist.sum() == 6 and np.isfinite(ours.entropy_range()).all()


def test_non_finite_activations_are_one_line():
    with pytest.raises(FornetError, match="infinite or NaN values"):
        _ours([np.array([1.0, np.inf], np.float32)], ENTROPY_BINS)
    for data in ([np.nan, 1.0, -2.0], [1.0, np.nan, -2.0]):  # NaN aside (nanmin / nanmax), as ONNX Runtime
        nan_aside = _ours([np.array(data, np.float32)], ENTROPY_BINS)
        assert (nan_aside.min, nan_aside.max) == (-2.0, 1.0)
    with pytest.raises(FornetError, match="infinite or NaN values"):
        _ours([np.array([np.nan], np.float32)], ENTROPY_BINS)


def test_an_all_zero_tensor_has_the_zero_range_without_a_division_by_zero():
    """A tensor that is 0 on every calibration image (a dead ReLU) leaves an empty percentile
    histogram: its range is the data's, (0, 0), not a 0/0 (which numpy only warned about)."""
    from fornet_deploy.calibration.histogram import percentile_range

    edges = np.linspace(0, 1, 9, dtype=np.float32)
    with np.errstate(all="raise"):
        low, high = percentile_range(np.zeros(8, np.int64), edges, np.float32(0), np.float32(0), 99.99)
    assert (float(low), float(high)) == (0.0, 0.0)
