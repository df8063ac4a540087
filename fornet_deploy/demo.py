"""``fornet-deploy demo``: the embedded default end to end on a CPU machine.

SynthCity (or the labelled dataset given as ``data``: CamVid, Cityscapes, images + masks) ->
shipped (or given, or freshly trained) weights -> export FP32 + FP16 -> calibrate INT8
(TensorRT Q/DQ + CPU U8S8) -> TensorRT lint -> parity -> evaluation (of ONNX Runtime's
artefacts, or with ``runtime="openvino"`` of OpenVINO's) -> benchmark matrix (every runtime) ->
prediction pictures -> ``report.md``. Every number in the report is read back from the JSON
files written beside it (``results/*.json``), so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .contract import ONNX_FP16, ONNX_FP32, ONNX_INT8_QDQ, SHIPPED_WEIGHTS, check_choice
from .data.labels import LabelSet, check_compatible, label_set_for, manifest_label_set
from .errors import FornetError
from .io import atomic_write_bytes, atomic_write_json, read_json

# What the parity and evaluation stages verify, per runtime: ONNX Runtime's three graphs;
# OpenVINO's runs of the CPU graphs (its bf16 is measured by the benchmark matrix).
DEMO_PRECISIONS = {"ort": ("fp32", "fp16", "int8"), "openvino": ("fp32", "int8")}


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("fornet-demo")
    weights: Path | None = None  # None: the shipped SynthCity weights when they fit the data, else train fresh
    train_iterations: int = 300  # only used when no weights are found
    synth_train: int = 64  # calibration images are drawn from these
    synth_val: int = 50
    height: int = 256
    width: int = 512
    # A labelled dataset of the user's instead of SynthCity: calibration on its train split,
    # parity, evaluation and pictures on `num_images` images of `split`.
    data: Path | None = None
    split: str = "val"
    num_images: int = 50
    calib_images: int = 32
    calib_method: str = "percentile"
    bench_iters: int = 20
    accuracy_images: int = 16
    seed: int = 0
    runtime: str = "ort"  # whose artefacts parity and evaluation verify: ort or openvino


Log = Callable[[str], None]


def resolve_weights(cfg: DemoConfig, data: Path, data_labels: LabelSet, log: Log) -> Path:
    """The given weights, else the shipped ones where they predict the data's classes, else a
    model trained here on the data's train split."""
    if cfg.weights is not None:
        if not Path(cfg.weights).is_file():
            raise FornetError(f"--weights {cfg.weights} does not exist")
        return Path(cfg.weights)
    if SHIPPED_WEIGHTS.is_file() and _predicts(SHIPPED_WEIGHTS, data_labels):
        log(f"using the shipped SynthCity weights {SHIPPED_WEIGHTS.name}")
        return SHIPPED_WEIGHTS
    from .train import LAST, STATE, TrainConfig, train

    why = "no shipped weights found" if not SHIPPED_WEIGHTS.is_file() else \
        f"the shipped weights predict other classes than {data}'s {data_labels.name} classes"
    log(f"{why}: training {cfg.train_iterations} iterations on the CPU")
    run = cfg.out / "train"
    # a demo run again into the same folder continues (or reuses) the earlier training
    train(TrainConfig(data=str(data), out=str(run), iterations=cfg.train_iterations,
                      val_interval=cfg.train_iterations, seed=cfg.seed, device="cpu", val_split=cfg.split),
          resume=(run / STATE).is_file())
    return run / LAST


def _predicts(checkpoint: Path, data_labels: LabelSet) -> bool:
    """Whether ``checkpoint`` predicts the classes of the data, by name (a dataset with generic
    ``class_i`` names is no evidence that a model of as many named classes fits it)."""
    from .model.checkpoint import read_checkpoint_header

    config, stored = read_checkpoint_header(checkpoint)
    return label_set_for(config.num_classes, stored, f"checkpoint {checkpoint}").classes == data_labels.classes


def prepare_data(cfg: DemoConfig, out: Path, log: Log) -> tuple[Path, str, LabelSet, int | None]:
    """The data every stage runs on: ``(folder, split, label set, image limit)``: SynthCity made
    in ``out``, or the user's labelled dataset, checked before anything is written."""
    from .data.formats import open_dataset

    if cfg.data is None:
        from .data.synthcity import SynthCityConfig, generate

        log(f"1/8 SynthCity: {cfg.synth_train} train + {cfg.synth_val} val images at {cfg.height}x{cfg.width}")
        data = out / "synthcity"
        generate(data, SynthCityConfig(train=cfg.synth_train, val=cfg.synth_val, height=cfg.height, width=cfg.width,
                                       seed=cfg.seed))
        return data, "val", open_dataset(data).labels, None
    dataset = open_dataset(cfg.data)
    if dataset.labels is None:
        raise FornetError(f"--data {cfg.data} has no labels: the demo scores the model, it needs a labelled dataset")
    evaluated = dataset.samples(cfg.split)  # a missing or unlabelled split is one line, here
    log(f"1/8 data: {cfg.data} ({dataset.format.name} layout, {dataset.labels.num_classes} {dataset.labels.name} "
        f"classes); parity and evaluation on {min(cfg.num_images, len(evaluated))} of its {len(evaluated)} "
        f"{cfg.split} images, exported at {cfg.height}x{cfg.width}")
    return Path(cfg.data), cfg.split, dataset.labels, cfg.num_images


def run_demo(cfg: DemoConfig, log: Log = print) -> dict:
    """Run every stage; returns the summary that ``report.md`` is rendered from."""
    from .bundle import Bundle
    from .calibration.qdq import calibrate_bundle
    from .deploy import evaluate_all, lint_graphs, parity_all
    from .export.fp16 import convert_fp16
    from .export.onnx import ExportConfig, export_bundle

    check_choice(cfg.runtime, tuple(DEMO_PRECISIONS), "demo runtime")
    precisions = DEMO_PRECISIONS[cfg.runtime]
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FornetError(f"--out {out} exists and is not a folder")
    results, bundle = out / "results", out / "bundle"
    data, split, data_labels, limit = prepare_data(cfg, out, log)
    weights = resolve_weights(cfg, data, data_labels, log)

    log("2/8 export: model.onnx (threshold Top-K) and model.fp16.onnx")
    export_bundle(weights, bundle, ExportConfig(height=cfg.height, width=cfg.width))
    # weights of other classes than the data's stop here, not after calibration
    check_compatible(manifest_label_set(Bundle.open(bundle, verify=False).manifest), data_labels, f"--data {data}")
    convert_fp16(bundle)

    log(f"3/8 calibrate INT8 on {cfg.calib_images} train images of {data} ({cfg.calib_method})")
    for target in ("tensorrt", "cpu"):
        calibrate_bundle(bundle, data, num_images=cfg.calib_images, method=cfg.calib_method, target=target, seed=cfg.seed)

    log("4/8 TensorRT lint of every graph")
    lint = lint_graphs(bundle, (ONNX_FP32, ONNX_FP16, ONNX_INT8_QDQ))
    atomic_write_json(results / "lint.json", lint)

    log("5/8 parity against the PyTorch FP32 reference: every graph the bundle ships")
    parity, _ = parity_all(bundle, cfg.runtime, precisions, "cpu", data, limit,
                           out_dir=lambda p: results / f"parity_{cfg.runtime}_{p}", split=split)

    log(f"6/8 evaluation on the {split} split")
    evaluation = evaluate_all(bundle, data, [("torch", "fp32")] + [(cfg.runtime, p) for p in precisions], "cpu",
                              limit, json_out=lambda runtime, precision: results / f"eval_{runtime}_{precision}.json",
                              split=split)

    log("7/8 benchmark matrix (CPU)")
    from .bench import BenchConfig, run_matrix

    matrix = run_matrix(bundle, "cpu", data=data, accuracy_images=cfg.accuracy_images,
                        cfg=BenchConfig(iters=cfg.bench_iters, warmup=3), split=split)
    atomic_write_json(results / "bench_matrix.json", matrix)

    log("8/8 prediction pictures and report")
    from .data.formats import open_dataset
    from .predict import PredictConfig, predict

    examples = [s.image for s in open_dataset(data).samples(split)[:2]]
    predict(bundle, examples, out / "pictures", PredictConfig(importance=True, mask=True))
    summary = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "weights": str(weights), "bundle": str(bundle),
               "data": "SynthCity" if cfg.data is None else str(data), "split": split}
    atomic_write_json(results / "demo.json", summary)
    report = write_report(out)
    log(f"report: {report}")
    failed = [f"parity {name}" for name, s in parity.items() if not s["passed"]]  # lint is shown, not gating
    return {"report": str(report), "parity": parity, "evaluation": evaluation, "matrix": matrix, "lint": lint,
            "passed": not failed, "failed": failed}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_report(results: Path, pictures: Path) -> str:
    """Markdown report built only from the JSON files in ``results``."""
    demo = read_json(results / "demo.json", "demo summary")
    lint = read_json(results / "lint.json", "lint results")
    matrix = read_json(results / "bench_matrix.json", "benchmark matrix")
    from .bench import machine_line

    lines = [
        "# fornet-deploy demo report", "",
        f"Weights: `{demo['weights']}`; bundle: `{demo['bundle']}`. Machine: {machine_line(matrix['machine'])}. "
        "All numbers below are read from `results/*.json`.", "",
        f"## Accuracy ({demo.get('data', 'SynthCity')} {demo.get('split', 'val')})", "",
        "| runtime | precision | artefact | mIoU | boundary IoU | thin-structure IoU | Top-K covers boundary px |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results.glob("eval_*.json")):
        e = read_json(path, "evaluation")
        r = e["runner"]
        lines.append(f"| {r['backend']} | {r['precision']} | `{Path(r['artifact'] or '-').name}` | {_pct(e['miou'])} | "
                     f"{_pct(e['boundary_iou'])} | {_pct(e['thin_iou'])} | {_pct(e['topk_coverage_boundary'])} |")
    lines += ["", "## Parity against PyTorch FP32 (exact Top-K)", "",
              "| artefact | max abs logit diff | argmax agreement % | Top-K mask agreement % | agreement mIoU % | pass |",
              "|---|---|---|---|---|---|"]
    for path in sorted(results.glob("parity_*/parity.json")):
        runtime = path.parent.name.split("_")[1]  # parity_RUNTIME_PRECISION
        for name, p in read_json(path, "parity report")["artifacts"].items():
            s = p["summary"]
            max_abs = "-" if s["max_abs_logit"] is None else f"{s['max_abs_logit']:.2e}"
            if s["logits_compared"] == ["coarse_logits"]:  # a CPU graph: the logits before the x4 upsample
                max_abs += " (1/4 scale)"
            lines.append(f"| {runtime} {p['candidate']['precision']} ({name}) | {max_abs} | {_pct(s['argmax_agreement'])} "
                         f"| {_pct(s['mask_agreement'])} | {_pct(s['agreement_miou'])} "
                         f"| {'yes' if s['passed'] else 'NO'} |")
    lines += ["", "## Benchmark matrix (CPU)", "", matrix_table(matrix), "",
              "## TensorRT lint", "", "| graph | blockers | warnings |", "|---|---|---|"]
    lines += [f"| {name} | {r['blockers']} | {r['warnings']} |" for name, r in lint.items()]
    lines += ["", "## What FoR-Net focused on", "",
              f"Overlay, importance map and selected Top-K regions for two {demo.get('split', 'val')} images:", ""]
    kinds = ("_overlay.png", "_importance.png", "_topk.png")  # segmentation, then what it focused on
    shown = [p for p in pictures.glob("**/*.png") if p.name.endswith(kinds)]
    for picture in sorted(shown, key=lambda p: (p.name.rsplit("_", 1)[0], kinds.index("_" + p.name.rsplit("_", 1)[1]))):
        lines.append(f"![{picture.stem}]({picture.relative_to(pictures.parent).as_posix()})")
    lines += ["", "Parity diff pictures (reference | candidate | disagreement | |logit diff|) are in "
              "`results/parity_RUNTIME_PRECISION/ARTEFACT/`.", ""]
    return "\n".join(lines)


def matrix_table(matrix: dict) -> str:
    from .bench import matrix_markdown

    return matrix_markdown(matrix)


def write_report(out: Path) -> Path:
    path = Path(out) / "report.md"
    atomic_write_bytes(path, render_report(Path(out) / "results", Path(out) / "pictures").encode())
    return path


def load_results(out: Path) -> dict:
    """All JSON results of a demo folder (for tests and tools that check the report)."""
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted((Path(out) / "results").rglob("*.json"))}
