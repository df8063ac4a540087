"""Ablation on SynthCity: FoR-Net vs the same network without selector/Top-K, a Top-K ratio
sweep, and adaptive K — same data, budget, seed and schedule for every variant.

Each variant is trained with `fornet_deploy.train.train` and evaluated in PyTorch on the
val split (mIoU, boundary IoU, thin-structure IoU, Top-K coverage of boundary pixels).

    python benchmarks/ablation.py --data runs/synthcity --out runs/ablation --iterations 400 \
        --json docs/results/ablation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fornet_deploy.io import atomic_write_json
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.fornet import FoRNetConfig
from fornet_deploy.train import LAST, TrainConfig, train, validate

# slug (run folder) -> (label, model config)
VARIANTS = {
    "none": ("no selector / Top-K", FoRNetConfig(focus="none")),
    "topk010": ("Top-K ratio 0.10", FoRNetConfig(topk_ratio=0.10)),
    "topk025": ("Top-K ratio 0.25 (default)", FoRNetConfig(topk_ratio=0.25)),
    "topk050": ("Top-K ratio 0.50", FoRNetConfig(topk_ratio=0.50)),
    "adaptive": ("adaptive K (tau 0.5, 5-50 %)", FoRNetConfig(focus="adaptive")),
}


def run(data: Path, out: Path, iterations: int, seed: int, names: list[str]) -> list[dict]:
    rows = []
    for slug in names:
        name, model_cfg = VARIANTS[slug]
        run_dir = out / slug
        cfg = TrainConfig(data=str(data), out=str(run_dir), model=model_cfg, iterations=iterations,
                          val_interval=iterations, seed=seed, device="cpu")
        if not (run_dir / LAST).is_file():
            train(cfg)
        model, _ = load_checkpoint(run_dir / LAST)
        metrics = validate(model, str(data), torch.device("cpu"))
        row = {"variant": name, "slug": slug, "config": {"focus": model_cfg.focus, "topk_ratio": model_cfg.topk_ratio},
               "iterations": iterations, "seed": seed, **{k: metrics[k] for k in (
                   "miou", "boundary_iou", "thin_iou", "topk_coverage_boundary", "topk_coverage_errors", "iou_per_class")}}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "miou", "boundary_iou", "thin_iou", "topk_coverage_boundary")}))
    return rows


def markdown(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| variant | mIoU | boundary IoU | thin-structure IoU | Top-K covers boundary px | pole IoU | traffic light IoU | traffic sign IoU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["iou_per_class"]
        lines.append(f"| {r['variant']} | {pct(r['miou'])} | {pct(r['boundary_iou'])} | {pct(r['thin_iou'])} | "
                     f"{pct(r['topk_coverage_boundary'])} | {pct(c['pole'])} | {pct(c['traffic light'])} | {pct(c['traffic sign'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = run(args.data, args.out, args.iterations, args.seed, args.variants)
    print(markdown(rows))
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "data": str(args.data)})


if __name__ == "__main__":
    main()
