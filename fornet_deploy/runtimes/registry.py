"""Which runner runs which artefact of a bundle, from the one format table in
:mod:`fornet_deploy.contract` (as Ultralytics' exporter table drives its formats)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..bundle import Bundle
from ..contract import FORMATS, ORT_TRT_CACHE_DIR, Format, formats_for
from ..errors import FornetError
from .base import Runner

ENGINE_KIND = "tensorrt-engine"


def engines_for(bundle: Bundle, precision: str) -> list[str]:
    """TensorRT engines of this precision in the bundle, the default-named one first.

    build-trt names DLA, legacy-calibrator and non-default-shape engines differently, so
    they are found by their manifest entries; between several, the default name (a static
    engine at the export shape) wins, then the name order, so the choice is stable.
    """
    default = formats_for("trt", precision)[0].artifact
    found = [name for name, meta in bundle.artifacts_of(ENGINE_KIND).items() if meta.get("precision") == precision]
    return sorted(found, key=lambda name: (name != default, name))


def _present(bundle: Bundle, fmt: Format) -> Format | None:
    if fmt.runtime == "trt":
        engines = engines_for(bundle, fmt.precision)
        return replace(fmt, artifact=engines[0]) if engines else None
    return fmt if bundle.has(fmt.artifact) else None


def resolve_format(bundle: Bundle, runtime: str, precision: str, device: str, artifact: str | None = None) -> Format:
    """The first format of the table the bundle holds for (runtime, precision, device);
    ``artifact`` picks a specific file (e.g. one of several engines of one precision)."""
    options = formats_for(runtime, precision, device)
    if artifact is not None:
        if not bundle.has(artifact):
            raise FornetError(f"bundle {bundle.root} has no {artifact}")
        return replace(options[0], artifact=artifact)
    for fmt in options:
        if (found := _present(bundle, fmt)) is not None:
            return found
    raise FornetError(
        f"bundle {bundle.root} has no {runtime} {precision} artefact ({options[-1].artifact}); "
        f"make it with `{options[-1].made_by}`"
    )


def available_formats(bundle: Bundle, device: str) -> list[Format]:
    """Every artefact of the bundle that runs on this device (both INT8 variants on a CPU)."""
    return [found for fmt in FORMATS if device in fmt.devices and (found := _present(bundle, fmt)) is not None]


def load_runner(bundle: Bundle | str | Path, runtime: str = "ort", precision: str = "fp32", device: str = "cpu",
                *, artifact: str | None = None, topk: str = "exact", threads: int | None = None,
                ort_device: str | None = None, gpu: int = 0) -> Runner:
    """A runner for one artefact of a bundle, checked against the manifest ``bundle`` holds.

    Its sha256 and its lineage (it was made from the artefacts the manifest lists, see
    :mod:`fornet_deploy.bundle`) are checked here, and the runner checks the hash again on
    the bytes it loads: what runs is what this manifest records, even if another command
    commits to the bundle in between (then the runner stops with one line).

    ``device`` is cpu, cuda or jetson. ``artifact``: a specific file when the bundle has
    several for one precision. ``topk`` (torch): exact or threshold. ``threads``: CPU
    threads (torch / ONNX Runtime). ``ort_device``: ONNX Runtime providers (cpu, cuda,
    tensorrt, auto; default follows ``device``). ``gpu``: CUDA device index.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, verify=False)
    fmt = resolve_format(bundle, runtime, precision, device, artifact)
    path = bundle.path(fmt.artifact)  # verifies the sha256 and the lineage
    sha256 = bundle.sha256(fmt.artifact)
    on_gpu = device in ("cuda", "jetson")
    if runtime == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(path, topk=topk, device=f"cuda:{gpu}" if on_gpu else "cpu", precision=precision,
                           threads=threads, sha256=sha256)
    if runtime == "ort":
        from .ort_runner import OrtRunner

        # ONNX Runtime's TensorRT EP names cached engines after the graph's structure, not
        # its weights: one folder per graph hash keeps a re-exported model off old engines.
        return OrtRunner(path, device=ort_device or ("cuda" if on_gpu else "cpu"), precision=precision,
                         threads=threads, cache_dir=bundle.root / ORT_TRT_CACHE_DIR / sha256[:16], gpu=gpu,
                         sha256=sha256)
    from .trt.runner import TrtRunner

    return TrtRunner(path, device=gpu, sha256=sha256)
