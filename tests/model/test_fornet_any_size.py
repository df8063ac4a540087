"""FoR-Net at any H x W: padded to the stride inside forward, outputs cropped to the image.

The definition (FoRNet's docstring): the network on the input zero-padded at the bottom and
right to multiples of 32, its Top-K restricted to the ceil(H/8) x ceil(W/8) cells that hold
image (k counted on them, no padded cell selected or enhanced), every output cropped. The
reference below builds exactly that by hand: an explicit F.pad, and a Top-K that ranks the
top-left cells with ``exact_topk_mask`` (the stable sort) and zero-pads the mask.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.contract import COARSE_LOGITS, IMPORTANCE, LOGITS, TOPK_MASK
from fornet_deploy.model import fornet as fornet_module
from fornet_deploy.model.fornet import build_model
from fornet_deploy.model.topk import exact_topk_mask, topk_count

SIZES = [(33, 47), (1, 1), (7, 100), (31, 65), (360, 480)]


def ceil8(side: int) -> int:
    return -(-side // 8)


def padded_reference(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model run on the explicitly padded input, its Top-K ranking only the top-left
    ceil(H/8) x ceil(W/8) cells, every output cropped: the definition, by other means."""
    h, w = x.shape[-2:]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    cells = ceil8(h), ceil8(w)
    topk = model.topk
    if topk is not None:
        model.focus.topk = RestrictedTopK(topk, cells)
    try:
        with torch.no_grad():
            out = model.forward_all(F.pad(x, (0, wp - w, 0, hp - h)))
    finally:
        if topk is not None:
            model.focus.topk = topk
    crop = {LOGITS: (h, w), COARSE_LOGITS: (-(-h // 4), -(-w // 4)), IMPORTANCE: cells, TOPK_MASK: cells}
    return {name: None if t is None else t[..., :crop[name][0], :crop[name][1]] for name, t in out.items()}


class RestrictedTopK(torch.nn.Module):
    """The stable-sort Top-K of the top-left ``cells`` of a padded map, zero-padded back."""

    def __init__(self, topk, cells: tuple[int, int]):
        super().__init__()
        self.topk, self.cells = topk, cells

    def forward(self, scores):
        valid = scores[..., :self.cells[0], :self.cells[1]]
        mask = exact_topk_mask(valid, self.topk.count(valid))
        return F.pad(mask, (0, scores.shape[-1] - self.cells[1], 0, scores.shape[-2] - self.cells[0]))


@pytest.mark.parametrize("focus", ["topk", "adaptive", "none"])
@pytest.mark.parametrize("h, w", SIZES)
def test_any_size_is_the_padded_input_with_the_topk_on_the_image_cropped(tiny_config, focus, h, w):
    torch.manual_seed(h * 1000 + w)
    model = build_model(tiny_config.replace(focus=focus, topk_ratio=0.3)).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        got = model.forward_all(x)
    want = padded_reference(model, x)
    assert got[LOGITS].shape == (2, 19, h, w)
    assert got[COARSE_LOGITS].shape == (2, 19, -(-h // 4), -(-w // 4))
    for name in (LOGITS, COARSE_LOGITS, IMPORTANCE, TOPK_MASK):
        if want[name] is None:
            assert got[name] is None
        else:
            assert torch.equal(got[name], want[name]), name
    if focus == "topk":
        assert got[TOPK_MASK].shape == (2, 1, ceil8(h), ceil8(w))
        assert got[TOPK_MASK].flatten(1).sum(1).tolist() == [topk_count(0.3, ceil8(h) * ceil8(w))] * 2


@pytest.mark.parametrize("h, w", [(33, 47), (64, 96), (1, 1)])
def test_traced_sizes_give_the_same_outputs_as_int_sizes(tiny_config, h, w):
    """forward_all(traced_size=True) is what a dynamic export traces (shape arithmetic and
    Concat-based pads); in PyTorch it must equal the eager path bit for bit, multiples of
    the stride included (where the eager path neither pads nor crops)."""
    torch.manual_seed(1)
    model = build_model(tiny_config.replace(topk_mode="threshold")).eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        eager, traced = model.forward_all(x), model.forward_all(x, traced_size=True)
    for name in eager:
        assert torch.equal(eager[name], traced[name]), name


def test_a_stride_multiple_is_neither_padded_nor_cropped(tiny_config, monkeypatch):
    """The code path of a multiple of 32 is the one from before any size was allowed."""
    model = build_model(tiny_config).eval()

    def forbidden(*args, **kwargs):
        raise AssertionError("padded or cropped a multiple of the stride")

    for name in ("pad_bottom_right", "crop_top_left"):
        monkeypatch.setattr(fornet_module, name, forbidden)
    with torch.no_grad():
        out = model.forward_all(torch.randn(1, 3, 64, 96))
    assert out[LOGITS].shape == (1, 19, 64, 96) and out[TOPK_MASK].shape == (1, 1, 8, 12)
    with pytest.raises(AssertionError, match="padded or cropped"):
        model.forward_all(torch.randn(1, 3, 64, 95))


@functools.lru_cache(maxsize=None)
def built(config):
    """One model per config for the property tests, not one per example."""
    torch.manual_seed(5)
    return build_model(config).eval()


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), ratio=st.sampled_from([0.001, 0.1, 0.25, 0.333, 0.5, 1.0]),
       mode=st.sampled_from(["exact", "threshold"]))
def test_topk_selects_exactly_k_of_the_cells_that_hold_image(tiny_config, h, w, ratio, mode):
    """k = ceil(ratio * ceil(H/8) * ceil(W/8)) at every size, in both Top-K forms, and the
    selected cells are the k highest selector logits of those cells (topk.py's rule)."""
    model = built(tiny_config).set_topk_mode(mode)
    model.topk.ratio = ratio
    seen = {}
    hook = model.focus.selector.register_forward_hook(lambda _m, _i, out: seen.update(logits=out[0]))
    try:
        with torch.no_grad():
            out = model.forward_all(torch.randn(1, 3, h, w))
    finally:
        hook.remove()
    cells = ceil8(h) * ceil8(w)
    assert seen["logits"].shape[-2:] == (ceil8(h), ceil8(w))
    assert int(out[TOPK_MASK].sum()) == topk_count(ratio, cells)
    k = torch.tensor([float(topk_count(ratio, cells))])
    assert torch.equal(out[TOPK_MASK], exact_topk_mask(seen["logits"], k))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80))
def test_adaptive_k_counts_and_clamps_on_the_cells_that_hold_image(tiny_config, h, w):
    model = built(tiny_config.replace(focus="adaptive", topk_mode="threshold"))
    seen = {}
    hook = model.focus.selector.register_forward_hook(lambda _m, _i, out: seen.update(logits=out[0]))
    try:
        with torch.no_grad():
            out = model.forward_all(torch.randn(2, 3, h, w))
    finally:
        hook.remove()
    cells = ceil8(h) * ceil8(w)
    assert seen["logits"].shape[-2:] == (ceil8(h), ceil8(w))
    above = (seen["logits"] >= model.topk.score_threshold).flatten(1).sum(1)  # topk.py: counted on logits
    config = model.config
    want = above.clamp(topk_count(config.adaptive_min_ratio, cells), topk_count(config.adaptive_max_ratio, cells))
    assert out[TOPK_MASK].flatten(1).sum(1).tolist() == want.float().tolist()
