"""OpenVINO against ONNX Runtime FP32 on a CPU, in one process, on the same images (issue 23).

    fornet-deploy synthcity --out runs/ov/sc0 --train 64 --val 50 --shape 512x1024 --seed 0
    fornet-deploy export --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \\
        --out runs/ov/bundle --shape 512x1024 --precision fp16
    fornet-deploy calibrate --bundle runs/ov/bundle --data runs/ov/sc0 --num-images 32 --target cpu
    python benchmarks/openvino_speed.py runs/ov/bundle runs/ov/sc0 --threads 2 --rounds 8 \\
        --json docs/results/openvino/openvino_speed_run1.json

Variants (batch 1, ``--threads`` threads each, loaded once and kept), all through the
toolkit's runners except the ``raw_*`` ones:

* ``ort_fp32``: ONNX Runtime on ``model.cpu.onnx``, the reference of every ratio;
* ``ort_int8``: ONNX Runtime on the U8S8 graph ``model.int8.cpu.onnx``;
* ``ov_fp32``: OpenVINO, ``--precision fp32`` (f32 inference precision) on ``model.cpu.onnx``;
* ``ov_bf16``: ``--precision bf16`` (OpenVINO's default on a CPU with BF16) on ``model.cpu.onnx``;
* ``ov_int8``: ``--precision int8``, the U8S8 graph, f32 outside its Q/DQ pairs;
* ``raw_ov_int8_bf16``: the U8S8 graph at OpenVINO's default precision (bf16 outside the Q/DQ
  pairs: selector and Top-K included), the choice ``ov_int8`` did not make;
* ``raw_ov_fp16_graph``: ``model.fp16.onnx`` at bf16 (does the FP16 graph help OpenVINO?);
* ``raw_nncf_int8`` / ``raw_nncf_int8_bf16`` (``--nncf N``, needs the ``nncf`` package): NNCF's
  INT8 of ``model.cpu.onnx`` calibrated on the N images ``calibrate --num-images N`` selects
  (seed 0), selector and Top-K left out of quantization as in the bundle's graphs, run at f32
  (as ``ov_int8``) and at bf16 (as ``raw_ov_int8_bf16``) outside its quantized ops.

Start-up, before the timing: each toolkit OpenVINO variant's load + compile with an empty
compiled-model cache, then again with the cache it left (``compile_seconds``, cold and warm).

Timing: rounds of ``--block`` timed calls per variant; ratios over the quiet rounds only
(benchmarks/rounds.py). Accuracy, after the timing: on the first ``--eval-images`` val images,
each variant's argmax agreement with ``ort_fp32`` (pooled over pixels), its mIoU (and the drop
from ``ort_fp32`` in points) and how many images its Top-K mask selected other than exactly k
cells. The closing table holds issue 23's targets: met, NOT MET, or busy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from rounds import print_targets, quiet_ratio, speed_target, time_rounds, timing_parser, variant_row

from fornet_deploy.bench.load import loadavg
from fornet_deploy.bench.sysinfo import describe_machine
from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import FP32_SCOPES, ONNX_CPU, ONNX_FP16, ONNX_INT8_CPU, TOPK_MASK
from fornet_deploy.data.labels import manifest_label_set
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.agreement import compare_outputs
from fornet_deploy.evaluation.evaluate import fixed_topk_ratio
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.evaluation.metrics import SegmentationMetrics
from fornet_deploy.evaluation.postprocess import predicted_labels
from fornet_deploy.io import atomic_write_json, now_iso
from fornet_deploy.model.topk import topk_count
from fornet_deploy.runtimes.openvino_runner import OpenVinoRunner, openvino_core
from fornet_deploy.runtimes.registry import load_runner, resolve_format

REFERENCE = "ort_fp32"
# (variant, target speed-up over ORT FP32, target) of issue 23.
SPEED_TARGETS = (("ov_bf16", 1.5), ("ov_int8", 2.0))
MIN_AGREEMENT = 0.999  # ov_bf16's argmax agreement with ORT FP32
MAX_MIOU_DROP_PTS = 0.3  # ov_int8's mIoU drop from ORT FP32


def raw_openvino(model, precision: str, threads: int) -> Callable:
    """An OpenVINO-compiled model at ``precision`` (f32 / bf16), outside the toolkit's runner."""
    import openvino as ov

    compiled = openvino_core(ov).compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                              "PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.outputs]

    def run(batch: np.ndarray) -> dict:
        results = request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return {name: np.array(results[i]) for i, name in enumerate(names)}

    return run


def nncf_int8(bundle: Bundle, data: Path, num: int, size: tuple[int, int]):
    """NNCF's INT8 of ``model.cpu.onnx`` (an OpenVINO model), calibrated on ``calibrate``'s images
    at the network input ``size``."""
    import nncf
    import openvino as ov

    from fornet_deploy.calibration.calibset import CalibrationSet

    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    images = list(CalibrationSet.select(data, pre, size, num=num, seed=0).batches())
    model = openvino_core(ov).read_model(bundle.path(ONNX_CPU).read_bytes())
    ignored = nncf.IgnoredScope(patterns=[f"{scope}.*" for scope in FP32_SCOPES], validate=False)
    return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images), ignored_scope=ignored)


def startup(bundle: Bundle, threads: int) -> dict:
    """Seconds to read and compile each OpenVINO precision with an empty cache, then with the
    cache that left (what a second `fornet-deploy` command on the bundle pays)."""
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        for precision in ("fp32", "bf16", "int8"):
            runs = []
            for _ in ("cold", "warm"):
                fmt = resolve_format(bundle, "openvino", precision, "cpu")
                with OpenVinoRunner(bundle.path(fmt.artifact), precision=precision, threads=threads,
                                    cache_dir=cache) as runner:
                    runs.append(runner.compile_seconds)
            result[precision] = {"cold_s": runs[0], "warm_s": runs[1]}
            print(f"start-up openvino {precision}: compile {runs[0]:.2f} s with an empty cache, "
                  f"{runs[1]:.2f} s from the cache", flush=True)
    return result


def accuracy(calls: dict[str, Callable], examples, classes: int, ratio: float | None) -> dict:
    """Per variant: argmax agreement with the reference, mIoU and images off k, on ``examples``."""
    reference = [calls[REFERENCE](ex.batch) for ex in examples]
    result = {}
    for name, call in calls.items():
        metrics = SegmentationMetrics(num_classes=classes)
        agree, off_k = [], 0
        for ex, ref in zip(examples, reference):
            out = call(ex.batch)
            hw = ex.labels.shape
            metrics.update(predicted_labels(out, hw), ex.labels)
            k = topk_count(ratio, out[TOPK_MASK][0].size) if ratio and TOPK_MASK in out else None
            image = compare_outputs(ex.name, ref, out, hw, k)
            agree.append(image.argmax_agreement)
            off_k += bool(image.mask_extra)
        result[name] = {"argmax_agreement": float(np.mean(agree)), "miou": metrics.result()["miou"],
                        "images_off_k": off_k, "images": len(examples)}
    base = result[REFERENCE]["miou"]
    for name, row in result.items():
        row["miou_drop_pts"] = 100 * (base - row["miou"])
        print(f"accuracy {name:18s} agreement {100 * row['argmax_agreement']:.3f} %  mIoU {100 * row['miou']:.2f} "
              f"(drop {row['miou_drop_pts']:+.2f} pts)  images off k {row['images_off_k']}", flush=True)
    return result


def targets(report: dict) -> list[dict]:
    """Issue 23's targets against the measured numbers (met / NOT MET / busy / missing)."""
    rows = []
    acc = report.get("accuracy", {})
    for name, minimum in SPEED_TARGETS:
        ratio = report["ratios"].get(f"{name} vs {REFERENCE}")
        rows.append(speed_target(ratio, f"{name} speed-up over {REFERENCE} (target >= {minimum}x)", minimum))
    if "ov_bf16" in acc:
        value = acc["ov_bf16"]["argmax_agreement"]
        rows.append({"target": f"ov_bf16 argmax agreement with {REFERENCE} (target >= {100 * MIN_AGREEMENT:.1f} %)",
                     "value": value, "status": "met" if value >= MIN_AGREEMENT else "NOT MET"})
    if "ov_int8" in acc:
        value = acc["ov_int8"]["miou_drop_pts"]
        rows.append({"target": f"ov_int8 mIoU drop from {REFERENCE} (points, target <= {MAX_MIOU_DROP_PTS})",
                     "value": value, "status": "met" if value <= MAX_MIOU_DROP_PTS else "NOT MET"})
    return rows


def main() -> None:
    parser = timing_parser(__doc__.splitlines()[0])
    parser.add_argument("--eval-images", type=int, default=50, help="val images for the accuracy (0: skip)")
    parser.add_argument("--nncf", type=int, default=0, help="also NNCF's INT8 from this many calibration images")
    args = parser.parse_args()

    import openvino as ov

    bundle = Bundle.open(args.bundle)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    batches = [ex.batch for ex in dataset_examples(args.data, "val", pre, args.num_images)]
    runners = {"ort_fp32": load_runner(bundle, "ort", "fp32", "cpu", threads=args.threads),
               "ort_int8": load_runner(bundle, "ort", "int8", "cpu", artifact=ONNX_INT8_CPU, threads=args.threads),
               "ov_fp32": load_runner(bundle, "openvino", "fp32", "cpu", threads=args.threads),
               "ov_bf16": load_runner(bundle, "openvino", "bf16", "cpu", threads=args.threads),
               "ov_int8": load_runner(bundle, "openvino", "int8", "cpu", threads=args.threads)}
    info = {name: runner.activate().info().to_dict() for name, runner in runners.items()}
    artefacts = {name: f"{i['artifact']} ({i['backend']}, {i.get('inference_precision', i['precision'])})"
                 for name, i in info.items()}
    calls: dict[str, Callable] = dict(runners)
    core = openvino_core(ov)
    calls["raw_ov_int8_bf16"] = raw_openvino(core.read_model(bundle.path(ONNX_INT8_CPU).read_bytes()), "bf16",
                                             args.threads)
    artefacts["raw_ov_int8_bf16"] = f"{ONNX_INT8_CPU} (openvino, bf16 outside Q/DQ)"
    if bundle.has(ONNX_FP16):
        calls["raw_ov_fp16_graph"] = raw_openvino(core.read_model(bundle.path(ONNX_FP16).read_bytes()), "bf16",
                                                  args.threads)
        artefacts["raw_ov_fp16_graph"] = f"{ONNX_FP16} (openvino, bf16)"
    if args.nncf:
        quantized = nncf_int8(bundle, args.data, args.nncf, tuple(batches[0].shape[2:]))
        for name, precision in (("raw_nncf_int8", "f32"), ("raw_nncf_int8_bf16", "bf16")):
            calls[name] = raw_openvino(quantized, precision, args.threads)
            artefacts[name] = f"NNCF INT8 of {ONNX_CPU}, {args.nncf} calibration images (openvino, {precision})"
    report = {"created": now_iso(), "loadavg_start": loadavg(), "bundle": str(args.bundle), "images": len(batches),
              "shape": list(batches[0].shape), "threads": args.threads, "rounds": args.rounds, "block": args.block,
              "openvino": ov.__version__, "runners": info, "startup": startup(bundle, args.threads)}
    timed = time_rounds(calls, batches, args.rounds, args.block)
    report["variants"] = {name: variant_row(timed, name, artefacts[name]) for name in calls}
    report["ratios"] = {f"{name} vs {REFERENCE}": quiet_ratio(timed, f"{name} vs {REFERENCE}", name, REFERENCE)
                        for name in calls if name != REFERENCE}
    report["machine_load"] = timed.machine_load
    report["loadavg_end"] = loadavg()
    if args.eval_images:
        examples = list(dataset_examples(args.data, "val", pre, args.eval_images))
        report["accuracy"] = accuracy(calls, examples, manifest_label_set(bundle.manifest).num_classes,
                                      fixed_topk_ratio(bundle.section("topk")))
    for runner in runners.values():
        runner.deactivate()
    report["machine"] = describe_machine()
    report["targets"] = targets(report)
    print_targets(report, "agreement", 2, 66)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
