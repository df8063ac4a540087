import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.errors import FornetError
from fornet_deploy.model.fornet import FoRNetConfig, build_model, count_flops, parameter_count
from fornet_deploy.model.topk import topk_count


def test_default_model_is_light():
    model = build_model()
    assert 1e6 <= parameter_count(model) <= 4e6
    assert count_flops(model, 1024, 2048) < 20e9


@pytest.mark.parametrize("mode", ["exact", "threshold"])
def test_mask_holds_ceil_ratio_hw_at_two_resolutions(tiny_config, mode):
    model = build_model(tiny_config.replace(topk_mode=mode, topk_ratio=0.3)).eval()
    for h, w in [(128, 256), (224, 96)]:
        with torch.no_grad():
            out = model.forward_all(torch.randn(2, 3, h, w))
        assert out["logits"].shape == (2, 19, h, w)
        assert out["importance"].shape == (2, 1, h // 8, w // 8)
        counts = out["topk_mask"].flatten(1).sum(1).tolist()
        assert counts == [topk_count(0.3, (h // 8) * (w // 8))] * 2


def test_topk_mode_switch_keeps_weights_and_logits(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        exact = model.forward_all(x)
        threshold = model.set_topk_mode("threshold").forward_all(x)
    assert model.config.topk_mode == "threshold"
    assert torch.equal(exact["topk_mask"], threshold["topk_mask"])
    assert torch.allclose(exact["logits"], threshold["logits"])


def test_focus_none_has_no_selector(tiny_config):
    model = build_model(tiny_config.replace(focus="none")).eval()
    out = model.forward_all(torch.randn(1, 3, 64, 64))
    assert out["importance"] is None and out["topk_mask"] is None
    assert not any("selector" in n for n, _ in model.named_parameters())


def test_selector_gets_gradient_through_importance(tiny_config):
    model = build_model(tiny_config).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.focus.selector.score.weight.grad.abs().sum() > 0


def test_input_size_out_of_bounds_is_a_clear_error(tiny_config):
    with pytest.raises(FornetError, match="larger than the supported 8192"):
        build_model(tiny_config)(torch.randn(1, 3, 8193, 1))
    with pytest.raises(FornetError, match="must be positive"):
        build_model(tiny_config)(torch.randn(1, 3, 0, 64))
    with pytest.raises(FornetError, match="N x 3 x H x W"):
        build_model(tiny_config)(torch.randn(1, 1, 64, 64))


def test_config_roundtrip_and_unknown_fields():
    cfg = FoRNetConfig(topk_ratio=0.2)
    assert FoRNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(FornetError, match="unknown FoR-Net config fields"):
        FoRNetConfig.from_dict({"widht": 3})
    with pytest.raises(FornetError, match="focus"):
        FoRNetConfig(focus="everything")


@pytest.mark.parametrize("field, value", [
    ("topk_ratio", 1.5), ("topk_ratio", 0.0), ("topk_ratio", float("nan")), ("topk_ratio", float("inf")),
    ("topk_ratio", 0.2505), ("topk_ratio", "0.25"), ("topk_ratio", True), ("num_classes", 0), ("num_classes", 256),
    ("stage_channels", (0, 16, 16, 16)), ("stage_depths", (1, 1, 1, 100)), ("expansions", (2, 2)),
    ("branch_dilations", ()), ("branch_dilations", (1, 2.5)), ("bisection_steps", 0), ("topk_mode", "fast"),
    ("neck_channels", 10**6), ("adaptive_threshold", float("nan")),
])
def test_every_config_field_is_bounded(field, value):
    """issue 14, defect 9: `train --topk-ratio 1.5|0|nan` ended in tracebacks."""
    from fornet_deploy.errors import OptionError

    with pytest.raises(OptionError, match=field):
        FoRNetConfig(**{field: value})


def test_adaptive_ratios_are_ordered():
    from fornet_deploy.errors import OptionError

    with pytest.raises(OptionError, match="adaptive_min_ratio 0.6 is above adaptive_max_ratio 0.5"):
        FoRNetConfig(focus="adaptive", adaptive_min_ratio=0.6, adaptive_max_ratio=0.5)


FIELD_VALUES = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                         st.booleans(), st.none(), st.lists(st.integers(-2, 3000), max_size=5))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FoRNetConfig.__dataclass_fields__)), FIELD_VALUES, max_size=4))
def test_any_config_a_file_can_hold_is_one_line_or_a_valid_config(data):
    """What a checkpoint header may say: refused with a FornetError, or a config whose
    tensors can be listed (on the meta device) and compared with the file's."""
    from fornet_deploy.errors import FornetError as Error
    from fornet_deploy.model.fornet import state_spec

    try:
        config = FoRNetConfig.from_dict(data)
    except Error:
        return
    assert state_spec(config)
