import json

import numpy as np

from fornet_deploy.evaluation.parity import THRESHOLDS, compare_outputs, parity_bundle


def test_ort_fp32_parity_passes_with_report_and_pictures(tiny_bundle, tiny_data, tmp_path):
    report = parity_bundle(tiny_bundle, "ort", "fp32", "cpu", data=tiny_data, out_dir=tmp_path / "p")
    s = report["summary"]
    assert s["passed"] and s["images"] == 3
    assert s["argmax_agreement"] >= 0.9999 and s["max_abs_logit"] <= 1e-3
    assert s["mask_agreement"] == 1.0 and s["mask_identical_images"] == 3
    saved = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert saved["summary"] == s
    assert len(report["pictures"]) == 3 and all((tmp_path / "p" / p).is_file() for p in report["pictures"])


def test_parity_on_synthetic_images_without_data(tiny_bundle, tmp_path):
    report = parity_bundle(tiny_bundle, "ort", "fp32", "cpu", synthetic=2, out_dir=tmp_path / "p")
    assert report["summary"]["images"] == 2 and report["summary"]["passed"]


def test_compare_outputs_counts_superset_masks_and_disagreement():
    ref = {"logits": np.zeros((1, 2, 2, 2), np.float32), "topk_mask": np.array([[[[1, 0], [0, 0]]]], np.float32)}
    cand = {"logits": np.zeros((1, 2, 2, 2), np.float32), "topk_mask": np.array([[[[1, 1], [0, 0]]]], np.float32)}
    cand["logits"][0, 1, 0, 0] = 1.0  # one pixel flips to class 1
    result = compare_outputs("x", ref, cand, (2, 2))
    assert result.argmax_agreement == 0.75 and result.mask_agreement == 0.75
    assert (result.mask_count_reference, result.mask_count_candidate) == (1, 2)
    assert result.max_abs_logit == 1.0
    assert THRESHOLDS["fp32"].max_abs_logit == 1e-3
