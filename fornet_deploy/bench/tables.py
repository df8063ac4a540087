"""Result tables of ``bench``: one column definition behind the docs' Markdown table
(:func:`matrix_markdown`) and the CLI's rich table (:func:`bench_rows`); the profiler's
breakdown (:func:`profile_tables`, :func:`profile_markdown`); and the line that replaces a
speed-up measured on a busy machine (:func:`busy_line`)."""

from __future__ import annotations

from typing import Callable

from .load import busy_note
from .profile import SCOPE_LABELS, SCOPE_ORDER

BUSY_CELL = "busy machine"  # in place of a speed-up measured while others took the CPUs
TOP_OPS = 12


def _stat(stage: str, key: str) -> Callable[[dict], float | None]:
    return lambda row: (row.get(stage) or {}).get(key)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _percent(digits: int) -> Callable[[float], str]:
    return lambda v: f"{100 * v:.{digits}f} %"


def _speedup(row: dict) -> float | str | None:
    """The row's speed-up over PyTorch FP32, or :data:`BUSY_CELL` when either timing was
    taken on a busy machine (bench/matrix.py sets ``speedup_busy``)."""
    if row.get("speedup_vs_torch_fp32") is None:
        return None
    return BUSY_CELL if row.get("speedup_busy") else row["speedup_vs_torch_fp32"]


def _ratio(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.2f}×"


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
    ("speed-up vs torch fp32", _speedup, _ratio),
    ("e2e p50 ms", _stat("end_to_end", "p50_ms"), _ms),
    ("mIoU", lambda r: r.get("miou"), _percent(1)),
    ("argmax agreement", lambda r: r.get("argmax_agreement"), _percent(3)),
    ("mask agreement", lambda r: r.get("mask_agreement"), _percent(3)),
)

# The CLI's matrix table (what fits 100 columns): MATRIX_COLUMNS by header, under a shorter one,
# with the runtime and precision in one column after the artefact; a column empty in every row
# (GPU exec on a CPU, mIoU without labels) is left out, and skipped artefacts are lines below.
CLI_MATRIX_COLUMNS = (("artefact", "artefact"), ("p50 ms", "p50 ms"), ("p99 ms", "p99 ms"),
                      ("GPU exec p50 ms", "GPU exec p50 ms"), ("e2e p50 ms", "e2e p50 ms"),
                      ("vs torch fp32", "speed-up vs torch fp32"), ("mIoU %", "mIoU"),
                      ("argmax %", "argmax agreement"), ("Top-K mask %", "mask agreement"))

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
    if (busy := busy_line(result)) is not None:
        lines += ["", busy]
    skipped = [r for r in result["rows"] if r["status"] != "ok"]
    if skipped:
        lines.append("")
        lines += [f"- {r['runtime']} {r['precision']} (`{r['artifact']}`) skipped: {r['reason']}" for r in skipped]
    if result["accuracy"].get("note"):
        lines += ["", result["accuracy"]["note"]]
    return "\n".join(lines) + "\n"


def bench_rows(result: dict) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` for a rich table: per artefact for a matrix result
    (:data:`CLI_MATRIX_COLUMNS`; :func:`matrix_notes` says why any was skipped), per stage
    (compute, end-to-end) for a single run."""
    if "rows" in result:
        return _cli_matrix(result["rows"])
    rows = []
    for stage, label in (("compute", "compute"), ("end_to_end", "end-to-end")):
        s = result[stage]
        rows.append([label, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"], s["stdev_ms"], s["min_ms"],
                     s["throughput_ips"]])
    for part, s in (result.get("device_split") or {}).items():  # device events, inside "compute"
        rows.append([f"  {part} (device)", s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"], s["stdev_ms"],
                     s["min_ms"], None])
    return list(STAGE_COLUMNS), rows


def _cli_matrix(matrix_rows: list[dict]) -> tuple[list[str], list[list]]:
    by_header = {name: (value_of, fmt) for name, value_of, fmt in MATRIX_COLUMNS}
    columns, cells = ["artefact", "runtime"], [[r["artifact"], f"{r['runtime']} {r['precision']}"] for r in matrix_rows]
    for header, source in CLI_MATRIX_COLUMNS[1:]:
        value_of, fmt = by_header[source]
        values = [value_of(r) for r in matrix_rows]
        if all(v is None for v in values):
            continue
        columns.append(header)
        unit = " %" if header.endswith("%") else None  # the header holds a percentage's "%"
        for row, value in zip(cells, values):
            row.append(None if value is None else fmt(value).removesuffix(unit) if unit else fmt(value))
    return columns, cells


def matrix_notes(result: dict) -> list[str]:
    """Why an artefact of a matrix was skipped or has no accuracy, one line each."""
    return [f"{r['runtime']} {r['precision']} ({r['artifact']}): {r.get('reason') or r.get('accuracy_note')}"
            for r in result["rows"] if r.get("reason") or r.get("accuracy_note")]


def busy_line(result: dict) -> str | None:
    """"measured on a busy machine ..." when any timing of a result (one artefact or a
    matrix) was taken while other processes took more than 10 % of the CPUs; else None."""
    rows = result.get("rows", [result])
    loads = [r["machine_load"] for r in rows if r.get("machine_load")]
    if not any(load.get("busy") for load in loads):
        return None
    shares = [load["foreign_share"] for load in loads if load.get("foreign_share") is not None]
    return busy_note(max(shares) if shares else None)


def _profiled(result: dict) -> list[dict]:
    rows = result.get("rows", [result])
    return [r for r in rows if (r.get("profile") or {}).get("by_scope")]


def _scope_label(scope: str) -> str:
    return SCOPE_LABELS.get(scope, scope)


def profile_tables(result: dict) -> list[tuple[str, list[str], list[list]]]:
    """``(title, columns, rows)`` per profiled artefact: kernel time per run by scope (and in
    all), then the op types that take the most."""
    tables = []
    for row in _profiled(result):
        profile = row["profile"]
        scopes = [[_scope_label(scope), v["ms"], f"{100 * v['share']:.1f} %"]
                  for scope, v in profile["by_scope"].items()]
        scopes.append([f"all ({profile['runs']} runs)", profile["kernel_ms"], "100 %"])
        ops = [[op, v["ms"], f"{100 * v['share']:.1f} %"] for op, v in list(profile["by_op"].items())[:TOP_OPS]]
        tables.append((f"{row['artifact']} by scope", ["scope", "ms", "share"], scopes))
        tables.append((f"{row['artifact']} by op type", ["op type", "ms", "share"], ops))
    return tables


def profile_markdown(result: dict) -> str:
    """The profiler breakdown as the docs' Markdown tables: one row per profiled artefact,
    kernel ms and share per scope; then the op types over 2 % of any artefact's time."""
    rows = _profiled(result)
    if not rows:
        return ""
    scopes = [s for s in SCOPE_ORDER if any(s in r["profile"]["by_scope"] for r in rows)]
    header = ["artefact", "kernel ms"] + [_scope_label(s) for s in scopes]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        by_scope = r["profile"]["by_scope"]
        cells = [f"`{r['artifact']}`", _ms(r["profile"]["kernel_ms"])]
        cells += [f"{_ms(by_scope[s]['ms'])} ({100 * by_scope[s]['share']:.0f} %)" if s in by_scope else "–"
                  for s in scopes]
        lines.append("| " + " | ".join(cells) + " |")
    ops = sorted({op for r in rows for op, v in r["profile"]["by_op"].items() if v["share"] >= 0.02},
                 key=lambda op: -max(r["profile"]["by_op"].get(op, {"ms": 0.0})["ms"] for r in rows))
    header = ["op type"] + [f"`{r['artifact']}`" for r in rows]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for op in ops:
        cells = [op] + [f"{_ms(r['profile']['by_op'][op]['ms'])} ({100 * r['profile']['by_op'][op]['share']:.0f} %)"
                        if op in r["profile"]["by_op"] else "–" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
