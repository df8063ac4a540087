"""``fornet-deploy inspect``: what a bundle holds, as the person who deploys it needs to know.

Every artefact with its kind, precision, size, hash and lineage (what it was made from, and
whether it is still what that source makes), the inputs and outputs with their shapes (read
from the ONNX graphs themselves; an engine's input from its optimization profile, its outputs
those of the graph it was built from), the label set, the preprocessing, the export settings
and the parity reports (with whether they still describe the artefacts). Nothing is run and
no file is hashed: an overview is quick on a bundle of large engines.
"""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle, lineage_problem
from ..contract import PARITY_DIR, format_shape
from ..data.labels import manifest_label_set
from ..errors import FornetError
from ..evaluation.parity import stale_parity_reports
from ..io import read_json
from ..runtimes.registry import ENGINE_KIND
from ..runtimes.trt.metadata import read_engine_metadata
from .graph import Tensor, graph_io


def _tensors(tensors: tuple[Tensor, ...]) -> list[dict]:
    return [{"name": t.name, "dtype": t.dtype, "shape": format_shape(t.dims)} for t in tensors]


def _io(bundle: Bundle, name: str, entry: dict) -> dict:
    """Inputs and outputs of an artefact (empty for a checkpoint: PyTorch takes any size)."""
    path = bundle.root / name
    try:
        if entry.get("kind") == "onnx":
            io = graph_io(path)
            return {"inputs": _tensors(io.inputs), "outputs": _tensors(io.outputs)}
        if entry.get("kind") == ENGINE_KIND:
            profile = read_engine_metadata(path)["profile"]
            low, high, opt = (format_shape(profile[key]) for key in ("min", "max", "opt"))
            shape = f"{low} to {high} (opt {opt})"
            source = entry.get("source")
            outputs = _tensors(graph_io(bundle.root / source).outputs) if source and bundle.has(source) else []
            return {"inputs": [{"name": profile.get("input", "image"), "dtype": "-", "shape": shape}],
                    "outputs": outputs}
    except FornetError as exc:
        return {"inputs": [], "outputs": [], "io_error": str(exc)}
    return {"inputs": [], "outputs": []}


def _status(bundle: Bundle, name: str, entry: dict) -> str:
    path = bundle.root / name
    if not path.is_file():
        return "missing file"
    if path.stat().st_size != entry.get("bytes"):
        return "changed (size differs from the manifest)"
    problem = lineage_problem(bundle.artifacts, name)
    return "ok" if problem is None else f"stale: {problem.why}"


def _parity_reports(bundle: Bundle) -> list[dict]:
    stale = set(stale_parity_reports(bundle))
    reports = []
    for path in sorted((bundle.root / PARITY_DIR).glob("*/parity.json")):
        folder = path.parent.relative_to(bundle.root).as_posix()
        try:
            passed = (read_json(path, "parity report").get("summary") or {}).get("passed")
        except (FornetError, AttributeError):
            passed = None
        reports.append({"folder": folder, "passed": passed, "current": folder not in stale})
    return reports


def inspect_bundle(bundle_dir: str | Path) -> dict:
    """A bundle's artefacts (kind, precision, bytes, sha256, made from, status, inputs and
    outputs), label set, preprocessing, export settings and parity reports."""
    bundle = Bundle.open(bundle_dir, verify=False)  # an overview: statuses say what is off
    labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
    artifacts = []
    for name, entry in sorted(bundle.artifacts.items()):
        artifacts.append({
            "name": name, "kind": entry.get("kind"), "precision": entry.get("precision"),
            "bytes": entry.get("bytes"), "sha256": entry.get("sha256"), "source": entry.get("source"),
            "created": entry.get("created"), "status": _status(bundle, name, entry), **_io(bundle, name, entry),
        })
    export = bundle.manifest.get("export") or {}
    topk = bundle.manifest.get("topk") or {}
    return {
        "bundle": str(bundle.root),
        "export": {key: export.get(key) for key in ("height", "width", "batch", "dynamic", "opset", "cpu_tail")},
        "topk": {key: topk.get(key) for key in ("focus", "ratio", "mode")},
        "labels": {"name": labels.name, "classes": list(labels.classes), "thin": list(labels.thin_names),
                   "ignore_index": labels.ignore_index},
        "preprocessing": bundle.manifest.get("preprocessing"),
        "artifacts": artifacts,
        "total_bytes": sum(a["bytes"] or 0 for a in artifacts),
        "parity_reports": _parity_reports(bundle),
    }
