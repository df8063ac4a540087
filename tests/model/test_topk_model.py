"""Top-K inside FoR-Net: checkpoint compatibility, the shipped model, a confident selector.

benchmarks/topk_confident.py runs the confident-selector check at 512x1024 and 1024x2048.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from fornet_deploy.contract import IMPORTANCE, LOGITS, SHIPPED_WEIGHTS, TOPK_MASK
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.transforms import Preprocessing, preprocess
from fornet_deploy.errors import FornetError
from fornet_deploy.io import read_image
from fornet_deploy.model.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from fornet_deploy.model.fornet import FoRNetConfig, build_model
from fornet_deploy.model.topk import DEFAULT_STEPS, selection_counts, topk_count

SHIPPED = SHIPPED_WEIGHTS
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not in this checkout")


def legacy_bisection_mask(importance: torch.Tensor, k: int, steps: int = 32) -> torch.Tensor:
    """The Top-K this project shipped before (value-space bisection on the sigmoid map)."""
    flat = importance.flatten(1).float()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    count = lambda t: (flat >= t).float().sum(1, keepdim=True)  # noqa: E731
    for _ in range(steps):
        mid = (lo + hi) * 0.5
        enough = count(mid) >= k
        lo, hi = torch.where(enough, mid, lo), torch.where(enough, hi, mid)
    threshold = torch.where(count(hi) >= k, hi, lo)
    return (flat >= threshold).float().view_as(importance)


def images(root: Path, count: int) -> torch.Tensor:
    """The first ``count`` val images of a SynthCity/Cityscapes folder, preprocessed (NCHW)."""
    samples = open_dataset(root).samples("val")[:count]
    return torch.from_numpy(preprocess([read_image(s.image) for s in samples], Preprocessing()))


def test_config_accepts_the_old_bisection_field():
    old = FoRNetConfig().to_dict()
    del old["topk_search_steps"]  # a checkpoint written before the exact search
    old["bisection_steps"] = 32
    cfg = FoRNetConfig.from_dict(old)
    assert cfg.topk_search_steps == DEFAULT_STEPS and cfg.bisection_steps == 32
    assert "bisection_steps" in FoRNetConfig.RUNTIME_FIELDS  # never an architecture difference
    model = build_model(cfg.replace(topk_mode="threshold", bisection_steps=7))  # legacy: read by no one
    assert model.topk.steps == DEFAULT_STEPS
    with pytest.raises(FornetError, match="topk_search_steps"):
        FoRNetConfig(topk_search_steps=3)
    with pytest.raises(FornetError, match="unknown FoR-Net config fields"):
        FoRNetConfig.from_dict({"bisection_step": 3})


def test_search_steps_is_a_runtime_field(tmp_path, tiny_config):
    model = build_model(tiny_config)
    save_checkpoint(tmp_path / "m.safetensors", model)
    expected = tiny_config.replace(topk_search_steps=16)  # a runtime field: not compared
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors", expected=expected, topk_search_steps=12)
    assert loaded.topk.steps == 12
    loaded.set_topk_mode("threshold", steps=6)
    assert loaded.config.topk_search_steps == 6 and loaded.topk.steps == 6 and loaded.topk.mode == "threshold"


@needs_weights
def test_shipped_checkpoint_loads_and_selects_as_before(tiny_data):
    cfg = read_checkpoint_config(SHIPPED)
    assert cfg.topk_search_steps == DEFAULT_STEPS  # its stored bisection_steps=32 is dropped
    model, _ = load_checkpoint(SHIPPED)
    x = images(tiny_data, 3)
    k = topk_count(cfg.topk_ratio, 16 * 32)
    with torch.no_grad():
        out = model.forward_all(x)
        threshold = model.set_topk_mode("threshold").forward_all(x)
    assert torch.equal(out[TOPK_MASK], threshold[TOPK_MASK])
    assert torch.equal(out[LOGITS], threshold[LOGITS])
    for i in range(x.shape[0]):
        imp = out[IMPORTANCE][i].flatten()
        values = torch.sort(imp, descending=True).values
        assert values[k - 1] > values[k]  # no tie at k: the old selection on the sigmoid is defined
        old = torch.zeros_like(imp).scatter(0, torch.topk(imp, k).indices, 1.0)
        assert torch.equal(out[TOPK_MASK][i].flatten(), old)  # same cells as before the change


@needs_weights
def test_confident_selector_masks_identical_in_pytorch_and_onnx_runtime(tiny_data):
    ort = pytest.importorskip("onnxruntime")
    from fornet_deploy.export.onnx import ExportConfig, export_onnx_model

    model, _ = load_checkpoint(SHIPPED)
    with torch.no_grad():  # a much sharper selector: logits reach |30| and beyond
        model.focus.selector.score.weight.mul_(40.0)
        model.focus.selector.score.bias.mul_(40.0)
    x = images(tiny_data, 3)
    k = topk_count(model.config.topk_ratio, 16 * 32)
    with torch.no_grad():
        exact = model.set_topk_mode("exact").forward_all(x)
        threshold = model.set_topk_mode("threshold").forward_all(x)
        logits = model.focus.selector(model.forward_features(x)[1])[0]
    assert logits.abs().max() > 30
    importance = exact[IMPORTANCE]
    assert ((importance == 0) | (importance == 1)).float().mean() > 0.2  # saturated: ties in s
    assert torch.equal(exact[TOPK_MASK], threshold[TOPK_MASK])
    assert [c.extra for c in selection_counts(threshold[TOPK_MASK], k)] == [0] * x.shape[0]
    # what the old sigmoid-space bisection did with this selector: supersets
    legacy = [int(legacy_bisection_mask(importance[i : i + 1], k).sum()) for i in range(x.shape[0])]
    assert max(legacy) > k

    proto = export_onnx_model(model, ExportConfig(height=128, width=256, topk="threshold", dynamic=True))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))
    assert np.array_equal(got[TOPK_MASK], exact[TOPK_MASK].numpy())
