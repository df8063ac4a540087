"""The ``fornet-deploy`` command line: parse, call one library function, print.

Every command turns a :class:`~fornet_deploy.errors.FornetError` into one line on stderr
and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import progress as prog
from .errors import FornetError

app = typer.Typer(
    help="FoR-Net from training to fast, verified inference (ONNX Runtime, TensorRT, Jetson).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


# Options shared by the commands that run an artefact (parity, eval, bench, predict).
BUNDLE_OPTION = typer.Option(..., help="deploy bundle")
RUNTIME_OPTION = typer.Option("ort", help="torch | ort | trt")
PRECISION_OPTION = typer.Option("fp32", help="fp32 | fp16 | int8")
DEVICE_OPTION = typer.Option("cpu", help="cpu | cuda | jetson")


def main() -> None:
    try:
        app()
    except FornetError as exc:
        # escape: messages hold literal brackets such as 'fornet-deploy[tensorrt]'
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(exc.exit_code)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_fmt(v) for v in r])
    console.print(table)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Option(None, help="FoR-Net checkpoint (.safetensors); default config if omitted"),
    height: int = typer.Option(1024, help="input height for the FLOP count"),
    width: int = typer.Option(2048, help="input width for the FLOP count"),
):
    """Architecture summary: parameters and GFLOPs at a given input size."""
    from .model.summary import model_summary

    summary = model_summary(checkpoint, height, width)
    print_table("FoR-Net", ["field", "value"], [[k, v] for k, v in summary.items() if k != "config"])
    console.print_json(json.dumps(summary["config"]))


@app.command()
def synthcity(
    out: Path = typer.Option(..., help="output folder (Cityscapes layout)"),
    train: int = typer.Option(64, help="training images"),
    val: int = typer.Option(16, help="validation images"),
    height: int = typer.Option(256),
    width: int = typer.Option(512),
    seed: int = typer.Option(0),
):
    """Generate SynthCity, a procedural Cityscapes-layout dataset (no download)."""
    from .data.synthcity import SynthCityConfig, generate

    cfg = SynthCityConfig(train=train, val=val, height=height, width=width, seed=seed)
    with prog.bar("SynthCity") as update:
        summary = generate(out, cfg, progress=update)
    console.print(f"wrote {train} train + {val} val images to {out}")
    return summary


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., help="dataset root in the Cityscapes layout (Cityscapes or SynthCity)"),
    out: Path = typer.Option(..., help="run folder for checkpoints and logs"),
    iterations: int = typer.Option(2000),
    batch_size: int = typer.Option(8, help="per process"),
    crop: str = typer.Option("256x256", help="training crop HxW"),
    lr: float = typer.Option(4e-3),
    optimizer: str = typer.Option("adamw", help="sgd | adamw"),
    loss: str = typer.Option("ohem", help="ce | ohem"),
    selector_loss_weight: float = typer.Option(0.4, help="auxiliary hard-region loss on the importance map (0 = off)"),
    focus: str = typer.Option("topk", help="topk | adaptive | none (ablation)"),
    topk_ratio: float = typer.Option(0.25),
    val_interval: int = typer.Option(500),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    no_amp: bool = typer.Option(False, "--no-amp", help="disable mixed precision on CUDA"),
    workers: int = typer.Option(0, help="data-loading workers"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.state.safetensors"),
):
    """Train FoR-Net (single process, or multi-GPU/multi-node under torchrun)."""
    from .model.fornet import FoRNetConfig
    from .train import TrainConfig, train

    crop_h, crop_w = prog.parse_hw(crop, "--crop")
    cfg = TrainConfig(
        data=str(data), out=str(out), model=FoRNetConfig(focus=focus, topk_ratio=topk_ratio),
        iterations=iterations, batch_size=batch_size, crop_height=crop_h, crop_width=crop_w,
        lr=lr, optimizer=optimizer, loss=loss, selector_loss_weight=selector_loss_weight,
        val_interval=val_interval, seed=seed, device=device, amp=not no_amp, num_workers=workers,
    )
    with prog.bar("train", total=iterations) as update:
        summary = train(cfg, resume=resume, on_step=lambda done, total, m: update(done, total, f"loss {m['loss']:.3f}"))
    if summary["rank"] != 0:  # under torchrun, one process reports
        return
    last = summary["history"][-1] if summary["history"] else {}
    console.print(
        f"trained to iteration {summary['iterations']} in {summary['seconds']:.0f} s; "
        f"val mIoU {_fmt(last.get('miou'))}, best {_fmt(summary['best_miou'])}; checkpoints in {out}"
    )


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        from .bundle import atomic_write_json

        atomic_write_json(path, data)
        console.print(f"JSON written to {path}")


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="FoR-Net checkpoint (.safetensors)"),
    out: Path = typer.Option(..., help="bundle folder to create or update"),
    height: int = typer.Option(512, help="export height (multiple of 32)"),
    width: int = typer.Option(1024, help="export width (multiple of 32)"),
    batch: int = typer.Option(1),
    dynamic: bool = typer.Option(False, "--dynamic", help="dynamic batch, height and width"),
    topk: str = typer.Option("threshold", help="threshold (export-friendly) | exact (torch.topk)"),
    opset: int = typer.Option(17),
    outputs: str = typer.Option("logits,labels,importance,topk_mask", help="comma-separated outputs"),
    labels_dtype: str = typer.Option("uint8", help="dtype of the in-graph ArgMax output: uint8 | int32"),
    precision: str = typer.Option("fp32", help="fp32, or fp16 to also write model.fp16.onnx"),
):
    """Export a checkpoint to ONNX in a deploy bundle (checked, simplified, hashed)."""
    from .export.onnx import ExportConfig, export_bundle

    if precision not in ("fp32", "fp16"):
        raise FornetError(f"--precision {precision}: export writes fp32 or fp16 (INT8 comes from `fornet-deploy calibrate`)")
    cfg = ExportConfig(height=height, width=width, batch=batch, dynamic=dynamic, topk=topk, opset=opset,
                       outputs=tuple(o.strip() for o in outputs.split(",") if o.strip()), labels_dtype=labels_dtype)
    entry = export_bundle(checkpoint, out, cfg)
    rows = [["model.onnx", "fp32", entry["sha256"][:12], entry["bytes"]]]
    if precision == "fp16":
        from .export.fp16 import convert_fp16

        fp16 = convert_fp16(out)
        rows.append(["model.fp16.onnx", "fp16", fp16["sha256"][:12], fp16["bytes"]])
    print_table(f"bundle {out}", ["artefact", "precision", "sha256", "bytes"], rows)


@app.command()
def lint(
    model: Path = typer.Argument(..., help="ONNX file"),
    target: str = typer.Option("tensorrt", help="deployment target"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the findings as JSON"),
):
    """List what the TensorRT ONNX parser will reject or handle badly (exit 1 on blockers)."""
    from .export.lint import lint_file

    report = lint_file(model, target)
    if report["findings"]:
        print_table(f"{model} ({target})", ["severity", "check", "node", "message"],
                    [[f["severity"], f["check"], f["node"], f["message"]] for f in report["findings"]])
    console.print(f"{'PASS' if report['passed'] else 'FAIL'}: {report['blockers']} blockers, {report['warnings']} warnings")
    _write_json(json_out, report)
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def parity(
    bundle: Path = BUNDLE_OPTION,
    runtime: str = RUNTIME_OPTION,
    precision: str = PRECISION_OPTION,
    device: str = DEVICE_OPTION,
    data: Optional[Path] = typer.Option(None, help="dataset root (Cityscapes layout); else synthetic images"),
    split: str = typer.Option("val"),
    limit: Optional[int] = typer.Option(None, help="at most this many images"),
    synthetic: Optional[int] = typer.Option(None, help="number of synthetic images when no --data"),
    out: Optional[Path] = typer.Option(None, help="report folder (default BUNDLE/parity/RUNTIME-PRECISION)"),
):
    """Compare an artefact with the PyTorch FP32 reference (exit 1 when parity fails)."""
    from .evaluation.parity import parity_bundle

    with prog.bar(f"parity {runtime} {precision}") as update:
        report = parity_bundle(bundle, runtime, precision, device, data, split, limit, synthetic, out, progress=update)
    s = report["summary"]
    print_table(f"parity: {runtime} {precision} vs torch fp32 (exact Top-K)", ["metric", "value", "check"], [
        ["images", s["images"], ""],
        ["max |logit diff|", s["max_abs_logit"], _check(s, "max_abs_logit")],
        ["mean |logit diff|", s["mean_abs_logit"], ""],
        ["argmax agreement", s["argmax_agreement"], _check(s, "argmax_agreement")],
        ["Top-K mask agreement", s["mask_agreement"], _check(s, "mask_agreement")],
        ["images with identical mask", s["mask_identical_images"], ""],
        ["images with superset mask (ties)", s["mask_superset_images"], ""],
        ["agreement mIoU", s["agreement_miou"], ""],
    ])
    console.print(f"{'PASS' if s['passed'] else 'FAIL'}; report {report['report_path']}")
    if not s["passed"]:
        raise typer.Exit(1)


def _check(summary: dict, key: str) -> str:
    if key not in summary["checks"]:
        return ""
    return "ok" if summary["checks"][key] else "FAIL"


@app.command("eval")
def eval_cmd(
    bundle: Path = BUNDLE_OPTION,
    data: Path = typer.Option(..., help="dataset root (Cityscapes layout)"),
    runtime: str = RUNTIME_OPTION,
    precision: str = PRECISION_OPTION,
    device: str = DEVICE_OPTION,
    split: str = typer.Option("val"),
    limit: Optional[int] = typer.Option(None, help="at most this many images"),
    boundary_width: int = typer.Option(3, help="boundary band half-width in pixels"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the metrics as JSON"),
):
    """mIoU, per-class IoU, boundary IoU, thin-structure IoU and Top-K coverage of one artefact."""
    from .evaluation.evaluate import evaluate_bundle

    with prog.bar(f"eval {runtime} {precision}") as update:
        result = evaluate_bundle(bundle, data, runtime, precision, device, split, limit, boundary_width, progress=update)
    print_table("per-class IoU", ["class", "IoU", "boundary IoU"],
                [[c, v, result["boundary_iou_per_class"].get(c)] for c, v in result["iou_per_class"].items()])
    print_table(f"{runtime} {precision} on {split}", ["metric", "value"], [
        ["mIoU", result["miou"]], ["boundary IoU", result["boundary_iou"]], ["thin-structure IoU", result["thin_iou"]],
        ["pixel accuracy", result["pixel_accuracy"]], ["Top-K coverage of boundaries", result["topk_coverage_boundary"]],
        ["Top-K coverage of errors", result["topk_coverage_errors"]], ["images", result["num_images"]],
    ])
    _write_json(json_out, result)


@app.command()
def calibrate(
    bundle: Path = typer.Option(..., help="deploy bundle with model.onnx"),
    data: Path = typer.Option(..., help="dataset root (Cityscapes layout); images from its train split"),
    num: int = typer.Option(64, help="calibration images"),
    method: str = typer.Option("entropy", help="entropy | minmax | percentile"),
    target: str = typer.Option("tensorrt", help="tensorrt (symmetric S8S8 Q/DQ) | cpu (U8S8 for ONNX Runtime on x86)"),
    seed: int = typer.Option(0, help="seed of the calibration-image selection"),
):
    """INT8 Q/DQ graph calibrated on a deterministic, class-balanced image set (selector kept FP32)."""
    from .calibration.qdq import TARGETS, calibrate_bundle

    with prog.bar(f"calibrate {method} -> {target}") as update:
        entry = calibrate_bundle(bundle, data, num=num, method=method, target=target, seed=seed, progress=update)
    print_table(f"INT8 ({target})", ["field", "value"], [
        ["artefact", TARGETS[target].artifact], ["method", entry["method"]], ["images", entry["calibration"]["num_images"]],
        ["calibration key", entry["calibration"]["key"][:16]], ["nodes kept FP32", len(entry["excluded_nodes"])],
        ["sha256", entry["sha256"][:12]],
    ])


@app.command("build-trt")
def build_trt(
    bundle: Path = BUNDLE_OPTION,
    fp16: bool = typer.Option(False, "--fp16", help="from model.fp16.onnx (strongly typed)"),
    int8: bool = typer.Option(False, "--int8", help="from model.int8.qdq.onnx (strongly typed)"),
    fp32: bool = typer.Option(False, "--fp32", help="from model.onnx"),
    min_shape: Optional[str] = typer.Option(None, help="optimization profile minimum, NxCxHxW or HxW"),
    opt_shape: Optional[str] = typer.Option(None, help="optimization profile optimum"),
    max_shape: Optional[str] = typer.Option(None, help="optimization profile maximum"),
    workspace: Optional[int] = typer.Option(None, help="workspace limit in MB"),
    timing_cache: Optional[Path] = typer.Option(None, help="timing cache file (read if present, updated after the build)"),
    dla_core: Optional[int] = typer.Option(None, help="build for this DLA core (Jetson, TensorRT 10.x)"),
    legacy_calibrator: bool = typer.Option(False, "--legacy-calibrator",
                                           help="TensorRT 10.x only: FP32 graph + builder flags (+ entropy calibrator for --int8)"),
    calib_data: Optional[Path] = typer.Option(None, help="dataset for --legacy-calibrator --int8"),
    calib_num: int = typer.Option(64, help="calibration images for --legacy-calibrator --int8"),
):
    """Build a TensorRT engine from the bundle's graph of the chosen precision."""
    from .runtimes.trt_build import BuildConfig, build_with_calibration_data, parse_shape

    chosen = [name for name, on in (("fp16", fp16), ("int8", int8), ("fp32", fp32)) if on]
    if len(chosen) != 1:
        raise FornetError("build-trt: choose exactly one of --fp16, --int8, --fp32")
    config = BuildConfig(
        precision=chosen[0], workspace_mb=workspace, timing_cache=timing_cache, dla_core=dla_core,
        legacy_calibrator=legacy_calibrator,
        **{k: parse_shape(v) for k, v in (("min_shape", min_shape), ("opt_shape", opt_shape), ("max_shape", max_shape)) if v},
    )
    meta = build_with_calibration_data(bundle, config, calib_data, calib_num, progress=console.print)
    print_table(f"engine {meta['engine']}", ["field", "value"], [[k, v] for k, v in meta.items() if not isinstance(v, (dict, list))])


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="images, folders and videos"),
    bundle: Path = BUNDLE_OPTION,
    out: Path = typer.Option(..., help="output folder"),
    runtime: str = RUNTIME_OPTION,
    precision: str = PRECISION_OPTION,
    device: str = DEVICE_OPTION,
    shape: Optional[str] = typer.Option(None, help="network input HxW (images are resized, predictions resized back)"),
    importance: bool = typer.Option(False, "--importance", help="also write the importance-map heat map"),
    mask: bool = typer.Option(False, "--mask", help="also write the Top-K mask picture"),
    label_ids: bool = typer.Option(False, "--label-ids", help="also write Cityscapes labelIds maps (for submission)"),
    video_every: int = typer.Option(1, help="process every n-th video frame"),
):
    """Segment images, folders and videos: label maps, colour overlays, and what FoR-Net focused on."""
    from .predict import PredictConfig, predict as run_predict

    cfg = PredictConfig(runtime=runtime, precision=precision, device=device,
                        shape=prog.parse_hw(shape, "--shape") if shape else None,
                        importance=importance, mask=mask, label_ids=label_ids, video_every=video_every)
    with prog.bar("predict") as update:
        summary = run_predict(bundle, inputs, out, cfg, progress=update)
    for note in summary.get("notes", []):
        console.print(note)
    console.print(f"wrote {len(summary['files'])} files to {out} (list in {out / 'predictions.json'})")


@app.command()
def bench(
    bundle: Path = BUNDLE_OPTION,
    device: str = DEVICE_OPTION,
    runtime: str = RUNTIME_OPTION,
    precision: str = PRECISION_OPTION,
    shape: Optional[str] = typer.Option(None, help="input HxW (default: the export shape)"),
    batch: int = typer.Option(1),
    warmup: int = typer.Option(10),
    iters: int = typer.Option(50),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch / ONNX Runtime"),
    images: Optional[Path] = typer.Option(None, help="real images (file, folder or dataset root) for end-to-end timing"),
    matrix: bool = typer.Option(False, "--matrix", help="every runtime x precision in the bundle, with accuracy"),
    data: Optional[Path] = typer.Option(None, help="with --matrix: labelled dataset for the mIoU column"),
    accuracy_images: int = typer.Option(8, help="with --matrix: images for the accuracy columns"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
):
    """Latency (p50/p90/p99), throughput, end-to-end time and memory; --matrix compares every artefact."""
    from .bench.bench import BenchConfig, bench_rows, machine_line, run_benchmark, run_matrix

    cfg = BenchConfig(device=device, runtime=runtime, precision=precision, batch=batch, warmup=warmup, iters=iters,
                      shape=prog.parse_hw(shape, "--shape") if shape else None, threads=threads, images=images)
    with prog.bar("bench matrix" if matrix else f"bench {runtime} {precision}") as update:
        if matrix:
            result = run_matrix(bundle, device, data=data, accuracy_images=accuracy_images, cfg=cfg, progress=update, json_out=json_out)
        else:
            result = run_benchmark(bundle, cfg, progress=update, json_out=json_out)
    columns, rows = bench_rows(result)
    print_table(f"benchmark on {machine_line(result['machine'])}", columns, rows)
    if json_out:
        console.print(f"JSON written to {json_out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("fornet-demo"), help="output folder for data, bundle, results and report"),
    weights: Optional[Path] = typer.Option(None, help="checkpoint to use (default: the shipped SynthCity weights)"),
    train_iterations: int = typer.Option(300, help="CPU training iterations when no weights are found"),
    bench_iters: int = typer.Option(20, help="timed iterations per artefact"),
):
    """The whole pipeline on SynthCity, on this CPU, with a report: train/load -> export -> INT8 -> parity -> eval -> bench."""
    from .demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=out, weights=weights, train_iterations=train_iterations, bench_iters=bench_iters),
                      log=lambda line: console.print(f"[bold cyan]demo[/] {escape(line)}"))
    print_table("parity vs PyTorch FP32", ["artefact", "argmax agreement", "mask agreement", "pass"],
                [[f"ort {p}", s["argmax_agreement"], s["mask_agreement"], "yes" if s["passed"] else "NO"]
                 for p, s in result["parity"].items()])
    print_table("accuracy (SynthCity val)", ["runtime precision", "mIoU", "boundary IoU", "thin IoU"],
                [[k, e["miou"], e["boundary_iou"], e["thin_iou"]] for k, e in result["evaluation"].items()])
    console.print(f"report: {result['report']}")


if __name__ == "__main__":  # pragma: no cover
    main()
