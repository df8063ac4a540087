"""FP32 vs FP16 vs INT8 with ONNX Runtime (CPU): accuracy, agreement and latency.

    python benchmarks/precision_eval.py BUNDLE DATA [--methods entropy,minmax,percentile]
        [--num-images 64] [--seed 0] [--runs 50] [--warmup 5] [--json results.json]
        [--eval-split val] [--calib-data DIR]

Works on a copy of the bundle (the given one is not touched): writes ``model.fp16.onnx``
and, per calibration method, both INT8 targets (``tensorrt`` first: it measures the ranges,
``cpu`` reuses them from the bundle; ``calibration`` in the JSON has both times), then for
every variant on the ``--eval-split`` (default val; CamVid's protocol: test) of DATA,
calibrated on the train split of ``--calib-data`` (default DATA)

* segmentation metrics (mIoU, boundary IoU, thin IoU) and their drop vs FP32, in points;
* agreement with FP32 on the same preprocessed images: argmax (``labels``) and Top-K mask,
  through ``evaluation.agreement`` (the comparison ``parity`` makes) -- one inference per
  image feeds both, the FP32 outputs are computed once;
* CPU latency of FP32, FP16, INT8-cpu (U8S8) and INT8-tensorrt in one process, one
  session at a time: warm-up, then ``--runs`` timed runs; the median and its ratio to FP32
  are reported.

ONNX Runtime's CPU provider has few FP16 kernels: it runs the FP16 graph as FP32
arithmetic on tensors rounded to FP16 between ops (the same numbers at every graph
optimisation level), a close stand-in for GPU FP16 with FP32 accumulation, not a GPU
measurement; the same goes for its latency row, and for the INT8 TensorRT graph (INT8
convolutions in the FP16 graph), which it runs as dequantize + emulated FP16: its accuracy
is TensorRT's to within the kernels' rounding, its CPU latency means nothing for TensorRT.

Prints a Markdown table and the JSON (also written to ``--json``) to stdout, and checks the
targets: FP16 argmax and mask agreement >= 99.9 %, INT8 mIoU drop <= 1.0 point and boundary
IoU drop <= 1.5 points, INT8-cpu faster than FP32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.qdq import METHODS, calibrate_bundle
from fornet_deploy.contract import LABELS, ONNX_FP16, ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ, TOPK_MASK
from fornet_deploy.data.labels import LabelSet, manifest_label_set
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.agreement import compare_outputs, pooled
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.evaluation.metrics import SegmentationMetrics
from fornet_deploy.evaluation.postprocess import predicted_labels, upsampled_mask
from fornet_deploy.export.fp16 import FP32_OPS, convert_fp16
from fornet_deploy.runtimes.ort_runner import OrtRunner

FP16_AGREEMENT = 0.999
INT8_MIOU_DROP, INT8_BOUNDARY_DROP = 1.0, 1.5  # points


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path, help="labelled dataset, any layout (train for calibration, val for eval)")
    p.add_argument("--eval-split", default="val", help="split the variants are scored on")
    p.add_argument("--calib-data", type=Path, default=None, help="calibration images (default: DATA's train split)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--num-images", type=int, default=64, help="calibration images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--fp32-ops", default=",".join(sorted(FP32_OPS)), help="op types kept FP32 in the FP16 graph")
    p.add_argument("--val-images", type=int, default=None, help="images of --eval-split (default all)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def evaluate_variant(name: str, path: Path, examples: list, reference: list[dict], args, labels: LabelSet) -> dict:
    """Metrics and agreement with FP32 of one graph, from one inference per evaluated image."""
    metrics = SegmentationMetrics.for_labels(labels)
    agreements = []
    with OrtRunner(path, precision=name, threads=args.threads) as runner:
        for example, ref in zip(examples, reference):
            out = runner(example.batch, outputs=(LABELS, TOPK_MASK))
            hw = example.labels.shape
            metrics.update(predicted_labels(out, hw), example.labels, topk_mask=upsampled_mask(out, hw))
            agreements.append(compare_outputs(example.name, ref, out, hw))
    result = metrics.result()
    return {"variant": name, "artifact": path.name, "miou": result["miou"], "boundary_iou": result["boundary_iou"],
            "thin_iou": result["thin_iou"], "iou_per_class": result["iou_per_class"], **pooled(agreements)}


def latency(paths: dict[str, Path], batch: np.ndarray, runs: int, warmup: int, threads: int | None) -> dict:
    """Median latency of each artefact, one session at a time.

    Interleaving the sessions run by run slowed FP32 down by ~1.7x on a 2-core machine:
    after each run ONNX Runtime's worker threads spin-wait for a while and steal the cores
    of whichever session runs next.
    """
    medians = {}
    for name, path in paths.items():
        with OrtRunner(path, precision=name, threads=threads) as runner:
            for _ in range(warmup):
                runner(batch)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                runner(batch)
                times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times) * 1000
    return {name: {"median_ms": ms, "speedup_vs_fp32": medians["fp32"] / ms} for name, ms in medians.items()}


def examples_and_reference(work: Path, args) -> tuple[list, list[dict], LabelSet]:
    """The evaluated images (kept in memory) and the FP32 graph's outputs on them, computed once."""
    bundle = Bundle.open(work)
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    examples = list(dataset_examples(args.data, args.eval_split, pre, args.val_images))
    with OrtRunner(work / ONNX_FP32, threads=args.threads) as fp32:
        reference = [fp32(example.batch, outputs=(LABELS, TOPK_MASK)) for example in examples]
    return examples, reference, manifest_label_set(bundle.manifest)


def add_drops(rows: list[dict], base: dict) -> None:
    """Each row's drop vs ``base`` (FP32), in points."""
    for row in rows:
        for metric in ("miou", "boundary_iou", "thin_iou"):
            row[f"{metric}_drop_points"] = 100 * (base[metric] - row[metric])


def build_and_evaluate(work: Path, args) -> dict:
    fp32_ops = frozenset(op for op in args.fp32_ops.split(",") if op)
    fp16_entry = convert_fp16(work, fp32_ops)
    examples, reference, labels = examples_and_reference(work, args)
    calib_data = args.calib_data or args.data
    rows, calibration = [], {}
    rows.append(evaluate_variant("fp32", work / ONNX_FP32, examples, reference, args, labels))
    rows.append(evaluate_variant("fp16", work / ONNX_FP16, examples, reference, args, labels))
    for method in args.methods.split(","):
        for target, artifact in (("tensorrt", ONNX_INT8_QDQ), ("cpu", ONNX_INT8_CPU)):
            start = time.perf_counter()
            entry = calibrate_bundle(work, calib_data, args.num_images, method, target, args.seed,
                                     percentile=args.percentile)
            seconds = time.perf_counter() - start
            calibration[f"{method}/{target}"] = {"seconds": seconds, "key": entry["calibration"]["key"]}
            rows.append(evaluate_variant(f"int8-{target}-{method}", work / artifact, examples, reference, args,
                                         labels))
    add_drops(rows, rows[0])
    last = args.methods.split(",")[-1]  # the INT8 files on disk are the last method's
    timed = {"fp32": work / ONNX_FP32, "fp16": work / ONNX_FP16,
             f"int8-cpu-{last}": work / ONNX_INT8_CPU, f"int8-tensorrt-{last}": work / ONNX_INT8_QDQ}
    return {"rows": rows, "latency": latency(timed, examples[0].batch, args.runs, args.warmup, args.threads),
            "fp16": {k: fp16_entry[k] for k in ("fp32_nodes", "fp32_ops", "converter")}, "calibration": calibration,
            "input_shape": list(examples[0].batch.shape), "eval_images": len(examples)}


def check_targets(result: dict) -> dict[str, bool]:
    rows = {row["variant"]: row for row in result["rows"]}
    checks = {
        "fp16 argmax agreement >= 99.9 %": rows["fp16"]["argmax_agreement"] >= FP16_AGREEMENT,
        "fp16 mask agreement >= 99.9 %": rows["fp16"]["mask_agreement"] >= FP16_AGREEMENT,
    }
    for name, row in rows.items():
        if name.startswith("int8"):
            checks[f"{name} mIoU drop <= {INT8_MIOU_DROP}"] = row["miou_drop_points"] <= INT8_MIOU_DROP
            boundary_ok = row["boundary_iou_drop_points"] <= INT8_BOUNDARY_DROP
            checks[f"{name} boundary IoU drop <= {INT8_BOUNDARY_DROP}"] = boundary_ok
    for name, timing in result["latency"].items():
        if name.startswith("int8-cpu"):
            checks[f"{name} faster than fp32 on CPU"] = timing["speedup_vs_fp32"] > 1.0
    return checks


def markdown(result: dict) -> str:
    head = ("| variant | mIoU | Δ pts | boundary IoU | Δ pts | thin IoU | Δ pts | argmax agree % | mask agree % |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        metrics = [f"{100 * r[m]:.2f} | {r[f'{m}_drop_points']:+.2f}" for m in ("miou", "boundary_iou", "thin_iou")]
        agree = f"{100 * r['argmax_agreement']:.3f} | {100 * r['mask_agreement']:.3f}"
        lines.append(f"| {r['variant']} | {' | '.join(metrics)} | {agree} |")
    shape = "x".join(str(d) for d in result["input_shape"])
    lines += ["", f"| CPU latency ({shape}) | median ms | speed-up vs FP32 |", "|---|---|---|"]
    for name, timing in result["latency"].items():
        lines.append(f"| {name} | {timing['median_ms']:.2f} | {timing['speedup_vs_fp32']:.2f}x |")
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in result["targets"].items()]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="precision_eval.") as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, work)
        result = build_and_evaluate(work, args)
    result["targets"] = check_targets(result)
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(markdown(result))
    print()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
