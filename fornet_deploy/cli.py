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
    MAX_DROP_IMAGES,
    ORT_PROVIDERS,
    OUTPUT_NAMES,
    PACKAGE_TARGETS,
    PRECISIONS,
    RUN_PRECISIONS,
    RUNTIMES,
    TAILS,
    TOPK_FORMS,
    parse_hw,
)
from .data.formats import FORMAT_NAMES
from .deploy import TARGET_NAMES as DEPLOY_TARGETS
from .errors import WRITE_ERRNOS, ExitCode, FornetError, OptionError

# Help as click writes it (rich_markup_mode=None): wrapped to the terminal, never cut (rich's
# panels cut option names and defaults on narrow terminals), flags without a value placeholder,
# and "[default: ...]" in help texts kept as text rather than read as markup.
app = typer.Typer(
    help="FoR-Net from training to fast, verified inference (ONNX Runtime, TensorRT, OpenVINO, Jetson).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# Choices come from the contract's tables: --help lists them, a wrong value is a usage error.
Runtime = Literal[RUNTIMES]
Precision = Literal[PRECISIONS]
RunPrecision = Literal[RUN_PRECISIONS]
Device = Literal[DEVICES]
TopkForm = Literal[TOPK_FORMS]
Method = Literal[CALIBRATION_METHODS]
Target = Literal[CALIBRATION_TARGETS]
PackageTarget = Literal[PACKAGE_TARGETS]
OrtProvider = Literal[ORT_PROVIDERS]
Tail = Literal[TAILS]
DeployTargetName = Literal[DEPLOY_TARGETS]

# Options shared by several commands.
BUNDLE = typer.Option(..., help="deploy bundle folder")
RUNTIME = typer.Option("ort", help="inference runtime")
PRECISION = typer.Option("fp32", help="artefact precision")
RUN_PRECISION = typer.Option(None, help="artefact precision (bf16: OpenVINO on a CPU with BF16) "
                                         "[default: fp32, or the --artifact's]")
ARTIFACT = typer.Option(None, help="a specific file of the bundle, e.g. model.onnx where a CPU runs model.cpu.onnx "
                                   "[default: the format table's choice]")
DEVICE = typer.Option("cpu", help="where to run (gpu / npu: an Intel GPU / NPU, with --runtime openvino)")
RUN_DEVICE = typer.Option(None, help="where to run (gpu / npu: Intel, with --runtime openvino) "
                                      "[default: cpu; cuda for --runtime trt]")
FP16 = typer.Option(False, "--fp16", help="shorthand for --precision fp16")
INT8 = typer.Option(False, "--int8", help="shorthand for --precision int8")
FP32 = typer.Option(False, "--fp32", help="shorthand for --precision fp32")
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
        command = typer.main.get_command(app)
        refuse_flag_values(command, sys.argv[1:])
        code = command(standalone_mode=False)
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


# What a value given to a flag looks like (`--mask true`): click would read it as the next
# positional argument, e.g. an input of `predict` named "true", or camera 0 for `--mask 0`.
BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "t", "f", "1", "0"})


def refuse_flag_values(group, argv: list[str]) -> None:
    """A flag followed by a yes/no word is a usage error, before anything runs."""
    name = next((arg for arg in argv if arg in group.commands), None)
    if name is None:
        return
    flags = {opt for param in group.commands[name].params if getattr(param, "is_flag", False) for opt in param.opts}
    for flag, value in zip(argv, argv[1:]):
        if flag in flags and value.lower() in BOOL_WORDS:
            raise OptionError(f"{flag} is a flag and takes no value: write {flag} alone "
                              f"(the {value!r} after it would be read as an argument)")


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", markup=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"fornet-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """FoR-Net from training to fast, verified inference (ONNX Runtime, TensorRT, OpenVINO, Jetson)."""


LOG_EVERY_S = 10.0  # without a terminal: the least time between two progress lines


@contextlib.contextmanager
def bar(description: str, total: int | None = None) -> Iterator:
    """A rich progress bar; yields ``update(done, total=None, note="")``. Where stderr is no
    terminal (CI logs, pipes), a line instead: one when the stage ends, and one every
    :data:`LOG_EVERY_S` seconds while it runs."""
    if not err_console.is_terminal:
        with progress_lines(description, total) as update:
            yield update
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    # stderr keeps stdout for results; transient: the bar is gone once the command prints them
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total, note="")

        def update(done: int, total: int | None = None, note: str = "") -> None:
            progress.update(task, completed=done, total=total if total is not None else progress.tasks[0].total,
                            note=note)

        yield update


@contextlib.contextmanager
def progress_lines(description: str, total: int | None = None) -> Iterator:
    """:func:`bar` without a terminal: ``description: done/total note`` lines on stderr."""
    import time

    start = last = time.monotonic()
    state = {"done": 0, "total": total, "note": ""}

    def line(elapsed: float) -> str:
        count = f"{state['done']}/{state['total']}" if state["total"] else str(state["done"])
        return f"{description}: {count} in {elapsed:.1f} s" + (f" ({state['note']})" if state["note"] else "")

    def update(done: int, total: int | None = None, note: str = "") -> None:
        nonlocal last
        state.update(done=done, note=note, total=total if total is not None else state["total"])
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            err_console.print(line(now - start), markup=False, highlight=False)

    yield update
    err_console.print(line(time.monotonic() - start) + ", done", markup=False, highlight=False)


def _shape(text: Optional[str], option: str = "--shape") -> tuple[int, int] | None:
    return parse_hw(text, option) if text is not None else None


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """A rich table that never cuts a value: the first column (the names rows are found by)
    keeps its width, the others wrap at spaces (:func:`column_widths`)."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = column_widths([[c, *(r[i] for r in cells)] for i, c in enumerate(columns)], console.width)
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, no_wrap=i == 0, overflow="fold", width=widths[i] if widths else None)
    for r in cells:
        table.add_row(*r)
    console.print(table)


def column_widths(texts: list[list[str]], terminal: int) -> list[int] | None:
    """Column widths (``texts``: each column's header and cells) for a table on ``terminal``
    columns: None when every text fits on one line (rich sizes it); else the first column's
    full width and every other column its longest word plus a share of what is left, in
    proportion to what it needs for one line, so that no word is split; None where even
    that does not fit (rich folds long words then, it never cuts them)."""
    room = terminal - 3 * len(texts) - 1  # a border and two spaces of padding a column
    natural = [max(len(t) for t in column) for column in texts]
    if sum(natural) <= room:
        return None
    least = [natural[0]] + [max(len(w) for t in column for w in t.split() or [""]) for column in texts[1:]]
    spare = room - sum(least)
    if spare < 0:
        return None
    wants = [n - m for n, m in zip(natural, least)]
    shares = [spare * w // max(sum(wants), 1) for w in wants]
    return [m + s for m, s in zip(least, shares)]


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
    checkpoint: Optional[Path] = typer.Option(None, help="FoR-Net checkpoint (.safetensors; 'shipped': the shipped "
                                                         "weights); default config if omitted"),
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
    batch: Optional[int] = typer.Option(None, min=1, help="images per step and process [default: 8]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, hidden=True),  # the old spelling
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
    init: Optional[Path] = typer.Option(None, "--init", metavar="CHECKPOINT",
                                        help="start from these weights (same architecture and classes) with a "
                                             "fresh optimizer and schedule: fine-tuning, or a second schedule"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Train FoR-Net (single process, or multi-GPU/multi-node under torchrun)."""
    from .api import train_model as train

    _json_file(json_out, reads=(data,) + ((init,) if init else ()), writes=(out,))
    crop_h, crop_w = _shape(shape)
    batch = _renamed(batch, batch_size, "--batch", "--batch-size") or 8
    with bar("train", total=iterations) as update:
        summary = train(data, out, resume=resume, focus=focus, topk_ratio=topk_ratio, iterations=iterations,
                        batch_size=batch, crop_height=crop_h, crop_width=crop_w, lr=lr, optimizer=optimizer,
                        loss=loss, selector_loss_weight=selector_loss_weight, val_interval=val_interval, seed=seed,
                        device=device, amp=not no_amp, format=data_format, train_split=train_split,
                        val_split=val_split, init=str(init) if init else None,
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
    checkpoint: Path = typer.Option(..., help="FoR-Net checkpoint (.safetensors); 'shipped': the SynthCity weights "
                                              "shipped in the package"),
    out: Path = typer.Option(..., help="bundle folder to create or update"),
    shape: str = typer.Option("512x1024", metavar="HxW", help="export input HxW, any size (padded to a multiple "
                                                             "of 32 in the graph, outputs cropped back)"),
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
                  tail=tail, labels=labels, log=lambda line: console.print(escape(line)))
    print_table(f"bundle {out}", ["artefact", "precision", "sha256", "bytes"],
                [[name, e["precision"], e["sha256"][:12], e["bytes"]] for name, e in entries.items()])
    _write_json(json_out, entries)


@app.command()
def inspect(
    bundle: Path = typer.Argument(..., help="deploy bundle folder"),
    json_out: Optional[Path] = JSON_OUT,
):
    """What a bundle holds: artefacts, their lineage, inputs and outputs, label set, sizes, parity reports."""
    from .api import inspect_bundle

    _json_file(json_out, reads=(bundle,))
    found = inspect_bundle(bundle)
    export, labels = found["export"], found["labels"]
    dynamic = " (dynamic batch, height and width)" if export["dynamic"] else ""
    print_table(f"bundle {bundle}", ["field", "value"], [
        ["export shape", f"{export['batch']}x3x{export['height']}x{export['width']}{dynamic}"],
        ["Top-K", f"{found['topk']['focus']} {found['topk']['ratio']} ({found['topk']['mode']})"],
        ["labels", f"{labels['name']}: {len(labels['classes'])} classes ({', '.join(labels['classes'][:6])}"
                   f"{', ...' if len(labels['classes']) > 6 else ''})"],
        ["thin classes", ", ".join(labels["thin"]) or "-"],
        ["total size", f"{found['total_bytes'] / 1e6:.1f} MB"],
    ])
    print_table("artefacts", ["artefact", "kind", "precision", "made from", "MB", "sha256", "status"],
                [[a["name"], a["kind"], a["precision"], a["source"], f"{(a['bytes'] or 0) / 1e6:.2f}",
                  (a["sha256"] or "")[:12], a["status"]] for a in found["artifacts"]])
    print_table("inputs and outputs", ["artefact", "tensor", "", "dtype", "shape"],
                [[a["name"], t["name"], direction, t["dtype"], t["shape"]] for a in found["artifacts"]
                 for direction, tensors in (("in", a["inputs"]), ("out", a["outputs"])) for t in tensors])
    if found["parity_reports"]:
        print_table("parity reports", ["folder", "passed", "describes the artefacts"],
                    [[r["folder"], r["passed"], "yes" if r["current"] else "no (stale: run parity again)"]
                     for r in found["parity_reports"]])
    _write_json(json_out, found)


LINT_TOP = 10  # findings listed without --all (blockers first)
SEVERITY_ORDER = {"blocker": 0, "warning": 1, "info": 2}


@app.command()
def lint(
    model: Path = typer.Argument(..., help="ONNX file, or a bundle folder (its graphs TensorRT builds from)"),
    target: Literal["tensorrt"] = typer.Option("tensorrt", help="deployment target"),
    show_all: bool = typer.Option(False, "--all", help=f"list every finding [default: counts per check and the "
                                                        f"first {LINT_TOP}, blockers first]"),
    json_out: Optional[Path] = JSON_OUT,
):
    """List what the TensorRT ONNX parser will reject or handle badly (exit 1 on blockers)."""
    from .api import lint as run

    _json_file(json_out, reads=(model,))
    result = run(model, target)
    reports = result["graphs"] if "graphs" in result else {model.name: result}
    if "graphs" in result:
        print_table(f"{model}: the graphs TensorRT builds from ({target})",
                    ["graph", "blockers", "warnings", "findings per check", "verdict"],
                    [[name, r["blockers"], r["warnings"], ", ".join(f"{c} {n}" for c, n in r["counts"].items()) or "-",
                      "PASS" if r["passed"] else "FAIL"] for name, r in reports.items()])
    for name, report in reports.items():
        _print_lint(name, report, target, show_all, detailed="graphs" not in result or show_all)
    _write_json(json_out, result)
    if not result["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _print_lint(name: str, report: dict, target: str, show_all: bool, detailed: bool) -> None:
    """One graph's lint: counts per check and the first findings (all with ``show_all``)."""
    if report.get("not_for_target"):
        console.print(f"NOT LINTED: {report['not_for_target']}", highlight=False, markup=False)
        return
    findings = sorted(report["findings"], key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))
    if detailed and findings:
        checks: dict[str, list[dict]] = {}
        for f in findings:
            checks.setdefault(f["check"], []).append(f)
        print_table(f"{name} ({target}): findings per check", ["check", "severity", "findings", "first node"],
                    [[check, found[0]["severity"], len(found), found[0]["node"]] for check, found in checks.items()])
        shown = findings if show_all else findings[:LINT_TOP]
        console.print(f"{name}: {'every finding' if show_all else 'the first findings'}", style="bold")
        for f in shown:  # lines, not a table: long node names would squeeze the messages
            console.print(f"- {f['severity']} {f['check']} at {f['node']}: {f['message']}", highlight=False,
                          markup=False)
        if len(shown) < len(findings):
            console.print(f"{len(findings) - len(shown)} more findings: --all lists them", highlight=False)
    console.print(f"{name}: {'PASS' if report['passed'] else 'FAIL'}: {report['blockers']} blockers, "
                  f"{report['warnings']} warnings", highlight=False, markup=False)


@app.command()
def calibrate(
    bundle: Path = BUNDLE,
    data: Path = typer.Option(..., help="a dataset (its train split), a folder of images, or a video file"),
    num_images: int = typer.Option(64, min=1, help="calibration images (video: frames spread evenly)"),
    method: Method = typer.Option("entropy", help="calibration method"),
    target: Target = typer.Option("tensorrt", help="tensorrt: INT8 Q/DQ on the FP16 graph, placed for TensorRT; "
                                                   "cpu: U8S8 for ONNX Runtime on x86"),
    seed: int = typer.Option(0, min=0, help="seed of the calibration-image selection"),
    percentile: float = typer.Option(CALIBRATION_PERCENTILE, help="--method percentile: the share of values kept"),
    max_drop: Optional[float] = typer.Option(
        None, metavar="POINTS", help="accuracy budget: leave the most sensitive convolutions float until the mIoU "
        "drop against model.onnx on held-out labelled images is at most POINTS (0..100); exit 1, writing nothing, "
        "when leaving all of them float still misses it"),
    max_drop_data: Optional[Path] = typer.Option(
        None, help="labelled dataset whose val split --max-drop scores on (calibration images left out) "
        "[default: --data]"),
    max_drop_images: Optional[int] = typer.Option(None, help=f"held-out images for --max-drop [default: "
                                                                     f"{MAX_DROP_IMAGES}]"),
    json_out: Optional[Path] = JSON_OUT,
):
    """INT8 Q/DQ graph calibrated on a deterministic image set, resized to the network input
    (class-balanced from a labelled dataset; selector kept FP32); the ranges are measured once
    per image set and method and shared by both targets. --max-drop: an accuracy budget."""
    from .api import calibrate as run

    _json_file(json_out, reads=(data,), writes=(bundle,))
    with bar(f"calibrate {method} -> {target}") as update:
        entry = run(bundle, data, num_images=num_images, method=method, target=target, seed=seed,
                    percentile=percentile, progress=update, max_drop=max_drop, max_drop_data=max_drop_data,
                    max_drop_images=max_drop_images)
    calibration = entry["calibration"]
    ranges, resized = calibration["ranges"], calibration["resized"]
    how = ("cached in the bundle" if ranges["cached"]
           else f"collected in {ranges['total_s']:.1f} s on {ranges['device']}")
    print_table(f"INT8 ({target}): {entry['artifact']} from {entry['source']}", ["field", "value"], [
        ["artefact", entry["artifact"]], ["method", entry["method"]],
        ["images", f"{calibration['num_images']} from {calibration['source']['kind']} {calibration['source']['path']} "
                   f"({calibration['source']['selection']})"],
        ["network input", "x".join(map(str, calibration["network_size"]))
         + "".join(f", {n} resized {size}" for size, n in resized["sizes"].items())],
        ["calibration key", calibration["key"][:16]], ["ranges", f"{ranges['tensors']} tensors, {how}"],
        *([["quantized convs", entry["placement"]["quantized_convs"]]] if "placement" in entry else []),
        ["nodes kept FP32", len(entry["excluded_nodes"])], ["sha256", entry["sha256"][:12]],
        *(_budget_rows(entry["accuracy_budget"]) if "accuracy_budget" in entry else []),
    ])
    _write_json(json_out, entry)


def _budget_rows(budget: dict) -> list[list]:
    """``calibrate --max-drop``'s verdict, as rows of the calibrate table."""
    heldout, left = budget["heldout"], budget["excluded_layers"]
    return [
        ["accuracy budget", f"at most {budget['max_drop']:g} mIoU points vs {budget['reference']} on "
                            f"{budget['images']} held-out {heldout['split']} images of {heldout['path']}"],
        ["mIoU drop", f"{budget['drop_before']:.2f} -> {budget['drop_after']:.2f} points "
                      f"(FP32 mIoU {100 * budget['fp32_miou']:.2f})"],
        ["left float", f"{len(left)} of {budget['candidates']} convs" + (": " + ", ".join(left) if left else "")],
        ["latency (ORT CPU)", f"{budget['latency_ratio']:.2f}x the fully quantized graph"],
    ]


def _precision(command: str, precision: Optional[str], fp16: bool, int8: bool, fp32: bool,
               required: bool = False) -> Optional[str]:
    """``--precision P`` or its shorthand ``--fp16`` / ``--int8`` / ``--fp32`` (one of them)."""
    flags = [name for name, on in (("fp16", fp16), ("int8", int8), ("fp32", fp32)) if on]
    chosen = set(flags) | ({precision} if precision else set())
    if len(chosen) > 1 or (required and not chosen):
        raise OptionError(f"{command}: choose one precision: --fp16, --int8, --fp32 or --precision fp32|fp16|int8")
    return chosen.pop() if chosen else None


def _device(device: Optional[str], runtime: str) -> str:
    """``--device``, else the runtime's own (TensorRT runs on a GPU: cuda)."""
    from .contract import default_device

    return device or default_device(runtime)


def _renamed(value, old_value, new: str, old: str):
    """An option's value where its old spelling (a hidden alias) may have been given instead."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        raise OptionError(f"give {new} once ({old} is its old spelling)")
    return old_value


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
    precision = _precision("build-trt", precision, fp16, int8, fp32, required=True)
    meta = build_engine(bundle, precision, shape=_shape(shape),
                        min_shape=_shape(min_shape, "--min-shape"), max_shape=_shape(max_shape, "--max-shape"),
                        batch=batch, min_batch=min_batch, max_batch=max_batch, workspace_mb=workspace,
                        timing_cache=timing_cache, dla_core=dla_core, legacy_calibrator=legacy_calibrator,
                        data=data, num_images=num_images, progress=console.print)
    print_table(f"engine {meta['engine']}", ["field", "value"],
                [[k, v] for k, v in meta.items() if not isinstance(v, (dict, list))])
    _write_json(json_out, meta)


# --------------------------------------------------------------------------- verification


@app.command()
def parity(
    bundle: Path = BUNDLE,
    runtime: Runtime = RUNTIME,
    precision: Optional[RunPrecision] = RUN_PRECISION,
    fp16: bool = FP16,
    int8: bool = INT8,
    fp32: bool = FP32,
    device: Optional[Device] = RUN_DEVICE,
    artifact: Optional[str] = typer.Option(None, help="check this file of the bundle only [default: every artefact "
                                                      "for the runtime, precision and device]"),
    data: Optional[Path] = typer.Option(None, help="dataset root (Cityscapes layout); else synthetic images"),
    split: str = SPLIT,
    num_images: Optional[int] = typer.Option(None, min=1, help="at most this many images (default: all; 8 synthetic)"),
    atol: Optional[float] = typer.Option(None, min=0.0, help="max |logit diff| away from near-tie Top-K swaps "
                                                             "[default: 1e-3 for fp32, unchecked for fp16 / int8]"),
    min_argmax_agreement: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="least share of pixels with "
                                                         "the reference's label [default: the precision's]"),
    min_mask_agreement: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="least share of Top-K cells "
                                                       "decided as the reference [default: the precision's]"),
    out: Optional[Path] = typer.Option(None, help="report folder (default BUNDLE/parity/RUNTIME-PRECISION)"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
    json_out: Optional[Path] = JSON_OUT,
):
    """Compare the bundle's artefacts with the PyTorch FP32 reference (exit 1 when any fails)."""
    from .api import parity as run
    from .evaluation.parity import PARITY_LEGEND, parity_table, verdict_line

    precision, device = _precision("parity", precision, fp16, int8, fp32), _device(device, runtime)
    with bar(f"parity {runtime} {precision or ''}".strip()) as update:
        report = run(bundle, runtime, precision, device, data, split=split, num_images=num_images, out=out,
                     json_out=json_out, progress=update, ort_provider=ort_provider, artifact=artifact, atol=atol,
                     min_argmax_agreement=min_argmax_agreement, min_mask_agreement=min_mask_agreement)
    print_table(*parity_table(report))
    console.print(PARITY_LEGEND, style="dim", highlight=False)
    console.print(verdict_line(report), highlight=False)
    if not report["summary"]["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command("eval")
def eval_cmd(
    bundle: Path = BUNDLE,
    data: Path = typer.Option(..., help="dataset root (Cityscapes layout)"),
    runtime: Runtime = RUNTIME,
    precision: Optional[RunPrecision] = RUN_PRECISION,
    fp16: bool = FP16,
    int8: bool = INT8,
    fp32: bool = FP32,
    device: Optional[Device] = RUN_DEVICE,
    artifact: Optional[str] = ARTIFACT,
    split: str = SPLIT,
    num_images: Optional[int] = NUM_IMAGES,
    boundary_width: int = typer.Option(3, min=1, max=64, help="boundary band half-width in pixels"),
    ort_provider: Optional[OrtProvider] = ORT_PROVIDER,
    json_out: Optional[Path] = JSON_OUT,
):
    """mIoU, per-class IoU, boundary IoU, thin-structure IoU and Top-K coverage of one artefact."""
    from .api import evaluate

    precision, device = _precision("eval", precision, fp16, int8, fp32), _device(device, runtime)
    with bar(f"eval {runtime} {precision or ''}".strip()) as update:
        result = evaluate(bundle, data, runtime, precision, device, split=split, num_images=num_images,
                          boundary_width=boundary_width, json_out=json_out, progress=update, ort_provider=ort_provider,
                          artifact=artifact)
    print_table("per-class IoU", ["class", "IoU", "boundary IoU"],
                [[c, v, result["boundary_iou_per_class"].get(c)] for c, v in result["iou_per_class"].items()])
    runner = result["runner"]
    print_table(f"{runtime} {runner['precision']} ({Path(runner['artifact'] or '-').name}) on {split}",
                ["metric", "value"], [
        ["mIoU", result["miou"]], ["boundary IoU", result["boundary_iou"]], ["thin-structure IoU", result["thin_iou"]],
        ["pixel accuracy", result["pixel_accuracy"]], ["Top-K coverage of boundaries", result["topk_coverage_boundary"]],
        ["Top-K coverage of errors", result["topk_coverage_errors"]], ["images", result["num_images"]],
    ])
    if json_out:
        console.print(f"JSON written to {json_out}")


@app.command()
def bench(
    bundle: Path = BUNDLE,
    device: Optional[Device] = RUN_DEVICE,
    runtime: Runtime = RUNTIME,
    precision: Optional[RunPrecision] = RUN_PRECISION,
    fp16: bool = FP16,
    int8: bool = INT8,
    fp32: bool = FP32,
    artifact: Optional[str] = ARTIFACT,
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="input HxW (default: the export shape)"),
    batch: int = typer.Option(1, min=1),
    warmup: int = typer.Option(10, min=0, help="untimed iterations first"),
    iterations: Optional[int] = typer.Option(None, min=1, help="timed iterations [default: 50]"),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, hidden=True),  # the old spelling
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch / ONNX Runtime / OpenVINO"),
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
    from .bench.tables import bench_rows, busy_line, machine_line, matrix_notes, profile_tables

    precision, device = _precision("bench", precision, fp16, int8, fp32), _device(device, runtime)
    iterations = _renamed(iterations, iters, "--iterations", "--iters") or 50
    with bar("bench matrix" if matrix else f"bench {runtime} {precision or ''}".strip()) as update:
        result = benchmark(bundle, runtime, precision, device, shape=_shape(shape), batch=batch, warmup=warmup,
                           iterations=iterations, threads=threads, images=images, matrix=matrix, data=data,
                           num_images=num_images, json_out=json_out, progress=update, ort_provider=ort_provider,
                           profile=profile, artifact=artifact)
    columns, rows = bench_rows(result)
    ran = "" if matrix else f" of {result['artifact']} ({result['runtime']} {result['precision']})"
    print_table(f"benchmark{ran} on {machine_line(result['machine'])}", columns, rows)
    for note in matrix_notes(result) if matrix else []:
        console.print(escape(note))
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
    precision: Optional[RunPrecision] = RUN_PRECISION,
    fp16: bool = FP16,
    int8: bool = INT8,
    fp32: bool = FP32,
    device: Optional[Device] = RUN_DEVICE,
    artifact: Optional[str] = ARTIFACT,
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

    precision, device = _precision("predict", precision, fp16, int8, fp32), _device(device, runtime)
    with bar("predict") as update:
        summary = run(bundle, inputs, out, runtime, precision, device, progress=update, shape=_shape(shape),
                      importance=importance, mask=mask, label_ids=label_ids, video_every=video_every,
                      max_frames=max_frames, ort_provider=ort_provider, artifact=artifact)
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
    console.print(f"wrote {len(summary['files'])} files, {summary['bytes'] / 1e6:.1f} MB, to {out} "
                  f"(see {out / 'README.md'})")
    _write_json(json_out, summary)


@app.command()
def deploy(
    checkpoint: Path = typer.Option(..., help="FoR-Net checkpoint (.safetensors); 'shipped': the shipped weights"),
    target: DeployTargetName = typer.Option(..., help="what the bundle is for: cpu (ONNX Runtime FP32 + U8S8) or "
                                                  "tensorrt (the FP32 / FP16 / INT8 Q/DQ graphs build-trt takes)"),
    data: Path = typer.Option(..., help="images to calibrate on and check with (any dataset layout; a labelled "
                                        "one adds the mIoU)"),
    out: Path = typer.Option(..., help="bundle folder to create or update"),
    shape: str = typer.Option("512x1024", metavar="HxW", help="export input HxW"),
    dynamic: bool = typer.Option(False, "--dynamic", help="dynamic batch, height and width"),
    num_images: int = typer.Option(32, min=1, help="images of --split for parity and evaluation"),
    split: str = typer.Option("val", help="dataset split parity and evaluation run on (CamVid: test)"),
    calib_images: int = typer.Option(64, min=1, help="calibration images"),
    method: Method = typer.Option("entropy", help="calibration method"),
    iterations: int = typer.Option(20, min=1, help="timed iterations per artefact in the benchmark"),
    seed: int = typer.Option(0, min=0, help="seed of the calibration-image selection"),
    json_out: Optional[Path] = JSON_OUT,
):
    """Checkpoint to verified bundle in one command: export, calibrate, lint, parity of every artefact, eval,
    bench, one report (exit 1 when a check fails)."""
    from .api import deploy_checkpoint
    from .bench.tables import bench_rows, machine_line
    from .evaluation.parity import parity_table
    from .io import read_json

    _json_file(json_out, reads=(checkpoint, data), writes=(out,))
    summary = deploy_checkpoint(checkpoint, target, data, out, shape=_shape(shape), dynamic=dynamic,
                                num_images=num_images, calib_images=calib_images, method=method,
                                iterations=iterations, seed=seed, split=split,
                                log=lambda line: console.print(f"[bold cyan]deploy[/] {escape(line)}"))
    if summary["lint"]:
        print_table("TensorRT lint", ["graph", "blockers", "warnings", "verdict"],
                    [[name, r["blockers"], r["warnings"], "PASS" if r["passed"] else "FAIL"]
                     for name, r in summary["lint"].items()])
    for report_path in summary["parity_reports"].values():
        print_table(*parity_table(read_json(report_path, "parity report")))
    if summary["evaluation"]:
        print_table("accuracy", ["runtime precision", "mIoU", "boundary IoU", "thin IoU"],
                    [[k, e["miou"], e["boundary_iou"], e["thin_iou"]] for k, e in summary["evaluation"].items()])
    print_table(f"benchmark on {machine_line(summary['bench']['machine'])}", *bench_rows(summary["bench"]))
    for note in summary["notes"]:
        console.print(escape(note))
    _write_json(json_out, summary)
    verdict = "PASS" if summary["passed"] else "FAIL: " + "; ".join(summary["failed"])
    console.print(f"{verdict}; report {summary['report']}", highlight=False, markup=False)
    if not summary["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command()
def demo(
    out: Path = typer.Option(Path("fornet-demo"), help="output folder for data, bundle, results and report"),
    data: Optional[Path] = typer.Option(None, help="a labelled dataset (CamVid, Cityscapes, images/ + masks/) to "
                                                   "run and report on instead of SynthCity"),
    split: str = typer.Option("val", help="with --data: the split parity and evaluation run on (CamVid: test)"),
    weights: Optional[Path] = typer.Option(None, help="checkpoint to use (default: the shipped SynthCity weights "
                                                      "where they predict the data's classes, else trained here)"),
    train_iterations: int = typer.Option(300, min=1, help="CPU training iterations when no weights are found"),
    bench_iterations: Optional[int] = typer.Option(None, min=1, help="timed iterations per artefact [default: 20]"),
    bench_iters: Optional[int] = typer.Option(None, "--bench-iters", min=1, hidden=True),  # the old spelling
    shape: Optional[str] = typer.Option(None, metavar="HxW", help="export HxW, and SynthCity's image size (64 px and "
                                                                  "up) [default: 256x512, or the data's image size]"),
    num_images: int = typer.Option(50, min=1, help="images for parity and evaluation (SynthCity: val images made)"),
    runtime: Literal["ort", "openvino"] = typer.Option("ort", help="whose artefacts parity and eval verify (the "
                                                                   "benchmark matrix measures every runtime)"),
):
    """The whole pipeline on SynthCity (or --data), on this CPU, with a report: train/load -> export -> INT8 ->
    parity -> eval -> bench."""
    from .api import run_demo as run

    bench_iterations = _renamed(bench_iterations, bench_iters, "--bench-iterations", "--bench-iters") or 20
    result = run(out, weights, train_iterations=train_iterations, bench_iterations=bench_iterations,
                 shape=_shape(shape) if shape else None, num_images=num_images, runtime=runtime, data=data,
                 split=split, log=lambda line: console.print(f"[bold cyan]demo[/] {escape(line)}"))
    print_table("parity vs PyTorch FP32", ["artefact", "argmax agreement", "mask agreement", "pass"],
                [[name, s["argmax_agreement"], s["mask_agreement"], "yes" if s["passed"] else "NO"]
                 for name, s in result["parity"].items()])
    print_table(f"accuracy ({data or 'SynthCity'} {split})", ["runtime precision", "mIoU", "boundary IoU", "thin IoU"],
                [[k, e["miou"], e["boundary_iou"], e["thin_iou"]] for k, e in result["evaluation"].items()])
    console.print(f"report: {result['report']}")
    if not result["passed"]:  # so that `fornet-deploy demo` can gate CI
        console.print(f"FAIL: {', '.join(result['failed'])}")
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


if __name__ == "__main__":  # pragma: no cover
    main()
