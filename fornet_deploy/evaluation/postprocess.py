"""From a runner's outputs to what people use and look at, in one place for eval, parity,
bench and predict: label maps at the image size, the Top-K mask and importance map
upsampled to it, and the pictures (colour overlay, importance heat map, Top-K regions,
parity diff)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..contract import COARSE_LOGITS, IMPORTANCE, LABELS, LOGITS, TOPK_MASK
from ..data.labels import LabelSet
from .keys import aspect_note, colour_bar, font_scale, legend, side_by_side, text_strip, titled

HEATMAP = cv2.COLORMAP_INFERNO
TOPK_COLOUR = (255, 200, 0)  # RGB; warm yellow stands out on street scenes
TOPK_DIM = 0.3  # brightness kept outside the Top-K mask


def _resize(array: np.ndarray, hw: tuple[int, int], interpolation: int) -> np.ndarray:
    if array.shape[:2] == tuple(hw):
        return array
    return cv2.resize(array, (hw[1], hw[0]), interpolation=interpolation)


def label_outputs(available: tuple[str, ...], *extra: str) -> tuple[str, ...]:
    """The outputs to ask a runner for to get labels: ``labels`` when the artefact has it
    (never the full-resolution logits then), else ``logits``; plus those of the ``extra``
    names the artefact has (a runner refuses a name it does not produce)."""
    return (LABELS if LABELS in available else LOGITS, *(name for name in extra if name in available))


def compared_logits(reference: dict, candidate: dict) -> str | None:
    """Which logits two runners' outputs share: the full-resolution ``logits``, else the
    1/4-scale ``coarse_logits`` (a CPU graph computes no full-resolution logits,
    export/tail.py), else ``None``."""
    return next((name for name in (LOGITS, COARSE_LOGITS) if name in reference and name in candidate), None)


def predicted_labels(outputs: dict[str, np.ndarray], hw: tuple[int, int], index: int = 0) -> np.ndarray:
    """Train-id prediction (H x W uint8) of image ``index`` of a batch, at size ``hw``.

    The in-graph ``labels`` output when present, else the argmax of the logits; resized
    (nearest neighbour: no invented classes) when the network ran at another size.
    """
    labels = outputs[LABELS][index] if LABELS in outputs else outputs[LOGITS][index].argmax(0)
    return _resize(labels.astype(np.uint8), hw, cv2.INTER_NEAREST)


def upsampled_mask(outputs: dict[str, np.ndarray], hw: tuple[int, int], index: int = 0) -> np.ndarray | None:
    """The 1/8-scale Top-K mask, nearest-upsampled to H x W (bool); None without the output."""
    if TOPK_MASK not in outputs:
        return None
    mask = (outputs[TOPK_MASK][index, 0] > 0.5).astype(np.uint8)
    return _resize(mask, hw, cv2.INTER_NEAREST).astype(bool)


def upsampled_importance(outputs: dict[str, np.ndarray], hw: tuple[int, int], index: int = 0) -> np.ndarray | None:
    """The 1/8-scale importance map, bilinearly upsampled to H x W (float32); None without it."""
    if IMPORTANCE not in outputs:
        return None
    return _resize(outputs[IMPORTANCE][index, 0].astype(np.float32), hw, cv2.INTER_LINEAR)


def label_overlay(image: np.ndarray, class_ids: np.ndarray, labels: LabelSet, alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with the palette picture of its class ids (the label set's colours)."""
    return cv2.addWeighted(image, 1.0 - alpha, labels.colorize(class_ids), alpha, 0.0)


def importance_heatmap(image: np.ndarray, importance: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with a heat map of an importance map in [0, 1] (same size).

    The map is not stretched to its own min/max: colours mean the same importance in
    every picture and every video frame (a per-frame stretch would flicker).
    """
    levels = np.clip(importance * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, HEATMAP), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def topk_picture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image dimmed outside a boolean Top-K mask, the selected regions tinted and outlined.

    The mask comes nearest-upsampled from 1/8 scale, so its blocks are the regions the
    network selected; the outline keeps small selections visible on large images.
    """
    out = (image.astype(np.float32) * TOPK_DIM).astype(np.uint8)
    tinted = cv2.addWeighted(image, 0.75, np.full_like(image, TOPK_COLOUR), 0.25, 0.0)
    out[mask] = tinted[mask]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(mask.shape) / 256))
    cv2.drawContours(out, contours, -1, TOPK_COLOUR, thickness)
    return out


@dataclass(frozen=True)
class DiffInputs:
    """What a parity diff picture shows of one image, kept small (labels and one H' x W'
    map, not the logits) so a run can hold its worst images until it knows its scale."""

    name: str
    image: np.ndarray  # RGB uint8
    reference: np.ndarray  # H x W class ids
    candidate: np.ndarray  # H x W class ids
    logit_diff: np.ndarray | None  # max over classes of |reference - candidate| logits, at their scale
    network_hw: tuple[int, int]  # the size the image was fed at


def diff_inputs(name: str, image: np.ndarray, reference: dict, candidate: dict,
                network_hw: tuple[int, int]) -> DiffInputs:
    hw = image.shape[:2]
    compared = compared_logits(reference, candidate)
    diff = None
    if compared is not None:
        diff = np.abs(reference[compared][0].astype(np.float32) - candidate[compared][0].astype(np.float32)).max(0)
    return DiffInputs(name, image, predicted_labels(reference, hw), predicted_labels(candidate, hw), diff,
                      (int(network_hw[0]), int(network_hw[1])))


def diff_picture(inputs: DiffInputs, labels: LabelSet, scale: float | None, candidate: str = "candidate") -> np.ndarray:
    """Four titled panels: the reference's and the candidate's labels over the image, their
    disagreement (red), and the |logit diff| heat map on ``scale`` (the same for every
    picture of a run: its top colour is ``scale`` or more), with a colour bar saying so;
    under them the legend of the classes shown, and a note when the network saw the image
    stretched."""
    image = inputs.image
    disagree = image // 3
    disagree[inputs.reference != inputs.candidate] = (255, 0, 0)
    panels = [titled(label_overlay(image, inputs.reference, labels), "reference: torch fp32"),
              titled(label_overlay(image, inputs.candidate, labels), f"candidate: {candidate}"),
              titled(disagree, "disagreement (red)")]
    width = image.shape[1]
    keys = [legend(labels, np.union1d(np.unique(inputs.reference), np.unique(inputs.candidate)), 3 * width,
                   font_scale(width))]
    if inputs.logit_diff is not None and scale is not None:
        scaled = np.clip(inputs.logit_diff / scale * 255, 0, 255).astype(np.uint8)
        heat = cv2.applyColorMap(_resize(scaled, image.shape[:2], cv2.INTER_LINEAR), HEATMAP)[..., ::-1]
        panels.append(titled(heat, f"|logit diff| on 0..{scale:.3g}"))
        keys.append(colour_bar(width, HEATMAP, "0", f">={scale:.3g}", "|logit diff|"))
    picture = np.concatenate([np.concatenate(panels, axis=1), side_by_side(keys)], axis=0)
    note = aspect_note(image.shape[:2], inputs.network_hw)
    return picture if note is None else np.concatenate([picture, text_strip(picture.shape[1], [note])], axis=0)
