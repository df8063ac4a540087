"""The tables of docs/benchmarks.md section 13 "Real images (CamVid)", rendered from the JSON that
benchmarks/camvid_suite.sh writes (so the page's numbers are re-made, not re-typed):

    python benchmarks/camvid_tables.py [docs/results/camvid]

Prints markdown: the training history, the per-class table, deployment fidelity, parity, the
calibration-set study and the INT8 budget. Missing JSON files leave their table out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIDELITY_NAMES = {"fp32": "FP32 (`model.onnx`)", "fp16": "FP16 (`model.fp16.onnx`)",
                  "int8-tensorrt": "INT8 TensorRT Q/DQ", "int8-cpu": "INT8 CPU U8S8"}
PARITY_FILES = (("parity_fp32.json", "ort"), ("parity_fp16.json", "ort"), ("parity_int8.json", "ort"),
                ("parity_openvino_fp32.json", "openvino"), ("parity_openvino_bf16.json", "openvino"),
                ("parity_openvino_int8.json", "openvino"))


def pts(value: float) -> str:
    return f"{100 * value:.2f}"


def delta(points: float) -> str:
    """A drop in points, with a true minus sign for a gain."""
    return f"+{points:.2f}" if points >= 0 else f"\u2212{-points:.2f}"


def report(results: Path, name: str) -> dict | None:
    """RESULTS/NAME's JSON, None where the suite did not write it."""
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def training(results: Path) -> str | None:
    rows = []
    for name, what in (("train.json", "first schedule"), ("train2.json", "second schedule (--init)")):
        run = report(results, name)
        if run is not None:
            history = ", ".join(f"{100 * h['miou']:.1f}" for h in run["history"] if h.get("miou") is not None)
            rows.append([what, str(run["iterations"]), f"{run['seconds'] / 60:.0f}", history])
    return table(["run", "iterations", "minutes", "test mIoU every 500 iterations (monitoring only)"], rows) if rows else None


def per_class(results: Path) -> str | None:
    ev = report(results, "eval_torch_fp32.json")
    if ev is None:
        return None
    thin = set(ev.get("thin_iou_per_class", {}))
    names = list(ev["iou_per_class"])
    header = ["class"] + [f"**{n}**" if n in thin else n for n in names]
    body = table(header, [["IoU"] + [f"{100 * ev['iou_per_class'][n]:.1f}" for n in names],
                          ["boundary IoU"] + [f"{100 * ev['boundary_iou_per_class'][n]:.1f}" for n in names]])
    return (f"{body}\n\nmIoU {pts(ev['miou'])}, pixel accuracy {100 * ev['pixel_accuracy']:.1f} %, boundary IoU "
            f"{pts(ev['boundary_iou'])}, thin-class IoU {pts(ev['thin_iou'])}; the Top-K cells cover "
            f"{100 * ev['topk_coverage_boundary']:.1f} % of the ground-truth boundary pixels and "
            f"{100 * ev['topk_coverage_errors']:.1f} % of the misclassified ones.")


def fidelity(results: Path) -> str | None:
    precision = report(results, "precision.json")
    if precision is None:
        return None
    rows = []
    for row in precision["rows"]:
        kind, _, method = row["variant"].rpartition("-") if row["variant"].startswith("int8") else (row["variant"], "", "")
        name = FIDELITY_NAMES[kind] + (f", {method}" if method else "")
        drops = [row["miou_drop_points"], row["boundary_iou_drop_points"], row["thin_iou_drop_points"]]
        same = row["variant"] == "fp32"
        rows.append([name, pts(row["miou"]), "–" if same else delta(drops[0]), pts(row["boundary_iou"]),
                     "–" if same else delta(drops[1]), pts(row["thin_iou"]), "–" if same else delta(drops[2]),
                     f"{100 * row['argmax_agreement']:.3f}", f"{100 * row['mask_agreement']:.3f}"])
    latency = precision.get("latency", {})
    text = table(["artefact", "mIoU", "Δ", "boundary IoU", "Δ", "thin IoU", "Δ", "argmax agree %",
                  "Top-K mask agree %"], rows)
    if latency:
        text += "\n\nCPU latency (median ms, batch 1): " + ", ".join(
            f"{name} {row['median_ms']:.1f} ({row['speedup_vs_fp32']:.2f}x)" for name, row in latency.items())
    return text


def parity(results: Path) -> str | None:
    rows = []
    for name, runtime in PARITY_FILES:
        checked = report(results, name)
        if checked is None:
            continue
        for artifact, entry in checked["artifacts"].items():
            s = entry["summary"]
            selection = s["topk_selection"]
            off_k = selection["images_over_k"] + selection["images_under_k"]
            where = f"`{artifact}`" if runtime == "ort" else f"OpenVINO {checked['precision']} of `{artifact}`"
            failed = [check for check, ok in s["checks"].items() if not ok]
            verdict = "pass" if s["passed"] else "**FAIL** (" + ", ".join(failed) + ")"
            rows.append([where, f"{100 * s['argmax_agreement']:.3f} %",
                         f"{100 * s['mask_agreement']:.3f} % ({s['mask_identical_images']}/{s['images']} identical)",
                         str(s["near_tie_cells"]), str(off_k), verdict])
    return table(["artefact", "argmax agreement", "Top-K mask agreement", "near-tie Top-K swaps", "images off k",
                  "verdict"], rows) if rows else None


def calibration_study(results: Path) -> str | None:
    study = report(results, "calibration_study.json")
    if study is None:
        return None
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for row in study["rows"]:
        cells.setdefault((row["source"], row["num_images"]), {})[row["target"]] = row
    rows = []
    for (source, count), by_target in cells.items():
        row = [source, str(count)]
        for target in ("tensorrt", "cpu"):
            r = by_target.get(target)
            row += ["–"] * 3 if r is None else [delta(r["miou_drop_points"]), delta(r["boundary_iou_drop_points"]),
                                                delta(r["thin_iou_drop_points"])]
        rows.append(row)
    return (f"FP32 mIoU {pts(study['fp32']['miou'])}; {study['method']} calibration; drops on the "
            f"{study['eval_images']} {study['eval_split']} images\n\n" +
            table(["calibration images", "n", "TensorRT Q/DQ: mIoU Δ", "boundary Δ", "thin Δ", "CPU U8S8: mIoU Δ",
                   "boundary Δ", "thin Δ"], rows))


def budget(results: Path) -> str | None:
    rows = []
    fp32 = report(results, "eval_ort_fp32.json")
    reference = fp32["miou"] if fp32 is not None else None
    for target, name in (("tensorrt", "TensorRT Q/DQ"), ("cpu", "CPU U8S8")):
        selected, test = report(results, f"max_drop_{target}.json"), report(results, f"max_drop_{target}_test.json")
        if selected is None:
            continue
        b = selected["accuracy_budget"]
        excluded = b["excluded_layers"]
        left = f"{len(excluded)} of {b['candidates']}" + (": " + ", ".join(f"`{n}`" for n in excluded) if excluded else "")
        scored = "–"
        if test is not None:
            miou = test["miou"]
            scored = pts(miou) + (f" ({delta(100 * (reference - miou))})" if reference is not None else "")
        rows.append([name, f"{b['drop_before']:.3f} → {b['drop_after']:.3f}", left, f"{b['latency_ratio']:.2f}x",
                     scored])
    return table(["target", "drop on val: before → after (points)", "convolutions left float",
                  "ORT CPU latency vs fully quantized", "test mIoU (drop vs FP32)"], rows) if rows else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path("docs/results/camvid"))
    results = parser.parse_args().results
    for title, render in (("Training", training), ("Per class (PyTorch FP32)", per_class),
                          ("Deployment fidelity", fidelity), ("Parity", parity),
                          ("Calibration-set study", calibration_study), ("INT8 budget", budget)):
        text = render(results)
        if text:
            print(f"### {title}\n\n{text}\n")


if __name__ == "__main__":
    main()
