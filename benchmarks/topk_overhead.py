"""PyTorch eager vs ONNX Runtime, and threshold vs exact Top-K inside the ONNX Runtime graph.

All runners see the same preprocessed batch in one process. Timing alternates between
the variants in short blocks (A x5, B x5, C x5, A x5, ...) so that machine noise hits every
variant alike, while no session's idle thread pool competes with the one being timed
(call-by-call interleaving of ONNX Runtime sessions slows them on 2 cores). The report
gives medians and ratios, never absolute targets.

    python benchmarks/topk_overhead.py --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \
        --shape 512x1024 --iters 40 --json docs/results/topk_overhead.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fornet_deploy.bench.sysinfo import describe_machine
from fornet_deploy.bench.timing import latency_stats, time_iterations
from fornet_deploy.contract import parse_hw
from fornet_deploy.export.onnx import ExportConfig, export_bundle
from fornet_deploy.io import atomic_write_json
from fornet_deploy.runtimes.ort_runner import OrtRunner
from fornet_deploy.runtimes.torch_runner import TorchRunner


def alternating_medians(runners: dict, batch: np.ndarray, warmup: int, iters: int, block: int = 5) -> dict[str, float]:
    times = {name: [] for name in runners}
    for _ in range(max(1, iters // block)):
        for name, runner in runners.items():
            timed = time_iterations(lambda i: runner(batch), block, warmup)
            times[name] += timed.seconds
    return {name: latency_stats(t)["p50_ms"] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shape", action="append", help="HxW, repeatable (default 256x512 and 512x1024)")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each block")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results = []
    for shape in args.shape or ["256x512", "512x1024"]:
        h, w = parse_hw(shape, "--shape")
        batch = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for mode in ("threshold", "exact"):
                export_bundle(args.checkpoint, Path(tmp) / mode, ExportConfig(height=h, width=w, topk=mode))
                paths[mode] = Path(tmp) / mode / "model.onnx"
            runners = {
                "torch_exact": TorchRunner(args.checkpoint, topk="exact"),
                "ort_threshold": OrtRunner(paths["threshold"]),
                "ort_exact": OrtRunner(paths["exact"]),
            }
            for r in runners.values():
                r.activate()
            ms = alternating_medians(runners, batch, args.warmup, args.iters)
            for r in runners.values():
                r.deactivate()
        row = {
            "shape": [h, w],
            "median_ms": ms,
            "ort_vs_torch_speedup": ms["torch_exact"] / ms["ort_threshold"],
            "threshold_over_exact": ms["ort_threshold"] / ms["ort_exact"],
            "threshold_overhead_pct": (ms["ort_threshold"] / ms["ort_exact"] - 1) * 100,
        }
        results.append(row)
        print(json.dumps(row))
    report = {"machine": describe_machine(), "iters": args.iters, "warmup": args.warmup, "results": results}
    print("| shape | torch eager (exact) ms | ORT threshold ms | ORT exact ms | ORT vs torch speed-up | threshold / exact |")
    print("|---|---|---|---|---|---|")
    for r in results:
        m = r["median_ms"]
        print(f"| {r['shape'][0]}x{r['shape'][1]} | {m['torch_exact']:.1f} | {m['ort_threshold']:.1f} | {m['ort_exact']:.1f} "
              f"| {r['ort_vs_torch_speedup']:.2f}x | {r['threshold_over_exact']:.3f} ({r['threshold_overhead_pct']:+.1f} %) |")
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
