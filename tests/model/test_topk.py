"""Top-K in PyTorch: both modes against torch.topk and the written-out selection rule.

The same map families run through the exported ONNX graph in test_topk_onnx.py.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model.topk_maps import (
    any_float,
    denormals,
    distinct,
    exact_ceil,
    float_run,
    log_uniform,
    reference_mask,
    saturated_sigmoid,
    tiny_kth,
    topk_mask,
)

from fornet_deploy.model.topk import (
    DEFAULT_STEPS,
    MANTISSA_BITS,
    MAX_STEPS,
    MIN_STEPS,
    SLOT_BITS,
    TopK,
    _first_ties,
    exact_topk_mask,
    kth_largest,
    logit_threshold,
    search_schedule,
    selection_counts,
    slot_tables,
    summarize_selection,
    threshold_topk_mask,
    topk_count,
)

FAST = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [(1, 1), (1, 9), (13, 7), (7, 13), (8, 8), (16, 32), (5, 3)]


def both_modes(values: np.ndarray, k: int, steps: int = DEFAULT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).view(1, 1, *values.shape)
    kk = torch.tensor([float(k)])
    threshold = threshold_topk_mask(x, kk, steps)[0, 0].numpy()
    exact = exact_topk_mask(x, kk)[0, 0].numpy()
    return threshold, exact


def check_distinct(values: np.ndarray, k: int, steps: int = DEFAULT_STEPS) -> None:
    assert distinct(values)
    threshold, exact = both_modes(values, k, steps)
    expected = topk_mask(values, k)
    assert np.array_equal(threshold, expected)
    assert np.array_equal(exact, expected)


def check_rule(values: np.ndarray, k: int, steps: int = DEFAULT_STEPS) -> None:
    threshold, exact = both_modes(values, k, steps)
    expected = reference_mask(values, k)
    assert int(threshold.sum()) == k
    assert np.array_equal(threshold, expected)
    assert np.array_equal(exact, expected)


k_strategy = st.one_of(st.just("one"), st.just("all"), st.floats(0.0, 1.0))


def pick_k(choice, n: int) -> int:
    if choice == "one":
        return 1
    if choice == "all":
        return n
    return max(1, min(n, math.ceil(choice * n)))


# --- tie-free maps: both modes equal torch.topk ---------------------------------------


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, signed=st.booleans())
def test_log_uniform_1e_38_to_1(shape, seed, kc, signed):
    values = log_uniform(np.random.default_rng(seed), *shape, 1e-38, 1.0, signed)
    check_distinct(values, pick_k(kc, values.size))


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, signed=st.booleans())
def test_log_uniform_1e_38_to_1e38(shape, seed, kc, signed):
    values = log_uniform(np.random.default_rng(seed), *shape, 1e-38, 1e38, signed)
    check_distinct(values, pick_k(kc, values.size))


@FAST
@given(
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**32 - 1),
    kc=k_strategy,
    steps=st.integers(MIN_STEPS, MAX_STEPS),
)
def test_any_float32_bit_pattern_at_any_step_count(shape, seed, kc, steps):
    values = any_float(np.random.default_rng(seed), *shape)
    check_distinct(values, pick_k(kc, values.size), steps)


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, signed=st.booleans())
def test_denormals(shape, seed, kc, signed):
    values = denormals(np.random.default_rng(seed), *shape, signed)
    check_distinct(values, pick_k(kc, values.size))


@FAST
@given(shape=st.sampled_from([(13, 7), (8, 8), (16, 32)]), seed=st.integers(0, 2**32 - 1), kc=st.floats(0.0, 1.0))
def test_kth_value_tiny_relative_to_the_max(shape, seed, kc):
    n = shape[0] * shape[1]
    k = max(2, min(n, math.ceil(kc * n)))
    values = tiny_kth(np.random.default_rng(seed), *shape, k)
    check_distinct(values, k)
    assert np.sort(values.reshape(-1))[-k] < 1e-29 < np.max(values)


@FAST
@given(
    shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, steps=st.sampled_from([5, 9, 12, 32])
)
def test_near_ties_one_float32_step_apart_at_every_magnitude(shape, seed, kc, steps):
    # every value is the next float32 after another: k-th and (k+1)-th are adjacent
    values = float_run(np.random.default_rng(seed), *shape)
    check_distinct(values, pick_k(kc, values.size), steps)


RUN_STARTS = [
    0.0, -3 * 2.0**-149, 2.0**-126 - 4 * 2.0**-149, -(2.0**-126) - 2 * 2.0**-149,  # zero, denormals, binade edge
    1.0 - 2**-24 * 3, -1.0 - 2**-23 * 2, 1e-30, 3e38, -3.4028235e38,  # binade edges, range ends
]


@pytest.mark.parametrize("start", RUN_STARTS)
def test_near_ties_across_zero_binade_and_range_edges(start):
    values = float_run(np.random.default_rng(0), 6, 5, np.float32(start))
    for k in range(1, 31):
        check_distinct(values, k)


def test_distinct_sigmoid_maps_at_every_resolution_and_ratio():
    rng = np.random.default_rng(3)
    for h, w in [(8, 8), (16, 32), (13, 7), (64, 128)]:
        logits = rng.normal(0, 3, (h, w)).astype(np.float32)
        for ratio in (0.001, 0.01, 0.1, 0.25, 0.3, 0.5, 0.9, 1.0):
            check_distinct(logits, topk_count(ratio, h * w))


# --- ties, saturation, constants: exactly k, lowest index first, modes identical -------


@FAST
@given(
    shape=st.sampled_from(SHAPES + [(24, 40)]),
    seed=st.integers(0, 2**32 - 1),
    kc=k_strategy,
    scale=st.sampled_from([20.0, 60.0, 200.0]),
)
def test_saturated_sigmoid_maps(shape, seed, kc, scale):
    values = saturated_sigmoid(np.random.default_rng(seed), *shape, scale)
    check_rule(values, pick_k(kc, values.size))


@pytest.mark.parametrize("fill", [0.0, -0.0, 0.5, 1.0, -7.25, 2.0**-149, np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (4, 4)])
def test_constant_maps_select_the_first_k_positions(fill, shape):
    values = np.full(shape, fill, dtype=np.float32)
    for k in sorted(k for k in {1, 2, values.size // 2, values.size} if 1 <= k <= values.size):
        check_rule(values, k)
        threshold, _ = both_modes(values, k)
        assert threshold.reshape(-1)[:k].all() and not threshold.reshape(-1)[k:].any()


def test_ties_at_the_kth_value_take_the_lowest_indices():
    # 10 positions share the k-th value (0.5); k = 4 of 16: 0.9, 0.8 and the first two 0.5s
    values = np.array([0.9, 0.8] + [0.5] * 10 + [0.1, 0.2, 0.3, 0.05], dtype=np.float32).reshape(4, 4)
    threshold, exact = both_modes(values, 4)
    assert threshold.reshape(-1).tolist() == [1, 1, 1, 1] + [0] * 12
    assert np.array_equal(threshold, exact)


def test_ties_span_rows_in_row_major_order():
    values = np.zeros((4, 5), dtype=np.float32)
    values[0, 4] = values[2, 1] = values[1, 3] = values[3, 0] = 1.0
    threshold, exact = both_modes(values, 3)
    assert {tuple(i) for i in np.argwhere(threshold)} == {(0, 4), (1, 3), (2, 1)}
    assert np.array_equal(threshold, exact)


def test_minus_zero_ties_with_zero():
    values = np.array([[0.0, -0.0, 1.0, -0.0, 0.0, -1.0]], dtype=np.float32)
    for k in range(1, 7):
        check_rule(values, k)


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy)
def test_quantized_maps_with_many_ties(shape, seed, kc):
    values = np.random.default_rng(seed).integers(-3, 4, shape).astype(np.float32) / 4
    check_rule(values, pick_k(kc, values.size))


@FAST
@given(shape=st.sampled_from(SHAPES + [(24, 40), (3, 64)]), seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0))
def test_first_ties_takes_the_first_ones_in_row_major_order(shape, seed, density):
    rng = np.random.default_rng(seed)
    tie = (rng.random((2, 1) + shape) < density).astype(np.float32)
    for need in sorted({0, 1, int(tie[0].sum()) // 2, int(tie[0].sum())}):
        got = _first_ties(torch.from_numpy(tie), torch.tensor(float(need)).view(1, 1, 1, 1)).numpy()
        for i in range(2):
            flat = tie[i].reshape(-1)
            expected = flat * (np.cumsum(flat) <= need)
            assert np.array_equal(got[i].reshape(-1), expected.astype(bool))


# --- non-finite scores: +-inf ordinary extremes, NaN below -inf ------------------------


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, p=st.floats(0.0, 1.0))
def test_nan_and_infinities(shape, seed, kc, p):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 10, shape).astype(np.float32)
    special = rng.random(shape) < p
    values[special] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), int(special.sum()))
    check_rule(values, pick_k(kc, values.size))


def test_nan_never_beats_a_number_and_fills_only_when_needed():
    values = np.array([[np.nan, -np.inf, 3.0], [np.nan, np.inf, -np.inf]], dtype=np.float32)
    expected = {1: [0, 0, 0, 0, 1, 0], 2: [0, 0, 1, 0, 1, 0], 3: [0, 1, 1, 0, 1, 0], 4: [0, 1, 1, 0, 1, 1],
                5: [1, 1, 1, 0, 1, 1], 6: [1, 1, 1, 1, 1, 1]}
    for k, mask in expected.items():
        threshold, exact = both_modes(values, k)
        assert threshold.reshape(-1).tolist() == mask == exact.reshape(-1).tolist()


def test_kth_largest_is_exact_including_infinities_and_the_all_nan_case():
    x = torch.tensor([[[[np.inf, 2.0, -np.inf, np.nan]]]])
    for k, v in [(1, np.inf), (2, 2.0), (3, -np.inf), (4, -np.inf)]:
        assert kth_largest(x, torch.tensor([[[[float(k)]]]])).item() == v
    assert kth_largest(torch.full((1, 1, 2, 2), np.nan), torch.tensor([[[[1.0]]]])).item() == -np.inf


# --- batch, shapes, k -----------------------------------------------------------------


def test_per_image_k_in_a_batch_and_batch_independence():
    rng = np.random.default_rng(5)
    maps = np.stack([any_float(rng, 9, 11) for _ in range(4)])
    ks = [1, 17, 50, 99]
    x = torch.from_numpy(maps).unsqueeze(1)
    k = torch.tensor(ks, dtype=torch.float32).view(4, 1, 1, 1)
    for mask in (threshold_topk_mask(x, k), exact_topk_mask(x, k)):
        for i in range(4):
            assert np.array_equal(mask[i, 0].numpy(), topk_mask(maps[i], ks[i]))


@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (2, 5, 6), (2, 30)])
def test_accepted_map_layouts(shape):
    x = torch.randn(shape)
    k = torch.tensor([7.0])
    assert threshold_topk_mask(x, k).shape == x.shape
    assert torch.equal(threshold_topk_mask(x, k), exact_topk_mask(x, k))


@pytest.mark.parametrize("h, w", [(8, 8), (16, 32), (24, 40), (13, 7), (1, 1), (64, 128)])
def test_k_is_ceil_ratio_hw_at_every_resolution(h, w):
    scores = torch.randn(2, 1, h, w)
    for ratio in (0.25, 0.3, 0.1, 0.007, 1.0):
        for mode in ("exact", "threshold"):
            counts = TopK(ratio, mode)(scores).flatten(1).sum(1).tolist()
            assert counts == [exact_ceil(ratio, h * w)] * 2 == [topk_count(ratio, h * w)] * 2


@given(ratio_steps=st.integers(1, 1000), numel=st.integers(1, 2_000_000))
def test_topk_count_is_the_exact_ceil(ratio_steps, numel):
    ratio = ratio_steps / 1000
    assert topk_count(ratio, numel) == max(1, exact_ceil(ratio, numel))


def test_in_graph_count_matches_python_count_for_awkward_sizes():
    # sizes where float32 ratio * L lands just above an integer; also beyond int32 products
    cases = [(0.3, (5, 10)), (0.3, (9, 10)), (0.1, (30, 32)), (0.7, (25, 40)), (0.3, (128, 256)), (0.999, (1500, 1500))]
    for ratio, (h, w) in cases:
        scores = torch.zeros(1, 1, h, w)
        assert int(TopK(ratio, "threshold").count(scores)) == exact_ceil(ratio, h * w)


# --- adaptive K -----------------------------------------------------------------------


def test_adaptive_count_is_clamped_and_modes_agree():
    low = torch.full((1, 1, 16, 16), -5.0) + torch.linspace(0, 1e-3, 256).view(1, 1, 16, 16)
    low[..., 0, 0] = -4.0  # nothing above tau -> min_ratio
    high = torch.linspace(0.1, 5.0, 256).view(1, 1, 16, 16)  # all above tau -> max_ratio
    mid = torch.linspace(-3.0, 3.0, 256).view(1, 1, 16, 16)  # half above tau
    batch = torch.cat([low, high, mid])
    top = dict(ratio=0.25, selection="adaptive", adaptive_threshold=0.5, min_ratio=0.05, max_ratio=0.4)
    exact = TopK(mode="exact", **top)(batch)
    threshold = TopK(mode="threshold", **top)(batch)
    assert exact.flatten(1).sum(1).tolist() == [math.ceil(0.05 * 256), math.ceil(0.4 * 256), math.ceil(0.4 * 256)]
    assert torch.equal(exact, threshold)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    tau=st.sampled_from([0.5, 0.1, 0.9, 0.999]),
    shape=st.sampled_from([(13, 7), (16, 32)]),
)
def test_adaptive_k_exact_on_wide_logit_maps(seed, tau, shape):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 30, (3, 1, *shape)).astype(np.float32))
    top = dict(selection="adaptive", adaptive_threshold=tau, min_ratio=0.02, max_ratio=0.6)
    k = TopK(**top).count(logits).flatten().to(torch.int64).tolist()
    for i, ki in enumerate(k):
        above = int((logits[i] >= logit_threshold(tau)).sum())
        assert ki == min(max(above, topk_count(0.02, logits[i].numel())), topk_count(0.6, logits[i].numel()))
    threshold = TopK(mode="threshold", **top)(logits)
    exact = TopK(mode="exact", **top)(logits)
    assert torch.equal(threshold, exact)
    for i, ki in enumerate(k):
        assert np.array_equal(threshold[i, 0].numpy(), reference_mask(logits[i, 0].numpy(), ki))


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.9, 1e-6, 1 - 1e-6, 0.3])
def test_logit_threshold_is_the_smallest_float32_logit_at_or_above_tau(tau):
    z = np.float32(logit_threshold(tau))
    below = np.nextafter(z, np.float32(-np.inf))
    exact_sigmoid = lambda v: 1 / (1 + math.exp(-float(v)))  # noqa: E731
    assert exact_sigmoid(z) >= tau * (1 - 1e-15) and exact_sigmoid(below) < tau * (1 + 1e-15)
    assert logit_threshold(0.5) == 0.0


# --- the search itself ----------------------------------------------------------------


def test_slot_tables_enumerate_float32_in_order():
    lb, ulp = slot_tables()
    assert lb.size == 2**SLOT_BITS and np.all(np.diff(lb) > 0)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    extremes = [np.inf, -np.inf, 0.0, -0.0, 2.0**-149, -(2.0**-149)]
    values = np.concatenate([values[~np.isnan(values)], extremes]).astype(np.float32)
    slot = np.searchsorted(lb, values, side="right") - 1
    finite = np.isfinite(values)
    j = (values[finite].astype(np.float64) - lb[slot[finite]]) / ulp[slot[finite]]
    assert np.all(j == np.floor(j)) and np.all((j >= 0) & (j < 2**MANTISSA_BITS))
    assert np.all(lb[slot[~finite]] == values[~finite])
    # consecutive slots join: the value after a slot's last one is the next slot's first
    for s in range(1, 510):
        count = 2**MANTISSA_BITS - (1 if s == 256 else 0)
        last = np.float32(lb[s] + (count - 1) * np.float64(ulp[s]))
        assert np.nextafter(last, np.float32(np.inf)) == lb[s + 1] or (last == 0 and lb[s + 1] == 2.0**-149)


@pytest.mark.parametrize("steps", range(MIN_STEPS, MAX_STEPS + 1))
def test_every_schedule_covers_all_32_bits(steps):
    slot_bits, mantissa_bits = search_schedule(steps)
    assert sum(slot_bits) == SLOT_BITS and sum(mantissa_bits) == MANTISSA_BITS
    assert len(slot_bits) + len(mantissa_bits) == steps and max(slot_bits + mantissa_bits) <= 8


def test_default_schedule_and_invalid_steps():
    assert search_schedule(DEFAULT_STEPS) == search_schedule(16) == ((3, 2, 2, 2), (2,) * 11 + (1,))
    assert search_schedule(12) == ((3, 3, 3), (3, 3, 3, 3, 3, 2, 2, 2, 2))
    assert search_schedule(9) == ((3, 3, 3), (4, 4, 4, 4, 4, 3))
    for bad in (4, 33, 9.0):
        with pytest.raises(ValueError):
            search_schedule(bad)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TopK(0.0)
    with pytest.raises(ValueError):
        TopK(0.12345)  # between 1/1000 steps
    with pytest.raises(ValueError):
        TopK(0.5, mode="sort")
    with pytest.raises(ValueError):
        TopK(0.5, selection="adaptive", min_ratio=0.6, max_ratio=0.5)
    with pytest.raises(ValueError):
        TopK(0.5, selection="adaptive", adaptive_threshold=1.0)
    with pytest.raises(ValueError):
        TopK(0.5, steps=3)
    with pytest.raises(ValueError):
        threshold_topk_mask(torch.zeros(1, 2, 3, 3), torch.tensor([1.0]))


# --- reporting helper -------------------------------------------------------------------


def test_selection_counts_per_image():
    mask = np.zeros((3, 1, 4, 4), dtype=np.float32)
    mask[0, 0, :1] = 1  # 4
    mask[1, 0, :2] = 1  # 8
    mask[2, 0, :1, :3] = 1  # 3
    counts = selection_counts(mask, 4)
    assert [(c.selected, c.k, c.extra) for c in counts] == [(4, 4, 0), (8, 4, 4), (3, 4, -1)]
    assert counts[1].extra_pct == 100.0
    assert [c.k for c in selection_counts(torch.from_numpy(mask), torch.tensor([4, 8, 3]))] == [4, 8, 3]
    summary = summarize_selection(counts)
    assert summary == {"images": 3, "extra_cells": 4, "max_extra_pct": 100.0, "images_over_k": 1, "images_under_k": 1}


@pytest.mark.parametrize("selection", ["fixed", "adaptive"])
@pytest.mark.parametrize("mode", ["threshold", "exact"])
def test_every_tensor_follows_the_map_to_its_device(mode, selection):
    """k is computed from the map's shape tensor, which PyTorch keeps on the CPU; on a CUDA map
    that mixed devices (found on the first real GPU). The meta device stands in for CUDA here:
    any CPU tensor mixed into the computation fails the same way."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.model.checkpoint import load_checkpoint

    mask = TopK(mode=mode, selection=selection)(torch.randn(2, 1, 16, 32, device="meta"))
    assert mask.device.type == "meta" and mask.shape == (2, 1, 16, 32)
    model = load_checkpoint(SHIPPED_WEIGHTS)[0].eval().set_topk_mode(mode).to("meta")
    with torch.inference_mode():
        out = model.forward_all(torch.zeros(1, 3, 64, 128, device="meta"))
    assert all(t is None or t.device.type == "meta" for t in out.values())
