"""CPU speed of a bundle's graphs against PyTorch eager, in one process, on the same images.

    fornet-deploy synthcity --out runs/speed/sc0 --train 64 --val 50 --shape 512x1024 --seed 0
    fornet-deploy export --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \\
        --out runs/speed/bundle --shape 512x1024 --precision fp16
    fornet-deploy calibrate --bundle runs/speed/bundle --data runs/speed/sc0 --num-images 32 --target cpu
    fornet-deploy calibrate --bundle runs/speed/bundle --data runs/speed/sc0 --num-images 32 --target tensorrt
    python benchmarks/cpu_speed.py runs/speed/bundle runs/speed/sc0 --threads 2 --rounds 8 \\
        --json docs/results/speed/cpu_speed.json

What the issue's targets compare (batch 1, ``--threads`` intra-op threads everywhere,
PyTorch included), each variant loaded once and kept:

* ``torch``: PyTorch eager FP32, the reference (``fornet-deploy bench --runtime torch``);
* ``ort_fp32_full``: ``model.onnx``, the FP32 graph with the full-resolution tail;
* ``ort_fp32``: what ``bench --runtime ort --precision fp32`` runs on a CPU (``model.cpu.onnx``,
  the CPU tail);
* ``ort_int8``: ``model.int8.cpu.onnx`` (U8S8, ``calibrate --target cpu``, the CPU tail).

``--variant NAME=ARTEFACT[:key=value...]`` adds ONNX Runtime sessions with other settings
(what else keeps the CPU graphs from the hardware): ``threads``, ``spin`` (0/1:
``session.intra_op.allow_spinning``), ``opt`` (disable | basic | extended | all),
``disable`` (optimizers to switch off, joined by ``+``, e.g. ``NchwcTransformer``),
``inter`` (inter-op threads, parallel execution), ``tail`` (put that CPU tail on the
artefact first, e.g. ``model.int8.qdq.onnx:tail=refine``), ``outputs`` (``+``-joined output
names to keep, the others dropped from the graph).

After the timing, in the same process: the tail's share of each ONNX Runtime graph's kernel
time (``bench.profile``, ONNX Runtime's profiler, ``--profile-runs`` runs of the first
image) and the mIoU / boundary IoU of ``torch``, ``ort_fp32`` and ``ort_int8`` on the first
``--eval-images`` images of the val split (``evaluation.evaluate_runner``, what
``fornet-deploy eval`` runs). The closing table holds every target of issue 15 against its
number: met, NOT MET, or busy (no quiet round: measured on a busy machine, not a result).

Timing: rounds of ``--block`` timed calls per variant (benchmarks/rounds.py). Per variant:
median / p10 / p90 ms and CPU ms per call. Ratios (the issue's targets) are the per-round
ratios of block medians over the quiet rounds only (both blocks timed while other processes
took at most 10 % of the CPUs): their median and range, and how many rounds were quiet; with
no quiet round a ratio is ``busy``, not a result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from rounds import print_targets, quiet_ratio, speed_target, time_rounds, timing_parser, variant_row

from fornet_deploy.bench.load import LoadProbe, loadavg
from fornet_deploy.bench.profile import profile_runner
from fornet_deploy.bench.sysinfo import describe_machine
from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import ONNX_FP32, ONNX_INT8_CPU
from fornet_deploy.data.labels import manifest_label_set
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.evaluate import evaluate_runner
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.export.tail import cpu_graph
from fornet_deploy.io import atomic_write_json, now_iso
from fornet_deploy.runtimes.ort_runner import import_onnxruntime
from fornet_deploy.runtimes.registry import load_runner

# (name, numerator, denominator): speed-up = denominator's time / numerator's time.
RATIOS = (
    ("ort_fp32 vs torch (target >= 4x)", "ort_fp32", "torch"),
    ("ort_int8 vs ort_fp32 (target >= 1.8x)", "ort_int8", "ort_fp32"),
    ("ort_fp32_full vs torch", "ort_fp32_full", "torch"),
    ("ort_fp32 vs ort_fp32_full", "ort_fp32", "ort_fp32_full"),
    ("ort_int8 vs ort_fp32_full", "ort_int8", "ort_fp32_full"),
)
# The targets: speed-ups (ratio label -> minimum), mIoU drop and tail share maxima.
SPEEDUP_TARGETS = {RATIOS[0][0]: 4.0, RATIOS[1][0]: 1.8}
MIOU_DROP_MAX_PTS = 0.3
TAIL_SHARE_MAX = 0.10
ORT_GRAPHS = {"ort_fp32_full": ("fp32", ONNX_FP32), "ort_fp32": ("fp32", None), "ort_int8": ("int8", ONNX_INT8_CPU)}
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    name, rest = text.split("=", 1)
    artefact, *pairs = rest.split(":")
    return name, artefact, dict(pair.split("=", 1) for pair in pairs)


def ort_variant(bundle: Bundle, artefact: str, options: dict[str, str], threads: int, tmp: Path) -> Callable:
    """A raw ONNX Runtime session on one of the bundle's graphs, with the variant's settings."""
    ort = import_onnxruntime("cpu_speed")
    path = bundle.path(artefact)
    if "tail" in options or "outputs" in options:
        proto = onnx.load(str(path))
        if "tail" in options:
            proto = cpu_graph(proto, options["tail"])
        if "outputs" in options:
            keep = [o for o in proto.graph.output if o.name in options["outputs"].split("+")]
            del proto.graph.output[:]
            proto.graph.output.extend(keep)
        path = tmp / f"{len(list(tmp.iterdir()))}.onnx"
        onnx.save(proto, str(path))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = int(options.get("threads", threads))
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[options.get("opt", "all")])
    if "spin" in options:
        so.add_session_config_entry("session.intra_op.allow_spinning", options["spin"])
    if "inter" in options:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = int(options["inter"])
    disabled = {"disabled_optimizers": options["disable"].split("+")} if "disable" in options else {}
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **disabled)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def tail_shares(bundle: Bundle, graphs: list[str], threads: int, batch: np.ndarray, runs: int) -> dict:
    """The profiler's breakdown of each ONNX Runtime graph, with the tail's time and share."""
    shares = {}
    for name in graphs:
        precision, artefact = ORT_GRAPHS[name]
        with LoadProbe() as probe:
            profile = profile_runner(lambda folder: load_runner(bundle, "ort", precision, "cpu", artifact=artefact,
                                                                threads=threads, profile_dir=folder),
                                     batch, runs, warmup=3)
        tail = profile["by_scope"].get("tail", {"ms": 0.0, "share": 0.0})
        shares[name] = {"kernel_ms": profile["kernel_ms"], "tail_ms": tail["ms"], "tail_share": tail["share"],
                        "by_scope": profile["by_scope"], "machine_load": probe.result()}
        print(f"profile {name:14s} kernel {profile['kernel_ms']:7.2f} ms, tail {tail['ms']:6.2f} ms "
              f"({100 * tail['share']:.1f} %)", flush=True)
    return shares


def accuracies(runners: dict, examples, classes: int) -> dict:
    """mIoU and boundary IoU of each runner on the same labelled images."""
    result = {}
    for name, runner in runners.items():
        metrics = evaluate_runner(runner, examples, num_classes=classes)
        result[name] = {"miou": metrics["miou"], "boundary_iou": metrics["boundary_iou"],
                        "images": metrics["num_images"]}
        print(f"eval {name:14s} mIoU {100 * metrics['miou']:.2f}  boundary IoU {100 * metrics['boundary_iou']:.2f} "
              f"({metrics['num_images']} images)", flush=True)
    return result


def targets(report: dict) -> list[dict]:
    """Issue 15's targets against the measured numbers (``status``: met / NOT MET / busy / missing)."""
    rows = []
    for label, minimum in SPEEDUP_TARGETS.items():
        rows.append(speed_target(report["ratios"].get(label), label, minimum))
    acc = report.get("accuracy", {})
    if "ort_fp32" in acc and "ort_int8" in acc:
        drop = 100 * (acc["ort_fp32"]["miou"] - acc["ort_int8"]["miou"])
        rows.append({"target": f"ort_int8 mIoU drop vs ort_fp32 (points, target <= {MIOU_DROP_MAX_PTS})",
                     "value": drop, "status": "met" if drop <= MIOU_DROP_MAX_PTS else "NOT MET"})
    for name, row in report.get("tail", {}).items():
        if name == "ort_fp32_full":
            continue  # the reference tail, which the CPU graphs replace
        rows.append({"target": f"{name} tail share (target <= {100 * TAIL_SHARE_MAX:.0f} %)",
                     "value": row["tail_share"], "status": "met" if row["tail_share"] <= TAIL_SHARE_MAX else "NOT MET"})
    return rows


def main() -> None:
    parser = timing_parser(__doc__.splitlines()[0])
    parser.add_argument("--eval-images", type=int, default=50, help="val images for the mIoU (0: skip)")
    parser.add_argument("--profile-runs", type=int, default=10, help="profiled runs for the tail share (0: skip)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=ARTEFACT[:key=value...]")
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    batches = [ex.batch for ex in dataset_examples(args.data, "val", pre, args.num_images)]
    runners = {"torch": load_runner(bundle, "torch", "fp32", "cpu", threads=args.threads),
               "ort_fp32_full": load_runner(bundle, "ort", "fp32", "cpu", artifact=ONNX_FP32, threads=args.threads),
               "ort_fp32": load_runner(bundle, "ort", "fp32", "cpu", threads=args.threads)}
    if bundle.has(ONNX_INT8_CPU):
        runners["ort_int8"] = load_runner(bundle, "ort", "int8", "cpu", artifact=ONNX_INT8_CPU, threads=args.threads)
    artefacts = {name: runner.activate().info().artifact for name, runner in runners.items()}
    calls: dict[str, Callable] = dict(runners)
    report = {"created": now_iso(), "loadavg_start": loadavg(), "bundle": str(args.bundle), "images": len(batches),
              "shape": list(batches[0].shape), "threads": args.threads, "rounds": args.rounds, "block": args.block,
              "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.variant:
            name, artefact, options = parse_variant(text)
            calls[name] = ort_variant(bundle, artefact, options, args.threads, Path(tmp))
            artefacts[name] = f"{artefact} {options}"
        timed = time_rounds(calls, batches, args.rounds, args.block)
        if args.profile_runs:
            report["tail"] = tail_shares(bundle, [n for n in ORT_GRAPHS if n in runners], args.threads, batches[0],
                                         args.profile_runs)
        if args.eval_images:
            examples = dataset_examples(args.data, "val", pre, args.eval_images)
            classes = manifest_label_set(bundle.manifest).num_classes
            report["accuracy"] = accuracies({n: runners[n] for n in ("torch", "ort_fp32", "ort_int8") if n in runners},
                                            examples, classes)
    for runner in runners.values():
        runner.deactivate()

    report["variants"] = {name: variant_row(timed, name, artefacts[name]) for name in calls}
    report["ratios"] = {label: quiet_ratio(timed, label, fast, slow) for label, fast, slow in RATIOS
                        if fast in calls and slow in calls}
    report["machine_load"] = timed.machine_load
    report["loadavg_end"] = loadavg()
    report["machine"] = describe_machine()
    report["targets"] = targets(report)
    print_targets(report, "share", 1, 58)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
