"""``fornet-deploy calibrate`` of two source trees, interleaved: wall / CPU time and what the
calibration leaves in the bundle (docs/benchmarks.md section 9, issue 22).

    mkdir /tmp/before && git archive bd14bbb | tar -x -C /tmp/before   # the tree before (float32 image cache)
    python benchmarks/calibration_cache.py BUNDLE DATA --num-images 32 --rounds 4 \
        --before /tmp/before [--method percentile] [--json out.json]

Each round runs ``calibrate`` (default target tensorrt) once per tree, in a subprocess, on a
fresh copy of BUNDLE without calibration files or INT8 graphs, alternating which tree goes
first. Per run: wall time, CPU time of the process, how busy the rest of the machine was
(load average; ``others``: the share of all CPUs other processes used, from /proc/stat),
and every file of the copy's ``calibration/`` folder with its size. Then, with this tree,
the seconds to stream the calibration set once (select, key, decode + resize + normalise
every image): what a cache of images could save a re-collection at most.
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

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.calibset import bundle_calibration_set
from fornet_deploy.contract import CALIBRATION_DIR, ONNX_FP32

CLI = "from fornet_deploy.cli import main; main()"
HERE = Path(__file__).resolve().parents[1]


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def calibrate(tree: Path, bundle: Path, data: Path, args, work: Path) -> dict:
    copy = work / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns(CALIBRATION_DIR, "model.int8.*"))
    command = [sys.executable, "-c", CLI, "calibrate", "--bundle", str(copy), "--data", str(data),
               "--num-images", str(args.num_images), "--method", args.method]
    ticks, load_before = os.sysconf("SC_CLK_TCK"), os.getloadavg()
    busy0, total0 = cpu_jiffies()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = cpu_jiffies()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    others = max(0.0, ((busy1 - busy0) / ticks - cpu) / ((total1 - total0) / ticks))
    folder = copy / CALIBRATION_DIR
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    return {"tree": str(tree), "exit": proc.returncode, "error": proc.stderr.strip()[-300:] if proc.returncode else "",
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "others_share_of_cpus": round(others, 3),
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
            "calibration_files": files, "calibration_bytes": sum(files.values())}


def stream_seconds(bundle: Path, data: Path, num: int) -> dict:
    opened = Bundle.open(bundle)
    start = time.perf_counter()
    calib = bundle_calibration_set(opened, opened.artifacts[ONNX_FP32]["input_shape"], data, num=num)
    selected = time.perf_counter()
    calib.key(opened.sha256(ONNX_FP32))
    keyed = time.perf_counter()
    count = sum(1 for _ in calib)
    return {"images": count, "shape": list(calib.shape), "select_s": round(selected - start, 2),
            "key_s": round(keyed - selected, 2), "decode_resize_normalise_s": round(time.perf_counter() - keyed, 2),
            "load": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--before", type=Path, required=True, help="source tree to compare with (e.g. git archive of a commit)")
    p.add_argument("--num-images", type=int, default=32)
    p.add_argument("--method", default="entropy", choices=("entropy", "minmax", "percentile"))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    trees = {"before": args.before.resolve(), "after": HERE}
    runs = []
    with tempfile.TemporaryDirectory(prefix="calibration_cache.") as tmp:
        for round_ in range(args.rounds):
            for name in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                row = {"round": round_, "code": name, **calibrate(trees[name], args.bundle, args.data, args,
                                                                  Path(tmp) / name)}
                print(json.dumps(row), flush=True)
                runs.append(row)
    report = {"bundle": str(args.bundle), "data": str(args.data), "num_images": args.num_images,
              "method": args.method, "cpus": len(os.sched_getaffinity(0)), "runs": runs,
              "stream": stream_seconds(args.bundle, args.data, args.num_images)}
    print(json.dumps(report["stream"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
