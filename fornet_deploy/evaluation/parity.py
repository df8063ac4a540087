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
depend on the precision (:data:`THRESHOLDS`, each one settable); the report is JSON plus
diff pictures of the worst images.

What ships is what is checked: by default every artefact of the bundle that runs for the
runtime, precision and device (on a CPU, ONNX Runtime FP32 is ``model.cpu.onnx`` and
``model.onnx``, the graph Triton and DeepStream carry; INT8 the U8S8 CPU graph and the Q/DQ
graph TensorRT builds from), each against the one reference run, one report each, and the
run fails when any of them fails; ``artifact`` checks one file.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..bundle import Bundle
from ..contract import PARITY_DIR, TOPK_MASK
from ..data.formats import open_dataset
from ..data.labels import LabelSet, default_label_set, manifest_label_set
from ..data.transforms import Preprocessing
from ..errors import FornetError, OptionError
from ..io import atomic_write_json, read_json, write_png
from ..model.topk import SelectionCount, summarize_selection, topk_count
from ..runtimes.base import Runner, network_size
from ..runtimes.registry import artifact_precision, formats_present, load_runner, named_format, trt_request
from .agreement import ImageAgreement, compare_outputs, pooled
from .evaluate import fixed_topk_ratio
from .examples import Example, check_limit, dataset_examples, synthetic_examples
from .metrics import SegmentationMetrics
from .postprocess import DiffInputs, diff_inputs, diff_picture, predicted_labels


@dataclass(frozen=True)
class ParityThresholds:
    max_abs_logit: float | None  # None: not checked (quantized graphs move logits a lot)
    min_argmax_agreement: float
    min_mask_agreement: float

    def __post_init__(self):
        if self.max_abs_logit is not None and not (_number(self.max_abs_logit) and self.max_abs_logit >= 0):
            raise OptionError(f"--atol must be a number >= 0, got {self.max_abs_logit!r}")
        for name in ("min_argmax_agreement", "min_mask_agreement"):
            value = getattr(self, name)
            if not (_number(value) and 0.0 <= value <= 1.0):
                raise OptionError(f"--{name.replace('_', '-')} must be a fraction from 0 to 1, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Why these numbers: FP32 graphs differ from eager PyTorch only by kernel order
# (~1e-5); FP16 keeps the selector in FP32, so masks match and only near-tie pixels flip;
# BF16 (OpenVINO's default on a CPU with BF16) is reduced precision judged as FP16 is;
# INT8 is judged on its predictions, not its logits.
THRESHOLDS = {
    "fp32": ParityThresholds(1e-3, 0.9999, 0.999),
    "fp16": ParityThresholds(None, 0.999, 0.999),
    "int8": ParityThresholds(None, 0.98, 0.95),
}
THRESHOLDS["bf16"] = THRESHOLDS["fp16"]


def thresholds_for(precision: str, atol: float | None = None, min_argmax_agreement: float | None = None,
                   min_mask_agreement: float | None = None) -> ParityThresholds:
    """The documented thresholds of ``precision`` with the ones given replaced (``atol``: the
    max absolute logit difference away from near-tie Top-K swaps; it also turns that check
    on for FP16 / INT8, where it is off by default)."""
    given = {"max_abs_logit": atol, "min_argmax_agreement": min_argmax_agreement,
             "min_mask_agreement": min_mask_agreement}
    return replace(THRESHOLDS[precision], **{k: v for k, v in given.items() if v is not None})


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


@dataclass
class ArtifactResult:
    """One candidate's comparison with the reference: the report and its worst images."""

    report: dict
    worst: list[DiffInputs]


def compare_runners(reference: Runner, candidates: Mapping[str, Runner], examples: Iterable[Example],
                    thresholds: ParityThresholds, pictures: int = 3, labels: LabelSet | int = 19,
                    progress: Callable[[int, int], None] | None = None,
                    topk_ratio: float | None = None) -> dict[str, ArtifactResult]:
    """Compare each candidate with the reference on the same preprocessed images (the
    reference runs once per image); a report per candidate, and the inputs of the diff
    pictures of its ``pictures`` worst images (lowest argmax agreement).

    ``labels``: the model's label set, or its class count. ``topk_ratio``: the fixed Top-K
    ratio, so k = ceil(ratio * cells) per image is checked in both runners; None (adaptive
    K) takes k from the reference, which selects exactly k.
    """
    if isinstance(labels, int):
        labels = default_label_set(labels)
    images: dict[str, list[ImageAgreement]] = {name: [] for name in candidates}
    worst: dict[str, list[tuple]] = {name: [] for name in candidates}
    agreement_cm = {name: SegmentationMetrics(num_classes=labels.num_classes, boundary_width=1) for name in candidates}
    total = len(examples) if hasattr(examples, "__len__") else 0
    for i, ex in enumerate(examples):
        ref_out = reference(ex.batch)
        hw = ex.image.shape[:2]
        k = topk_count(topk_ratio, ref_out[TOPK_MASK][0].size) if topk_ratio and TOPK_MASK in ref_out else None
        for name, candidate in candidates.items():
            cand_out = candidate(ex.batch)
            result = compare_outputs(ex.name, ref_out, cand_out, hw, k)
            images[name].append(result)
            agreement_cm[name].update(predicted_labels(cand_out, hw), predicted_labels(ref_out, hw))
            if pictures:
                worst[name].append((result.argmax_agreement, i,
                                    diff_inputs(ex.name, ex.image, ref_out, cand_out, ex.batch.shape[2:])))
                worst[name] = sorted(worst[name], key=lambda w: (w[0], w[1]))[:pictures]
        if progress:
            progress(i + 1, total)
    if not any(images.values()):
        raise FornetError("parity: no images to compare")
    return {name: ArtifactResult({
        "reference": reference.info().to_dict(),
        "candidate": candidate.info().to_dict(),
        "thresholds": asdict(thresholds),
        "summary": summarize(images[name], agreement_cm[name], thresholds),
        "images": [asdict(i) for i in images[name]],
    }, [w[2] for w in worst[name]]) for name, candidate in candidates.items()}


def picture_scale(results: Iterable[dict], thresholds: ParityThresholds) -> float | None:
    """The one |logit diff| that maps to the top of the heat-map colours for every picture of
    a run: the threshold where the precision checks logits (a pass is dark, a failure
    saturates), else the largest difference of the run; None when no logits were compared."""
    if thresholds.max_abs_logit is not None:
        return thresholds.max_abs_logit
    largest = [r["summary"]["max_abs_logit"] for r in results if r["summary"]["max_abs_logit"] is not None]
    return max(max(largest), 1e-12) if largest else None


def write_pictures(folder: Path, worst: list[DiffInputs], labels: LabelSet, scale: float | None,
                   candidate: str = "candidate") -> list[str]:
    """The diff pictures of a candidate's worst images in ``folder``; their file names."""
    names = []
    for inputs in worst:
        write_png(folder / f"diff_{inputs.name}.png", diff_picture(inputs, labels, scale, candidate))
        names.append(f"diff_{inputs.name}.png")
    return names


def run_parity(reference: Runner, candidate: Runner, examples: Iterable[Example], thresholds: ParityThresholds,
               out_dir: Path | None = None, pictures: int = 3, labels: LabelSet | int = 19,
               progress: Callable[[int, int], None] | None = None, topk_ratio: float | None = None) -> dict:
    """Compare one candidate with the reference (:func:`compare_runners`); returns its report,
    with its diff pictures written to ``out_dir`` when given."""
    label_set = default_label_set(labels) if isinstance(labels, int) else labels
    (result,) = compare_runners(reference, {"candidate": candidate}, examples, thresholds,
                                pictures if out_dir is not None else 0, label_set, progress, topk_ratio).values()
    if out_dir is not None:
        scale = picture_scale([result.report], thresholds)
        result.report["pictures"] = write_pictures(Path(out_dir), result.worst, label_set, scale)
    return result.report


def parity_artifacts(bundle: Bundle, runtime: str, precision: str, device: str, artifact: str | None,
                     shape: tuple[int, ...] | None = None) -> list[str]:
    """What a parity run checks: ``artifact``, else every artefact the bundle holds for
    (runtime, precision, device) (a TensorRT run: the engine this machine would pick)."""
    if artifact is not None:
        return [named_format(bundle, runtime, precision, device, artifact).artifact]
    request = trt_request(shape=shape) if runtime == "trt" else None
    return [fmt.artifact for fmt in formats_present(bundle, runtime, precision, device, request)]


def _check_writable(out_dir: Path, hint: str) -> None:
    """One line now, before the comparison runs, when the report could not be written at its
    end (a read-only bundle: EROFS). The probe is an unnamed temporary file in the nearest
    folder that exists, so nothing is created when the run then cannot start."""
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    try:
        tempfile.TemporaryFile(dir=existing).close()  # the write error a report would meet, with its errno
    except OSError as exc:
        raise FornetError(f"cannot write the parity report into {out_dir}: {exc.strerror or exc}{hint}") from None


def parity_bundle(bundle_dir: str | Path, runtime: str = "ort", precision: str | None = None, device: str = "cpu",
                  data: str | Path | None = None, split: str = "val", limit: int | None = None,
                  out_dir: str | Path | None = None, json_out: str | Path | None = None, progress=None,
                  ort_provider: str | None = None, *, artifact: str | None = None,
                  thresholds: ParityThresholds | None = None) -> dict:
    """The library function behind ``fornet-deploy parity``.

    Checks ``artifact``, else every artefact of the bundle for (runtime, precision, device)
    (:func:`parity_artifacts`); ``precision``: default fp32, or ``artifact``'s own.
    ``thresholds``: default the precision's :data:`THRESHOLDS`. Images: the first ``limit``
    of ``data``'s split, or ``limit`` (default 8) synthetic images at the export size
    without ``data``. The run's report goes to ``out_dir/parity.json`` (default
    ``BUNDLE/parity/RUNTIME-PRECISION``), with each artefact's diff pictures in
    ``out_dir/ARTEFACT/``, and to ``json_out``: ``summary`` (``passed``, the artefacts,
    the failed checks of each) and ``artifacts`` (a full report per artefact). Nothing is
    written when the run cannot start (a missing artefact, a wrong option).
    ``ort_provider`` (cpu, cuda, tensorrt): ONNX Runtime's execution provider (default: the device's).
    """
    check_limit(limit)
    bundle = Bundle.open(bundle_dir)
    precision = artifact_precision(bundle, artifact, precision)
    thresholds = thresholds or THRESHOLDS[precision]
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
    dataset = open_dataset(data) if data is not None else None
    hint = "" if out_dir else "; give --out FOLDER to write it elsewhere"
    out_dir = Path(out_dir) if out_dir else bundle.root / PARITY_DIR / f"{runtime}-{precision}"
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"parity output {out_dir} exists and is not a folder")
    names = parity_artifacts(bundle, runtime, precision, device, artifact)
    _check_writable(out_dir, hint)
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(load_runner(bundle, "torch", "fp32", "cpu", topk="exact"))
        candidates = {name: stack.enter_context(load_runner(bundle, runtime, precision, device, artifact=name,
                                                            ort_device=ort_provider)) for name in names}
        # images of any size are fed as predict feeds them: resized to the candidates' input
        sized = partial(network_size, candidates[names[0]].input_spec(), pre)
        if dataset is not None:
            examples = dataset_examples(dataset, split, pre, limit, require_labels=False, network_size=sized)
        else:
            h, w = bundle.section("export")["height"], bundle.section("export")["width"]
            examples = synthetic_examples(limit or 8, h, w, pre, network_size=sized)
        results = compare_runners(reference, candidates, examples, thresholds, labels=labels, progress=progress,
                                  topk_ratio=fixed_topk_ratio(bundle.section("topk")))
    scale = picture_scale([r.report for r in results.values()], thresholds)
    for name, result in results.items():
        result.report["sha256"] = bundle.sha256(name)  # what was checked (stale_parity_reports)
        result.report["pictures"] = [f"{name}/{picture}" for picture in
                                     write_pictures(out_dir / name, result.worst, labels, scale,
                                                    f"{runtime} {precision} {name}")]
    failed = {name: [check for check, ok in r.report["summary"]["checks"].items() if not ok]
              for name, r in results.items() if not r.report["summary"]["passed"]}
    report = {
        "bundle": str(bundle.root), "runtime": runtime, "precision": precision, "device": device,
        "thresholds": asdict(thresholds), "images_from": examples.source, "resized": examples.resize_record(),
        "picture_scale": scale,
        "summary": {"passed": not failed, "artifacts": names, "failed": failed},
        "artifacts": {name: result.report for name, result in results.items()},
    }
    atomic_write_json(out_dir / "parity.json", report)
    if json_out is not None:
        atomic_write_json(json_out, report)
    report["report_path"] = str(out_dir / "parity.json")
    return report


def stale_parity_reports(bundle: Bundle) -> list[str]:
    """The bundle's parity reports (``parity/*/parity.json``, as folders relative to the bundle)
    that checked an artefact the bundle no longer holds with that content (or record no hash
    of it, from before reports did)."""
    stale = []
    for path in sorted((bundle.root / PARITY_DIR).glob("*/parity.json")):
        try:
            checked = read_json(path, "parity report").get("artifacts")
        except (FornetError, AttributeError):
            checked = None
        current = isinstance(checked, dict) and checked and all(
            isinstance(r, dict) and bundle.has(name) and r.get("sha256") == bundle.sha256(name)
            for name, r in checked.items())
        if not current:
            stale.append(path.parent.relative_to(bundle.root).as_posix())
    return stale


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _flag(cell: str, summary: dict, check: str) -> str:
    return f"{cell} FAIL" if summary["checks"].get(check) is False else cell


PARITY_LEGEND = ("logit diff: max |logit difference| away from near-tie Top-K swaps (* the 1/4-scale logits of a "
                 "CPU graph); tie swaps: Top-K cells swapped at a near-tie; argmax / Top-K mask: share of pixels / "
                 "cells that agree with the reference; off k: images whose Top-K did not select exactly k cells; "
                 "a failed check is marked FAIL")


def parity_table(report: dict) -> tuple[str, list[str], list[list[str]]]:
    """``(title, columns, rows)`` of a parity run: one row per artefact, each threshold in its
    column's header, a failed value marked FAIL, the verdict last (the CLI's table and the
    deploy report's; :data:`PARITY_LEGEND` says what the columns are; the agreement mIoU and
    the rest are in the report)."""
    t = report["thresholds"]
    atol = "" if t["max_abs_logit"] is None else f" <= {t['max_abs_logit']:g}"
    columns = ["artefact", f"logit diff{atol}", "tie swaps", f"argmax >= {t['min_argmax_agreement']:g}",
               f"Top-K mask >= {t['min_mask_agreement']:g}", "off k = 0", "verdict"]
    rows, images = [], set()
    for name, r in report["artifacts"].items():
        s = r["summary"]
        images.add(s["images"])
        if s["max_abs_logit"] is None:
            logits = "-"
        else:  # what the check reads: away from near-tie Top-K swaps; * a CPU graph's 1/4-scale logits
            coarse = s["logits_compared"] == ["coarse_logits"]
            logits = f"{s['max_abs_logit_outside_ties']:.3g}" + ("*" if coarse else "")
        selection = s.get("topk_selection")
        off_k = "-" if selection is None else str(selection["images_over_k"] + selection["images_under_k"])
        rows.append([name, _flag(logits, s, "max_abs_logit"), str(s["near_tie_cells"]),
                     _flag(_fraction(s["argmax_agreement"]), s, "argmax_agreement"),
                     _flag(_fraction(s["mask_agreement"]), s, "mask_agreement"),
                     _flag(off_k, s, "topk_count"), "PASS" if s["passed"] else "FAIL"])
    title = (f"parity: {report['runtime']} {report['precision']} vs torch fp32 (exact Top-K), "
             f"{'/'.join(str(n) for n in sorted(images))} images")
    return title, columns, rows


def verdict_line(report: dict) -> str:
    """``PASS; report PATH`` or ``FAIL: CHECK (ARTEFACT), ...; report PATH``: the run's last line."""
    failed = report["summary"]["failed"]
    if not failed:
        return f"PASS; report {report['report_path']}"
    several = len(report["artifacts"]) > 1
    checks = [f"{check} ({name})" if several else check for name, names in failed.items() for check in names]
    return f"FAIL: {', '.join(checks)}; report {report['report_path']}"
