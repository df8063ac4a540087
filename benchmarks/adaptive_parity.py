"""Adaptive-K parity at several resolutions: ONNX Runtime (threshold Top-K, dynamic shapes)
vs the PyTorch FP32 reference (exact Top-K) on SynthCity val images resized per resolution.

    fornet-deploy export --checkpoint runs/ablation/adaptive/last.safetensors --out runs/bundle_adaptive \\
        --shape 256x512 --dynamic
    python benchmarks/adaptive_parity.py runs/bundle_adaptive runs/synthcity --shape 256x512 --shape 384x768 \\
        --json docs/results/adaptive_parity.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import parse_hw
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.evaluation.parity import THRESHOLDS, run_parity
from fornet_deploy.io import atomic_write_json
from fornet_deploy.runtimes.registry import load_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--shape", action="append", required=True, help="HxW, repeatable")
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    base = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    rows = []
    for shape in args.shape:
        h, w = parse_hw(shape, "--shape")
        pre = replace(base, resize="fixed", height=h, width=w)
        with load_runner(bundle, "torch", "fp32", topk="exact") as ref, load_runner(bundle, "ort", "fp32") as ort:
            report = run_parity(ref, ort, dataset_examples(args.data, "val", pre, args.num_images), THRESHOLDS["fp32"])
        counts = [i["mask_count_reference"] for i in report["images"]]
        cells = (h // 8) * (w // 8)
        row = {"shape": [h, w], **report["summary"],
               "selected_fraction_min": min(counts) / cells, "selected_fraction_max": max(counts) / cells}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("shape", "images", "max_abs_logit", "argmax_agreement", "mask_agreement",
                                              "mask_identical_images", "selected_fraction_min", "selected_fraction_max", "passed")}))
    if args.json:
        atomic_write_json(args.json, {"bundle": str(args.bundle), "topk": bundle.manifest["topk"], "rows": rows})


if __name__ == "__main__":
    main()
