"""Result tables of ``bench``: one column definition behind the docs' Markdown table
(:func:`matrix_markdown`) and the CLI's rich table (:func:`bench_rows`)."""

from __future__ import annotations

from typing import Callable


def _stat(stage: str, key: str) -> Callable[[dict], float | None]:
    return lambda row: (row.get(stage) or {}).get(key)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _percent(digits: int) -> Callable[[float], str]:
    return lambda v: f"{100 * v:.{digits}f} %"


# (header, value of a row, Markdown formatting): one definition behind the docs table
# (matrix_markdown) and the CLI table (bench_rows).
MATRIX_COLUMNS: tuple[tuple[str, Callable[[dict], object], Callable], ...] = (
    ("runtime", lambda r: r["runtime"], str),
    ("precision", lambda r: r["precision"], str),
    ("artefact", lambda r: r["artifact"], lambda v: f"`{v}`"),
    ("p50 ms", _stat("compute", "p50_ms"), _ms),
    ("p90 ms", _stat("compute", "p90_ms"), _ms),
    ("p99 ms", _stat("compute", "p99_ms"), _ms),
    ("img/s", _stat("compute", "throughput_ips"), lambda v: f"{v:.1f}"),
    ("GPU exec p50 ms", lambda r: ((r.get("device_split") or {}).get("compute") or {}).get("p50_ms"), _ms),
    ("speed-up vs torch fp32", lambda r: r.get("speedup_vs_torch_fp32"), lambda v: f"{v:.2f}×"),
    ("e2e p50 ms", _stat("end_to_end", "p50_ms"), _ms),
    ("mIoU", lambda r: r.get("miou"), _percent(1)),
    ("argmax agreement", lambda r: r.get("argmax_agreement"), _percent(3)),
    ("mask agreement", lambda r: r.get("mask_agreement"), _percent(3)),
)

STAGE_COLUMNS = ("stage", "p50 ms", "p90 ms", "p99 ms", "mean ms", "stdev ms", "min ms", "img/s")


def machine_line(machine: dict) -> str:
    gpus = (machine.get("gpus") or {}).get("devices") or []
    board = ((machine.get("jetson") or {}).get("board") or {}).get("model")
    parts = [board or (machine.get("cpu") or {}).get("model") or "unknown CPU"]
    parts += [g["name"] for g in gpus if g.get("name")]
    packages = machine.get("packages") or {}
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v and k in ("torch", "onnxruntime", "tensorrt"))
    return "; ".join(parts) + (f" ({versions})" if versions else "")


def matrix_markdown(result: dict) -> str:
    """The matrix as the Markdown table in docs/benchmarks.md, with a caption and the
    reasons of skipped artefacts."""
    config = result["config"]
    height, width = config["shape"]
    header = [name for name, _, _ in MATRIX_COLUMNS]
    lines = [
        f"FoR-Net {height}x{width}, batch {config['batch']}, `--device {result['device']}` on "
        f"{machine_line(result['machine'])}; {config['iters']} timed iterations after {config['warmup']} "
        f"warm-up. p50/p90/p99 and img/s: compute only (GPU exec: execute_async_v3 alone, by CUDA events); "
        f"e2e: decode + preprocess + infer + labels and "
        f"colours at frame size. Accuracy: {result['accuracy']['source']}, agreement with "
        f"{result['accuracy']['reference']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in result["rows"]:
        cells = []
        for _, value_of, fmt in MATRIX_COLUMNS:
            value = value_of(row)
            cells.append("–" if value is None else fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in result["rows"] if r["status"] != "ok"]
    if skipped:
        lines.append("")
        lines += [f"- {r['runtime']} {r['precision']} (`{r['artifact']}`) skipped: {r['reason']}" for r in skipped]
    if result["accuracy"].get("note"):
        lines += ["", result["accuracy"]["note"]]
    return "\n".join(lines) + "\n"


def bench_rows(result: dict) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` for a rich table: per format for a matrix result (with a note
    column for skipped ones), per stage (compute, end-to-end) for a single run."""
    if "rows" in result:
        columns = [name for name, _, _ in MATRIX_COLUMNS] + ["note"]
        rows = [[value_of(r) for _, value_of, _ in MATRIX_COLUMNS] + [r.get("reason") or r.get("accuracy_note")]
                for r in result["rows"]]
        return columns, rows
    rows = []
    for stage, label in (("compute", "compute"), ("end_to_end", "end-to-end")):
        s = result[stage]
        rows.append([label, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"], s["stdev_ms"], s["min_ms"],
                     s["throughput_ips"]])
    for part, s in (result.get("device_split") or {}).items():  # device events, inside "compute"
        rows.append([f"  {part} (device)", s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"], s["stdev_ms"],
                     s["min_ms"], None])
    return list(STAGE_COLUMNS), rows
