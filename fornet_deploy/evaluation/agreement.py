"""How far a candidate's outputs are from the reference's on one image: the one comparison
behind ``parity``, the benchmark matrix's agreement columns and the benchmark scripts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import TOPK_MASK
from ..model.topk import selection_counts
from .metrics import agreement
from .postprocess import compared_logits, predicted_labels


@dataclass
class ImageAgreement:
    name: str
    max_abs_logit: float | None  # None when the two sides have no logits in common
    mean_abs_logit: float | None
    logits_compared: str | None  # logits (full resolution) or coarse_logits (1/4 scale, a CPU graph)
    argmax_agreement: float  # fraction of pixels with the same label
    mask_agreement: float | None  # fraction of 1/8-scale cells with the same Top-K decision
    mask_count_reference: int | None  # cells selected by the reference
    mask_count_candidate: int | None
    mask_k: int | None  # cells the Top-K must select (k) on this image
    mask_extra: int | None  # candidate's cells beyond k (negative: fewer)


def compare_outputs(name: str, reference: dict, candidate: dict, hw: tuple[int, int],
                    k: int | None = None) -> ImageAgreement:
    """Compare the outputs of two runners for one image (batch of 1), labels at size ``hw``.

    ``k``: the number of cells the Top-K must select (``topk_count(ratio, cells)`` for a
    fixed ratio); default the reference's own count, which the exact Top-K makes exactly k.
    """
    ref_labels, cand_labels = predicted_labels(reference, hw), predicted_labels(candidate, hw)
    max_abs = mean_abs = None
    compared = compared_logits(reference, candidate)
    if compared is not None:
        diff = np.abs(reference[compared].astype(np.float32) - candidate[compared].astype(np.float32))
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
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
    return ImageAgreement(name, max_abs, mean_abs, compared, agreement(ref_labels, cand_labels), mask_agree,
                          count_ref, count_cand, k, extra)


def pooled(images: list[ImageAgreement]) -> dict:
    """Agreement over several images of one size: pixel-weighted means equal plain means."""
    masks = [i.mask_agreement for i in images if i.mask_agreement is not None]
    return {
        "argmax_agreement": float(np.mean([i.argmax_agreement for i in images])) if images else None,
        "mask_agreement": float(np.mean(masks)) if masks else None,
    }
