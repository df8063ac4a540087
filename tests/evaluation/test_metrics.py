"""Tests for fornet_deploy.evaluation.metrics: property tests against straightforward
reference computations, and tiny hand-checkable maps."""

from __future__ import annotations

import json
import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from fornet_deploy.data.cityscapes import CITYSCAPES, CLASS_NAMES, IGNORE_INDEX, TRAIN_ID_BY_NAME
from fornet_deploy.errors import FornetError
from fornet_deploy.evaluation.metrics import (
    SegmentationMetrics,
    agreement,
    boundary_band,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    topk_coverage,
)

BUILDING = TRAIN_ID_BY_NAME["building"]
POLE = TRAIN_ID_BY_NAME["pole"]


# ---------------------------------------------------------------- reference computations


def reference_miou(pairs, num_classes, ignore_index=IGNORE_INDEX):
    """IoU counted directly with boolean masks, class by class, over the whole dataset."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for pred, gt in pairs:
            valid = gt != ignore_index
            in_pred = (pred == c) & valid
            in_gt = (gt == c) & valid
            inter += np.count_nonzero(in_pred & in_gt)
            union += np.count_nonzero(in_pred | in_gt)
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious) if ious else math.nan


def reference_band(labels, width, ignore_index=IGNORE_INDEX):
    """The documented band definition, pixel by pixel."""
    height, wide = labels.shape
    valid = labels != ignore_index
    edges = [
        (y, x)
        for y in range(height)
        for x in range(wide)
        if valid[y, x]
        and any(
            0 <= y + dy < height
            and 0 <= x + dx < wide
            and valid[y + dy, x + dx]
            and labels[y + dy, x + dx] != labels[y, x]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
    ]
    band = np.zeros(labels.shape, dtype=bool)
    for y in range(height):
        for x in range(wide):
            band[y, x] = valid[y, x] and any(
                max(abs(y - ey), abs(x - ex)) <= width - 1 for ey, ex in edges
            )
    return band


# ------------------------------------------------------------------------- strategies


@st.composite
def labelled_datasets(draw):
    """Several (pred, gt) pairs of different sizes with ignore pixels.

    Ground truth and prediction draw from independent class subsets, so some classes are
    only predicted (IoU 0), some only in the ground truth, and some absent from both
    (skipped).
    """
    num_classes = draw(st.integers(2, 6))
    subsets = st.sets(st.integers(0, num_classes - 1), min_size=1)
    gt_pool = sorted(draw(subsets)) + [IGNORE_INDEX]
    pred_pool = sorted(draw(subsets))
    pairs = []
    for _ in range(draw(st.integers(1, 4))):
        shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        gt = draw(hnp.arrays(np.uint8, shape, elements=st.sampled_from(gt_pool)))
        pred = draw(hnp.arrays(np.int64, shape, elements=st.sampled_from(pred_pool)))
        pairs.append((pred, gt))
    return num_classes, pairs


def make_metrics(num_classes, **kwargs):
    return SegmentationMetrics(num_classes=num_classes, thin_class_ids=(0,), **kwargs)


# ------------------------------------------------------------------- property tests


@settings(deadline=None, max_examples=150)
@given(labelled_datasets())
def test_miou_matches_reference_on_random_maps(data):
    num_classes, pairs = data
    cm = sum(confusion_matrix(p, g, num_classes) for p, g in pairs)
    expected = reference_miou(pairs, num_classes)

    metrics = make_metrics(num_classes)
    for pred, gt in pairs:
        metrics.update(pred, gt)
    reported = metrics.result()["miou"]

    if math.isnan(expected):
        assert math.isnan(mean_iou(cm)) and reported is None
    else:
        assert mean_iou(cm) == pytest.approx(expected)
        assert reported == pytest.approx(expected)
    assert cm.sum() == sum(np.count_nonzero(g != IGNORE_INDEX) for _, g in pairs)


@settings(deadline=None, max_examples=100)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 9), st.integers(1, 9)),
        elements=st.sampled_from([0, 1, 2, IGNORE_INDEX]),
    ),
    st.integers(0, 3),
)
def test_boundary_band_matches_definition(labels, width):
    np.testing.assert_array_equal(boundary_band(labels, width), reference_band(labels, width))


@settings(deadline=None, max_examples=50)
@given(labelled_datasets(), st.data())
def test_merge_equals_single_pass(data, draw):
    num_classes, pairs = data
    split = draw.draw(st.integers(0, len(pairs)))
    masks = [draw.draw(hnp.arrays(bool, g.shape)) for _, g in pairs]

    whole, first, second = (make_metrics(num_classes, boundary_width=2) for _ in range(3))
    for i, ((pred, gt), mask) in enumerate(zip(pairs, masks)):
        whole.update(pred, gt, mask)
        (first if i < split else second).update(pred, gt, mask)
    first.merge(second)

    assert first.result() == whole.result()
    np.testing.assert_array_equal(first.boundary_confusion, whole.boundary_confusion)


# ------------------------------------------------------------------ confusion matrix


def test_confusion_matrix_rows_are_ground_truth():
    gt = np.array([[0, 0], [1, IGNORE_INDEX]], dtype=np.uint8)
    pred = np.array([[0, 1], [1, 0]])
    cm = confusion_matrix(pred, gt, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert cm.dtype == np.int64


def test_iou_absent_class_is_nan_and_predicted_only_class_is_zero():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    iou = iou_per_class(confusion_matrix(pred, gt, num_classes=4))
    assert iou[0] == pytest.approx(0.5)
    assert iou[1] == 1.0
    assert iou[2] == 0.0  # predicted, never in the ground truth
    assert math.isnan(iou[3])  # absent from both: skipped by the mean
    assert mean_iou(confusion_matrix(pred, gt, num_classes=4)) == pytest.approx(0.5)


def test_out_of_range_predictions_count_as_wrong():
    gt = np.zeros((2, 2), dtype=np.uint8)
    pred = np.array([[0, 99], [-1, 0]])
    cm = confusion_matrix(pred, gt, num_classes=3)
    assert cm.sum() == 4 and cm[0].sum() == 4  # every valid pixel counted in its true row
    assert cm[0, 0] == 2
    assert iou_per_class(cm)[0] == pytest.approx(0.5)


def test_out_of_range_predictions_do_not_crash_the_accumulator():
    gt = np.zeros((4, 4), dtype=np.uint8)
    pred = np.full((4, 4), IGNORE_INDEX, dtype=np.uint8)  # uint8 garbage equal to ignore
    metrics = SegmentationMetrics.for_labels(CITYSCAPES)
    metrics.update(pred, gt)
    assert metrics.result()["pixel_accuracy"] == 0.0


def test_empty_confusion_matrix_gives_nan():
    assert math.isnan(mean_iou(np.zeros((3, 3), dtype=np.int64)))


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), np.uint8), "shape"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), "argmax"),
        (np.zeros((2, 2), int), np.full((2, 2), 33, np.uint8), "train ids"),
    ],
)
def test_bad_inputs_raise_fornet_error(pred, target, message):
    with pytest.raises(FornetError, match=message):
        confusion_matrix(pred, target)


# -------------------------------------------------------------------- boundary band


def two_regions(height=8, width=8):
    """Class 0 in columns 0-3, class 1 in columns 4-7: one vertical edge."""
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[:, 4:] = 1
    return labels


def columns_band(columns, height=8, width=8):
    band = np.zeros((height, width), dtype=bool)
    band[:, columns] = True
    return band


@pytest.mark.parametrize(
    "width, columns", [(0, []), (1, [3, 4]), (2, [2, 3, 4, 5]), (4, list(range(8)))]
)
def test_band_around_vertical_edge(width, columns):
    np.testing.assert_array_equal(boundary_band(two_regions(), width), columns_band(columns))


def test_ignore_pixels_are_never_in_band():
    labels = two_regions()
    labels[6:] = IGNORE_INDEX
    expected = columns_band([2, 3, 4, 5])
    expected[6:] = False  # within reach of the edge in row 5, but ignore
    np.testing.assert_array_equal(boundary_band(labels, 2), expected)


def test_edges_against_ignore_are_not_edges():
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:, 4:] = IGNORE_INDEX
    assert not boundary_band(labels, 2).any()

    separated = two_regions()
    separated[:, 4] = IGNORE_INDEX  # class 0 | ignore | class 1: no two classes touch
    separated[:, 5:] = 1
    assert not boundary_band(separated, 1).any()


def test_uniform_map_has_no_band():
    assert not boundary_band(np.full((5, 7), 3, dtype=np.uint8), 3).any()


# ------------------------------------------------------- thin structures and boundary IoU


def pole_scene():
    """Building everywhere with a 1-pixel pole in column 3 (8x8)."""
    gt = np.full((8, 8), BUILDING, dtype=np.uint8)
    gt[:, 3] = POLE
    return gt


def test_missed_pole_by_hand():
    gt = pole_scene()
    pred = np.full((8, 8), BUILDING, dtype=np.int64)
    metrics = SegmentationMetrics.for_labels(CITYSCAPES, 1)
    metrics.update(pred, gt)
    result = metrics.result()

    assert result["iou_per_class"]["building"] == pytest.approx(56 / 64)
    assert result["iou_per_class"]["pole"] == 0.0
    assert result["miou"] == pytest.approx((56 / 64 + 0) / 2)
    assert result["pixel_accuracy"] == pytest.approx(56 / 64)
    # Only the pole is present among the thin classes; the others are skipped.
    assert result["thin_iou"] == 0.0
    assert result["thin_iou_per_class"]["pole"] == 0.0
    assert result["thin_iou_per_class"]["person"] is None
    # Band = columns 2-4 (the prediction has no edges): building 16 px all right,
    # pole 8 px predicted as building -> building 16 / 24, pole 0.
    assert result["boundary_iou_per_class"]["building"] == pytest.approx(16 / 24)
    assert result["boundary_iou"] == pytest.approx(16 / 24 / 2)


def test_missed_pole_wider_band_by_hand():
    metrics = SegmentationMetrics.for_labels(CITYSCAPES, 2)
    metrics.update(np.full((8, 8), BUILDING), pole_scene())
    # Band = columns 1-5: building 32 px right, pole 8 px wrong -> 32 / 40.
    assert metrics.result()["boundary_iou"] == pytest.approx(32 / 40 / 2)


def test_shifted_pole_uses_prediction_band_by_hand():
    gt = pole_scene()
    pred = np.full((8, 8), BUILDING)
    pred[:, 4] = POLE  # one pixel off
    metrics = SegmentationMetrics.for_labels(CITYSCAPES, 1)
    metrics.update(pred, gt)
    result = metrics.result()

    # Ground-truth band columns 2-4, prediction band 3-5: union 2-5. Building: right in
    # columns 2 and 5 (16), 24 in the ground truth, 24 predicted -> 16 / 32.
    assert result["boundary_iou_per_class"]["building"] == pytest.approx(0.5)
    assert result["boundary_iou_per_class"]["pole"] == 0.0
    assert result["boundary_iou"] == pytest.approx(0.25)
    assert result["iou_per_class"]["building"] == pytest.approx(48 / 64)
    assert result["thin_iou"] == 0.0


def test_batch_update_equals_image_updates():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 10, 12)).astype(np.uint8)
    gt[:, :2] = IGNORE_INDEX
    pred = rng.integers(0, 4, size=(3, 10, 12))
    mask = rng.random((3, 10, 12)) < 0.5

    batched, single = make_metrics(4), make_metrics(4)
    batched.update(pred, gt, mask)
    for i in range(3):
        single.update(pred[i], gt[i], mask[i])
    assert batched.result() == single.result()
    assert batched.result()["num_images"] == 3


# ------------------------------------------------------------------- Top-K coverage


def test_topk_coverage_by_hand():
    hard = np.zeros((4, 4), dtype=bool)
    hard[0, :] = True
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :3] = True
    mask[3, :] = True  # selected but not hard: does not matter
    assert topk_coverage(mask, hard) == 0.75
    assert topk_coverage(np.ones((4, 4), bool), hard) == 1.0
    assert math.isnan(topk_coverage(mask, np.zeros((4, 4), bool)))


def test_topk_coverage_shape_mismatch_raises():
    with pytest.raises(FornetError, match="shape"):
        topk_coverage(np.zeros((4, 4), bool), np.zeros((8, 8), bool))


def test_metrics_topk_coverage_by_hand():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, 3] = True  # exactly the missed pole
    metrics = SegmentationMetrics.for_labels(CITYSCAPES, 1)
    metrics.update(np.full((8, 8), BUILDING), pole_scene(), mask)
    result = metrics.result()
    assert result["topk_coverage_boundary"] == pytest.approx(8 / 24)  # band columns 2-4
    assert result["topk_coverage_errors"] == 1.0  # every error is in the pole column


def test_topk_coverage_is_none_without_mask():
    metrics = SegmentationMetrics.for_labels(CITYSCAPES)
    metrics.update(np.full((8, 8), BUILDING), pole_scene())
    assert metrics.result()["topk_coverage_boundary"] is None
    assert metrics.result()["topk_coverage_errors"] is None


def test_topk_mask_shape_must_match_prediction():
    with pytest.raises(FornetError, match="shape"):
        SegmentationMetrics.for_labels(CITYSCAPES).update(np.zeros((8, 8), int), pole_scene(), np.zeros((1, 1), bool))


# ------------------------------------------------------------------ result and merge


def test_result_is_json_serialisable_and_complete():
    metrics = SegmentationMetrics.for_labels(CITYSCAPES)
    empty = metrics.result()
    assert json.loads(json.dumps(empty, allow_nan=False)) == empty
    assert empty["miou"] is None and empty["num_images"] == 0

    metrics.update(np.full((8, 8), BUILDING), pole_scene(), np.ones((8, 8), bool))
    result = metrics.result()
    json.dumps(result, allow_nan=False)
    assert set(result) == {
        "miou", "iou_per_class", "pixel_accuracy", "boundary_iou", "boundary_iou_per_class",
        "thin_iou", "thin_iou_per_class", "topk_coverage_boundary", "topk_coverage_errors",
        "num_images", "boundary_width",
    }
    assert list(result["iou_per_class"]) == list(CLASS_NAMES)
    assert result["iou_per_class"]["road"] is None  # absent from both
    assert result["boundary_width"] == 3


def test_generic_class_names_when_not_cityscapes():
    metrics = make_metrics(3)
    metrics.update(np.array([[0, 1]]), np.array([[0, 1]]))
    assert list(metrics.result()["iou_per_class"]) == ["class_0", "class_1", "class_2"]


def test_thin_ids_must_be_classes_of_the_model():
    assert SegmentationMetrics(num_classes=5).result()["thin_iou"] is None  # no thin classes by default
    with pytest.raises(ValueError, match="thin_class_ids"):
        SegmentationMetrics(num_classes=5, thin_class_ids=(5,))
    SegmentationMetrics(num_classes=5, thin_class_ids=(4,))


def test_merge_rejects_different_settings():
    with pytest.raises(ValueError, match="merge"):
        SegmentationMetrics.for_labels(CITYSCAPES, 3).merge(SegmentationMetrics.for_labels(CITYSCAPES, 2))


# ------------------------------------------------------------------------- agreement


def test_agreement_by_hand():
    a = np.array([[0, 1], [2, 3]])
    b = np.array([[0, 1], [2, 0]])
    assert agreement(a, b) == 0.75
    assert agreement(a, a) == 1.0
    with pytest.raises(FornetError, match="shape"):
        agreement(a, b[:1])
