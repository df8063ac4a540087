"""How far a candidate's outputs are from the reference's on one image: the one comparison
behind ``parity``, the benchmark matrix's agreement columns and the benchmark scripts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import IMPORTANCE, TOPK_MASK
from ..model.topk import selection_counts
from .metrics import agreement
from .postprocess import compared_logits, predicted_labels


@dataclass
class ImageAgreement:
    name: str
    max_abs_logit: float | None  # None when the two sides have no logits in common
    max_abs_logit_outside_ties: float | None  # the same away from near-tie Top-K swaps: what parity checks
    mean_abs_logit: float | None
    logits_compared: str | None  # logits (full resolution) or coarse_logits (1/4 scale, a CPU graph)
    argmax_agreement: float  # fraction of pixels with the same label
    mask_agreement: float | None  # fraction of 1/8-scale cells with the same Top-K decision
    mask_count_reference: int | None  # cells selected by the reference
    mask_count_candidate: int | None
    mask_k: int | None  # cells the Top-K must select (k) on this image
    mask_extra: int | None  # candidate's cells beyond k (negative: fewer)
    near_tie_cells: int | None = None  # cells selected on one side only, at a near-tie (see near_tie_swaps)


def near_tie_swaps(reference: dict, candidate: dict) -> np.ndarray | None:
    """Boolean (h, w) map of the 1/8-scale cells one side selects and the other does not
    *because their scores tie within the two sides' own disagreement*: the cell's reference
    importance is within twice the largest |reference - candidate| importance difference of the
    k-th selected reference importance. Such a swap is rounding (kernel order, TF32, another
    GPU), not a defect: exactly k cells are still selected, and the logits change only near
    the swapped cells. A swap of a cell far from the k-th score is not in the map. ``None``
    when either side lacks the mask or the importance map."""
    if not all(name in outputs for outputs in (reference, candidate) for name in (TOPK_MASK, IMPORTANCE)):
        return None
    ref_mask, cand_mask = reference[TOPK_MASK][0].squeeze() > 0.5, candidate[TOPK_MASK][0].squeeze() > 0.5
    swapped = ref_mask != cand_mask
    if not swapped.any() or not ref_mask.any():
        return np.zeros_like(swapped)
    ref_score = reference[IMPORTANCE][0].squeeze().astype(np.float64)
    cand_score = candidate[IMPORTANCE][0].squeeze().astype(np.float64)
    with np.errstate(invalid="ignore"):
        tolerance = 2 * np.nanmax(np.abs(ref_score - cand_score))
        kth = ref_score[ref_mask].min()
        return swapped & (np.abs(ref_score - kth) <= tolerance)


def _outside(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a (H, W) map farther than one cell from every marked 1/8-scale cell: a cell's
    decision reaches its neighbours through the head's 3x3 convolution and the bilinear
    upsamplings, no further."""
    grown = np.pad(cells, 1)
    grown = np.logical_or.reduce([grown[1 + dy:grown.shape[0] - 1 + dy, 1 + dx:grown.shape[1] - 1 + dx]
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    scale_y, scale_x = (_cell_side(side, count) for side, count in zip(shape, cells.shape))
    return ~np.kron(grown, np.ones((scale_y, scale_x), dtype=bool))[:shape[0], :shape[1]]


def _cell_side(pixels: int, cells: int) -> int:
    """Pixels of a map per 1/8-scale cell along one side: 8 at full resolution, 2 at 1/4 scale.
    The cells are ceil(H/8) (the last one partly image at a size that is not a multiple of 8),
    so the side is the power of two that covers ``pixels`` with ``cells`` and no fewer."""
    side = 1
    while side * cells < pixels:
        side *= 2
    return side


def compare_outputs(name: str, reference: dict, candidate: dict, hw: tuple[int, int],
                    k: int | None = None) -> ImageAgreement:
    """Compare the outputs of two runners for one image (batch of 1), labels at size ``hw``.

    ``k``: the number of cells the Top-K must select (``topk_count(ratio, cells)`` for a
    fixed ratio); default the reference's own count, which the exact Top-K makes exactly k.
    """
    ref_labels, cand_labels = predicted_labels(reference, hw), predicted_labels(candidate, hw)
    max_abs = mean_abs = outside_ties = None
    ties = near_tie_swaps(reference, candidate)
    compared = compared_logits(reference, candidate)
    if compared is not None:
        diff = np.abs(reference[compared].astype(np.float32) - candidate[compared].astype(np.float32))
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        outside_ties = max_abs
        if ties is not None and ties.any():
            kept = diff[0][:, _outside(ties, diff.shape[-2:])]
            outside_ties = float(kept.max()) if kept.size else 0.0
    mask_agree = count_ref = count_cand = extra = None
    if TOPK_MASK in reference and TOPK_MASK in candidate:
        ref_mask, cand_mask = reference[TOPK_MASK] > 0.5, candidate[TOPK_MASK] > 0.5
        mask_agree = agreement(ref_mask, cand_mask)
        count_ref = int(ref_mask.sum())
        k = count_ref if k is None else k
        selected = selection_counts(cand_mask, k)[0]
        count_cand, extra = selected.selected, selected.extra
    else:
        k = None
    return ImageAgreement(name, max_abs, outside_ties, mean_abs, compared, agreement(ref_labels, cand_labels),
                          mask_agree, count_ref, count_cand, k, extra,
                          None if ties is None else int(ties.sum()))


def pooled(images: list[ImageAgreement]) -> dict:
    """Agreement over several images of one size: pixel-weighted means equal plain means."""
    masks = [i.mask_agreement for i in images if i.mask_agreement is not None]
    return {
        "argmax_agreement": float(np.mean([i.argmax_agreement for i in images])) if images else None,
        "mask_agreement": float(np.mean(masks)) if masks else None,
    }
