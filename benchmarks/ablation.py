"""Ablation: FoR-Net vs the same network without selector/Top-K, a Top-K ratio sweep, and
adaptive K — same data, schedule and seeds for every variant, on any labelled dataset.

Each (variant, seed) is trained with `fornet_deploy.train.train` (a run folder that already
holds its last checkpoint is reused, an interrupted one resumed) and its *last* checkpoint is
evaluated in PyTorch on ``--val-split`` (mIoU, boundary IoU, thin-class IoU, Top-K coverage of
boundary pixels); the table gives the mean over seeds and the spread (min..max).

    python benchmarks/ablation.py --data runs/synthcity --out runs/ablation --iterations 400 \
        --json docs/results/ablation.json
    python benchmarks/ablation.py --data /data/CamVid --train-split train+val --val-split test \
        --shape 256x256 --iterations 1500 --seeds 0,1 --variants none,topk025,adaptive \
        --out runs/camvid-ablation --json docs/results/camvid/ablation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from fornet_deploy.data.formats import open_dataset
from fornet_deploy.io import atomic_write_json
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.fornet import FoRNetConfig
from fornet_deploy.train import LAST, STATE, TrainConfig, train, validate

# slug (run folder) -> (label, model config)
VARIANTS = {
    "none": ("no selector / Top-K", FoRNetConfig(focus="none")),
    "topk010": ("Top-K ratio 0.10", FoRNetConfig(topk_ratio=0.10)),
    "topk025": ("Top-K ratio 0.25 (default)", FoRNetConfig(topk_ratio=0.25)),
    "topk050": ("Top-K ratio 0.50", FoRNetConfig(topk_ratio=0.50)),
    "adaptive": ("adaptive K (tau 0.5, 5-50 %)", FoRNetConfig(focus="adaptive")),
}
METRICS = ("miou", "boundary_iou", "thin_iou", "topk_coverage_boundary")


def run_one(args, slug: str, seed: int) -> dict:
    name, model_cfg = VARIANTS[slug]
    run_dir = args.out / f"{slug}_seed{seed}"
    cfg = TrainConfig(data=str(args.data), out=str(run_dir), model=model_cfg, iterations=args.iterations,
                      batch_size=args.batch, crop_height=args.shape[0], crop_width=args.shape[1],
                      train_split=args.train_split, val_split=args.val_split, val_interval=args.iterations,
                      seed=seed, device=args.device, threads=args.threads)
    if not (run_dir / LAST).is_file() or (run_dir / STATE).is_file() and _unfinished(run_dir, args.iterations):
        train(cfg, resume=(run_dir / STATE).is_file())
    model, _ = load_checkpoint(run_dir / LAST)
    metrics = validate(model, open_dataset(args.data), args.val_split, torch.device("cpu"))
    row = {"variant": name, "slug": slug, "seed": seed, "iterations": args.iterations,
           "config": {"focus": model_cfg.focus, "topk_ratio": model_cfg.topk_ratio},
           **{k: metrics[k] for k in (*METRICS, "topk_coverage_errors", "iou_per_class", "thin_iou_per_class")}}
    print(json.dumps({k: row[k] for k in ("variant", "seed", *METRICS)}))
    return row


def _unfinished(run_dir: Path, iterations: int) -> bool:
    """A run folder whose log stops short of ``iterations`` (interrupted: resumed)."""
    log = run_dir / "log.jsonl"
    done = [json.loads(line).get("iteration", 0) for line in log.read_text().splitlines() if line.strip()] \
        if log.is_file() else []
    return max(done, default=0) < iterations


def summarize(rows: list[dict]) -> list[dict]:
    """Per variant: mean and min..max over seeds of each metric, and the thin classes' IoU means."""
    out = []
    for slug in dict.fromkeys(r["slug"] for r in rows):
        runs = [r for r in rows if r["slug"] == slug]
        entry = {"variant": runs[0]["variant"], "slug": slug, "seeds": [r["seed"] for r in runs]}
        for metric in METRICS:
            values = [r[metric] for r in runs if r[metric] is not None]
            entry[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)} if values \
                else None
        thin = runs[0]["thin_iou_per_class"]
        entry["thin_iou_per_class"] = {c: statistics.fmean(r["thin_iou_per_class"][c] for r in runs) for c in thin}
        out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    def cell(value: dict | None) -> str:
        if value is None:
            return "-"
        spread = f" ({100 * value['min']:.1f}..{100 * value['max']:.1f})" if value["max"] > value["min"] else ""
        return f"{100 * value['mean']:.1f}{spread}"

    thin = list(summary[0]["thin_iou_per_class"])
    lines = ["| variant | seeds | mIoU | boundary IoU | thin-class IoU | Top-K covers boundary px | "
             + " | ".join(f"{c} IoU" for c in thin) + " |", "|---" * (6 + len(thin)) + "|"]
    for s in summary:
        lines.append(f"| {s['variant']} | {','.join(map(str, s['seeds']))} | "
                     + " | ".join(cell(s[m]) for m in METRICS) + " | "
                     + " | ".join(f"{100 * s['thin_iou_per_class'][c]:.1f}" for c in thin) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shape", default="256x256", help="training crop HxW")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.shape = tuple(int(v) for v in args.shape.lower().split("x"))
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}")
    rows = [run_one(args, slug, int(seed)) for slug in variants for seed in args.seeds.split(",")]
    summary = summarize(rows)
    print(markdown(summary))
    if args.json:
        atomic_write_json(args.json, {"summary": summary, "rows": rows, "data": str(args.data),
                                      "settings": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
