"""Calibration-set study: which images to calibrate INT8 on, and how many.

    python benchmarks/calibration_study.py BUNDLE DATA --source camvid=/data/CamVid \
        --source synthcity=runs/sc360 --num-images 8,32,128 [--method entropy] \
        [--eval-split test] [--json study.json]

For every source x image count, both INT8 targets (the TensorRT Q/DQ graph, the CPU U8S8
graph) are calibrated on a copy of BUNDLE (the given one is not touched) from the source (a
dataset's train split, class-balanced then seeded-random as ``calibrate`` selects, or a folder
of images) and scored on DATA's ``--eval-split`` against the FP32 graph on the same images:
mIoU, boundary IoU, thin-class IoU and their drops in points, argmax and Top-K mask agreement.
Prints a Markdown table, writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from precision_eval import add_drops, evaluate_variant, examples_and_reference

from fornet_deploy.calibration.qdq import METHODS, calibrate_bundle
from fornet_deploy.contract import ONNX_FP16, ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ
from fornet_deploy.export.fp16 import convert_fp16
from fornet_deploy.io import atomic_write_json

TARGETS = (("tensorrt", ONNX_INT8_QDQ), ("cpu", ONNX_INT8_CPU))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path, help="labelled dataset the graphs are scored on")
    p.add_argument("--source", action="append", required=True, metavar="NAME=DIR",
                   help="calibration images: a dataset (its train split) or an image folder; repeatable")
    p.add_argument("--num-images", default="8,32,128", help="comma-separated calibration set sizes")
    p.add_argument("--method", default="entropy", choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-split", default="val")
    p.add_argument("--val-images", type=int, default=None, help="images of --eval-split (default all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.sources = dict(item.split("=", 1) for item in args.source)
    args.counts = [int(n) for n in args.num_images.split(",")]
    return args


def study(work: Path, args) -> dict:
    convert_fp16(work)  # calibrate --target tensorrt calibrates the mixed-FP16 graph
    examples, reference, labels = examples_and_reference(work, args)
    fp32 = evaluate_variant("fp32", work / ONNX_FP32, examples, reference, args, labels)
    rows = []
    for source, folder in args.sources.items():
        for count in args.counts:
            for target, artifact in TARGETS:
                start = time.perf_counter()
                entry = calibrate_bundle(work, folder, count, args.method, target, args.seed)
                seconds = time.perf_counter() - start
                row = evaluate_variant(f"int8-{target}", work / artifact, examples, reference, args, labels)
                row.update(source=source, num_images=entry["calibration"]["num_images"], target=target,
                           calibration_seconds=seconds)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("source", "num_images", "target", "miou", "argmax_agreement")}))
    add_drops([fp32, *rows], fp32)
    return {"fp32": fp32, "rows": rows, "method": args.method, "eval_images": len(examples),
            "eval_split": args.eval_split, "fp16_graph": (work / ONNX_FP16).is_file()}


def markdown(result: dict) -> str:
    f = result["fp32"]
    lines = [f"FP32: mIoU {100 * f['miou']:.2f}, boundary IoU {100 * f['boundary_iou']:.2f}, "
             f"thin IoU {100 * f['thin_iou']:.2f} ({result['eval_images']} {result['eval_split']} images; "
             f"INT8 method {result['method']})", "",
             "| calibration images | n | target | mIoU | Δ pts | boundary IoU Δ pts | thin IoU Δ pts "
             "| argmax agree % | mask agree % |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['source']} | {r['num_images']} | {r['target']} | {100 * r['miou']:.2f} "
                     f"| {r['miou_drop_points']:+.2f} | {r['boundary_iou_drop_points']:+.2f} "
                     f"| {r['thin_iou_drop_points']:+.2f} | {100 * r['argmax_agreement']:.3f} "
                     f"| {100 * r['mask_agreement']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="calibration_study.") as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, work)
        result = study(work, args)
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(markdown(result))
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
