import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.contract import output_side, padded_side
from fornet_deploy.model.padding import PAD_MODES, ceil_div, crop_top_left, image_size, pad_bottom_right, round_up

sides = st.integers(min_value=0, max_value=10_000)


@given(sides, st.sampled_from([1, 4, 8, 32]))
def test_size_arithmetic_is_the_same_on_ints_traced_tensors_and_in_the_contract(side, step):
    traced = torch.tensor(side)
    assert ceil_div(side, step) == int(ceil_div(traced, step)) == output_side(side, step) == -(-side // step)
    assert round_up(side, step) == int(round_up(traced, step)) == padded_side(side, step)
    assert round_up(side, step) % step == 0 and 0 <= round_up(side, step) - side < step


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 9), st.integers(0, 9), st.sampled_from(PAD_MODES))
def test_traced_pad_equals_f_pad(h, w, rows, cols, mode):
    """The dynamic export's form (Concat of a ConstantOfShape block) pads exactly as F.pad."""
    x = torch.randn(2, 3, h, w)
    want = F.pad(x, (0, cols, 0, rows), mode=mode) if rows or cols else x
    assert torch.equal(pad_bottom_right(x, h + rows, w + cols, mode), want)
    traced = pad_bottom_right(x, torch.tensor(h + rows), torch.tensor(w + cols), mode)
    assert torch.equal(traced, want)


def test_int_sizes_that_need_nothing_add_nothing():
    x = torch.randn(1, 3, 32, 64)
    assert pad_bottom_right(x, 32, 64) is x
    assert crop_top_left(x, 32, 64) is x
    assert crop_top_left(x, 20, 64).shape == (1, 3, 20, 64)
    assert torch.equal(crop_top_left(x, torch.tensor(20), torch.tensor(63)), x[..., :20, :63])
    with pytest.raises(ValueError, match="pad mode"):
        pad_bottom_right(x, 40, 64, "reflect")


def test_image_size_ints_or_tensors():
    x = torch.zeros(1, 3, 33, 47)
    assert image_size(x, traced=False) == (33, 47)
    h, w = image_size(x, traced=True)
    assert isinstance(h, torch.Tensor) and (int(h), int(w)) == (33, 47)
