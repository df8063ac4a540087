"""The table of benchmarks/gpu_suite.sh: parity, accuracy, latency and reformat layers per
engine, and issue 13's goals checked against them.

    python benchmarks/gpu_summary.py docs/results/gpu      # writes summary.md and summary.json there

Reads what the suite wrote (build_trt_*.json, parity_*.json, eval_*.json, bench_*.json,
layers_*.json); a missing file is a missing cell ("–"), not an error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNS = ("trt_fp32", "trt_fp16", "trt_int8", "ort_cuda_fp32")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _get(data: dict | None, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def collect(folder: Path) -> dict:
    rows = {}
    for run in RUNS:
        precision = run.rsplit("_", 1)[1]
        build = _read(folder / f"build_{run}.json")
        layers = _read(folder / f"layers_{build['engine']}.json") if build else None
        run_report = _read(folder / f"parity_{run}.json")
        # a parity run holds a report per artefact; a TensorRT run checks one engine
        parity = next(iter((_get(run_report, "artifacts") or {}).values()), None)
        bench = _read(folder / f"bench_{run}.json")
        evaluation = _read(folder / f"eval_{run}.json")
        rows[run] = {
            "precision": precision,
            "engine": _get(build, "engine"),
            "build_seconds": _get(build, "build_seconds"),
            "tf32": _get(build, "tf32"),
            "parity_passed": _get(parity, "summary", "passed"),
            "max_abs_logit": _get(parity, "summary", "max_abs_logit"),
            "argmax_agreement": _get(parity, "summary", "argmax_agreement"),
            "mask_agreement": _get(parity, "summary", "mask_agreement"),
            "miou": _get(evaluation, "miou"),
            "boundary_iou": _get(evaluation, "boundary_iou"),
            "compute_p50_ms": _get(bench, "compute", "p50_ms"),
            "gpu_exec_p50_ms": _get(bench, "device_split", "compute", "p50_ms"),
            "h2d_p50_ms": _get(bench, "device_split", "h2d", "p50_ms"),
            "d2h_p50_ms": _get(bench, "device_split", "d2h", "p50_ms"),
            "end_to_end_p50_ms": _get(bench, "end_to_end", "p50_ms"),
            "reformats": _get(layers, "reformats"),
            "reformats_between_int8_convs": _get(layers, "reformats_between_int8_convs"),
        }
    return rows


def goals(rows: dict) -> dict:
    """Issue 13's goals; ``None`` where a number is missing."""
    fp16, int8, ort = rows["trt_fp16"], rows["trt_int8"], rows["ort_cuda_fp32"]

    def faster(a, b):
        return None if a is None or b is None else a < b

    speedup = (ort["compute_p50_ms"] / fp16["compute_p50_ms"]
               if ort["compute_p50_ms"] and fp16["compute_p50_ms"] else None)
    between = int8["reformats_between_int8_convs"]
    return {
        "int8_faster_than_fp16 (GPU exec p50)": faster(int8["gpu_exec_p50_ms"], fp16["gpu_exec_p50_ms"]),
        "zero_reformats_between_int8_convs": None if between is None else between == 0,
        "fp16_speedup_vs_ort_cuda_fp32 (compute p50)": speedup,
        "fp16_at_least_3x_ort_cuda_fp32": None if speedup is None else speedup >= 3.0,
        "parity_passed": {run: r["parity_passed"] for run, r in rows.items()},
    }


COLUMNS = (("run", None), ("parity", "parity_passed"), ("max |logit diff|", "max_abs_logit"),
           ("argmax agr.", "argmax_agreement"), ("mIoU", "miou"), ("compute p50 ms", "compute_p50_ms"),
           ("GPU exec p50 ms", "gpu_exec_p50_ms"), ("H2D ms", "h2d_p50_ms"), ("D2H ms", "d2h_p50_ms"),
           ("e2e p50 ms", "end_to_end_p50_ms"), ("reformats", "reformats"),
           ("reformats between INT8 convs", "reformats_between_int8_convs"))


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(rows: dict, checked: dict, steps: str) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run, row in rows.items():
        lines.append("| " + " | ".join(run if key is None else _cell(row[key]) for _, key in COLUMNS) + " |")
    lines += ["", "Goals (issue 13):", ""]
    lines += [f"- {name}: {_cell(value) if not isinstance(value, dict) else value}" for name, value in checked.items()]
    if steps:
        lines += ["", "Steps (return code, seconds, budget):", "", "```", steps.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    rows = collect(folder)
    checked = goals(rows)
    steps = (folder / "steps.txt").read_text() if (folder / "steps.txt").is_file() else ""
    (folder / "summary.json").write_text(json.dumps({"runs": rows, "goals": checked}, indent=2) + "\n")
    (folder / "summary.md").write_text(markdown(rows, checked, steps))
    print(markdown(rows, checked, ""))


if __name__ == "__main__":
    main()
