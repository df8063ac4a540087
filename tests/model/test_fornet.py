import pytest
import torch

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


def test_input_not_multiple_of_stride_is_a_clear_error(tiny_config):
    with pytest.raises(FornetError, match="multiple of the network stride 32"):
        build_model(tiny_config)(torch.randn(1, 3, 100, 64))
    with pytest.raises(FornetError, match="N x 3 x H x W"):
        build_model(tiny_config)(torch.randn(1, 1, 64, 64))


def test_config_roundtrip_and_unknown_fields():
    cfg = FoRNetConfig(topk_ratio=0.2)
    assert FoRNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(FornetError, match="unknown FoR-Net config fields"):
        FoRNetConfig.from_dict({"widht": 3})
    with pytest.raises(FornetError, match="focus"):
        FoRNetConfig(focus="everything")
