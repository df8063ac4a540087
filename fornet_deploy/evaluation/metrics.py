"""Segmentation metrics: confusion-matrix mIoU plus the hard-region metrics of FoR-Net.

Everything is plain numpy (cv2 only for the dilation of the boundary band), so training,
``fornet-deploy eval``, parity checks and the benchmark share one implementation.

Conventions
-----------
* Label maps hold train ids in ``[0, num_classes)``; ``ignore_index`` marks pixels that
  take no part in any metric.
* Confusion matrices are ``(C, C)`` int64 with rows = ground truth, columns = prediction.
* IoU follows the Cityscapes convention: a class absent from both ground truth and
  prediction has no IoU (NaN) and means are taken over the classes that have one.
* All values are fractions in ``[0, 1]``, not percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..data.labels import IGNORE_INDEX, LabelSet
from ..errors import FornetError

NUM_CLASSES = 19  # FoRNetConfig's default head; a label set gives the real count

# Offsets (dy, dx) to the right, lower, lower-right and lower-left neighbour: comparing
# each pixel with these four covers all eight neighbours, since adjacency is symmetric.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Count (ground truth, prediction) pairs over all pixels of ``pred`` and ``target``.

    Returns a ``(C, C)`` int64 matrix, rows = ground truth, columns = prediction. Pixels
    whose target is ``ignore_index`` are skipped. A prediction outside ``[0, C)`` (a broken
    runner, a wrong head size) is counted as wrong rather than raising: it is booked in
    column ``(t + 1) % C`` of its true class ``t``, so it costs the true class a false
    negative and pixel accuracy a miss exactly like any wrong prediction; keeping the
    matrix square means the neighbouring class also receives a false positive.

    Raises :class:`FornetError` when the shapes differ, the arrays are not integer class
    ids, or the target holds values that are neither a class nor ``ignore_index``.
    """
    _check_num_classes(num_classes)
    pred, target = _as_label_pair(pred, target)
    valid = target != ignore_index
    # Boolean indexing already copies, so the casts need not and guess may be edited.
    true = target[valid].astype(np.int64, copy=False)
    guess = pred[valid].astype(np.int64, copy=False)
    _check_target_range(true, num_classes, ignore_index)
    out_of_range = (guess < 0) | (guess >= num_classes)
    if out_of_range.any():  # rare: skip the costly modulo on healthy predictions
        guess[out_of_range] = (true[out_of_range] + 1) % num_classes
    counts = np.bincount(true * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` as float64 ``(C,)``.

    NaN for a class absent from both ground truth and prediction (union 0); a class that is
    only predicted, or only in the ground truth, gets 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    iou = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in ground truth or prediction; NaN if none is."""
    return _nanmean(iou_per_class(cm))


def boundary_band(labels: np.ndarray, width: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Boolean ``H x W`` band of pixels within ``width`` pixels of a class edge in ``labels``.

    Exact definition:

    * an *edge pixel* is a non-ignore pixel with at least one of its 8 neighbours being a
      non-ignore pixel of a different label, so an edge marks the pixels on *both* sides
      of the crack between two classes; a pixel next to an ignore pixel or the image
      border is not an edge pixel for that reason;
    * the band is every non-ignore pixel within Chebyshev distance ``width - 1`` of an edge
      pixel (dilation with a ``(2*width - 1)`` square).

    So ``width`` counts pixels on each side of the crack: a straight edge gives a band
    ``2 * width`` pixels wide, ``width=1`` is the edge pixels themselves and ``width=0`` is
    empty. This matches Cheng et al. (2021), where each mask contributes its inner
    boundary of ``width`` pixels. Ignore pixels are never in the band.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise FornetError(f"boundary_band expects an H x W label map, got shape {labels.shape}")
    if width < 0:
        raise ValueError(f"boundary width must be >= 0, got {width}")
    valid = labels != ignore_index
    if width == 0:
        return np.zeros(labels.shape, dtype=bool)
    band = _edge_pixels(labels, valid)
    if width > 1:
        kernel = np.ones((2 * width - 1, 2 * width - 1), dtype=np.uint8)
        band = cv2.dilate(band.view(np.uint8), kernel).astype(bool)
    return band & valid


def topk_coverage(mask: np.ndarray, hard: np.ndarray) -> float:
    """Fraction of ``hard`` pixels that lie inside the Top-K ``mask``; NaN if none is hard.

    Both are boolean ``H x W`` maps of the same size: the caller upsamples the 1/8-scale
    Top-K mask to label resolution (nearest neighbour) first.
    """
    hits, total = _coverage_counts(mask, hard)
    return float(hits / total) if total else float("nan")


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of pixels where two predictions agree (argmax agreement); NaN if empty."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    _check_same_shape(pred_a, pred_b, "the two predictions")
    return float(np.mean(pred_a == pred_b)) if pred_a.size else float("nan")


@dataclass(eq=False)
class SegmentationMetrics:
    """Accumulates segmentation metrics over a dataset; call :meth:`update` per batch.

    Tracks

    * the overall confusion matrix (mIoU, per-class IoU, pixel accuracy);
    * a *boundary* confusion matrix, Boundary IoU in the spirit of Cheng et al. (2021):
      per image, the band is ``boundary_band(gt) | boundary_band(pred)`` (the prediction
      restricted to pixels whose ground truth is not ignore), and only band pixels whose
      ground truth is not ignore are counted. One band for all classes is a simplification
      of the per-class bands of the paper: a pixel near any edge counts for every class;
    * the thin-structure IoU: mean IoU over ``thin_class_ids`` (those present), taken from
      the overall matrix;
    * when a Top-K mask is given, its coverage of the ground-truth boundary band and of the
      misclassified (non-ignore) pixels, pooled over all pixels of the images that came with
      a mask (not averaged per image).
    """

    num_classes: int = NUM_CLASSES
    ignore_index: int = IGNORE_INDEX
    boundary_width: int = 3
    thin_class_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] | None = None  # None: class_0, class_1, ...
    confusion: np.ndarray = field(init=False, repr=False)
    boundary_confusion: np.ndarray = field(init=False, repr=False)
    num_images: int = field(init=False, default=0)
    # [hits, total] pixel counts for the Top-K coverage metrics.
    _boundary_coverage: np.ndarray = field(init=False, repr=False)
    _error_coverage: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_num_classes(self.num_classes)
        if self.boundary_width < 0:
            raise ValueError(f"boundary_width must be >= 0, got {self.boundary_width}")
        self.thin_class_ids = tuple(int(c) for c in self.thin_class_ids)
        bad = [c for c in self.thin_class_ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"thin_class_ids {bad} are not classes of a {self.num_classes}-class model")
        if self.class_names is None:
            self.class_names = tuple(f"class_{i}" for i in range(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        shape = (self.num_classes, self.num_classes)
        self.confusion = np.zeros(shape, dtype=np.int64)
        self.boundary_confusion = np.zeros(shape, dtype=np.int64)
        self._boundary_coverage = np.zeros(2, dtype=np.int64)
        self._error_coverage = np.zeros(2, dtype=np.int64)

    @classmethod
    def for_labels(cls, labels: LabelSet, boundary_width: int = 3) -> "SegmentationMetrics":
        """Metrics named and grouped by a label set (its classes, thin classes)."""
        return cls(num_classes=labels.num_classes, boundary_width=boundary_width, thin_class_ids=labels.thin,
                   class_names=labels.classes)

    def update(
        self, pred: np.ndarray, target: np.ndarray, topk_mask: np.ndarray | None = None
    ) -> None:
        """Add one ``H x W`` image or an ``N x H x W`` batch of integer label maps.

        ``topk_mask`` (optional) is boolean with the same shape as ``pred``, already at label
        resolution.
        """
        pred, target = _as_label_pair(pred, target)
        if pred.ndim not in (2, 3):
            raise FornetError(f"expected H x W or N x H x W label maps, got shape {pred.shape}")
        if topk_mask is not None:
            topk_mask = np.asarray(topk_mask) != 0
            _check_same_shape(topk_mask, pred, "the Top-K mask and the prediction")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
            topk_mask = None if topk_mask is None else topk_mask[None]
        for i in range(pred.shape[0]):
            self._update_image(pred[i], target[i], None if topk_mask is None else topk_mask[i])

    def _update_image(
        self, pred: np.ndarray, target: np.ndarray, topk_mask: np.ndarray | None
    ) -> None:
        classes, ignore, width = self.num_classes, self.ignore_index, self.boundary_width
        self.confusion += confusion_matrix(pred, target, classes, ignore)
        gt_band = boundary_band(target, width, ignore)
        band = gt_band | boundary_band(self._pred_for_band(pred, target), width, ignore)
        self.boundary_confusion += confusion_matrix(pred[band], target[band], classes, ignore)
        if topk_mask is not None:
            errors = (pred != target) & (target != ignore)
            self._boundary_coverage += _coverage_counts(topk_mask, gt_band)
            self._error_coverage += _coverage_counts(topk_mask, errors)
        self.num_images += 1

    def _pred_for_band(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The prediction as a label map for :func:`boundary_band`.

        Ground-truth ignore pixels become ignore, so no prediction edge is drawn against
        them. Out-of-range predictions become one sentinel label: a patch of garbage is one
        region, and a raw value that happens to equal ``ignore_index`` is not mistaken
        for ignore.
        """
        # num_classes is out of range for every model; step past it if it is the ignore index.
        sentinel = self.num_classes + (self.ignore_index == self.num_classes)
        labels = pred.astype(np.int64)
        labels[(labels < 0) | (labels >= self.num_classes)] = sentinel
        labels[target == self.ignore_index] = self.ignore_index
        return labels

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the counts of ``other`` (another worker's share of the data) into this one."""
        if self._config() != other._config():
            raise ValueError(
                f"cannot merge metrics with settings {other._config()} into {self._config()}"
            )
        self.confusion += other.confusion
        self.boundary_confusion += other.boundary_confusion
        self._boundary_coverage += other._boundary_coverage
        self._error_coverage += other._error_coverage
        self.num_images += other.num_images

    def _config(self) -> tuple:
        return (self.num_classes, self.ignore_index, self.boundary_width, self.thin_class_ids, self.class_names)

    def result(self) -> dict:
        """The metrics as a JSON-ready dict; undefined values (NaN) are ``None``."""
        names = self.class_names
        iou = iou_per_class(self.confusion)
        boundary_iou = iou_per_class(self.boundary_confusion)
        thin_iou = iou[list(self.thin_class_ids)]
        total = int(self.confusion.sum())
        return {
            "miou": _json_float(_nanmean(iou)),
            "iou_per_class": _by_name(names, range(self.num_classes), iou),
            "pixel_accuracy": _json_float(np.trace(self.confusion) / total if total else np.nan),
            "boundary_iou": _json_float(_nanmean(boundary_iou)),
            "boundary_iou_per_class": _by_name(names, range(self.num_classes), boundary_iou),
            "thin_iou": _json_float(_nanmean(thin_iou)),
            "thin_iou_per_class": _by_name(names, self.thin_class_ids, thin_iou),
            "topk_coverage_boundary": _json_float(_ratio(self._boundary_coverage)),
            "topk_coverage_errors": _json_float(_ratio(self._error_coverage)),
            "num_images": self.num_images,
            "boundary_width": self.boundary_width,
        }


def _edge_pixels(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Non-ignore pixels with a differently labelled non-ignore 8-neighbour."""
    height, width = labels.shape
    edge = np.zeros(labels.shape, dtype=bool)
    for dy, dx in _HALF_NEIGHBOURHOOD:
        here = (slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
        there = (slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
        differs = (labels[here] != labels[there]) & valid[here] & valid[there]
        edge[here] |= differs
        edge[there] |= differs
    return edge


def _coverage_counts(mask: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """``[hard pixels inside mask, hard pixels]`` as int64."""
    mask, hard = np.asarray(mask, dtype=bool), np.asarray(hard, dtype=bool)
    _check_same_shape(mask, hard, "the Top-K mask and the hard-pixel map")
    return np.array([np.count_nonzero(mask & hard), np.count_nonzero(hard)], dtype=np.int64)


def _as_label_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    _check_same_shape(pred, target, "prediction and target")
    for name, array in (("prediction", pred), ("target", target)):
        if not np.issubdtype(array.dtype, np.integer):
            raise FornetError(
                f"the {name} must hold integer class ids, got dtype {array.dtype} "
                "(take the argmax of the logits first)"
            )
    return pred, target


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise FornetError(f"{what} differ in shape: {a.shape} vs {b.shape}")


def _check_target_range(true: np.ndarray, num_classes: int, ignore_index: int) -> None:
    bad = true[(true < 0) | (true >= num_classes)]
    if bad.size:
        raise FornetError(
            f"target holds value {int(bad[0])}, neither a class in [0, {num_classes}) nor the "
            f"ignore index {ignore_index} (were label ids converted to train ids?)"
        )


def _check_num_classes(num_classes: int) -> None:
    # Two classes at least: an out-of-range prediction needs another class to be wrong as.
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean warns on an all-NaN input; an empty metric is simply undefined here.
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def _ratio(counts: np.ndarray) -> float:
    hits, total = counts
    return float(hits / total) if total else float("nan")


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _by_name(names: tuple[str, ...], ids, values: np.ndarray) -> dict[str, float | None]:
    return {names[i]: _json_float(v) for i, v in zip(ids, values)}
