"""``fornet-deploy deploy``: from a checkpoint to a verified bundle for a target, in one command.

export -> calibrate INT8 -> TensorRT lint of the graphs TensorRT will build from -> parity of
every artefact against the PyTorch FP32 reference -> evaluation -> a short benchmark -> one
report (``report.md`` and ``deploy.json``). What is made and checked for each target is one
row of :data:`TARGETS`; a check that fails (a lint blocker, a parity check) fails the run.

The checks run here, on this machine's CPU, through ONNX Runtime: for TensorRT that verifies the
very graphs ``build-trt`` turns into engines on the GPU (the report names that next step). The
stages are also the demo's (:mod:`fornet_deploy.demo` runs them on SynthCity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from .contract import ONNX_FP16, ONNX_FP32, ONNX_INT8_QDQ, check_choice, check_size, checkpoint_path
from .errors import OptionError
from .io import atomic_write_bytes, atomic_write_json, now_iso

Log = Callable[[str], None]
REPORT_DIR = "deploy"  # inside the bundle: report.md and deploy.json


@dataclass(frozen=True)
class DeployTarget:
    """What ``deploy --target NAME`` makes and checks."""

    name: str
    export_precision: str  # fp32, or fp16: export also writes the mixed-FP16 graph
    calibrate: str  # `calibrate --target`: which INT8 graph is made
    runtime: str  # the runtime the checks run on here
    device: str
    precisions: tuple[str, ...]  # checked by parity (every artefact of each) and evaluation
    lint: tuple[str, ...]  # graphs TensorRT builds engines from: linted
    next_step: str  # what is left for the deployment machine ("" when nothing is)


TARGETS: dict[str, DeployTarget] = {t.name: t for t in (
    DeployTarget("cpu", "fp32", "cpu", "ort", "cpu", ("fp32", "int8"), (), ""),
    DeployTarget("tensorrt", "fp16", "tensorrt", "ort", "cpu", ("fp32", "fp16", "int8"),
                 (ONNX_FP32, ONNX_FP16, ONNX_INT8_QDQ),
                 "on the GPU or Jetson: `fornet-deploy build-trt --bundle BUNDLE --int8` (or `--fp16`), then "
                 "`fornet-deploy parity --bundle BUNDLE --runtime trt --int8 --data DATA`"),
)}
TARGET_NAMES = tuple(TARGETS)


@dataclass(frozen=True)
class DeployConfig:
    checkpoint: Path
    target: str
    data: Path
    out: Path  # the bundle
    height: int = 512
    width: int = 1024
    dynamic: bool = False
    num_images: int = 32  # images of `split` for parity, evaluation and the benchmark's accuracy columns
    split: str = "val"
    calib_images: int = 64
    calib_method: str = "entropy"
    bench_iterations: int = 20
    seed: int = 0

    def validate(self) -> None:
        check_choice(self.target, tuple(TARGETS), "deploy target")
        check_size(self.height, self.width)
        for name in ("num_images", "calib_images", "bench_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


# --- stages (the demo's too) -------------------------------------------------------------------


def lint_graphs(bundle: Path, names: Sequence[str]) -> dict[str, dict]:
    """TensorRT lint of each graph, by name."""
    from .export.lint import lint_file

    return {name: lint_file(Path(bundle) / name) for name in names}


def parity_all(bundle: Path, runtime: str, precisions: Sequence[str], device: str, data: Path | None,
               limit: int | None = None, out_dir: Callable[[str], Path] | None = None,
               split: str = "val") -> tuple[dict[str, dict], dict[str, str]]:
    """Parity of every artefact of each precision: each artefact's summary by name, and the
    run report of each precision (in ``out_dir(precision)``, default
    ``BUNDLE/parity/RUNTIME-PRECISION``) by precision."""
    from .evaluation.parity import parity_bundle

    summaries, reports = {}, {}
    for precision in precisions:
        report = parity_bundle(bundle, runtime, precision, device, data, split=split, limit=limit,
                               out_dir=out_dir(precision) if out_dir else None)
        summaries.update({name: r["summary"] for name, r in report["artifacts"].items()})
        reports[precision] = report["report_path"]
    return summaries, reports


def evaluate_all(bundle: Path, data: Path, runs: Sequence[tuple[str, str]], device: str, limit: int | None = None,
                 json_out: Callable[[str, str], Path] | None = None, split: str = "val") -> dict[str, dict]:
    """Evaluation of each (runtime, precision) on ``data``'s ``split``, by ``"runtime precision"``."""
    from .evaluation.evaluate import evaluate_bundle

    return {f"{runtime} {precision}": evaluate_bundle(bundle, data, runtime, precision, device, split=split,
                                                      limit=limit,
                                                      json_out=json_out(runtime, precision) if json_out else None)
            for runtime, precision in runs}


def failures(lint: dict[str, dict], parity: dict[str, dict]) -> list[str]:
    """The failed checks of a run, one phrase each."""
    failed = [f"lint {name} ({report['blockers']} blockers)" for name, report in lint.items() if not report["passed"]]
    failed += [f"parity {name} ({', '.join(c for c, ok in s['checks'].items() if not ok)})"
               for name, s in parity.items() if not s["passed"]]
    return failed


# --- deploy ------------------------------------------------------------------------------------


def run_deploy(cfg: DeployConfig, log: Log = print) -> dict:
    """Every stage for ``cfg.target``; returns the summary ``deploy.json`` holds, with
    ``passed`` and ``failed`` (the checks that failed)."""
    from .bench import BenchConfig, run_matrix
    from .calibration.qdq import calibrate_bundle
    from .data.formats import open_dataset
    from .export.fp16 import convert_fp16
    from .export.onnx import ExportConfig, export_bundle

    cfg.validate()
    target = TARGETS[cfg.target]
    checkpoint = checkpoint_path(cfg.checkpoint)
    dataset = open_dataset(cfg.data)  # before anything is written: a wrong folder is one line
    labelled = dataset.labels is not None
    bundle, started = Path(cfg.out), now_iso()

    log(f"1/6 export {checkpoint} -> {bundle} at {cfg.height}x{cfg.width} ({target.export_precision})")
    export_bundle(checkpoint, bundle, ExportConfig(height=cfg.height, width=cfg.width, dynamic=cfg.dynamic), log=log)
    if target.export_precision == "fp16":
        convert_fp16(bundle)
    log(f"2/6 calibrate INT8 for {target.calibrate} on {cfg.calib_images} images of {cfg.data} ({cfg.calib_method})")
    calibrate_bundle(bundle, cfg.data, num_images=cfg.calib_images, method=cfg.calib_method, target=target.calibrate,
                     seed=cfg.seed)
    log(f"3/6 TensorRT lint: {', '.join(target.lint) or 'no TensorRT-bound graph for this target'}")
    lint = lint_graphs(bundle, target.lint)
    log(f"4/6 parity of every {'/'.join(target.precisions)} artefact against PyTorch FP32")
    parity, parity_reports = parity_all(bundle, target.runtime, target.precisions, target.device, cfg.data,
                                        cfg.num_images, split=cfg.split)
    evaluation, notes = {}, []
    if labelled:
        log(f"5/6 evaluation on {cfg.num_images} {cfg.split} images")
        evaluation = evaluate_all(bundle, cfg.data, [(target.runtime, p) for p in target.precisions], target.device,
                                  cfg.num_images, split=cfg.split)
    else:
        notes.append(f"{cfg.data} has no labels: no evaluation (mIoU needs a labelled dataset)")
        log(f"5/6 evaluation skipped: {notes[-1]}")
    log(f"6/6 benchmark ({cfg.bench_iterations} timed iterations per artefact)")
    bench = run_matrix(bundle, target.device, data=cfg.data if labelled else None,
                       accuracy_images=min(cfg.num_images, 8), cfg=BenchConfig(iters=cfg.bench_iterations, warmup=3),
                       split=cfg.split)
    failed = failures(lint, parity)
    if target.next_step:
        notes.append(target.next_step.replace("BUNDLE", str(bundle)).replace("DATA", str(cfg.data)))
    report_dir = bundle / REPORT_DIR
    summary = {
        "created": started, "finished": now_iso(), "config": {k: str(v) for k, v in asdict(cfg).items()},
        "checkpoint": str(checkpoint),
        "target": asdict(target), "bundle": str(bundle), "passed": not failed, "failed": failed,
        "lint": lint, "parity": parity, "parity_reports": parity_reports, "evaluation": evaluation, "bench": bench,
        "notes": notes,
        "report": str(report_dir / "report.md"),
    }
    atomic_write_json(report_dir / "deploy.json", summary)
    atomic_write_bytes(report_dir / "report.md", render_report(summary).encode())
    log(f"report: {summary['report']}")
    return summary


# --- report ------------------------------------------------------------------------------------


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    def cell(value: object) -> str:
        if value is None:
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    return ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render_report(summary: dict) -> str:
    """``report.md``: the verdict first, then every stage's numbers (all from ``summary``)."""
    from .bench import machine_line, matrix_markdown
    from .evaluation.parity import PARITY_LEGEND, parity_table
    from .io import read_json

    config, target = summary["config"], summary["target"]
    verdict = "PASS" if summary["passed"] else "FAIL: " + "; ".join(summary["failed"])
    lines = [f"# fornet-deploy deploy: {target['name']}", "",
             f"Checkpoint `{summary['checkpoint']}` -> bundle `{summary['bundle']}` at {config['height']}x"
             f"{config['width']}; data `{config['data']}`; checks run with {target['runtime']} on {target['device']} "
             f"({machine_line(summary['bench']['machine'])}), {summary['created']}.", "",
             f"**{verdict}**", ""]
    lines += ["## TensorRT lint", ""]
    if summary["lint"]:
        lines += markdown_table(["graph", "blockers", "warnings", "verdict"],
                                [[name, r["blockers"], r["warnings"], "PASS" if r["passed"] else "FAIL"]
                                 for name, r in summary["lint"].items()])
    else:
        lines.append("No graph of this target goes to TensorRT.")
    lines += ["", "## Parity against PyTorch FP32 (exact Top-K)", ""]
    for report_path in summary["parity_reports"].values():
        title, columns, rows = parity_table(read_json(report_path, "parity report"))
        lines += [f"{title} (`{report_path}`):", "", *markdown_table(columns, rows), ""]
    lines += [PARITY_LEGEND + ".", "", "## Accuracy", ""]
    if summary["evaluation"]:
        lines += markdown_table(["runtime precision", "artefact", "mIoU %", "boundary IoU %", "thin-structure IoU %"],
                                [[k, Path(e["runner"]["artifact"] or "-").name, _pct(e["miou"]),
                                  _pct(e["boundary_iou"]), _pct(e["thin_iou"])]
                                 for k, e in summary["evaluation"].items()])
    else:
        lines.append("Not measured (no labels).")
    lines += ["", "## Speed", "", matrix_markdown(summary["bench"])]
    if summary["notes"]:
        lines += ["## Notes", "", *(f"- {note}" for note in summary["notes"]), ""]
    return "\n".join(lines)

