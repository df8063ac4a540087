"""``fornet-deploy calibrate``: wall and CPU time, ranges against ONNX Runtime's own, INT8 accuracy.

    python benchmarks/calibration_time.py BUNDLE DATA [DATA ...] [--num-images 32] [--method entropy]
        [--reference] [--val-images 50] [--old-path-timeout 0] [--json out.json]

Per dataset (e.g. SynthCity generated with seeds 0, 1, 5 at the bundle's size), on a fresh
copy of BUNDLE (no cached images or ranges):

``calibrate``      the command as a user runs it (``fornet-deploy calibrate --num-images N
                   --method M``, default target tensorrt), in a subprocess: wall time, CPU
                   time of the process, and how busy the rest of the machine was meanwhile
                   (load average before / after; ``others``: the share of all CPUs that other
                   processes used, from /proc/stat, the measure that does not count our own
                   threads); then ``--target cpu``, which reuses the cached ranges.
``--reference``    ONNX Runtime's own calibrator on the same images (decoded again), as ``quantize_static``
                   drove it before (``collect.onnxruntime_ranges``: threshold search restricted
                   to the tensors the quantizers read, the rest takes days); per tensor
                   ``max(|d low|, |d high|) / (high - low)`` of the bundle's cached ranges against
                   it, and whether the CPU graph quantized from its ranges (the graph the old
                   ``calibrate --target cpu`` wrote where it finished) is byte-identical to ours.
``--val-images``   mIoU / boundary IoU / thin IoU on the val split (ONNX Runtime CPU, the loop
                   of ``fornet-deploy eval``): FP32, our TensorRT and CPU INT8 graphs, and the
                   reference CPU graph.
``--old-path-timeout S``  also runs the old ``calibrate --target cpu`` (``quantize_static`` with
                   ONNX Runtime's calibrator, chunked as before) in a subprocess for at most S
                   seconds: its time, or that it was stopped.

Prints one JSON object per dataset and writes all of them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.calibset import bundle_calibration_set
from fornet_deploy.calibration.collect import onnxruntime_ranges, with_aliases
from fornet_deploy.calibration.qdq import QUANTIZED_OPS, excluded_nodes, needed_tensors, quantize_cpu
from fornet_deploy.contract import CALIBRATION_DIR, CALIBRATION_PERCENTILE, ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.evaluate import evaluate_runner
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.runtimes.ort_runner import OrtRunner

CLI = "from fornet_deploy.cli import main; main()"
OLD_PATH = r'''
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from fornet_deploy.calibration.collect import chunk_size
from fornet_deploy.calibration.qdq import QUANTIZED_OPS, excluded_nodes
import onnx
source, images, method, output = sys.argv[1], np.load(sys.argv[2], mmap_mode="r"), sys.argv[3], sys.argv[4]
class Reader(CalibrationDataReader):  # calibration/qdq.py before this change: one image per run, ORT's chunking hook
    def __init__(self): self.set_range(0, len(images))
    def set_range(self, start_index, end_index): self.it = iter(range(start_index, end_index))
    def __len__(self): return len(images)
    def get_next(self):
        i = next(self.it, None)
        return None if i is None else {"image": np.array(images[i:i + 1])}
n, _, h, w = images.shape
quantize_static(source, output, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
    per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    nodes_to_exclude=excluded_nodes(onnx.load(source)),
    calibrate_method={"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                      "percentile": CalibrationMethod.Percentile}[method],
    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "AddQDQPairToWeight": False,
                   "QuantizeBias": True, "CalibStridedMinMax": chunk_size(n, h, w),
                   "CalibPercentile": float(sys.argv[5]), "CalibTensorRangeSymmetric": False})
'''


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def timed(args: list[str], timeout: float | None = None) -> dict:
    """Run a command; wall time, its CPU time and the other processes' share of the CPUs."""
    ticks = os.sysconf("SC_CLK_TCK")
    load_before = os.getloadavg()
    busy0, total0 = cpu_jiffies()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, f"stopped after {timeout} s"
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = cpu_jiffies()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    others = max(0.0, ((busy1 - busy0) / ticks - cpu) / ((total1 - total0) / ticks)) if total1 > total0 else None
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "exit": code,
            "error": stderr.strip()[-300:] if code else "",
            "others_share_of_cpus": None if others is None else round(others, 3),
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()]}


def compare_ranges(reference: dict, ours: dict) -> dict:
    changes = sorted(((max(abs(a[0] - b[0]), abs(a[1] - b[1])) / ((a[1] - a[0]) or 1.0), name)
                      for name, a in reference.items() for b in [ours[name]]), reverse=True)
    return {"tensors": len(changes), "identical": sum(c == 0 for c, _ in changes),
            "max_rel_change": changes[0][0], "worst_tensor": changes[0][1],
            "median_rel_change": float(np.median([c for c, _ in changes]))}


def accuracy(graphs: dict[str, Path], data: Path, pre: Preprocessing, limit: int, classes: int) -> dict:
    examples = list(dataset_examples(data, "val", pre, limit))
    out = {}
    for name, path in graphs.items():
        with OrtRunner(path, precision=name) as runner:
            metrics = evaluate_runner(runner, examples, num_classes=classes)
        out[name] = {k: round(100 * metrics[k], 3) for k in ("miou", "boundary_iou", "thin_iou")}
    return out


def run_one(bundle: Path, data: Path, args, work: Path) -> dict:
    copy = work / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns(CALIBRATION_DIR, "model.int8.*"))
    command = [sys.executable, "-c", CLI, "calibrate", "--bundle", str(copy), "--data", str(data),
               "--num-images", str(args.num_images), "--method", args.method, "--percentile", str(args.percentile)]
    row: dict = {"data": str(data), "num_images": args.num_images, "method": args.method}
    row["calibrate"] = timed(command)
    row["calibrate --target cpu (cached ranges)"] = timed(command + ["--target", "cpu"])
    opened = Bundle.open(copy)
    entry = opened.artifacts[ONNX_INT8_QDQ]
    row["shape"] = entry["calibration"]["ranges"].get("images"), opened.manifest["export"]
    row["collection"] = {k: v for k, v in entry["calibration"]["ranges"].items() if k not in ("coarsened",)}
    key = entry["calibration"]["key"]
    cache = copy / CALIBRATION_DIR
    row["calibration_folder_bytes"] = sum(p.stat().st_size for p in cache.iterdir())
    # the images calibrate measured, streamed again (the bundle keeps none)
    images = bundle_calibration_set(opened, opened.artifacts[ONNX_FP32]["input_shape"], data, num=args.num_images)
    assert images.key(opened.sha256(ONNX_FP32)) == key
    suffix = f"{args.method}-{args.percentile!r}" if args.method == "percentile" else args.method
    ours = {k: tuple(v) for k, v in json.loads((cache / f"calib_{key[:16]}.{suffix}.ranges.json").read_text())[
        "ranges"].items()}
    source = copy / ONNX_FP32
    proto = onnx.load(str(source))
    graphs = {"fp32": source, "int8-tensorrt": copy / ONNX_INT8_QDQ, "int8-cpu": copy / ONNX_INT8_CPU}
    if args.reference:
        measured, aliases = needed_tensors(proto)
        start = time.perf_counter()
        reference = onnxruntime_ranges(source, images, QUANTIZED_OPS, measured, args.method, args.percentile)
        row["reference"] = {"seconds": round(time.perf_counter() - start, 1), **compare_ranges(reference, ours)}
        (work / "ref").mkdir(exist_ok=True)
        shutil.copyfile(source, work / "ref" / ONNX_FP32)
        reference_graph = work / "ref" / "int8.cpu.onnx"
        quantize_cpu(work / "ref" / ONNX_FP32, reference_graph, with_aliases(reference, aliases), args.method,
                     excluded_nodes(proto))
        ours_graph = onnx.load(str(copy / ONNX_INT8_CPU))
        del ours_graph.metadata_props[:]
        row["reference"]["cpu_graph_identical"] = ours_graph.graph == onnx.load(str(reference_graph)).graph
        graphs["int8-cpu (ONNX Runtime's ranges)"] = reference_graph
    if args.old_path_timeout:
        stored = np.lib.format.open_memmap(work / "images.npy", mode="w+", dtype=np.float32, shape=images.shape)
        for index, image in enumerate(images):
            stored[index] = image
        stored.flush()
        del stored
        row["old calibrate --target cpu"] = timed(
            [sys.executable, "-c", OLD_PATH, str(source), str(work / "images.npy"), args.method,
             str(work / "old.onnx"), str(args.percentile)], timeout=args.old_path_timeout)
    if args.val_images:
        pre = Preprocessing.from_dict(opened.manifest["preprocessing"])
        row["accuracy"] = accuracy(graphs, data, pre, args.val_images, len(opened.manifest["classes"]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--num-images", type=int, default=32)
    p.add_argument("--method", default="entropy", choices=("entropy", "minmax", "percentile"))
    p.add_argument("--percentile", type=float, default=CALIBRATION_PERCENTILE)
    p.add_argument("--reference", action="store_true", help="compare with ONNX Runtime's own calibrator")
    p.add_argument("--val-images", type=int, default=0, help="val images for accuracy (0: skip)")
    p.add_argument("--old-path-timeout", type=float, default=0, help="also run the old calibration, at most S s")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibration_time.") as tmp:
        for data in args.data:
            row = run_one(args.bundle, data, args, Path(tmp))
            print(json.dumps(row, indent=1, default=str), flush=True)
            rows.append(row)
    report = {"bundle": str(args.bundle), "cpus": len(os.sched_getaffinity(0)), "runs": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
