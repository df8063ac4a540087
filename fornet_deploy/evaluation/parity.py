"""``fornet-deploy parity``: a deployed artefact against the PyTorch FP32 reference.

The reference is the bundle's checkpoint in PyTorch, FP32, with the ``exact`` Top-K (the
training form). Per image: max / mean absolute logit difference, argmax agreement,
Top-K mask agreement (how much the export-friendly threshold Top-K and reduced
precision change *which* regions are selected) and the agreement-mIoU (mIoU of the
artefact's prediction with the reference prediction as ground truth). Pass thresholds
depend on the precision; the report is JSON plus diff pictures of the worst images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..bundle import Bundle, atomic_write_json
from ..data.cityscapes import colorize, find_samples, write_png
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError
from ..runtimes.base import LOGITS, TOPK_MASK, Runner
from ..runtimes.formats import make_runner
from .evaluate import iterate_examples, predicted_labels
from .metrics import SegmentationMetrics, agreement


@dataclass(frozen=True)
class ParityThresholds:
    max_abs_logit: float | None  # None: not checked (quantized graphs move logits a lot)
    min_argmax_agreement: float
    min_mask_agreement: float


# Why these numbers: FP32 graphs differ from eager PyTorch only by kernel order
# (~1e-5); FP16 keeps the selector in FP32, so masks match and only near-tie pixels flip;
# INT8 is judged on its predictions, not its logits.
THRESHOLDS = {
    "fp32": ParityThresholds(1e-3, 0.9999, 0.999),
    "fp16": ParityThresholds(None, 0.999, 0.999),
    "int8": ParityThresholds(None, 0.98, 0.95),
}


@dataclass
class ImageParity:
    name: str
    max_abs_logit: float | None
    mean_abs_logit: float | None
    argmax_agreement: float
    mask_agreement: float | None
    mask_count_reference: int | None
    mask_count_candidate: int | None


def compare_outputs(name: str, reference: dict, candidate: dict, hw: tuple[int, int]) -> ImageParity:
    ref_labels, cand_labels = predicted_labels(reference, hw), predicted_labels(candidate, hw)
    max_abs = mean_abs = None
    if LOGITS in reference and LOGITS in candidate:
        diff = np.abs(reference[LOGITS].astype(np.float32) - candidate[LOGITS].astype(np.float32))
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
    mask_agree = count_ref = count_cand = None
    if TOPK_MASK in reference and TOPK_MASK in candidate:
        ref_mask, cand_mask = reference[TOPK_MASK] > 0.5, candidate[TOPK_MASK] > 0.5
        mask_agree = agreement(ref_mask, cand_mask)
        count_ref, count_cand = int(ref_mask.sum()), int(cand_mask.sum())
    return ImageParity(name, max_abs, mean_abs, agreement(ref_labels, cand_labels), mask_agree, count_ref, count_cand)


def summarize(images: list[ImageParity], agreement_cm: SegmentationMetrics, thresholds: ParityThresholds) -> dict:
    def values(field):
        return [getattr(i, field) for i in images if getattr(i, field) is not None]

    max_abs = values("max_abs_logit")
    masks = values("mask_agreement")
    pixels_argmax = float(np.mean(values("argmax_agreement")))
    summary = {
        "images": len(images),
        "max_abs_logit": max(max_abs) if max_abs else None,
        "mean_abs_logit": float(np.mean(values("mean_abs_logit"))) if max_abs else None,
        "argmax_agreement": pixels_argmax,
        "min_image_argmax_agreement": min(values("argmax_agreement")),
        "mask_agreement": float(np.mean(masks)) if masks else None,
        "mask_identical_images": sum(1 for m in masks if m == 1.0),
        # threshold Top-K selects a superset on ties: more positions than the reference
        "mask_superset_images": sum(1 for i in images if i.mask_count_candidate is not None and i.mask_count_candidate > i.mask_count_reference),
        "agreement_miou": agreement_cm.result()["miou"],
    }
    checks = {"argmax_agreement": pixels_argmax >= thresholds.min_argmax_agreement}
    if thresholds.max_abs_logit is not None and summary["max_abs_logit"] is not None:
        checks["max_abs_logit"] = summary["max_abs_logit"] <= thresholds.max_abs_logit
    if summary["mask_agreement"] is not None:
        checks["mask_agreement"] = summary["mask_agreement"] >= thresholds.min_mask_agreement
    summary["checks"] = checks
    summary["passed"] = all(checks.values())
    return summary


def diff_picture(image: np.ndarray, reference: dict, candidate: dict) -> np.ndarray:
    """Reference | candidate | disagreement (red) | abs logit difference (heat map)."""
    hw = image.shape[:2]
    ref, cand = predicted_labels(reference, hw), predicted_labels(candidate, hw)
    overlay = lambda labels: (0.5 * image + 0.5 * colorize(labels)).astype(np.uint8)  # noqa: E731
    disagree = image // 3
    disagree[ref != cand] = (255, 0, 0)
    panels = [overlay(ref), overlay(cand), disagree]
    if LOGITS in reference and LOGITS in candidate:
        diff = np.abs(reference[LOGITS][0] - candidate[LOGITS][0]).max(0)
        scaled = np.clip(diff / max(float(diff.max()), 1e-12) * 255, 0, 255).astype(np.uint8)
        heat = cv2.applyColorMap(cv2.resize(scaled, (hw[1], hw[0])), cv2.COLORMAP_INFERNO)[..., ::-1]
        panels.append(heat)
    return np.concatenate(panels, axis=1)


def synthetic_examples(count: int, height: int, width: int, preprocessing: Preprocessing, seed: int = 0):
    """Smooth random images (no labels) for parity without a dataset."""
    from .evaluate import Example

    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        yield Example(f"synthetic_{i:03d}", image, None, preprocess(image, preprocessing))


def run_parity(reference: Runner, candidate: Runner, examples: Iterable, thresholds: ParityThresholds,
               out_dir: Path | None = None, pictures: int = 3, num_classes: int = 19,
               progress: Callable[[int], None] | None = None) -> dict:
    """Compare two runners on the same preprocessed images; returns the report dict."""
    images, worst = [], []
    agreement_cm = SegmentationMetrics(num_classes=num_classes, boundary_width=1)
    for i, ex in enumerate(examples):
        ref_out, cand_out = reference(ex.batch), candidate(ex.batch)
        result = compare_outputs(ex.name, ref_out, cand_out, ex.image.shape[:2])
        images.append(result)
        agreement_cm.update(predicted_labels(cand_out, ex.image.shape[:2]), predicted_labels(ref_out, ex.image.shape[:2]))
        if out_dir is not None and pictures:
            worst.append((result.argmax_agreement, i, ex.name, diff_picture(ex.image, ref_out, cand_out)))
            worst = sorted(worst, key=lambda w: (w[0], w[1]))[:pictures]
        if progress:
            progress(i + 1)
    if not images:
        raise FornetError("parity: no images to compare")
    report = {
        "reference": reference.info().to_dict(),
        "candidate": candidate.info().to_dict(),
        "thresholds": asdict(thresholds),
        "summary": summarize(images, agreement_cm, thresholds),
        "images": [asdict(i) for i in images],
    }
    if out_dir is not None:
        report["pictures"] = [_write_picture(out_dir / f"diff_{name}.png", pic) for _, _, name, pic in worst]
    return report


def _write_picture(path: Path, rgb: np.ndarray) -> str:
    write_png(path, rgb)
    return path.name


def parity_bundle(bundle_dir: str | Path, runtime: str = "ort", precision: str = "fp32", device: str = "cpu",
                  data: str | Path | None = None, split: str = "val", limit: int | None = None,
                  synthetic: int | None = None, out_dir: str | Path | None = None, progress=None) -> dict:
    """The library function behind ``fornet-deploy parity``."""
    bundle = Bundle.open(bundle_dir)
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    if data is not None:
        total = len(find_samples(data, split, require_labels=False)[: limit if limit else None])
        examples = iterate_examples(data, split, pre, limit, require_labels=False)
    else:
        h, w = bundle.manifest["export"]["height"], bundle.manifest["export"]["width"]
        total = synthetic or 8
        examples = synthetic_examples(total, h, w, pre)
    out_dir = Path(out_dir) if out_dir else bundle.root / "parity" / f"{runtime}-{precision}"
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"parity output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with make_runner(bundle, "torch", "fp32", "cpu", topk="exact") as reference, \
            make_runner(bundle, runtime, precision, device) as candidate:
        report = run_parity(reference, candidate, examples, THRESHOLDS[precision], out_dir,
                            num_classes=len(bundle.manifest["classes"]),
                            progress=(lambda done: progress(done, total)) if progress else None)
    report["bundle"] = str(bundle.root)
    atomic_write_json(out_dir / "parity.json", report)
    report["report_path"] = str(out_dir / "parity.json")
    return report
