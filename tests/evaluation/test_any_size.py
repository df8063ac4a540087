"""Images of any size at every stage: a bundle exported at one size evaluates and
parity-checks on data of another size, resized as predict resizes, scored at the label's
own size, and the resize is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fornet_deploy.data.camvid import CAMVID
from fornet_deploy.errors import FornetError
from fornet_deploy.evaluation.evaluate import evaluate_bundle
from fornet_deploy.evaluation.parity import parity_bundle


@pytest.fixture(scope="module")
def small_static_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("small") / "bundle"
    export_bundle(tiny_checkpoint, out, ExportConfig(height=64, width=128))  # half the data's 128x256
    return out


def test_eval_on_larger_images_records_the_resize(small_static_bundle, tiny_data, tmp_path):
    result = evaluate_bundle(small_static_bundle, tiny_data, limit=2, json_out=tmp_path / "eval.json")
    assert result["resized"] == {"images": 2, "sizes": {"128x256->64x128": 2}}
    assert result["num_images"] == 2 and result["miou"] is not None
    assert json.loads((tmp_path / "eval.json").read_text())["resized"]["images"] == 2


def test_parity_on_larger_images_records_the_resize(small_static_bundle, tiny_data, tmp_path):
    report = parity_bundle(small_static_bundle, data=tiny_data, limit=2, out_dir=tmp_path / "p")
    assert report["resized"] == {"images": 2, "sizes": {"128x256->64x128": 2}}
    assert report["summary"]["passed"], report["summary"]
    assert set(report["artifacts"]) == {"model.cpu.onnx", "model.onnx"}


def test_a_dynamic_bundle_runs_images_at_their_own_size(tiny_bundle, tiny_data):
    result = evaluate_bundle(tiny_bundle, tiny_data, limit=1)
    assert result["resized"] == {"images": 0, "sizes": {}}


def test_eval_refuses_a_dataset_with_other_classes(tiny_bundle, camvid_data):
    with pytest.raises(FornetError, match="camvid labels .11 classes.*cityscapes .19 classes"):
        evaluate_bundle(tiny_bundle, camvid_data, split="test")
    assert CAMVID.num_classes == 11
