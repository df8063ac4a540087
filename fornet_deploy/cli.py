"""The ``fornet-deploy`` command line: parse, call one function of :mod:`fornet_deploy.api`, print.

One spelling per concept: ``--shape HxW`` for every image size, ``--num-images`` for every
image count, ``--out`` for folders and ``--json`` for result files, ``--precision`` with
the contract's choices (``build-trt --fp16 / --int8 / --fp32`` are shorthands for it).
Every error a user can cause ends in one line on stderr and the exit code of
:class:`~fornet_deploy.errors.ExitCode` (documented in the README); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ._version import __version__
from .contract import (
    CALIBRATION_METHODS,
    CALIBRATION_PERCENTILE,
    CALIBRATION_TARGETS,
    DEFAULT_TAIL,
    DEVICES,
    EXPORT_OUTPUTS,
    ORT_PROVIDERS,
    OUTPUT_NAMES,
    PACKAGE_TARGETS,
    PRECISIONS,
    RUNTIMES,
    TAILS,
    TOPK_FORMS,
    parse_hw,
)
from .data.formats import FORMAT_NAMES
from .errors import WRITE_ERRNOS, ExitCode, FornetError, OptionError

app = typer.Typer(
    help="FoR-Net from training to fast, verified inference (ONNX Runtime, TensorRT, Jetson).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# Choices come from the contract's tables: --help lists them, a wrong value is a usage error.
Runtime = Literal[RUNTIMES]
Precision = Literal[PRECISIONS]
Device = Literal[DEVICES]
TopkForm = Literal[TOPK_FORMS]
Method = Literal[CALIBRATION_METHODS]
Target = Literal[CALIBRATION_TARGETS]
PackageTarget = Literal[PACKAGE_TARGETS]
OrtProvider = Literal[ORT_PROVIDERS]
Tail = Literal[TAILS]

# Options shared by several commands.
BUNDLE = typer.Option(..., help="deploy bundle folder")
RUNTIME = typer.Option("ort", help="inference runtime")
PRECISION = typer.Option("fp32", help="artefact precision")
DEVICE = typer.Option("cpu", help="where to run")
NUM_IMAGES = typer.Option(None, min=1, help="at most this many images (default: all)")
JSON_OUT = typer.Option(None, "--json", help="also write the result to this JSON file")
SPLIT = typer.Option("val", help="dataset split")
DataFormat = Literal[FORMAT_NAMES]
DATA_FORMAT = typer.Option(None, "--format", help="dataset layout [default: detected]")
DATA_HELP = ("dataset folder: Cityscapes (gtFine labelIds or labelTrainIds), CamVid (SegNet layout), or "
             "images/ + masks/ + classes.json; its layout is detected")
ORT_PROVIDER = typer.Option(None, help="with --runtime ort: execution provider (cuda: use_tf32=0; tensorrt: engines "
                                       "cached in BUNDLE/ort_trt_cache) [default: the device's]")


def _clicks_exception_base() -> type[Exception]:
    # typer >= 0.25 vendors click; its exceptions share click's ClickException base.
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Console entry point: every failure a user can cause is one line and an exit code."""
    click_error = _clicks_exception_base()
    try:
        code = app(standalone_mode=False)
    except FornetError as exc:
        # escape: messages hold literal brackets such as 'fornet-deploy[tensorrt]'
        _error(str(exc))
        sys.exit(int(exc.exit_code))
    except click_error as exc:  # unknown option, wrong choice, value out of range
        message = exc.format_message().replace("Value error, ", "")
        if message:  # empty for "no command given", after the help text
            _error(message)
        sys.exit(int(ExitCode.USAGE))
    except (KeyboardInterrupt, typer.Abort):
        code = ExitCode.INTERRUPTED
    except OSError as exc:
        # A full disk or the file-size limit hit by a third-party writer (ONNX, NumPy, OpenCV) is
        # the user's environment; every other OSError is a bug and keeps its traceback.
        if exc.errno not in WRITE_ERRNOS:
            raise
        what = exc.filename or "an output of this command (the writer did not name it)"
        _error(f"cannot write {what}: {exc.strerror}; files already in place are whole (every write is atomic)")
        sys.exit(int(ExitCode.INPUT))
    if code == ExitCode.INTERRUPTED:  # typer turns a KeyboardInterrupt into a silent exit code 130
        _error("interrupted; files already written are complete, nothing is half-written")
    sys.exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", markup=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"fornet-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """FoR-Net from training to fast, verified inference (ONNX Runtime, TensorRT, Jetson)."""


@contextlib.contextmanager
def bar(description: str, total: int | None = None) -> Iterator:
    """A rich progress bar; yields ``update(done, total=None, note="")``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    # stderr keeps stdout for results; transient: the bar is gone once the command prints them
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total, note="")

        def update(done: int, total: int | None = None, note: str = "") -> None:
            progress.update(task, completed=done, total=total if total is not None else progress.tasks[0].total,
                            note=note)

        yield update


def _shape(text: Optional[str], option: str = "--shape") -> tuple[int, int] | None:
    return parse_hw(text, option) if text is not None else None


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


def _json_file(path: Optional[Path], reads: tuple = (), writes: tuple = ()) -> Optional[Path]:
    """``--json PATH`` checked before the command runs (:func:`fornet_deploy.targets.output_file`)."""
    from .targets import output_file

    return output_file(path, "--json", reads=reads, writes=writes)


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        from .io import atomic_write_json

        atomic_write_json(path, data)
        console.print(f"JSON written to {path}")


# --------------------------------------------------------------------------- data and model


@app.command()
def info(
    checkpoint: Optional[Path] = typer.Option(None, help="FoR-Net checkpoint (.safetensors); default config if omitted"),
    shape: str = typer.Option("1024x2048", metavar="HxW", help="input HxW for the FLOP count"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Architecture summary: parameters and GFLOPs at a given input size."""
    from .api import info as run

    _json_file(json_out, reads=(checkpoint,))
    summary = run(checkpoint, _shape(shape))
    print_table("FoR-Net", ["field", "value"], [[k, v] for k, v in summary.items() if k != "config"])
    console.print_json(json.dumps(summary["config"]))
    _write_json(json_out, summary)


@app.command()
def synthcity(
    out: Path = typer.Option(..., help="output folder"),
    train: int = typer.Option(64, min=0, help="training images"),
    val: int = typer.Option(16, min=0, help="validation images"),
    test: int = typer.Option(0, min=0, help="test images"),
    shape: str = typer.Option("256x512", metavar="HxW", help="image HxW"),
    seed: int = typer.Option(0, min=0),
    layout: Literal["cityscapes", "camvid"] = typer.Option(
        "cityscapes", help="cityscapes (19 classes, label ids) or camvid (SegNet's folders, CamVid's 11 classes)"),
):
    """Generate SynthCity, a procedural street-scene dataset in the Cityscapes or CamVid layout (no download)."""
    from .api import synthcity as generate

    with bar("SynthCity") as update:
        generate(out, train, val, _shape(shape), seed, progress=update, test=test, layout=layout)
    console.print(f"wrote {train} train + {val} val + {test} test images ({layout} layout) to {out}")


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., help=DATA_HELP),
    out: Path = typer.Option(..., help="run folder for checkpoints and logs"),
    data_format: Optional[DataFormat] = DATA_FORMAT,
    train_split: str = typer.Option("train", help="split(s) to train on, e.g. train+val"),
    val_split: str = typer.Option("val", help="split to validate on"),
    iterations: int = typer.Option(2000, min=1),
    batch_size: int = typer.Option(8, min=1, help="per process"),
    shape: str = typer.Option("256x256", metavar="HxW", help="training crop HxW"),
    lr: float = typer.Option(4e-3, min=0.0, help="peak learning rate"),
    optimizer: Literal["adamw", "sgd"] = typer.Option("adamw"),
    loss: Literal["ohem", "ce"] = typer.Option("ohem"),
    selector_loss_weight: float = typer.Option(0.4, min=0.0, help="auxiliary hard-region loss on the importance map (0 = off)"),
    focus: Literal["topk", "adaptive", "none"] = typer.Option("topk", help="none = ablation without selector/Top-K"),
    topk_ratio: float = typer.Option(0.25, help="fraction of 1/8-scale cells selected, in (0, 1]"),
    val_interval: int = typer.Option(500, min=1),
    seed: int = typer.Option(0, min=0),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto"),
    no_amp: bool = typer.Option(False, "--no-amp", help="disable mixed precision on CUDA"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.state.safetensors"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Train FoR-Net (single process, or multi-GPU/multi-node under torchrun)."""
    from .api import train_model as train

    _json_file(json_out, reads=(data,), writes=(out,))
    crop_h, crop_w = _shape(shape)
    with bar("train", total=iterations) as update:
        summary = train(data, out, resume=resume, focus=focus, topk_ratio=topk_ratio, iterations=iterations,
                        batch_size=batch_size, crop_height=crop_h, crop_width=crop_w, lr=lr, optimizer=optimizer,
                        loss=loss, selector_loss_weight=selector_loss_weight, val_interval=val_interval, seed=seed,
                        device=device, amp=not no_amp, format=data_format, train_split=train_split,
                        val_split=val_split,
                        on_step=lambda done, total, m: update(done, total, f"loss {m['loss']:.3f}"))
    if summary["rank"] != 0:  # under torchrun, one process reports
        return
    last = summary["history"][-1] if summary["history"] else {}
    console.print(
        f"trained to iteration {summary['iterations']} in {summary['seconds']:.0f} s; "
        f"val mIoU {_fmt(last.get('miou'))}, best {_fmt(summary['best_miou'])}; checkpoints in {out}"
    )
    _write_json(json_out, summary)


# --------------------------------------------------------------------------- artefacts


@app.command()
def export(
    checkpoint: Path = typer.Option(..., help="FoR-Net checkpoint (.safetensors)"),
    out: Path = typer.Option(..., help="bundle folder to create or update"),
    shape: str = typer.Option("512x1024", metavar="HxW", help="export input HxW (multiples of 32)"),
    batch: int = typer.Option(1, min=1),
    dynamic: bool = typer.Option(False, "--dynamic", help="dynamic batch, height and width"),
    topk: TopkForm = typer.Option("threshold", help="threshold (export-friendly) or exact (torch.topk)"),
    opset: int = typer.Option(17, min=13, max=21),
    outputs: str = typer.Option(",".join(OUTPUT_NAMES), help=f"comma-separated outputs, of {','.join(EXPORT_OUTPUTS)}"),
    labels_dtype: Literal["uint8", "int32"] = typer.Option("uint8", help="dtype of the in-graph ArgMax output"),
    tail: Tail = typer.Option(DEFAULT_TAIL, help="labels of the CPU graphs (model.cpu.onnx, later the CPU INT8 graph): "
                                                 "refine = the full-resolution labels without the full-resolution "
                                                 "logits; nearest = the 1/4-scale argmax x4; full = no CPU graph"),
    precision: Literal["fp32", "fp16"] = typer.Option("fp32", help="fp16 also writes model.fp16.onnx"),
    labels: Optional[Path] = typer.Option(None, help="classes file (classes.json / classes.txt) naming the model's "
                                                     "classes [default: the checkpoint's own]"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Export a checkpoint to ONNX in a deploy bundle (checked, simplified, hashed)."""
    from .api import export_model as run

    _json_file(json_out, reads=(checkpoint, labels), writes=(out,))
    entries = run(checkpoint, out, _shape(shape), precision=precision, batch=batch, dynamic=dynamic, topk=topk,
                  opset=opset, outputs=[o.strip() for o in outputs.split(",") if o.strip()], labels_dtype=labels_dtype,
                  tail=tail, labels=labels)
    print_table(f"bundle {out}", ["artefact", "precision", "sha256", "bytes"],
                [[name, e["precision"], e["sha256"][:12], e["bytes"]] for name, e in entries.items()])
    _write_json(json_out, entries)


@app.command()
def lint(
    model: Path = typer.Argument(..., help="ONNX file"),
    target: Literal["tensorrt"] = typer.Option("tensorrt", help="deployment target"),
    json_out: Optional[Path] = JSON_OUT,
):
    """List what the TensorRT ONNX parser will reject or handle badly (exit 1 on blockers)."""
    from .api import lint as run

    _json_file(json_out, reads=(model,))
    report = run(model, target)
    if report["findings"]:
        print_table(f"{model} ({target})", ["severity", "check", "node", "message"],
                    [[f["severity"], f["check"], f["node"], f["message"]] for f in report["findings"]])
    if report["counts"]:
        console.print("per check: " + ", ".join(f"{check} {count}" for check, count in report["counts"].items()))
    console.print(f"{'PASS' if report['passed'] else 'FAIL'}: {report['blockers']} blockers, {report['warnings']} warnings")
    _write_json(json_out, report)
    if not report["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command()
def calibrate(
    bundle: Path = BUNDLE,
    data: Path = typer.Option(..., help="dataset root (Cityscapes layout); images from its train split"),
    num_images: int = typer.Option(64, min=1, help="calibration images"),
    method: Method = typer.Option("entropy", help="calibration method"),
    target: Target = typer.Option("tensorrt", help="tensorrt: INT8 Q/DQ on the FP16 graph, placed for TensorRT; "
                                                   "cpu: U8S8 for ONNX Runtime on x86"),
    seed: int = typer.Option(0, min=0, help="seed of the calibration-image selection"),
    percentile: float = typer.Option(CALIBRATION_PERCENTILE, help="--method percentile: the share of values kept"),
    json_out: Optional[Path] = JSON_OUT,
):
    """INT8 Q/DQ graph calibrated on a deterministic, class-balanced image set (selector kept FP32);
    the ranges are measured once per image set and method and shared by both targets."""
    from .api import calibrate as run

    _json_file(json_out, reads=(data,), writes=(bundle,))
    with bar(f"calibrate {method} -> {target}") as update:
        entry = run(bundle, data, num_images=num_images, method=method, target=target, seed=seed,
                    percentile=percentile, progress=update)
    ranges = entry["calibration"]["ranges"]
    how = ("cached in the bundle" if ranges["cached"]
           else f"collected in {ranges['total_s']:.1f} s on {ranges['device']}")
    print_table(f"INT8 ({target}) from {entry['source']}", ["field", "value"], [
        ["method", entry["method"]], ["images", entry["calibration"]["num_images"]],
        ["calibration key", entry["calibration"]["key"][:16]], ["ranges", f"{ranges['tensors']} tensors, {how}"],
        *([["quantized convs", entry["placement"]["quantized_convs"]]] if "placement" in entry else []),
        ["nodes kept FP32", len(entry["excluded_nodes"])], ["sha256", entry["sha256"][:12]],
    ])
    _write_json(json_out, entry)


def _build_precision(precision: Optional[str], fp16: bool, int8: bool, fp32: bool) -> str:
    flags = [name for name, on in (("fp16", fp16), ("int8", int8), ("fp32", fp32)) if on]
    chosen = set(flags) | ({precision} if precision else set())
    if len(chosen) != 1:
        raise OptionError("build-trt: choose one precision: --fp16, --int8, --fp32 or --precision fp32|fp16|int8")
    return chosen.pop()


@app.command("build-trt")
def build_trt(
    bundle: Path = BUNDLE,
    fp16: bool = typer.Option(False, "--fp16", help="shorthand for --precision fp16 (from model.fp16.onnx)"),
    int8: bool = typer.Option(False, "--int8", help="shorthand for --precision int8 (from model.int8.qdq.onnx)"),
    fp32: bool = typer.Option(False, "--fp32", help="shorthand for --precision fp32 (from model.onnx)"),
    precision: Optional[Precision] = typer.Option(None, help="engine precision"),
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="optimization profile optimum HxW (default: the export shape)"),
    min_shape: Optional[str] = typer.Option(None, metavar="HxW", help="profile minimum HxW (default: --shape)"),
    max_shape: Optional[str] = typer.Option(None, metavar="HxW", help="profile maximum HxW (default: --shape)"),
    batch: int = typer.Option(1, min=1, help="profile optimum batch"),
    min_batch: Optional[int] = typer.Option(None, min=1, help="profile minimum batch (default: --batch)"),
    max_batch: Optional[int] = typer.Option(None, min=1, help="profile maximum batch (default: --batch)"),
    workspace: Optional[int] = typer.Option(None, min=1, help="workspace limit in MB"),
    timing_cache: Optional[Path] = typer.Option(None, help="timing cache file (read if present, updated after the build)"),
    dla_core: Optional[int] = typer.Option(None, min=0, help="build for this DLA core (Jetson)"),
    legacy_calibrator: bool = typer.Option(False, "--legacy-calibrator",
                                           help="TensorRT 10.x only: FP32 graph + builder flags (+ entropy calibrator for int8)"),
    data: Optional[Path] = typer.Option(None, help="dataset for --legacy-calibrator --int8"),
    num_images: int = typer.Option(64, min=1, help="calibration images for --legacy-calibrator --int8"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Build a TensorRT engine from the bundle's graph of the chosen precision."""
    from .api import build_engine

    _json_file(json_out, reads=(data,), writes=(bundle, timing_cache))
    meta = build_engine(bundle, _build_precision(precision, fp16, int8, fp32), shape=_shape(shape),
                        min_shape=_shape(min_shape, "--min-shape"), max_shape=_shape(max_shape, "--max-shape"),
                        batch=batch, min_batch=min_batch, max_batch=max_batch, workspace_mb=workspace,
                        timing_cache=timing_cache, dla_core=dla_core, legacy_calibrator=legacy_calibrator,
                        data=data, num_images=num_images, progress=console.print)
    print_table(f"engine {meta['engine']}", ["field", "value"],
                [[k, v] for k, v in meta.items() if not isinstance(v, (dict, list))])
    _write_json(json_out, meta)


# --------------------------------------------------------------------------- verification


def _off_k(summary: dict) -> str | None:
    selection = summary.get("topk_selection")
    if selection is None:
        return None
    return f"{selection['images_over_k'] + selection['images_under_k']} (extra cells {selection['extra_cells']})"


def _check(summary: dict, key: str) -> str:
    if key not in summary["checks"]:
        return ""
    return "ok" if summary["checks"][key] else "FAIL"


@app.command()
def parity(
    bundle: Path = BUNDLE,
    runtime: Runtime = RUNTIME,
    precision: Precision = PRECISION,
    device: Device = DEVICE,
    data: Optional[Path] = typer.Option(None, help="dataset root (Cityscapes layout); else synthetic images"),
    split: str = SPLIT,
    num_images: Optional[int] = typer.Option(None, min=1, help="at most this many images (default: all; 8 synthetic)"),
    out: Optional[Path] = typer.Option(None, help="report folder (default BUNDLE/parity/RUNTIME-PRECISION)"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
    json_out: Optional[Path] = JSON_OUT,
):
    """Compare an artefact with the PyTorch FP32 reference (exit 1 when parity fails)."""
    from .api import parity as run

    with bar(f"parity {runtime} {precision}") as update:
        report = run(bundle, runtime, precision, device, data, split=split, num_images=num_images, out=out,
                     json_out=json_out, progress=update, ort_provider=ort_provider)
    s = report["summary"]
    which = f" ({', '.join(s['logits_compared'])})" if s["logits_compared"] else ""
    print_table(f"parity: {runtime} {precision} vs torch fp32 (exact Top-K)", ["metric", "value", "check"], [
        ["images", s["images"], ""],
        [f"max |logit diff|{which}", s["max_abs_logit"], ""],
        ["  away from near-tie Top-K swaps", s["max_abs_logit_outside_ties"], _check(s, "max_abs_logit")],
        ["near-tie Top-K swaps (cells)", s["near_tie_cells"], ""],
        [f"mean |logit diff|{which}", s["mean_abs_logit"], ""],
        ["argmax agreement", s["argmax_agreement"], _check(s, "argmax_agreement")],
        ["Top-K mask agreement", s["mask_agreement"], _check(s, "mask_agreement")],
        ["images with identical mask", s["mask_identical_images"], ""],
        ["images off k (Top-K cells)", _off_k(s), _check(s, "topk_count")],
        ["agreement mIoU", s["agreement_miou"], ""],
    ])
    console.print(f"{'PASS' if s['passed'] else 'FAIL'}; report {report['report_path']}")
    if not s["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command("eval")
def eval_cmd(
    bundle: Path = BUNDLE,
    data: Path = typer.Option(..., help="dataset root (Cityscapes layout)"),
    runtime: Runtime = RUNTIME,
    precision: Precision = PRECISION,
    device: Device = DEVICE,
    split: str = SPLIT,
    num_images: Optional[int] = NUM_IMAGES,
    boundary_width: int = typer.Option(3, min=1, max=64, help="boundary band half-width in pixels"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
    json_out: Optional[Path] = JSON_OUT,
):
    """mIoU, per-class IoU, boundary IoU, thin-structure IoU and Top-K coverage of one artefact."""
    from .api import evaluate

    with bar(f"eval {runtime} {precision}") as update:
        result = evaluate(bundle, data, runtime, precision, device, split=split, num_images=num_images,
                          boundary_width=boundary_width, json_out=json_out, progress=update, ort_provider=ort_provider)
    print_table("per-class IoU", ["class", "IoU", "boundary IoU"],
                [[c, v, result["boundary_iou_per_class"].get(c)] for c, v in result["iou_per_class"].items()])
    print_table(f"{runtime} {precision} on {split}", ["metric", "value"], [
        ["mIoU", result["miou"]], ["boundary IoU", result["boundary_iou"]], ["thin-structure IoU", result["thin_iou"]],
        ["pixel accuracy", result["pixel_accuracy"]], ["Top-K coverage of boundaries", result["topk_coverage_boundary"]],
        ["Top-K coverage of errors", result["topk_coverage_errors"]], ["images", result["num_images"]],
    ])
    if json_out:
        console.print(f"JSON written to {json_out}")


@app.command()
def bench(
    bundle: Path = BUNDLE,
    device: Device = DEVICE,
    runtime: Runtime = RUNTIME,
    precision: Precision = PRECISION,
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="input HxW (default: the export shape)"),
    batch: int = typer.Option(1, min=1),
    warmup: int = typer.Option(10, min=0),
    iters: int = typer.Option(50, min=1),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch / ONNX Runtime"),
    images: Optional[Path] = typer.Option(None, help="real images (file, folder or dataset root) for end-to-end timing"),
    matrix: bool = typer.Option(False, "--matrix", help="every runtime x precision in the bundle, with accuracy"),
    data: Optional[Path] = typer.Option(None, help="with --matrix: labelled dataset for the mIoU column"),
    num_images: int = typer.Option(8, min=1, help="with --matrix: images for the accuracy columns"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
    profile: bool = typer.Option(False, "--profile", help="also ONNX Runtime's profiler breakdown by op type and by "
                                                          "scope (backbone, neck, focus, selector, Top-K, head, tail)"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Latency (p50/p90/p99), throughput, end-to-end time and memory; --matrix compares every artefact."""
    from .api import benchmark
    from .bench.tables import bench_rows, busy_line, machine_line, profile_tables

    with bar("bench matrix" if matrix else f"bench {runtime} {precision}") as update:
        result = benchmark(bundle, runtime, precision, device, shape=_shape(shape), batch=batch, warmup=warmup,
                           iters=iters, threads=threads, images=images, matrix=matrix, data=data,
                           num_images=num_images, json_out=json_out, progress=update, ort_provider=ort_provider,
                           profile=profile)
    columns, rows = bench_rows(result)
    print_table(f"benchmark on {machine_line(result['machine'])}", columns, rows)
    for title, columns, rows in profile_tables(result):
        print_table(title, columns, rows)
    if (busy := busy_line(result)) is not None:
        console.print(busy)
    if json_out:
        console.print(f"JSON written to {json_out}")


@app.command()
def predict(
    inputs: list[str] = typer.Argument(..., help="images, folders, videos; or a camera index (0), a URL "
                                                 "(rtsp://, http://) or a GStreamer pipeline (holds '!')"),
    bundle: Path = BUNDLE,
    out: Path = typer.Option(..., help="output folder"),
    runtime: Runtime = RUNTIME,
    precision: Precision = PRECISION,
    device: Device = DEVICE,
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="network input HxW (images are resized, predictions resized back)"),
    importance: bool = typer.Option(False, "--importance", help="also write the importance-map heat map"),
    mask: bool = typer.Option(False, "--mask", help="also write the Top-K mask picture"),
    label_ids: bool = typer.Option(False, "--label-ids", help="also write Cityscapes labelIds maps (for submission)"),
    video_every: int = typer.Option(1, min=1, help="process every n-th video frame"),
    max_frames: Optional[int] = typer.Option(None, min=1, help="at most this many processed frames per video "
                                                               "or live source (a live source runs until Ctrl-C)"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
):
    """Segment images, folders, videos and live sources: label maps, colour overlays, and what FoR-Net focused on."""
    from .api import predict_files as run

    with bar("predict") as update:
        summary = run(bundle, inputs, out, runtime, precision, device, progress=update, shape=_shape(shape),
                      importance=importance, mask=mask, label_ids=label_ids, video_every=video_every,
                      max_frames=max_frames, ort_provider=ort_provider)
    for note in summary.get("notes", []):
        console.print(note)
    reasons = {"end": "the source ended", "max_frames": "--max-frames"}  # else the signal's name
    for item in summary["items"]:
        if item["kind"] == "stream":
            console.print(f"{escape(item['source'])}: stopped after {item['frames']} frames "
                          f"({reasons.get(item['ended'], item['ended'])})")
    console.print(f"wrote {len(summary['files'])} files to {out} (list in {summary['report']})")


@app.command("package")
def package_cmd(
    bundle: Path = BUNDLE,
    target: PackageTarget = typer.Option(..., help="serving stack"),
    out: Path = typer.Option(..., help="output folder; an earlier package's files are replaced, other files kept"),
    precision: Precision = PRECISION,
    device: Optional[Device] = typer.Option(None, help="triton: cuda/jetson (KIND_GPU, TensorRT EP) or cpu [default: cuda]"),
    instances: Optional[int] = typer.Option(None, min=1, help="triton: model instances [default: 1]"),
    max_batch: Optional[int] = typer.Option(None, min=1, help="triton: max_batch_size for dynamic-batch graphs [default: 8]"),
    batch: Optional[int] = typer.Option(None, min=1, help="deepstream: nvinfer batch-size [default: 1]"),
    gpu_id: Optional[int] = typer.Option(None, min=0, help="deepstream: gpu-id [default: 0]"),
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="deepstream: infer-dims of a dynamic graph [default: export shape]"),
    video: Optional[str] = typer.Option(None, help="deepstream: deepstream-app source URI [default: DeepStream's sample clip]"),
    data: Optional[Path] = typer.Option(None, help="deepstream: dataset to measure the single-scale pre-processing on"),
    num_images: Optional[int] = typer.Option(None, min=1, help="deepstream: images for that measurement [default: 16]"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Hand the bundle to a serving stack: a Triton model repository or a DeepStream nvinfer config."""
    from .api import package_bundle

    _json_file(json_out, reads=(bundle, data), writes=(out,))
    given = {"device": device, "instances": instances, "max_batch": max_batch, "batch": batch, "gpu_id": gpu_id,
             "shape": _shape(shape), "video": video, "data": data, "num_images": num_images}
    summary = package_bundle(bundle, target, out, precision, **{k: v for k, v in given.items() if v is not None})
    if target == "triton":
        rows = [[name, m["platform"], m["source"], m["max_batch_size"]] for name, m in summary["models"].items()]
        print_table(f"Triton model repository {out}", ["model", "platform", "from", "max_batch_size"], rows)
    else:
        prop = summary["nvinfer"]
        print_table(f"DeepStream package {out}", ["nvinfer key", "value"],
                    [[k, prop[k]] for k in ("onnx-file", "infer-dims", "network-mode", "net-scale-factor", "offsets")])
        cost = summary["single_scale_cost"]
        if cost:
            console.print(f"single net-scale-factor: labels agreement {cost['labels_agreement']:.4%} with the exact "
                          f"pre-processing on {cost['images_from']}"
                          + (f", mIoU {cost['miou_difference']:+.4f}" if "miou_difference" in cost else ""))
    for note in summary.get("notes", []):
        console.print(note)
    console.print(f"wrote {len(summary['files'])} files to {out} (see {out / 'README.md'})")
    _write_json(json_out, summary)


@app.command()
def demo(
    out: Path = typer.Option(Path("fornet-demo"), help="output folder for data, bundle, results and report"),
    weights: Optional[Path] = typer.Option(None, help="checkpoint to use (default: the shipped SynthCity weights)"),
    train_iterations: int = typer.Option(300, min=1, help="CPU training iterations when no weights are found"),
    bench_iters: int = typer.Option(20, min=1, help="timed iterations per artefact"),
):
    """The whole pipeline on SynthCity, on this CPU, with a report: train/load -> export -> INT8 -> parity -> eval -> bench."""
    from .api import run_demo as run

    result = run(out, weights, train_iterations=train_iterations, bench_iters=bench_iters,
                 log=lambda line: console.print(f"[bold cyan]demo[/] {escape(line)}"))
    print_table("parity vs PyTorch FP32", ["artefact", "argmax agreement", "mask agreement", "pass"],
                [[f"ort {p}", s["argmax_agreement"], s["mask_agreement"], "yes" if s["passed"] else "NO"]
                 for p, s in result["parity"].items()])
    print_table("accuracy (SynthCity val)", ["runtime precision", "mIoU", "boundary IoU", "thin IoU"],
                [[k, e["miou"], e["boundary_iou"], e["thin_iou"]] for k, e in result["evaluation"].items()])
    console.print(f"report: {result['report']}")
    if not result["passed"]:  # so that `fornet-deploy demo` can gate CI
        console.print(f"FAIL: {', '.join(result['failed'])}")
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


if __name__ == "__main__":  # pragma: no cover
    main()
