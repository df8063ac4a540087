"""A confident selector: exact and threshold Top-K select the same cells, in PyTorch and ONNX Runtime.

The shipped SynthCity model keeps its k-th importance far from 0 and 1. A selector trained
longer (its auxiliary loss pushes towards confident 0/1) does not: this script multiplies
the final selector conv's weight and bias by each ``--sharpen`` factor (default 40 and 100)
so that logits reach |30| and beyond and sigmoid(logit) saturates to exact 0.0 / 1.0 over
much of the map (at 100 the k-th importance itself is 0.0: ties at k in the importance map,
none in the logits).
Per image it records, at every size given:

* PyTorch: exact (stable sort) vs threshold (counting search) masks, cells selected vs k;
* ONNX Runtime (CPU): the exported threshold graph (dynamic shapes, one export for all
  sizes) vs the PyTorch exact mask;
* what the previous Top-K (32 value-space bisection steps on sigmoid(logit)) selects;
* the same for the unmodified model (``sharpen = 1``), whose masks must equal
  ``torch.topk`` on the importance map as before (no tie at k there).

    fornet-deploy synthcity --out /tmp/sc512 --train 0 --val 4 --shape 512x1024
    fornet-deploy synthcity --out /tmp/sc1024 --train 0 --val 4 --shape 1024x2048
    python benchmarks/topk_confident.py --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \
        --data /tmp/sc512 --data /tmp/sc1024 --json topk_confident.json

Without ``--data`` it generates 4 val images at 512x1024 and at 1024x2048 in a temporary
folder (seed 0, as the commands above). Exit status 1 if any mask differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from legacy_topk import legacy_bisection_mask

from fornet_deploy.contract import IMPORTANCE, SHIPPED_WEIGHTS, TOPK_MASK
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.synthcity import SynthCityConfig, generate
from fornet_deploy.data.transforms import Preprocessing, preprocess
from fornet_deploy.export.onnx import ExportConfig, export_onnx_model
from fornet_deploy.io import atomic_write_json, read_image
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.topk import selection_counts


def load(checkpoint: Path, sharpen: float):
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.focus.selector.score.weight.mul_(sharpen)
        model.focus.selector.score.bias.mul_(sharpen)
    return model.eval()


def run(checkpoint: Path, folders: list[Path], sharpen: float) -> dict:
    import onnxruntime as ort

    model = load(checkpoint, sharpen)
    h0, w0 = read_image(open_dataset(folders[0]).samples("val")[0].image).shape[:2]
    export = ExportConfig(height=h0, width=w0, topk="threshold", dynamic=True)  # one graph for every size
    proto = export_onnx_model(load(checkpoint, sharpen), export)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    rows = []
    for folder in folders:
        for sample in open_dataset(folder).samples("val"):
            x = torch.from_numpy(preprocess(read_image(sample.image), Preprocessing()))
            with torch.no_grad():
                exact = model.set_topk_mode("exact").forward_all(x)
                threshold = model.set_topk_mode("threshold").forward_all(x)
                scores = model.focus.selector(model.forward_features(x)[1])[0]
            k = model.topk.count(scores)
            k_int = int(k.flatten()[0])
            imp = exact[IMPORTANCE]
            ort_out = dict(zip(output_names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))
            ref = exact[TOPK_MASK].numpy()
            sorted_imp = torch.sort(imp.flatten(), descending=True).values
            old_exact = torch.zeros_like(imp.flatten()).scatter(0, torch.topk(imp.flatten(), k_int).indices, 1.0)
            rows.append({
                "image": sample.image.name,
                "size": list(x.shape[-2:]),
                "k": k_int,
                "logit_min": float(scores.min()),
                "logit_max": float(scores.max()),
                "kth_logit": float(torch.sort(scores.flatten(), descending=True).values[k_int - 1]),
                "importance_saturated_pct": 100.0 * float(((imp == 0) | (imp == 1)).float().mean()),
                "importance_tie_at_k": k_int < imp.numel() and bool(sorted_imp[k_int - 1] == sorted_imp[k_int]),
                "torch_exact_selected": selection_counts(exact[TOPK_MASK], k_int)[0].selected,
                "torch_threshold_selected": selection_counts(threshold[TOPK_MASK], k_int)[0].selected,
                "ort_threshold_selected": selection_counts(ort_out[TOPK_MASK], k_int)[0].selected,
                "torch_threshold_equals_exact": bool(torch.equal(exact[TOPK_MASK], threshold[TOPK_MASK])),
                "ort_threshold_equals_torch_exact": bool(np.array_equal(ort_out[TOPK_MASK], ref)),
                "equals_topk_on_importance": bool(torch.equal(exact[TOPK_MASK].flatten(), old_exact)),
                "legacy_bisection_selected": int(legacy_bisection_mask(imp, k).sum()),
            })
            print(json.dumps(rows[-1]))
    summary = {
        "images": len(rows),
        "sizes": sorted({tuple(r["size"]) for r in rows}),
        "all_torch_threshold_equal_exact": all(r["torch_threshold_equals_exact"] for r in rows),
        "all_ort_equal_torch_exact": all(r["ort_threshold_equals_torch_exact"] for r in rows),
        "max_extra_cells_new": max(
            max(r["torch_threshold_selected"], r["ort_threshold_selected"]) - r["k"] for r in rows
        ),
        "max_extra_pct_legacy": max(100.0 * (r["legacy_bisection_selected"] - r["k"]) / r["k"] for r in rows),
        "logit_abs_max": max(max(-r["logit_min"], r["logit_max"]) for r in rows),
    }
    return {"sharpen": sharpen, "summary": summary, "images": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS, help="default: the shipped weights")
    parser.add_argument("--data", type=Path, action="append", help="SynthCity/Cityscapes folder (val), repeatable")
    parser.add_argument("--sharpen", type=float, nargs="+", default=[40.0, 100.0],
                        help="selector logit scale(s); 100 puts the k-th importance at exact 0.0 (a tie)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.data
        if not folders:
            folders = []
            for h, w in [(512, 1024), (1024, 2048)]:
                folders.append(Path(tmp) / f"sc{h}")
                generate(folders[-1], SynthCityConfig(train=0, val=4, height=h, width=w, seed=0))
        report = {f"sharpen_{f:g}": run(args.checkpoint, folders, f) for f in args.sharpen}
        report["shipped"] = run(args.checkpoint, folders, 1.0)
    for name, part in report.items():
        print(name, json.dumps(part["summary"]))
    if args.json:
        atomic_write_json(args.json, report)
    summaries = [p["summary"] for p in report.values()]
    ok = all(s["all_torch_threshold_equal_exact"] and s["all_ort_equal_torch_exact"] for s in summaries)
    ok = ok and all(r["equals_topk_on_importance"] for r in report["shipped"]["images"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
