"""The one table of deployable formats: it drives runner selection, the CLI help, the
benchmark matrix and the docs (as Ultralytics' exporter table does)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle import Bundle
from ..errors import FornetError
from .base import Runner

RUNTIMES = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Format:
    runtime: str
    precision: str
    artifact: str  # file in the bundle
    devices: tuple[str, ...]  # where it runs: cpu, cuda, jetson
    made_by: str  # the command that writes the artefact
    note: str = ""


FORMATS: tuple[Format, ...] = (
    Format("torch", "fp32", "checkpoint.safetensors", ("cpu", "cuda", "jetson"), "fornet-deploy export", "reference"),
    Format("torch", "fp16", "checkpoint.safetensors", ("cuda", "jetson"), "fornet-deploy export", "autocast"),
    Format("ort", "fp32", "model.onnx", ("cpu", "cuda", "jetson"), "fornet-deploy export"),
    Format("ort", "fp16", "model.fp16.onnx", ("cpu", "cuda", "jetson"), "fornet-deploy export --precision fp16"),
    # x86 CPUs run U8S8 (unsigned activations) faster than the symmetric S8S8 graph.
    Format("ort", "int8", "model.int8.cpu.onnx", ("cpu",), "fornet-deploy calibrate --target cpu", "U8S8"),
    Format("ort", "int8", "model.int8.qdq.onnx", ("cpu", "cuda", "jetson"), "fornet-deploy calibrate", "S8S8 Q/DQ"),
    Format("trt", "fp32", "model.fp32.engine", ("cuda", "jetson"), "fornet-deploy build-trt --fp32"),
    Format("trt", "fp16", "model.fp16.engine", ("cuda", "jetson"), "fornet-deploy build-trt --fp16"),
    Format("trt", "int8", "model.int8.engine", ("cuda", "jetson"), "fornet-deploy build-trt --int8"),
)


def candidates(runtime: str, precision: str, device: str) -> list[Format]:
    if runtime not in RUNTIMES:
        raise FornetError(f"unknown runtime {runtime!r} (use {', '.join(RUNTIMES)})")
    if precision not in PRECISIONS:
        raise FornetError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    found = [f for f in FORMATS if f.runtime == runtime and f.precision == precision and device in f.devices]
    if not found:
        raise FornetError(f"{runtime} {precision} does not run on {device}")
    return found


def _engine_for(bundle: Bundle, precision: str) -> str | None:
    """A TensorRT engine of this precision; build-trt names DLA, legacy-calibrator and
    non-default-shape engines differently, so look them up by their manifest entry."""
    engines = [name for name, meta in bundle.artifacts_of("tensorrt-engine").items() if meta.get("precision") == precision]
    return min(engines, key=len) if engines else None


def resolve_format(bundle: Bundle, runtime: str, precision: str, device: str) -> Format:
    """The first format of the table the bundle holds for (runtime, precision, device)."""
    options = candidates(runtime, precision, device)
    for fmt in options:
        if bundle.has(fmt.artifact):
            return fmt
        if runtime == "trt" and (engine := _engine_for(bundle, precision)):
            return replace(fmt, artifact=engine)
    raise FornetError(
        f"bundle {bundle.root} has no {runtime} {precision} artefact ({options[-1].artifact}); "
        f"make it with `{options[-1].made_by}`"
    )


def available_formats(bundle: Bundle, device: str) -> list[Format]:
    """Every artefact of the bundle that runs on this device (both INT8 variants on a CPU)."""
    result = []
    for fmt in FORMATS:
        if device not in fmt.devices:
            continue
        if bundle.has(fmt.artifact):
            result.append(fmt)
        elif fmt.runtime == "trt" and (engine := _engine_for(bundle, fmt.precision)):
            result.append(replace(fmt, artifact=engine))
    return result


def make_runner(bundle: Bundle | str | Path, runtime: str = "ort", precision: str = "fp32", device: str = "cpu", **options) -> Runner:
    """A runner for one artefact of a bundle (checked against the manifest hashes).

    ``device`` is cpu, cuda or jetson. Options: ``topk`` (torch), ``threads`` (ort),
    ``artifact`` (a specific file when the bundle has several for one precision).
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, verify=False)
    fmt = resolve_format(bundle, runtime, precision, device)
    if options.get("artifact"):
        fmt = replace(fmt, artifact=options["artifact"])
    path = bundle.path(fmt.artifact)  # verifies the sha256
    gpu = device in ("cuda", "jetson")
    if runtime == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(path, topk=options.get("topk", "exact"), device="cuda" if gpu else "cpu", precision=precision)
    if runtime == "ort":
        from .ort_runner import OrtRunner

        return OrtRunner(path, device=options.get("ort_device", "cuda" if gpu else "cpu"), precision=precision,
                         threads=options.get("threads"), cache_dir=bundle.root / "ort_trt_cache")
    from .trt_runner import TrtRunner

    return TrtRunner(path)
