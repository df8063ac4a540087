import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fornet_deploy.model.topk import TopK, exact_topk_mask, threshold_topk_mask, topk_count

# (h, w) of the importance map: square, non-square, odd sizes, and 1/8 of 512x1024.
RESOLUTIONS = [(8, 8), (16, 32), (24, 40), (13, 7), (64, 128)]


def exact_ceil(ratio: float, numel: int) -> int:
    """ceil(ratio * numel) in exact rational arithmetic (float64 gets 0.1 * 960 wrong)."""
    return math.ceil(Fraction(str(ratio)) * numel)


def tie_free_map(seed: int, h: int, w: int, kind: str) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "permutation":  # distinct by construction
        values = rng.permutation(h * w).astype(np.float32) / (h * w)
    else:  # what a selector produces: sigmoid of logits
        values = 1 / (1 + np.exp(-rng.normal(0, 3, h * w))).astype(np.float32)
    return torch.from_numpy(values.astype(np.float32)).view(1, 1, h, w)


@settings(deadline=None, max_examples=60)
@given(
    resolution=st.sampled_from(RESOLUTIONS),
    ratio=st.sampled_from([0.01, 0.1, 0.25, 0.3, 0.5, 0.9]),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["permutation", "sigmoid"]),
)
def test_threshold_equals_exact_on_tie_free_maps(resolution, ratio, seed, kind):
    h, w = resolution
    importance = tie_free_map(seed, h, w, kind)
    assume(torch.unique(importance).numel() == h * w)
    exact = TopK(ratio, "exact")(importance)
    threshold = TopK(ratio, "threshold")(importance)
    assert torch.equal(exact, threshold)
    assert int(exact.sum()) == exact_ceil(ratio, h * w)


@pytest.mark.parametrize("h, w", RESOLUTIONS)
def test_k_is_ceil_ratio_hw_at_every_resolution(h, w):
    importance = tie_free_map(0, h, w, "sigmoid")
    for ratio in (0.25, 0.3, 0.1, 0.007):
        for mode in ("exact", "threshold"):
            assert int(TopK(ratio, mode)(importance).sum()) == exact_ceil(ratio, h * w) == topk_count(ratio, h * w)


@given(ratio_steps=st.integers(1, 1000), numel=st.integers(1, 2_000_000))
def test_topk_count_is_the_exact_ceil(ratio_steps, numel):
    ratio = ratio_steps / 1000
    assert topk_count(ratio, numel) == max(1, exact_ceil(ratio, numel))


def test_graph_count_matches_python_count_for_awkward_sizes():
    # sizes where float32 ratio * L lands just above an integer
    for ratio, numel in [(0.3, 50), (0.3, 90), (0.1, 960), (0.7, 1000), (0.3, 32768)]:
        importance = torch.rand(1, numel)
        assert int(TopK(ratio, "threshold").count(importance)) == exact_ceil(ratio, numel)


def test_ties_give_a_superset_with_every_tied_position():
    # 10 positions share the k-th value (0.5); k = 4 of 16.
    values = torch.tensor([0.9, 0.8] + [0.5] * 10 + [0.1, 0.2, 0.3, 0.05]).view(1, 16)
    k = torch.tensor([[4.0]])
    exact = exact_topk_mask(values, k)
    threshold = threshold_topk_mask(values, k)
    assert int(exact.sum()) == 4
    assert int(threshold.sum()) == 12  # 2 above the tie + all 10 tied
    assert torch.all(threshold >= exact)  # superset, never a subset
    assert torch.equal(threshold.bool(), values >= 0.5)


def test_tie_at_the_maximum_selects_exactly_the_tied_maxima():
    values = torch.tensor([[1.0, 1.0, 1.0, 0.999999, 0.2, 0.1]])
    mask = threshold_topk_mask(values, torch.tensor([[2.0]]))
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0]]


def test_constant_map_selects_everything_in_threshold_mode():
    values = torch.full((1, 20), 0.5)
    assert int(threshold_topk_mask(values, torch.tensor([[5.0]])).sum()) == 20
    assert int(exact_topk_mask(values, torch.tensor([[5.0]])).sum()) == 5


def test_per_image_k_in_a_batch():
    importance = torch.cat([tie_free_map(s, 16, 16, "sigmoid") for s in range(3)])
    top = TopK(0.25, "threshold")
    mask = top(importance)
    assert mask.flatten(1).sum(1).tolist() == [64.0, 64.0, 64.0]


def test_adaptive_count_is_clamped_and_modes_agree():
    low = torch.full((1, 1, 16, 16), 0.01)
    low[..., 0, 0] = 0.02  # almost nothing above tau -> min_ratio
    high = torch.linspace(0.51, 0.99, 256).view(1, 1, 16, 16)  # all above tau -> max_ratio
    mid = torch.linspace(0.0, 1.0, 256).view(1, 1, 16, 16)  # about half above tau
    batch = torch.cat([low + torch.linspace(0, 1e-3, 256).view(1, 1, 16, 16), high, mid])
    top = dict(ratio=0.25, selection="adaptive", adaptive_threshold=0.5, min_ratio=0.05, max_ratio=0.4)
    exact = TopK(mode="exact", **top)(batch)
    threshold = TopK(mode="threshold", **top)(batch)
    counts = exact.flatten(1).sum(1).tolist()
    # tau=0.5: 128 positions above it in `mid`, clamped to ceil(0.4*256) = 103
    assert counts == [math.ceil(0.05 * 256), math.ceil(0.4 * 256), math.ceil(0.4 * 256)]
    assert int((mid >= 0.5).sum()) == 128
    assert torch.equal(exact, threshold)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TopK(0.0)
    with pytest.raises(ValueError):
        TopK(0.12345)  # between 1/1000 steps
    with pytest.raises(ValueError):
        TopK(0.5, mode="sort")
    with pytest.raises(ValueError):
        TopK(0.5, selection="adaptive", min_ratio=0.6, max_ratio=0.5)
