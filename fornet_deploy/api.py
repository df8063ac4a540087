"""The public Python API: one function per stage, the same code the command line calls.

Import it as the package (``import fornet_deploy as fd``); every name here is re-exported
there. Each function validates its arguments and raises
:class:`~fornet_deploy.errors.FornetError` (one-line message) on anything a user can fix.

    import fornet_deploy as fd

    fd.export_model(fd.SHIPPED_WEIGHTS, "bundle", shape=(512, 1024), precision="fp16")
    fd.calibrate("bundle", "data/cityscapes", num_images=64)          # model.int8.qdq.onnx
    with fd.load_segmenter("bundle", runtime="ort", precision="int8") as segment:
        labels = segment(rgb_image).labels                              # H x W train ids
    fd.parity("bundle", runtime="ort", precision="int8", data="data/cityscapes")
    fd.evaluate("bundle", "data/cityscapes", runtime="ort", precision="int8")["miou"]
    fd.benchmark("bundle", runtime="ort", precision="int8")["compute"]["p50_ms"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .bundle import Bundle
from .contract import (
    CALIBRATION_METHODS,
    CALIBRATION_PERCENTILE,
    DEFAULT_TAIL,
    FP32_SCOPES,
    MAX_DROP_IMAGES,
    MAX_SIDE,
    ORT_PROVIDERS,
    OUTPUT_NAMES,
    PACKAGE_TARGETS,
    PRECISIONS,
    RUN_PRECISIONS,
    SHIPPED_WEIGHTS,
    TAILS,
    TOPK_FORMS,
    check_choice,
    check_size,
    checkpoint_path,
)
from .data.transforms import Preprocessing
from .errors import OptionError
from .predict import PredictConfig, Prediction, Segmenter
from .runtimes.base import Runner
from .runtimes.registry import load_runner

Progress = Callable[..., None]

# Function names differ from the package's module names (export, train, predict, demo):
# importing a submodule binds its name on the package and would shadow a function.
__all__ = [
    "SHIPPED_WEIGHTS", "Bundle", "Prediction", "Preprocessing", "Runner", "Segmenter", "benchmark", "build_engine",
    "calibrate", "deploy_checkpoint", "evaluate", "export_model", "info", "inspect_bundle", "lint", "load_runner",
    "load_segmenter", "package_bundle", "parity", "predict_files", "run_demo", "synthcity", "train_model",
]


def _ort_provider(value: str | None, runtime: str) -> None:
    if value is not None:
        check_choice(value, ORT_PROVIDERS, "ONNX Runtime provider")
        if runtime != "ort":
            raise OptionError(f"--ort-provider applies to --runtime ort, not {runtime}")


def _positive(value: int, option: str, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise OptionError(f"{option} must be an integer >= {least}, got {value!r}")


def load_segmenter(bundle: str | Path | Bundle, runtime: str = "ort", precision: str | None = None,
                   device: str = "cpu", shape: tuple[int, int] | None = None, **runner_options) -> Segmenter:
    """A :class:`~fornet_deploy.predict.Segmenter` (use it in a ``with`` block): an RGB uint8
    image of any size (or a batch: a list, an N x H x W x 3 array) in, a
    :class:`~fornet_deploy.predict.Prediction` at that size out (one per image). ``precision``:
    default fp32, or that of ``artifact=`` (a specific file of the bundle, e.g. ``model.onnx``)."""
    return Segmenter.from_bundle(bundle, runtime, precision, device, shape, **runner_options)


def info(checkpoint: str | Path | None = None, shape: tuple[int, int] = (1024, 2048)) -> dict:
    """Parameters and GFLOPs of a checkpoint (``"shipped"``: the shipped weights; None: the
    default config) at an input size."""
    from .model.summary import model_summary

    return model_summary(checkpoint_path(checkpoint) if checkpoint else None, *shape)


def synthcity(out: str | Path, train: int = 64, val: int = 16, shape: tuple[int, int] = (256, 512), seed: int = 0,
              progress: Progress | None = None, *, test: int = 0, layout: str = "cityscapes") -> dict:
    """Write SynthCity, the procedural street-scene dataset, in the Cityscapes or the CamVid
    layout; returns its manifest."""
    from .data.synthcity import SynthCityConfig, generate

    config = SynthCityConfig(train=train, val=val, test=test, height=shape[0], width=shape[1], seed=seed, layout=layout)
    return generate(out, config, progress)


def train_model(data: str | Path, out: str | Path, *, resume: bool = False, on_step: Callable | None = None, **options) -> dict:
    """Train FoR-Net (``options``: fields of :class:`~fornet_deploy.train.TrainConfig`; a
    ``model`` FoRNetConfig or its ``focus`` / ``topk_ratio``; ``init``: a checkpoint to start
    from); returns the summary."""
    from .model.fornet import FoRNetConfig
    from .train import TrainConfig
    from .train import train as run

    model = options.pop("model", None) or FoRNetConfig(
        **{k: options.pop(k) for k in ("focus", "topk_ratio") if k in options})
    if isinstance(options.get("init"), Path):
        options["init"] = str(options["init"])
    return run(TrainConfig(data=str(data), out=str(out), model=model, **options), resume=resume, on_step=on_step)


def export_model(checkpoint: str | Path, out: str | Path, shape: tuple[int, int] = (512, 1024), *,
           precision: str = "fp32", batch: int = 1, dynamic: bool = False, topk: str = "threshold", opset: int = 17,
           outputs: Sequence[str] = OUTPUT_NAMES, labels_dtype: str = "uint8",
           tail: str = DEFAULT_TAIL, labels: str | Path | None = None,
           log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Checkpoint (``"shipped"``: :data:`SHIPPED_WEIGHTS`) -> ``model.onnx`` in a deploy
    bundle, plus ``model.cpu.onnx`` (the graph ONNX Runtime runs on a CPU: labels by the cheap
    ``tail``, refine / nearest; none with ``tail="full"``) and ``model.fp16.onnx`` with
    ``precision="fp16"``; ``labels``: a classes file naming the model's classes (default: the
    checkpoint's label set, else Cityscapes for 19 classes, else generic names). Returns the
    manifest entries written, by file name; ``log`` is told which artefacts a re-export
    removed and which parity reports it made stale."""
    from .data.labels import read_classes_file
    from .export.fp16 import convert_fp16
    from .export.onnx import ExportConfig, export_bundle

    if precision not in ("fp32", "fp16"):
        raise OptionError(f"export writes precision fp32 or fp16, not {precision!r} "
                          "(INT8 comes from `fornet-deploy calibrate`)")
    check_choice(topk, TOPK_FORMS, "Top-K form")
    check_choice(tail, TAILS, "tail")
    _positive(batch, "--batch")
    cfg = ExportConfig(height=shape[0], width=shape[1], batch=batch, dynamic=dynamic, topk=topk, opset=opset,
                       outputs=tuple(outputs), labels_dtype=labels_dtype, tail=tail)
    entries = export_bundle(checkpoint_path(checkpoint), out, cfg,
                            labels=read_classes_file(labels) if labels is not None else None, log=log)
    if precision == "fp16":
        entries["model.fp16.onnx"] = convert_fp16(out)
    return entries


def calibrate(bundle: str | Path, data: str | Path, *, num_images: int = 64, method: str = "entropy",
              target: str = "tensorrt", seed: int = 0, percentile: float = CALIBRATION_PERCENTILE,
              progress: Progress | None = None, max_drop: float | None = None,
              max_drop_data: str | Path | None = None, max_drop_images: int | None = None) -> dict:
    """INT8 Q/DQ graph calibrated on a deterministic selection of ``data`` (a dataset's train
    split, class-balanced; a folder of images; or ``num_images`` frames spread evenly over a
    video), each image resized to the network input (selector / Top-K kept FP32); returns
    its manifest entry, which records what the images came from and what was resized. ``tensorrt``
    builds on ``model.fp16.onnx`` (made first when missing); the activation ranges are
    measured once per image set, method and percentile and cached in the bundle for both
    targets; ``progress(done, total)`` counts the images of a measurement. The entry's
    ``artifact`` names the file written.

    ``max_drop`` (mIoU points, 0..100): an accuracy budget. The most sensitive convolutions
    stay float until the mIoU drop against ``model.onnx`` on ``max_drop_images`` (default 32)
    held-out labelled images (the val split of ``max_drop_data``, default ``data``; never a
    calibration image) is within it; the entry's ``accuracy_budget`` records the layers left
    out, the drop before and after and the ONNX Runtime CPU latency ratio. A budget that cannot
    be met raises :class:`~fornet_deploy.errors.CheckFailed` (exit 1) and writes nothing."""
    from .calibration.budget import AccuracyBudget
    from .calibration.qdq import TARGETS, calibrate_bundle

    _positive(num_images, "--num-images")
    if max_drop is None and (max_drop_data is not None or max_drop_images is not None):
        raise OptionError("--max-drop-data and --max-drop-images apply with --max-drop POINTS")
    budget = (AccuracyBudget(max_drop, max_drop_data, MAX_DROP_IMAGES if max_drop_images is None else max_drop_images)
              if max_drop is not None else None)
    entry = calibrate_bundle(bundle, data, num_images=num_images, method=method, target=target, seed=seed,
                             progress=progress, percentile=percentile, budget=budget)
    return {"artifact": TARGETS[target].artifact, **entry}


def build_engine(bundle: str | Path, precision: str = "fp16", *, shape: tuple[int, int] | None = None,
                 min_shape: tuple[int, int] | None = None, max_shape: tuple[int, int] | None = None,
                 batch: int = 1, min_batch: int | None = None, max_batch: int | None = None,
                 workspace_mb: int | None = None, timing_cache: str | Path | None = None, dla_core: int | None = None,
                 legacy_calibrator: bool = False, data: str | Path | None = None, num_images: int = 64,
                 progress: Callable[[str], None] | None = None) -> dict:
    """A TensorRT engine from the bundle's graph of ``precision`` (strongly typed; with
    ``legacy_calibrator`` on TensorRT 10.x, builder flags and an entropy calibrator on
    ``data``). ``shape`` / ``batch`` are the optimization profile's optimum (default: the
    export shape), ``min_*`` / ``max_*`` its bounds (default: the optimum). Returns the
    engine's metadata."""
    from .build.trt import BuildConfig, build_with_calibration_data, export_shape, nchw

    check_choice(precision, PRECISIONS, "precision")
    for value, option in ((batch, "--batch"), (min_batch, "--min-batch"), (max_batch, "--max-batch"),
                          (num_images, "--num-images")):
        if value is not None:
            _positive(value, option)
    if shape is None and (min_shape or max_shape or batch != 1 or min_batch or max_batch):
        exported = export_shape(Bundle.open(bundle, verify=False))
        shape = tuple(exported[2:]) if exported else None
        if shape is None:
            raise OptionError("give --shape: the bundle records no export shape to take the optimum from")
    profile = {}
    if shape is not None:
        profile = {"opt_shape": nchw(shape, batch),
                   "min_shape": nchw(min_shape or shape, min_batch or batch),
                   "max_shape": nchw(max_shape or shape, max_batch or batch)}
    config = BuildConfig(precision=precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                         dla_core=dla_core, legacy_calibrator=legacy_calibrator, fp32_scopes=FP32_SCOPES, **profile)
    return build_with_calibration_data(bundle, config, data, num_images, progress=progress)


def inspect_bundle(bundle: str | Path) -> dict:
    """What a bundle holds: each artefact's kind, precision, size, hash, lineage (and whether
    it is stale), inputs and outputs with shapes; the label set, preprocessing, export
    settings and parity reports (and whether they still describe the artefacts)."""
    from .package.overview import inspect_bundle as run

    return run(bundle)


def lint(model: str | Path, target: str = "tensorrt") -> dict:
    """What TensorRT will reject or handle badly in an ONNX graph: findings + pass/fail (a CPU
    graph: ``not_for_target`` says so). A bundle folder: every graph TensorRT builds from,
    ``{"bundle", "passed", "graphs": {name: report}}``."""
    from .export.lint import lint_bundle, lint_file

    return lint_bundle(model, target) if Path(model).is_dir() else lint_file(model, target)


def parity(bundle: str | Path, runtime: str = "ort", precision: str | None = None, device: str = "cpu",
           data: str | Path | None = None, *, split: str = "val", num_images: int | None = None,
           out: str | Path | None = None, json_out: str | Path | None = None, progress: Progress | None = None,
           ort_provider: str | None = None, artifact: str | None = None, atol: float | None = None,
           min_argmax_agreement: float | None = None, min_mask_agreement: float | None = None) -> dict:
    """The bundle's artefacts against the PyTorch FP32 reference (exact Top-K): every
    artefact for (runtime, precision, device), or ``artifact`` alone (``precision``: default
    fp32, or the artefact's own). Returns the run's report: ``summary["passed"]`` (all
    passed), ``summary["failed"]`` (the failed checks by artefact) and ``artifacts`` (a
    report each); diff pictures and ``parity.json`` in ``out``. ``atol``,
    ``min_argmax_agreement``, ``min_mask_agreement`` replace the precision's documented
    thresholds. ``ort_provider`` (cpu, cuda, tensorrt) picks ONNX Runtime's execution
    provider (default: the device's)."""
    from .evaluation.parity import parity_bundle, thresholds_for
    from .runtimes.registry import artifact_precision
    from .targets import output_file, output_folder

    _ort_provider(ort_provider, runtime)
    if out is not None:
        output_folder(out, "--out", reads=(bundle, data))
    output_file(json_out, "--json", reads=(bundle, data), writes=(out,))
    if precision is not None:
        check_choice(precision, RUN_PRECISIONS, "precision")  # bf16: OpenVINO's run of the FP32 graph
    opened = Bundle.open(bundle, verify=False)
    thresholds = thresholds_for(artifact_precision(opened, artifact, precision), atol, min_argmax_agreement,
                                min_mask_agreement)
    return parity_bundle(bundle, runtime, precision, device, data, split, num_images, out, json_out, progress,
                         ort_provider=ort_provider, artifact=artifact, thresholds=thresholds)


def evaluate(bundle: str | Path, data: str | Path, runtime: str = "ort", precision: str | None = None,
             device: str = "cpu", *, split: str = "val", num_images: int | None = None, boundary_width: int = 3,
             json_out: str | Path | None = None, progress: Progress | None = None,
             ort_provider: str | None = None, artifact: str | None = None) -> dict:
    """mIoU, per-class IoU, boundary IoU, thin-structure IoU and Top-K coverage of one artefact
    (``ort_provider``, ``artifact``, ``precision``: as for :func:`parity`)."""
    from .evaluation.evaluate import evaluate_bundle
    from .targets import output_file

    _ort_provider(ort_provider, runtime)
    output_file(json_out, "--json", reads=(bundle, data))
    return evaluate_bundle(bundle, data, runtime, precision, device, split, num_images, boundary_width, json_out,
                           progress, ort_provider=ort_provider, artifact=artifact)


def benchmark(bundle: str | Path, runtime: str = "ort", precision: str | None = None, device: str = "cpu", *,
              shape: tuple[int, int] | None = None, batch: int = 1, warmup: int = 10, iterations: int = 50,
              threads: int | None = None, images: str | Path | None = None, matrix: bool = False,
              data: str | Path | None = None, num_images: int = 8, json_out: str | Path | None = None,
              progress: Progress | None = None, ort_provider: str | None = None, profile: bool = False,
              artifact: str | None = None) -> dict:
    """Latency (p50/p90/p99), throughput, end-to-end time and memory of one artefact, or with
    ``matrix`` of every artefact the bundle holds for ``device`` (with accuracy on
    ``num_images`` images of ``data``); ``ort_provider``: as for :func:`parity`. TensorRT
    results add ``device_split``: input copy, execution and output copies by CUDA events.
    Every result row records ``machine_load`` (how much of the CPUs other processes took
    while it was timed; ``busy`` above 10 %); ``profile`` adds ONNX Runtime's profiler
    breakdown by op type and by scope (backbone, neck, focus, selector, Top-K, head, tail).
    ``artifact``, ``precision``: as for :func:`parity` (not with ``matrix``, which runs them all)."""
    from .bench import BenchConfig, run_benchmark, run_matrix
    from .targets import output_file

    output_file(json_out, "--json", reads=(bundle, images, data))
    _ort_provider(ort_provider, "ort" if matrix else runtime)  # a matrix applies it to its ONNX Runtime rows
    if matrix and artifact is not None:
        raise OptionError("--artifact picks one artefact; --matrix runs every artefact of the bundle")
    cfg = BenchConfig(device=device, runtime=runtime, precision=precision, shape=shape, batch=batch, warmup=warmup,
                      iters=iterations, threads=threads, images=Path(images) if images else None,
                      ort_device=ort_provider,
                      profile=profile, artifact=artifact)
    if matrix:
        return run_matrix(bundle, device, data=Path(data) if data else None, accuracy_images=num_images, cfg=cfg,
                          progress=progress, json_out=json_out)
    return run_benchmark(bundle, cfg, progress=progress, json_out=json_out)


def predict_files(bundle: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path,
                  runtime: str = "ort", precision: str | None = None, device: str = "cpu", *,
                  progress: Progress | None = None, **options) -> dict:
    """Segment images, folders, videos and live sources (camera index, URL, GStreamer
    pipeline, as strings; one input alone may be given as a ``str`` or ``Path``) into
    ``out`` (``options``: fields of :class:`~fornet_deploy.predict.PredictConfig`, e.g.
    ``max_frames``, ``artifact``); returns the run's summary."""
    from .predict import predict as run

    _ort_provider(options.get("ort_provider"), runtime)
    cfg = PredictConfig(runtime=runtime, precision=precision, device=device, **options)
    return run(bundle, inputs, out, cfg, progress=progress)


def package_bundle(bundle: str | Path, target: str, out: str | Path, precision: str = "fp32", **options) -> dict:
    """Hand a bundle to a serving stack: ``target="triton"`` writes a Triton model repository,
    ``"deepstream"`` an nvinfer config, labels and a deepstream-app config, into ``out``
    (created, or an earlier package's own files replaced and other files kept; all or nothing;
    never the bundle, inside it or holding it). ``options``: fields of
    :class:`~fornet_deploy.package.triton.TritonOptions` or
    :class:`~fornet_deploy.package.deepstream.DeepStreamOptions`. Returns the summary."""
    from dataclasses import fields

    from .package import package
    from .package.deepstream import DeepStreamOptions
    from .package.triton import TritonOptions

    check_choice(target, PACKAGE_TARGETS, "package target")
    kind = TritonOptions if target == "triton" else DeepStreamOptions
    unknown = sorted(set(options) - {f.name for f in fields(kind)})
    if unknown:
        raise OptionError(f"--{unknown[0].replace('_', '-')} does not apply to --target {target}")
    return package(bundle, target, out, kind(precision=precision, **options))


def run_demo(out: str | Path = "fornet-demo", weights: str | Path | None = None, *, train_iterations: int = 300,
         bench_iterations: int = 20, shape: tuple[int, int] | None = None, num_images: int = 50, runtime: str = "ort",
         data: str | Path | None = None, split: str = "val", log: Callable[[str], None] = print) -> dict:
    """The whole pipeline on this machine, with ``OUT/report.md``, on SynthCity or on ``data``
    (a labelled dataset in any known layout: calibration on its train split, parity and
    evaluation on ``num_images`` images of its ``split``; weights: ``weights``, else the shipped
    ones where they predict its classes, else ``train_iterations`` of training on it).
    ``shape``: the export's H x W (default: SynthCity 256x512, or the size of the data's first
    ``split`` image), and SynthCity's image size (64 px and up); ``runtime`` (ort or
    openvino): whose artefacts the parity and evaluation stages verify."""
    from .data.synthcity.dataset import MIN_SIDE
    from .demo import DemoConfig
    from .demo import run_demo as run
    from .targets import output_folder

    _positive(train_iterations, "--train-iterations")
    _positive(bench_iterations, "--bench-iterations")
    _positive(num_images, "--num-images")
    output_folder(out, "--out", reads=(data, weights))  # the demo's folder never holds or lies inside its inputs
    if data is None:
        if split != "val":
            raise OptionError("--split chooses a split of --data; SynthCity's is val")
        shape = shape or (256, 512)
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in shape):  # before anything is written
            raise OptionError(f"--shape {shape[0]}x{shape[1]}: the demo's SynthCity images need {MIN_SIDE} to "
                              f"{MAX_SIDE} pixels per side")
        return run(DemoConfig(out=Path(out), weights=Path(weights) if weights else None, height=shape[0],
                              width=shape[1], synth_val=num_images, train_iterations=train_iterations,
                              bench_iters=bench_iterations, runtime=runtime), log=log)
    if shape is None:
        from .data.formats import open_dataset
        from .io import read_image_size

        shape = read_image_size(open_dataset(data).samples(split)[0].image)
    check_size(*shape)
    return run(DemoConfig(out=Path(out), weights=Path(weights) if weights else None, height=shape[0], width=shape[1],
                          data=Path(data), split=split, num_images=num_images, train_iterations=train_iterations,
                          bench_iters=bench_iterations, runtime=runtime), log=log)


def deploy_checkpoint(checkpoint: str | Path, target: str, data: str | Path, out: str | Path, *,
                      shape: tuple[int, int] = (512, 1024), dynamic: bool = False, num_images: int = 32,
                      calib_images: int = 64, method: str = "entropy", iterations: int = 20, seed: int = 0,
                      split: str = "val", log: Callable[[str], None] = print) -> dict:
    """From a checkpoint (``"shipped"``: the shipped weights) to a verified bundle ``out`` for
    ``target`` (:data:`fornet_deploy.deploy.TARGETS`: cpu, tensorrt): export, INT8 calibration
    on ``calib_images`` images of ``data``, TensorRT lint, parity of every artefact and
    evaluation on ``num_images`` images of ``data``'s ``split``, a benchmark of ``iterations`` timed runs per
    artefact, and ``out/deploy/report.md`` + ``deploy.json``. Returns the summary, with
    ``passed`` and ``failed`` (the checks that failed)."""
    from .deploy import DeployConfig, run_deploy

    check_choice(method, CALIBRATION_METHODS, "calibration method")
    return run_deploy(DeployConfig(checkpoint=Path(checkpoint), target=target, data=Path(data), out=Path(out),
                                   height=shape[0], width=shape[1], dynamic=dynamic, num_images=num_images,
                                   calib_images=calib_images, calib_method=method, bench_iterations=iterations,
                                   seed=seed, split=split), log=log)
