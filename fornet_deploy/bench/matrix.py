"""``fornet-deploy bench --matrix``: every artefact of a bundle on one device, in one process,
with the speed-up over PyTorch FP32 and accuracy next to latency."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..bundle import Bundle
from ..contract import TOPK_MASK, Format
from ..data.labels import LabelSet, manifest_label_set
from ..data.transforms import Preprocessing
from ..errors import FornetError
from ..evaluation.agreement import compare_outputs, pooled
from ..evaluation.examples import Example, check_limit, dataset_examples, scene_examples
from ..evaluation.metrics import SegmentationMetrics
from ..evaluation.postprocess import label_outputs, predicted_labels
from ..io import atomic_write_json, now_iso
from ..runtimes.base import Runner
from ..runtimes.registry import available_formats, load_runner, trt_request
from .frames import bench_preprocessing, load_frames
from .run import BenchConfig, Progress, bench_format, bench_shape, config_dict, validate_config
from .sysinfo import describe_machine
from .telemetry import BenchEnvironment, with_jetson_board

REFERENCE = ("torch", "fp32")


def accuracy_examples(data: Path | None, count: int, shape: tuple[int, int], pre: Preprocessing,
                      split: str = "val") -> tuple[list[Example], str]:
    """Images the accuracy columns are measured on, at the benchmarked input size (kept in
    memory: every artefact runs on the same preprocessed batches)."""
    check_limit(count)
    if data is not None:
        examples = list(dataset_examples(data, split, pre, limit=count))
        return examples, f"{len(examples)} {split} images of {data}, resized to {shape[0]}x{shape[1]}"
    scenes = scene_examples(count, *shape, pre)
    return list(scenes), scenes.source


def reference_outputs(bundle: Bundle, examples: Sequence[Example],
                      threads: int | None = None) -> tuple[list[dict] | None, str | None]:
    """Labels and Top-K masks of the PyTorch FP32 reference (exact Top-K) on the CPU, as
    ``fornet-deploy parity`` defines it (GPU convolutions may use TF32). Logits are not
    kept: at full resolution they would hold hundreds of MB per image."""
    try:
        with load_runner(bundle, *REFERENCE, "cpu", topk="exact", threads=threads) as reference:
            wanted = label_outputs(reference.output_names(), TOPK_MASK)
            return [reference(example.batch, outputs=wanted) for example in examples], None
    except FornetError as exc:
        return None, f"no agreement columns: the PyTorch FP32 reference could not run ({exc})"


def accuracy(runner: Runner, examples: Sequence[Example], reference: list[dict] | None, labels: LabelSet) -> dict:
    """mIoU (on labelled examples) and agreement with the reference, pooled over the
    images, from one inference per image."""
    result: dict = {"miou": None, "argmax_agreement": None, "mask_agreement": None}
    metrics = SegmentationMetrics.for_labels(labels)
    agreements = []
    wanted = label_outputs(runner.output_names(), TOPK_MASK)
    try:
        for i, ex in enumerate(examples):
            outputs = runner(ex.batch, outputs=wanted)
            hw = ex.image.shape[:2]
            if ex.labels is not None:
                metrics.update(predicted_labels(outputs, hw), ex.labels)
            if reference is not None:
                agreements.append(compare_outputs(ex.name, reference[i], outputs, hw))
    except FornetError as exc:  # e.g. a fixed-batch engine cannot take single images
        result["accuracy_note"] = str(exc)
        return result
    if metrics.num_images:
        result["miou"] = metrics.result()["miou"]
    if agreements:
        result.update(pooled(agreements))
    return result


def _skipped(fmt: Format, exc: Exception) -> dict:
    said = str(exc).strip().splitlines()
    reason = said[0] if said else type(exc).__name__
    if not isinstance(exc, FornetError):  # not a user error: keep the type for the bug report
        reason = f"{type(exc).__name__}: {reason}"
    return {"runtime": fmt.runtime, "precision": fmt.precision, "artifact": fmt.artifact, "note": fmt.note,
            "status": "skipped", "reason": reason}


def run_matrix(bundle_dir: str | Path, device: str = "cpu", data: Path | None = None, accuracy_images: int = 8,
               cfg: BenchConfig = BenchConfig(), progress: Progress | None = None,
               json_out: str | Path | None = None, env: BenchEnvironment = BenchEnvironment(),
               split: str = "val") -> dict:
    """Every (runtime, precision) the bundle can run on ``device``, measured in one process.

    Rows hold the compute and end-to-end latencies, the speed-up over PyTorch FP32 (ratio of
    mean compute latencies, both measured here; ``speedup_busy`` when either was measured
    while other processes took more than 10 % of the CPUs), mIoU on ``accuracy_images`` images of
    ``data``'s ``split`` and argmax / Top-K mask agreement with the PyTorch FP32 reference on the same
    images (synthetic scenes without ``data``). An artefact that cannot start here (no GPU
    provider, an engine for another GPU) becomes a skipped row with its reason.
    ``progress(done, total, note)`` is called per format.
    """
    cfg = replace(cfg, device=device)
    validate_config(cfg, env)
    check_limit(accuracy_images)
    bundle = Bundle.open(bundle_dir, verify=False)
    shape = bench_shape(bundle, cfg)
    request = trt_request(shape=(cfg.batch, 3, *shape)) if device != "cpu" else None
    formats = available_formats(bundle, device, request)
    if not formats:
        raise FornetError(f"bundle {bundle.root} has no artefact that runs on {device}")
    pre = bench_preprocessing(bundle, shape)
    frames, frames_source = load_frames(cfg.images, shape)
    examples, accuracy_source = accuracy_examples(data, accuracy_images, shape, pre, split)
    machine = describe_machine(env.jetson_root)
    reference, reference_note = reference_outputs(bundle, examples, cfg.threads)
    labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")

    rows = []
    for done, fmt in enumerate(formats, start=1):
        try:
            rows.append(bench_format(bundle, fmt, cfg, env, shape, pre, frames,
                                     also=lambda runner: accuracy(runner, examples, reference, labels)))
        except Exception as exc:  # one artefact that cannot run must not sink the matrix
            rows.append(_skipped(fmt, exc))
        if progress is not None:
            progress(done, len(formats), f"{fmt.runtime} {fmt.precision}")

    base = next((r for r in rows if (r["runtime"], r["precision"]) == REFERENCE and r["status"] == "ok"), None)
    for row in rows:
        if row["status"] == "ok":
            row["speedup_vs_torch_fp32"] = base["compute"]["mean_ms"] / row["compute"]["mean_ms"] if base else None
            # A ratio is a result only when neither timing shared the CPUs (tables print "busy machine").
            row["speedup_busy"] = bool(base) and bool(row["machine_load"]["busy"] or base["machine_load"]["busy"])

    result = {
        "created": now_iso(), "bundle": str(bundle.root), "device": device, "config": config_dict(cfg, shape),
        "frames": frames_source, "reference": " ".join(REFERENCE),
        "accuracy": {"images": len(examples), "source": accuracy_source,
                     "reference": "torch fp32, exact Top-K, on the CPU", "note": reference_note},
        "rows": rows, "machine": machine,
    }
    for row in rows:
        with_jetson_board(row, machine)
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result
