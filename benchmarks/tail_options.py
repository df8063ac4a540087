"""The CPU tails (``export --tail``) on real images: labels against the full-resolution tail,
mIoU / boundary IoU, and what each costs in the graph's time.

    fornet-deploy export --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \\
        --out runs/speed/full --shape 512x1024 --tail full
    fornet-deploy calibrate --bundle runs/speed/full --data runs/speed/sc0 --num-images 32 --target cpu
    python benchmarks/tail_options.py runs/speed/full runs/speed/sc0 --num-images 50 \\
        --json docs/results/speed/tail_options.json

The bundle is exported with ``--tail full``, so its ``model.onnx`` (FP32) and its U8S8
``model.int8.cpu.onnx`` both carry the export's Resize + ArgMax tail; every tail of
``contract.TAILS`` is then put on each with ``export.tail.cpu_graph`` (what ``export`` and
``calibrate --target cpu`` do by default) and

* run on the first ``--num-images`` val images, preprocessed as ``fornet-deploy eval`` does:
  pixel agreement of ``labels`` with the same graph's ``full`` tail (pooled and the worst
  image, and the differing pixels), and mIoU / boundary IoU / thin-structure IoU with their
  change against ``full`` in points;
* profiled on the first image (``bench.profile``, ONNX Runtime CPU, ``--threads`` intra-op
  threads, ``--runs`` profiled runs): kernel time per run and the tail's time and share;
* timed (``session.run`` medians, the graphs alternating in blocks) with the machine load
  over each block (``bench.load.LoadProbe``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from fornet_deploy.bench.load import LoadProbe, load_summary
from fornet_deploy.bench.profile import profile_runner
from fornet_deploy.bench.sysinfo import describe_machine
from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import LABELS, ONNX_FP32, ONNX_INT8_CPU, TAILS
from fornet_deploy.data.labels import manifest_label_set
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.evaluation.metrics import SegmentationMetrics
from fornet_deploy.export.tail import cpu_graph, has_full_tail
from fornet_deploy.io import atomic_write_json, now_iso
from fornet_deploy.runtimes.ort_runner import OrtRunner


def accuracy(path: Path, examples, classes: int, reference: list[np.ndarray] | None) -> tuple[dict, list[np.ndarray]]:
    metrics = SegmentationMetrics(num_classes=classes)
    labels, same, pixels = [], [], 0
    with OrtRunner(path, threads=2) as runner:
        for i, ex in enumerate(examples):
            got = runner(ex.batch, outputs=(LABELS,))[LABELS][0]
            labels.append(got)
            metrics.update(got, ex.labels)
            if reference is not None:
                same.append(float(np.mean(got == reference[i])))
                pixels += int(np.count_nonzero(got != reference[i]))
    m = metrics.result()
    row = {"miou": m["miou"], "boundary_iou": m["boundary_iou"], "thin_iou": m["thin_iou"]}
    if reference is not None:
        row |= {"agreement": float(np.mean(same)), "worst_image_agreement": min(same), "pixels_differing": pixels}
    return row, labels


def timed(paths: dict[str, Path], batch: np.ndarray, threads: int, rounds: int, block: int) -> dict[str, dict]:
    """Median ``session.run`` time of every graph, alternating in blocks: over the blocks timed
    while other processes took at most 10 % of the CPUs (``quiet_blocks``), else over all."""
    runners = {name: OrtRunner(path, threads=threads).activate() for name, path in paths.items()}
    times: dict[str, list[list[float]]] = {name: [] for name in paths}
    loads: dict[str, list[dict]] = {name: [] for name in paths}
    try:
        for _ in range(rounds):
            for name, runner in runners.items():
                runner(batch)  # untimed: the block starts warm
                block_times = []
                with LoadProbe() as probe:
                    for _ in range(block):
                        start = time.perf_counter()
                        runner(batch)
                        block_times.append(time.perf_counter() - start)
                times[name].append(block_times)
                loads[name].append(probe.result())
    finally:
        for runner in runners.values():
            runner.deactivate()
    result = {}
    for name in paths:
        quiet = [t for t, load in zip(times[name], loads[name]) if not load["busy"]]
        chosen = [t for block_times in (quiet or times[name]) for t in block_times]
        result[name] = {"median_ms": 1e3 * statistics.median(chosen), "quiet_blocks": len(quiet),
                        "blocks": len(times[name]), "machine_load": load_summary(loads[name])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle exported with --tail full (and calibrated --target cpu)")
    parser.add_argument("data", type=Path)
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per graph")
    parser.add_argument("--rounds", type=int, default=6, help="timing rounds (each graph once per round)")
    parser.add_argument("--block", type=int, default=5, help="timed runs per graph and round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    classes = manifest_label_set(bundle.manifest).num_classes
    examples = list(dataset_examples(args.data, "val", pre, args.num_images))
    report = {"created": now_iso(), "bundle": str(args.bundle), "data": str(args.data), "images": len(examples),
              "shape": list(examples[0].batch.shape), "threads": args.threads, "graphs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for graph in (ONNX_FP32, ONNX_INT8_CPU):
            if not bundle.has(graph):
                print(f"{graph}: not in the bundle, skipped")
                continue
            source = onnx.load(str(bundle.path(graph)))
            if not has_full_tail(source):
                sys.exit(f"{graph} has no full tail: export the bundle with --tail full")
            paths = {}
            for tail in TAILS:
                paths[tail] = Path(tmp) / f"{Path(graph).stem}.{tail}.onnx"
                onnx.save(cpu_graph(source, tail), str(paths[tail]))
            rows, reference, base = {}, None, None
            for tail in ("full", *(t for t in TAILS if t != "full")):
                row, labels = accuracy(paths[tail], examples, classes, reference)
                if tail == "full":
                    reference, base = labels, row
                row |= {f"d_{k}_pts": 100 * (row[k] - base[k]) for k in ("miou", "boundary_iou", "thin_iou")}
                with LoadProbe() as probe:
                    profile = profile_runner(lambda folder, p=paths[tail]: OrtRunner(p, threads=args.threads,
                                                                                     profile_dir=folder),
                                             examples[0].batch, args.runs, warmup=3)
                profile["machine_load"] = probe.result()
                tail_time = profile["by_scope"].get("tail", {"ms": 0.0, "share": 0.0})
                row |= {"kernel_ms": profile["kernel_ms"], "tail_ms": tail_time["ms"], "tail_share": tail_time["share"],
                        "tail_by_op": {n["op"]: n["ms"] for n in profile["top_nodes"] if n["scope"] == "tail"},
                        "profile": profile}
                rows[tail] = row
            for tail, speed in timed(paths, examples[0].batch, args.threads, args.rounds, args.block).items():
                rows[tail]["time"] = speed
            report["graphs"][graph] = rows
            for tail, row in rows.items():
                agree = (f"agreement {100 * row['agreement']:.4f} % "
                         f"(worst {100 * row['worst_image_agreement']:.4f} %, {row['pixels_differing']} px)"
                         if "agreement" in row else "reference")
                print(f"{graph:22s} {tail:8s} {agree}; mIoU {100 * row['miou']:.2f} ({row['d_miou_pts']:+.3f}) "
                      f"boundary {100 * row['boundary_iou']:.2f} ({row['d_boundary_iou_pts']:+.3f}); "
                      f"tail {row['tail_ms']:.2f} of {row['kernel_ms']:.1f} ms ({100 * row['tail_share']:.1f} %); "
                      f"run {row['time']['median_ms']:.1f} ms ({row['time']['quiet_blocks']} quiet blocks)",
                      flush=True)
    report["machine"] = describe_machine()
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
