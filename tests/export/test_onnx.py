import json

import numpy as np
import onnx
import pytest

from fornet_deploy.bundle import Bundle
from fornet_deploy.errors import FornetError
from fornet_deploy.export.onnx import (
    DYNAMIC_TOPK_OPS,
    ExportConfig,
    export_bundle,
    graph_op_types,
    load_onnx,
    read_metadata,
)
from fornet_deploy.model.topk import topk_count
from fornet_deploy.runtimes.ort_runner import OrtRunner


def test_threshold_graph_has_no_topk_sort_nonzero_loop(tiny_bundle):
    ops = graph_op_types(onnx.load(str(tiny_bundle / "model.onnx")))
    assert not ops & set(DYNAMIC_TOPK_OPS)
    assert {"ReduceSum", "GreaterOrEqual", "Where"} <= ops


def test_exact_graph_uses_topk(tmp_path, tiny_checkpoint):
    export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(height=64, width=128, topk="exact"))
    assert "TopK" in graph_op_types(onnx.load(str(tmp_path / "b" / "model.onnx")))


def test_dynamic_export_selects_ceil_ratio_hw_at_two_resolutions(tiny_bundle):
    with OrtRunner(tiny_bundle / "model.onnx") as runner:
        for h, w in [(128, 256), (96, 352)]:
            out = runner(np.random.default_rng(0).normal(size=(2, 3, h, w)).astype(np.float32))
            assert out["logits"].shape == (2, 19, h, w)
            assert out["labels"].shape == (2, h, w) and out["labels"].dtype == np.uint8
            assert out["topk_mask"].reshape(2, -1).sum(1).tolist() == [topk_count(0.25, (h // 8) * (w // 8))] * 2


def test_manifest_and_embedded_metadata(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    entry = bundle.artifacts["model.onnx"]
    assert entry["kind"] == "onnx" and entry["precision"] == "fp32" and entry["dynamic"]
    assert bundle.manifest["topk"]["mode"] == "threshold"
    assert bundle.manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    meta = read_metadata(onnx.load(str(tiny_bundle / "model.onnx")))
    assert meta["classes"][5] == "pole" and meta["topk"]["ratio"] == 0.25
    assert "checkpoint.safetensors" in bundle.artifacts


def test_corrupt_and_truncated_onnx(tmp_path, tiny_bundle):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(FornetError, match="is not a valid ONNX model"):
        load_onnx(tmp_path / "garbage.onnx")
    data = (tiny_bundle / "model.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(FornetError, match="is not a valid ONNX model"):
        load_onnx(tmp_path / "half.onnx")
    with pytest.raises(FornetError, match="does not exist"):
        load_onnx(tmp_path / "none.onnx")


def test_bundle_with_a_changed_file_is_rejected(tmp_path, tiny_checkpoint):
    export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(height=64, width=64))
    path = tmp_path / "b" / "model.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FornetError, match="does not match the sha256 in the manifest"):
        Bundle.open(tmp_path / "b")


def test_bad_export_arguments_write_nothing(tmp_path, tiny_checkpoint):
    with pytest.raises(FornetError, match="must be positive"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(height=0, width=64))
    with pytest.raises(FornetError, match="--outputs"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(outputs=("logits", "probs")))
    with pytest.raises(FornetError, match="does not exist"):
        export_bundle(tmp_path / "missing.safetensors", tmp_path / "b", ExportConfig())
    assert not (tmp_path / "b").exists()


def test_manifest_records_hashes(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert all(len(entry["sha256"]) == 64 for entry in manifest["artifacts"].values())
