"""``fornet-deploy parity``: a deployed artefact against the PyTorch FP32 reference.

The reference is the bundle's checkpoint in PyTorch, FP32, with the ``exact`` Top-K (the
training form). Per image: max / mean absolute logit difference (of the full-resolution
``logits``, or for a CPU graph, which does not compute those, of the 1/4-scale
``coarse_logits`` its labels are made from: ``logits_compared``), argmax agreement,
Top-K mask agreement (how much the export-friendly threshold Top-K and reduced
precision change *which* regions are selected), the number of selected cells against k
(``extra cells``: the Top-K selects exactly k in every artefact, so any extra or missing
cell fails parity, whatever the precision) and the agreement-mIoU (mIoU of the
artefact's prediction with the reference prediction as ground truth). Pass thresholds
depend on the precision; the report is JSON plus diff pictures of the worst images.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from ..bundle import Bundle
from ..contract import PARITY_DIR, TOPK_MASK
from ..data.formats import open_dataset
from ..data.labels import LabelSet, default_label_set, manifest_label_set
from ..data.transforms import Preprocessing
from ..errors import FornetError
from ..io import atomic_write_json, write_png
from ..model.topk import SelectionCount, summarize_selection, topk_count
from ..runtimes.base import Runner, network_size
from ..runtimes.registry import load_runner
from .agreement import ImageAgreement, compare_outputs, pooled
from .evaluate import fixed_topk_ratio
from .examples import Example, check_limit, dataset_examples, synthetic_examples
from .metrics import SegmentationMetrics
from .postprocess import diff_picture, predicted_labels


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


def summarize(images: list[ImageAgreement], agreement_cm: SegmentationMetrics, thresholds: ParityThresholds) -> dict:
    def values(field):
        return [getattr(i, field) for i in images if getattr(i, field) is not None]

    max_abs = values("max_abs_logit")
    masks = values("mask_agreement")
    agree = pooled(images)
    summary = {
        "images": len(images),
        "max_abs_logit": max(max_abs) if max_abs else None,
        # what the check reads: away from Top-K cells swapped at a near-tie (agreement.near_tie_swaps)
        "max_abs_logit_outside_ties": max(values("max_abs_logit_outside_ties")) if max_abs else None,
        "near_tie_cells": sum(values("near_tie_cells")),
        "logits_compared": sorted(set(values("logits_compared"))),
        "mean_abs_logit": sum(values("mean_abs_logit")) / len(max_abs) if max_abs else None,
        "argmax_agreement": agree["argmax_agreement"],
        "min_image_argmax_agreement": min(values("argmax_agreement")),
        "mask_agreement": agree["mask_agreement"],
        "mask_identical_images": sum(1 for m in masks if m == 1.0),
        "agreement_miou": agreement_cm.result()["miou"],
    }
    counted = [i for i in images if i.mask_k is not None]
    if counted:
        candidate = summarize_selection([SelectionCount(i.mask_count_candidate, i.mask_k) for i in counted])
        reference = summarize_selection([SelectionCount(i.mask_count_reference, i.mask_k) for i in counted])
        summary["topk_selection"] = {**{k: v for k, v in candidate.items() if k != "images"},
                                     "reference_images_off_k": reference["images_over_k"] + reference["images_under_k"]}
    checks = {"argmax_agreement": summary["argmax_agreement"] >= thresholds.min_argmax_agreement}
    if thresholds.max_abs_logit is not None and summary["max_abs_logit"] is not None:
        checks["max_abs_logit"] = summary["max_abs_logit_outside_ties"] <= thresholds.max_abs_logit
    if summary["mask_agreement"] is not None:
        checks["mask_agreement"] = summary["mask_agreement"] >= thresholds.min_mask_agreement
    if counted:  # exactly k cells, in the candidate and in the reference, on every image
        s = summary["topk_selection"]
        checks["topk_count"] = s["images_over_k"] == s["images_under_k"] == s["reference_images_off_k"] == 0
    summary["checks"] = checks
    summary["passed"] = all(checks.values())
    return summary


def run_parity(reference: Runner, candidate: Runner, examples: Iterable[Example], thresholds: ParityThresholds,
               out_dir: Path | None = None, pictures: int = 3, labels: LabelSet | int = 19,
               progress: Callable[[int, int], None] | None = None, topk_ratio: float | None = None) -> dict:
    """Compare two runners on the same preprocessed images; returns the report dict.

    ``labels``: the model's label set (colours of the diff pictures), or its class count.

    ``topk_ratio``: the fixed Top-K ratio, so k = ceil(ratio * cells) per image is checked in
    both runners; None (adaptive K) takes k from the reference, which selects exactly k.
    """
    images, worst = [], []
    if isinstance(labels, int):
        labels = default_label_set(labels)
    agreement_cm = SegmentationMetrics(num_classes=labels.num_classes, boundary_width=1)
    total = len(examples) if hasattr(examples, "__len__") else 0
    for i, ex in enumerate(examples):
        ref_out, cand_out = reference(ex.batch), candidate(ex.batch)
        hw = ex.image.shape[:2]
        k = topk_count(topk_ratio, ref_out[TOPK_MASK][0].size) if topk_ratio and TOPK_MASK in ref_out else None
        result = compare_outputs(ex.name, ref_out, cand_out, hw, k)
        images.append(result)
        agreement_cm.update(predicted_labels(cand_out, hw), predicted_labels(ref_out, hw))
        if out_dir is not None and pictures:
            worst.append((result.argmax_agreement, i, ex.name, diff_picture(ex.image, ref_out, cand_out, labels)))
            worst = sorted(worst, key=lambda w: (w[0], w[1]))[:pictures]
        if progress:
            progress(i + 1, total)
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
        report["pictures"] = []
        for _, _, name, picture in worst:
            write_png(out_dir / f"diff_{name}.png", picture)
            report["pictures"].append(f"diff_{name}.png")
    return report


def parity_bundle(bundle_dir: str | Path, runtime: str = "ort", precision: str = "fp32", device: str = "cpu",
                  data: str | Path | None = None, split: str = "val", limit: int | None = None,
                  out_dir: str | Path | None = None, json_out: str | Path | None = None, progress=None,
                  ort_provider: str | None = None) -> dict:
    """The library function behind ``fornet-deploy parity``.

    Images: the first ``limit`` of ``data``'s split, or ``limit`` (default 8) synthetic
    images at the export size without ``data``. The report goes to ``out_dir/parity.json``
    (default ``BUNDLE/parity/RUNTIME-PRECISION``) with diff pictures, and to ``json_out``.
    ``ort_provider`` (cpu, cuda, tensorrt): ONNX Runtime's execution provider (default: the device's).
    """
    check_limit(limit)
    bundle = Bundle.open(bundle_dir)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
    dataset = open_dataset(data) if data is not None else None
    hint = "" if out_dir else "; give --out FOLDER to write it elsewhere"
    out_dir = Path(out_dir) if out_dir else bundle.root / PARITY_DIR / f"{runtime}-{precision}"
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"parity output {out_dir} exists and is not a folder")
    try:  # before the comparison runs: a read-only bundle is one line, not a traceback at the end
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # the write error a report would meet, with its errno
    except OSError as exc:
        raise FornetError(f"cannot write the parity report into {out_dir}: {exc.strerror or exc}{hint}") from None
    with load_runner(bundle, "torch", "fp32", "cpu", topk="exact") as reference, \
            load_runner(bundle, runtime, precision, device, ort_device=ort_provider) as candidate:
        # images of any size are fed as predict feeds them: resized to the candidate's input
        sized = partial(network_size, candidate.input_spec(), pre)
        if dataset is not None:
            examples = dataset_examples(dataset, split, pre, limit, require_labels=False, network_size=sized)
        else:
            h, w = bundle.section("export")["height"], bundle.section("export")["width"]
            examples = synthetic_examples(limit or 8, h, w, pre, network_size=sized)
        report = run_parity(reference, candidate, examples, THRESHOLDS[precision], out_dir,
                            labels=labels, progress=progress,
                            topk_ratio=fixed_topk_ratio(bundle.section("topk")))
    report["resized"] = examples.resize_record()
    report["bundle"] = str(bundle.root)
    atomic_write_json(out_dir / "parity.json", report)
    if json_out is not None:
        atomic_write_json(json_out, report)
    report["report_path"] = str(out_dir / "parity.json")
    return report
