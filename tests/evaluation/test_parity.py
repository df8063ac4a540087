import json
from dataclasses import replace

import numpy as np
import pytest

from fornet_deploy.evaluation.agreement import ImageAgreement
from fornet_deploy.evaluation.parity import THRESHOLDS, compare_outputs, parity_bundle


def test_ort_fp32_parity_checks_every_fp32_graph_with_report_and_pictures(tiny_bundle, tiny_data, tmp_path):
    """On a CPU, FP32 ships as model.cpu.onnx (what ONNX Runtime runs here) and model.onnx
    (what Triton, DeepStream and TensorRT take): parity checks both, a report each."""
    report = parity_bundle(tiny_bundle, "ort", "fp32", "cpu", data=tiny_data, out_dir=tmp_path / "p")
    assert report["summary"] == {"passed": True, "artifacts": ["model.cpu.onnx", "model.onnx"], "failed": {}}
    for name, artefact in report["artifacts"].items():
        s = artefact["summary"]
        assert artefact["candidate"]["artifact"] == name
        assert s["passed"] and s["images"] == 3
        assert s["argmax_agreement"] >= 0.9999 and s["max_abs_logit"] <= 1e-3
        assert s["mask_agreement"] == 1.0 and s["mask_identical_images"] == 3
        assert len(artefact["pictures"]) == 3 and all((tmp_path / "p" / p).is_file() for p in artefact["pictures"])
        assert all(p.startswith(f"{name}/") for p in artefact["pictures"])
    assert report["artifacts"]["model.onnx"]["summary"]["logits_compared"] == ["logits"]
    assert report["artifacts"]["model.cpu.onnx"]["summary"]["logits_compared"] == ["coarse_logits"]
    saved = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert saved["artifacts"] == report["artifacts"] and saved["thresholds"]["max_abs_logit"] == 1e-3
    assert saved["picture_scale"] == 1e-3  # FP32: every heat map of the run on its threshold


def test_parity_on_synthetic_images_without_data(tiny_bundle, tmp_path):
    report = parity_bundle(tiny_bundle, "ort", "fp32", "cpu", limit=2, out_dir=tmp_path / "p",
                           artifact="model.onnx")
    (artefact,) = report["artifacts"].values()
    assert artefact["summary"]["images"] == 2 and report["summary"]["passed"]


def test_compare_outputs_counts_superset_masks_and_disagreement():
    ref = {"logits": np.zeros((1, 2, 2, 2), np.float32), "topk_mask": np.array([[[[1, 0], [0, 0]]]], np.float32)}
    cand = {"logits": np.zeros((1, 2, 2, 2), np.float32), "topk_mask": np.array([[[[1, 1], [0, 0]]]], np.float32)}
    cand["logits"][0, 1, 0, 0] = 1.0  # one pixel flips to class 1
    result = compare_outputs("x", ref, cand, (2, 2))
    assert result.argmax_agreement == 0.75 and result.mask_agreement == 0.75
    assert (result.mask_count_reference, result.mask_count_candidate) == (1, 2)
    assert (result.mask_k, result.mask_extra) == (1, 1)  # k: the reference's count by default
    assert result.max_abs_logit == 1.0
    assert THRESHOLDS["fp32"].max_abs_logit == 1e-3


def test_adaptive_k_export_passes_parity_at_two_resolutions(tmp_path, tiny_config):
    import torch

    from fornet_deploy.data.transforms import Preprocessing
    from fornet_deploy.evaluation.parity import run_parity, synthetic_examples
    from fornet_deploy.export.onnx import ExportConfig, export_bundle
    from fornet_deploy.model.checkpoint import save_checkpoint
    from fornet_deploy.model.fornet import build_model
    from fornet_deploy.runtimes.registry import load_runner

    torch.manual_seed(3)
    save_checkpoint(tmp_path / "adaptive.safetensors", build_model(tiny_config.replace(focus="adaptive")))
    export_bundle(tmp_path / "adaptive.safetensors", tmp_path / "b", ExportConfig(height=128, width=256, dynamic=True))
    for h, w in [(128, 256), (192, 96)]:
        with load_runner(tmp_path / "b", "torch", "fp32", topk="exact") as ref, load_runner(tmp_path / "b", "ort", "fp32") as ort:
            report = run_parity(ref, ort, synthetic_examples(3, h, w, Preprocessing(), seed=h), THRESHOLDS["fp32"])
        s = report["summary"]
        assert s["passed"] and s["argmax_agreement"] >= 0.9999, s
        assert s["mask_agreement"] == 1.0
        counts = {i["mask_count_reference"] for i in report["images"]}
        cells = (h // 8) * (w // 8)
        assert all(0.05 * cells <= c <= 0.5 * cells + 1 for c in counts)  # clamped adaptive count


def test_parity_fails_when_an_artefact_selects_other_than_k_cells():
    """Every artefact's Top-K selects exactly k cells; one more or one fewer fails parity,
    whatever the precision (the selector and Top-K stay FP32 everywhere)."""
    from fornet_deploy.evaluation.agreement import compare_outputs
    from fornet_deploy.evaluation.metrics import SegmentationMetrics
    from fornet_deploy.evaluation.parity import summarize

    ref_mask = np.zeros((1, 1, 4, 4), np.float32)
    ref_mask.flat[:4] = 1  # k = ceil(0.25 * 16) = 4
    logits = np.zeros((1, 2, 32, 32), np.float32)
    ref = {"logits": logits, "topk_mask": ref_mask}
    for extra in (0, 1, -1):
        cand_mask = np.zeros_like(ref_mask)
        cand_mask.flat[: 4 + extra] = 1
        image = compare_outputs("x", ref, {"logits": logits, "topk_mask": cand_mask}, (32, 32), k=4)
        assert (image.mask_k, image.mask_extra) == (4, extra)
        summary = summarize([image], SegmentationMetrics(num_classes=2, thin_class_ids=()), THRESHOLDS["int8"])
        assert summary["checks"]["topk_count"] is (extra == 0)
        assert summary["topk_selection"]["extra_cells"] == max(extra, 0)


def test_eval_reports_selected_cells_against_k(tiny_bundle, tiny_data):
    from fornet_deploy.evaluation.evaluate import evaluate_bundle
    from fornet_deploy.model.topk import topk_count

    selection = evaluate_bundle(tiny_bundle, tiny_data)["topk_selection"]
    assert selection["images"] == 3 and selection["images_over_k"] == selection["images_under_k"] == 0
    k = topk_count(selection["ratio"], (128 // 8) * (256 // 8))
    assert all(image["selected"] == image["k"] == k and image["extra"] == 0 for image in selection["per_image"])


def _swap_outputs(swap_rank: int, seed: int = 0):
    """Reference / candidate outputs of one 4x8-cell image (k = 8) whose candidate selects the
    (k+1)-th cell instead of the ``swap_rank``-th, with logits moved only within one cell of the
    two swapped cells."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(np.linspace(0.1, 0.9, 32)).reshape(4, 8)
    order = np.argsort(-scores, axis=None)
    kth_cell, next_cell, swapped_cell = order[7], order[8], order[swap_rank - 1]
    scores.flat[next_cell] = scores.flat[kth_cell] - 1e-7  # a near-tie at k
    ref_mask = np.zeros((4, 8), np.float32)
    ref_mask.flat[order[:8]] = 1
    cand_mask = ref_mask.copy()
    cand_mask.flat[swapped_cell], cand_mask.flat[next_cell] = 0, 1
    cand_scores = scores + rng.uniform(-1e-7, 1e-7, scores.shape)
    logits = rng.standard_normal((1, 19, 32, 64)).astype(np.float32)
    moved = logits.copy()
    for cell in (swapped_cell, next_cell):
        y, x = divmod(int(cell), 8)
        moved[..., max(0, 8 * y - 8):8 * y + 16, max(0, 8 * x - 8):8 * x + 16] += 0.2
    def outputs(mask, importance, logit):
        return {"logits": logit, "topk_mask": mask[None, None], "importance": importance[None, None].astype(np.float32)}
    return outputs(ref_mask, scores, logits), outputs(cand_mask, cand_scores, moved)


def test_a_near_tie_swap_is_not_a_logit_failure_but_is_reported():
    reference, candidate = _swap_outputs(swap_rank=8)  # the k-th cell swaps with the (k+1)-th
    result = compare_outputs("img", reference, candidate, (32, 64), k=8)
    assert result.near_tie_cells == 2 and result.mask_extra == 0
    assert abs(result.max_abs_logit - 0.2) < 1e-5 and result.max_abs_logit_outside_ties == 0.0


def test_a_swap_far_from_the_kth_score_still_fails_the_logit_check():
    reference, candidate = _swap_outputs(swap_rank=1)  # the best cell dropped: no near-tie
    result = compare_outputs("img", reference, candidate, (32, 64), k=8)
    assert result.near_tie_cells == 1  # only the (k+1)-th cell ties with the k-th
    assert abs(result.max_abs_logit_outside_ties - 0.2) < 1e-5


# --- the verdict: every check driven to each outcome at its threshold ---------------------

# The thresholds as parity.py documents them: changing one is changing the promise, so the
# boundary tests below are built from these numbers, not from THRESHOLDS itself.
DOCUMENTED = {"fp32": (1e-3, 0.9999, 0.999), "fp16": (None, 0.999, 0.999), "int8": (None, 0.98, 0.95),
              "bf16": (None, 0.999, 0.999)}  # OpenVINO's BF16: judged as FP16


def test_the_thresholds_are_the_documented_ones():
    table = {p: (t.max_abs_logit, t.min_argmax_agreement, t.min_mask_agreement) for p, t in THRESHOLDS.items()}
    assert table == DOCUMENTED


def agreeing_image(name: str = "img", **changes):
    """An image on which the candidate equals the reference: every check passes (k = 4 cells)."""
    same = ImageAgreement(name, max_abs_logit=0.0, max_abs_logit_outside_ties=0.0, mean_abs_logit=0.0,
                          logits_compared="logits", argmax_agreement=1.0, mask_agreement=1.0, mask_count_reference=4,
                          mask_count_candidate=4, mask_k=4, mask_extra=0, near_tie_cells=0)
    return replace(same, **changes)


def verdict(images, precision: str) -> dict:
    from fornet_deploy.evaluation.metrics import SegmentationMetrics
    from fornet_deploy.evaluation.parity import summarize

    return summarize(images, SegmentationMetrics(num_classes=2, thin_class_ids=()), THRESHOLDS[precision])


def below(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def above(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def boundary_cases():
    """pytest params (precision, check, changes just inside the threshold, changes just past it)."""
    for precision, (max_abs, min_argmax, min_mask) in DOCUMENTED.items():
        cases = {
            "argmax_agreement": ({"argmax_agreement": min_argmax}, {"argmax_agreement": below(min_argmax)}),
            "mask_agreement": ({"mask_agreement": min_mask}, {"mask_agreement": below(min_mask)}),
            "topk_count-extra": ({}, {"mask_count_candidate": 5, "mask_extra": 1}),
            "topk_count-missing": ({}, {"mask_count_candidate": 3, "mask_extra": -1}),
            "topk_count-reference": ({}, {"mask_count_reference": 5}),  # the reference itself off k
        }
        if max_abs is not None:
            cases["max_abs_logit"] = ({"max_abs_logit": max_abs, "max_abs_logit_outside_ties": max_abs},
                                      {"max_abs_logit": above(max_abs), "max_abs_logit_outside_ties": above(max_abs)})
            # near-tie Top-K swaps move logits near the swapped cells: the check reads the rest
            ties = {"max_abs_logit": 0.5, "near_tie_cells": 2}
            cases["max_abs_logit-near-ties"] = ({**ties, "max_abs_logit_outside_ties": max_abs},
                                                {**ties, "max_abs_logit_outside_ties": above(max_abs)})
        for case, (inside, past) in cases.items():
            yield pytest.param(precision, case.split("-")[0], inside, past, id=f"{precision}-{case}")


@pytest.mark.parametrize("precision, check, inside, past", list(boundary_cases()))
def test_each_check_passes_at_its_threshold_and_fails_just_past_it(precision, check, inside, past):
    passing = verdict([agreeing_image(**inside)], precision)
    assert passing["checks"][check] is True and passing["passed"] is True
    failing = verdict([agreeing_image(**past)], precision)
    assert {name for name, ok in failing["checks"].items() if not ok} == {check}  # named, and the only one
    assert failing["passed"] is False


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_one_failing_image_among_agreeing_ones_fails_the_artefact(precision):
    images = [agreeing_image(f"img{i}") for i in range(3)]
    assert verdict(images, precision)["passed"] is True
    off_k = verdict([*images, agreeing_image("bad", mask_count_candidate=5, mask_extra=1)], precision)
    assert off_k["checks"]["topk_count"] is False and off_k["passed"] is False
    if precision == "fp32":
        worse = verdict([*images, agreeing_image("bad", max_abs_logit=0.1, max_abs_logit_outside_ties=0.1)], precision)
        assert worse["max_abs_logit_outside_ties"] == 0.1 and worse["passed"] is False


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_is_judged_on_predictions_not_logits(precision):
    summary = verdict([agreeing_image(max_abs_logit=5.0, max_abs_logit_outside_ties=5.0)], precision)
    assert "max_abs_logit" not in summary["checks"] and summary["passed"] is True


def test_a_graph_without_top_k_outputs_is_judged_on_argmax_and_logits_only():
    image = agreeing_image(mask_agreement=None, mask_count_reference=None, mask_count_candidate=None, mask_k=None,
                           mask_extra=None, near_tie_cells=None)
    summary = verdict([image], "fp32")
    assert set(summary["checks"]) == {"argmax_agreement", "max_abs_logit"} and summary["passed"] is True
    assert verdict([replace(image, argmax_agreement=0.5)], "fp32")["passed"] is False


# --- `fornet-deploy parity` as a user runs it ---------------------------------------------


@pytest.fixture(scope="module")
def failing_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle whose CPU FP32 graph (what `parity` runs on a CPU) adds 2e-3
    to every class's classifier bias: the same labels and Top-K, logits off by 2x the FP32
    tolerance. Re-recorded through the bundle API, so it is a valid, consistent artefact."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from fornet_deploy.bundle import Bundle
    from fornet_deploy.runtimes.registry import resolve_format

    root = tmp_path_factory.mktemp("failing") / "bundle"
    shutil.copytree(tiny_bundle, root, ignore=shutil.ignore_patterns("parity"))
    bundle = Bundle.open(root)
    artifact = resolve_format(bundle, "ort", "fp32", "cpu").artifact
    model = onnx.load(root / artifact)
    (bias,) = [i for i in model.graph.initializer if i.name == "model.head.classifier.bias"]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(2e-3), bias.name))
    onnx.save(model, root / artifact)
    entry = {k: v for k, v in bundle.artifacts[artifact].items() if k not in ("sha256", "bytes", "created")}
    bundle.record(artifact, **entry)
    return root


def _row(stdout: str, first: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{stdout}")


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # one table row a line, so a row can be read cell by cell


def test_parity_command_exits_1_and_names_the_failing_artefact_and_check(failing_bundle, tmp_path, wide):
    """The CPU graph fails, model.onnx passes: one row each, exit 1, the last line names both."""
    from cli_helpers import run_cli

    result = run_cli("parity", "--bundle", str(failing_bundle), "--num-images", "2", "--out", str(tmp_path / "p"),
                     "--json", str(tmp_path / "parity.json"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["summary"] == {"passed": False, "artifacts": ["model.cpu.onnx", "model.onnx"],
                                 "failed": {"model.cpu.onnx": ["max_abs_logit"]}}
    s = report["artifacts"]["model.cpu.onnx"]["summary"]
    assert s["passed"] is False and s["images"] == 2
    assert s["checks"] == {"argmax_agreement": True, "max_abs_logit": False, "mask_agreement": True,
                           "topk_count": True}
    assert 1.9e-3 < s["max_abs_logit_outside_ties"] < 2.1e-3 and s["argmax_agreement"] == 1.0
    assert report["artifacts"]["model.onnx"]["summary"]["passed"] is True
    assert json.loads((tmp_path / "p" / "parity.json").read_text())["artifacts"] == report["artifacts"]
    header = next(line for line in result.stdout.splitlines() if "artefact" in line)
    assert "logit diff <= 0.001" in header and "argmax >= 0.9999" in header and "mask >= 0.999 " in header
    cpu, full = _row(result.stdout, "model.cpu.onnx"), _row(result.stdout, "model.onnx")
    assert cpu[1].endswith("* FAIL") and cpu[-1] == "FAIL"  # *: a CPU graph's 1/4-scale logits
    assert "FAIL" not in " ".join(full[:-1]) and full[-1] == "PASS"
    assert result.stdout.strip().splitlines()[-1].startswith("FAIL: max_abs_logit (model.cpu.onnx); report")


def test_parity_checks_one_artefact_with_settable_thresholds(failing_bundle, tmp_path, wide):
    from cli_helpers import assert_one_line_error, run_cli

    only_full = run_cli("parity", "--bundle", str(failing_bundle), "--num-images", "1", "--artifact", "model.onnx",
                        "--out", str(tmp_path / "a"))
    assert only_full.returncode == 0, only_full.stdout + only_full.stderr
    assert "model.cpu.onnx" not in only_full.stdout and _row(only_full.stdout, "model.onnx")[-1] == "PASS"
    looser = run_cli("parity", "--bundle", str(failing_bundle), "--num-images", "1", "--atol", "0.01",
                     "--min-argmax-agreement", "0.5", "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"))
    assert looser.returncode == 0, looser.stdout + looser.stderr
    assert json.loads((tmp_path / "b.json").read_text())["thresholds"] == {
        "max_abs_logit": 0.01, "min_argmax_agreement": 0.5, "min_mask_agreement": 0.999}
    assert "<= 0.01" in looser.stdout and ">= 0.5" in looser.stdout
    stricter = run_cli("parity", "--bundle", str(failing_bundle), "--num-images", "1", "--artifact", "model.onnx",
                       "--atol", "1e-9", "--out", str(tmp_path / "c"))
    assert stricter.returncode == 1 and "FAIL: max_abs_logit; report" in stricter.stdout
    wrong = run_cli("parity", "--bundle", str(failing_bundle), "--min-mask-agreement", "1.5")
    assert wrong.returncode == 2
    other = run_cli("parity", "--bundle", str(failing_bundle), "--artifact", "model.int8.qdq.onnx")
    assert other.returncode == 3
    assert_one_line_error(other, "has no model.int8.qdq.onnx", "model.cpu.onnx")
    mismatch = run_cli("parity", "--bundle", str(failing_bundle), "--artifact", "model.onnx", "--precision", "int8")
    assert_one_line_error(mismatch, "model.onnx is the bundle's fp32 artefact, not int8")
    assert not (failing_bundle / "parity").exists()  # a run that could not start leaves no folder


def test_parity_int8_checks_both_int8_graphs(tiny_bundle, tiny_data, tmp_path):
    """INT8 ships as the U8S8 CPU graph and the Q/DQ graph TensorRT builds from: both checked."""
    import shutil

    from fornet_deploy.calibration.qdq import calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("parity"))
    for target in ("tensorrt", "cpu"):
        calibrate_bundle(bundle, tiny_data, num_images=2, method="minmax", target=target)
    report = parity_bundle(bundle, "ort", "int8", "cpu", limit=1, out_dir=tmp_path / "p")
    assert report["summary"]["artifacts"] == ["model.int8.cpu.onnx", "model.int8.qdq.onnx"]
    assert {r["candidate"]["artifact"] for r in report["artifacts"].values()} == set(report["summary"]["artifacts"])
    assert report["summary"]["passed"] == all(r["summary"]["passed"] for r in report["artifacts"].values())


def test_parity_command_exits_0_on_passing_artefacts_with_its_table_and_json(tiny_bundle, tiny_data, tmp_path, wide):
    from cli_helpers import run_cli

    result = run_cli("parity", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--num-images", "2",
                     "--out", str(tmp_path / "p"), "--json", str(tmp_path / "parity.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["summary"]["passed"] is True and report["precision"] == "fp32"
    for name, artefact in report["artifacts"].items():
        s = artefact["summary"]
        assert s["passed"] is True and s["images"] == 2 and all(s["checks"].values())
        assert set(s["checks"]) == {"argmax_agreement", "max_abs_logit", "mask_agreement", "topk_count"}
        assert s["max_abs_logit"] <= 1e-3
        assert artefact["candidate"]["backend"] == "onnxruntime" and artefact["reference"]["backend"] == "torch"
        assert len(artefact["images"]) == 2 and len(artefact["pictures"]) == 2
        assert all((tmp_path / "p" / picture).is_file() for picture in artefact["pictures"])
        row = _row(result.stdout, name)
        assert row[-1] == "PASS" and "FAIL" not in " ".join(row)
    assert "vs torch fp32 (exact Top-K), 2 images" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("PASS; report")


def test_near_tie_cells_at_a_size_that_is_not_a_multiple_of_8():
    """29x61 pixels: ceil(29/8) x ceil(61/8) = 4 x 8 cells, the last row and column partly image."""
    reference, candidate = _swap_outputs(swap_rank=8)
    for outputs in (reference, candidate):
        outputs["logits"] = outputs["logits"][..., :29, :61]
    result = compare_outputs("img", reference, candidate, (29, 61), k=8)
    assert result.near_tie_cells == 2 and result.max_abs_logit_outside_ties == 0.0
