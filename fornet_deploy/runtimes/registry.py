"""Which runner runs which artefact of a bundle, from the one format table in
:mod:`fornet_deploy.contract` (as Ultralytics' exporter table drives its formats): the table's
rows say which file a (runtime, precision, device) runs, and its :data:`~fornet_deploy.contract.RUNNERS`
map says which class runs it (imported only then). A new backend is one runner file and
table rows; an unknown runtime is an error, never another runtime's runner.

TensorRT engines are picked by their metadata (``<engine>.json``), not by their file name:
the engine of the asked precision whose profile covers the input shape, built for the asked
DLA core (GPU engines first when none is asked), and, when they are known here, by this
machine's TensorRT release and GPU (:func:`rank_engines`, through
:func:`~fornet_deploy.runtimes.trt.metadata.engine_problem`, the check the runner makes too).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from ..bundle import Bundle
from ..contract import FORMATS, RUNNERS, RUNTIMES, Format, check_choice, formats_for
from ..errors import FornetError
from .base import LoadRequest, Runner
from .trt.metadata import EngineRequest, engine_problem, read_engine_metadata

ENGINE_KIND = "tensorrt-engine"


def runner_class(runtime: str) -> type[Runner]:
    """The runner class of ``runtime`` (:data:`~fornet_deploy.contract.RUNNERS`), imported now."""
    check_choice(runtime, RUNTIMES, "runtime")
    module, _, name = RUNNERS[runtime].partition(":")
    return getattr(importlib.import_module(module), name)


def engines_for(bundle: Bundle, precision: str) -> list[str]:
    """TensorRT engines of this precision in the bundle's manifest, the default-named one
    first, then by name (build-trt names DLA, legacy-calibrator and non-default-shape engines
    differently). Which one runs is :func:`select_engine`'s choice, by metadata."""
    default = formats_for("trt", precision)[0].artifact
    found = [name for name, meta in bundle.artifacts_of(ENGINE_KIND).items() if meta.get("precision") == precision]
    return sorted(found, key=lambda name: (name != default, name))


def rank_engines(engines: Mapping[str, Mapping], request: EngineRequest,
                 default_shape: Sequence[int] | None = None) -> tuple[list[str], dict[str, str]]:
    """``(usable engine names, best first; {rejected name: reason})``.

    Best: a GPU engine before a DLA one (unless a core is asked for), then an engine whose
    profile optimum is the shape asked for (else the export shape), then the tightest
    profile (TensorRT tunes for the optimum; a narrower range wastes less), then the name.
    """
    usable, problems = [], {}
    for name, meta in engines.items():
        problem = engine_problem(meta, request)
        if problem is None:
            usable.append(name)
        else:
            problems[name] = problem
    target = tuple(request.shape or default_shape or ())

    def rank(name: str) -> tuple:
        meta = engines[name]
        profile = meta["profile"]
        span = 1
        for lo, hi in zip(profile["min"], profile["max"]):
            span *= hi - lo + 1
        return (meta.get("dla_core") is not None, tuple(profile["opt"]) != target, span, name)

    return sorted(usable, key=rank), problems


def select_engine(bundle: Bundle, precision: str, request: EngineRequest = EngineRequest()) -> str | None:
    """The bundle's best engine of ``precision`` for ``request``; ``None`` when it has no
    engine of that precision; one line listing why each was refused when none fits."""
    metas, unreadable = {}, {}
    for name in engines_for(bundle, precision):
        try:
            metas[name] = read_engine_metadata(bundle.root / name)
        except FornetError as exc:
            unreadable[name] = str(exc)
    if not metas and not unreadable:
        return None
    export = bundle.artifacts.get("model.onnx", {}).get("export_shape")
    ranked, problems = rank_engines(metas, request, export)
    if ranked:
        return ranked[0]
    reasons = "; ".join(f"{name}: {why}" for name, why in {**problems, **unreadable}.items())
    raise FornetError(f"bundle {bundle.root} has no usable TensorRT {precision} engine ({reasons}); "
                      f"build one with `{formats_for('trt', precision)[0].made_by}`")


def _present(bundle: Bundle, fmt: Format, request: EngineRequest | None = None) -> Format | None:
    if fmt.runtime == "trt":
        engine = select_engine(bundle, fmt.precision, request or EngineRequest())
        return replace(fmt, artifact=engine) if engine else None
    return fmt if bundle.has(fmt.artifact) else None


def named_format(bundle: Bundle, runtime: str, precision: str | None, device: str, artifact: str) -> Format:
    """The format of one named artefact (``--artifact``): recorded in the bundle, run by
    ``runtime``, of ``precision`` (``None``: the artefact's own); else one line saying why."""
    if not bundle.has(artifact):
        present = ", ".join(sorted(bundle.artifacts)) or "none"
        raise FornetError(f"bundle {bundle.root} has no {artifact} (artefacts: {present})")
    entry = bundle.artifacts[artifact]
    if runtime == "trt":
        rows = [f for f in FORMATS if f.runtime == runtime] if entry.get("kind") == ENGINE_KIND else []
    else:
        rows = [f for f in FORMATS if f.runtime == runtime and f.artifact == artifact]
    if not rows:
        runs = sorted({f.runtime for f in FORMATS if f.artifact == artifact}
                      | ({"trt"} if entry.get("kind") == ENGINE_KIND else set()))
        raise FornetError(f"{artifact} is not run by --runtime {runtime}"
                          + (f" (use --runtime {' or '.join(runs)})" if runs else ""))
    recorded = entry.get("precision")
    precision = precision or recorded or rows[0].precision
    # a runtime may run a file at another precision than its own (OpenVINO's bf16 of the FP32 graph): a table row
    if recorded is not None and recorded != precision and not any(f.precision == precision for f in rows):
        raise FornetError(f"{artifact} is the bundle's {recorded} artefact, not {precision}: "
                          f"leave out --precision, or give --precision {recorded}")
    options = formats_for(runtime, precision, device)  # unknown names, or not on this device
    row = next((f for f in rows if f.precision == precision), options[0])
    return replace(row, artifact=artifact)


def artifact_precision(bundle: Bundle, artifact: str | None, precision: str | None) -> str:
    """The precision a run is of: ``precision`` when given, else the named artefact's
    (its manifest entry's), else fp32."""
    if precision is not None:
        return precision
    if artifact is not None and bundle.has(artifact):
        return bundle.artifacts[artifact].get("precision") or "fp32"
    return "fp32"


def formats_present(bundle: Bundle, runtime: str, precision: str, device: str,
                    request: EngineRequest | None = None) -> list[Format]:
    """Every artefact the bundle holds for (runtime, precision, device), in the table's order:
    on a CPU, ONNX Runtime FP32 is ``model.cpu.onnx`` and ``model.onnx``, INT8 the U8S8 graph
    and the Q/DQ graph TensorRT builds from (what parity checks by default); one line naming
    the command that makes the artefact when there is none."""
    options = formats_for(runtime, precision, device)
    found = [f for f in (_present(bundle, fmt, request) for fmt in options) if f is not None]
    if not found:
        raise FornetError(
            f"bundle {bundle.root} has no {runtime} {precision} artefact ({options[-1].artifact}); "
            f"make it with `{options[-1].made_by}`"
        )
    return found


def resolve_format(bundle: Bundle, runtime: str, precision: str | None, device: str, artifact: str | None = None,
                   request: EngineRequest | None = None) -> Format:
    """The first format of the table the bundle holds for (runtime, precision, device);
    ``artifact`` picks a specific file (:func:`named_format`: e.g. ``model.onnx`` where a CPU
    runs ``model.cpu.onnx`` by default, or one of several engines of one precision), else
    ``request`` says what a TensorRT engine must fit (:func:`select_engine`)."""
    if artifact is not None:
        return named_format(bundle, runtime, precision, device, artifact)
    precision = precision or "fp32"
    for fmt in formats_for(runtime, precision, device):  # the first present, without probing the others
        if (found := _present(bundle, fmt, request)) is not None:
            return found
    return formats_present(bundle, runtime, precision, device, request)[0]  # none: the one-line error


def available_formats(bundle: Bundle, device: str, request: EngineRequest | None = None) -> list[Format]:
    """Every artefact of the bundle that runs on this device (both INT8 variants on a CPU).

    A precision whose engines all fail ``request`` is listed with its first engine, so a
    benchmark matrix shows why it cannot run rather than leaving it out."""
    found = []
    for fmt in (f for f in FORMATS if device in f.devices):
        try:
            present = _present(bundle, fmt, request)
        except FornetError:
            present = replace(fmt, artifact=engines_for(bundle, fmt.precision)[0])
        if present is not None:
            found.append(present)
    return found


def trt_request(gpu: int = 0, shape: Sequence[int] | None = None, dla_core: int | None = None) -> EngineRequest:
    """An :class:`EngineRequest` with what this machine says about itself (TensorRT release,
    GPU ``gpu``), each left out when it cannot be read here (no TensorRT, no GPU)."""
    from .trt.metadata import machine_facts

    return EngineRequest(shape=tuple(shape) if shape is not None else None, dla_core=dla_core, **machine_facts(gpu))


def load_runner(bundle: Bundle | str | Path, runtime: str = "ort", precision: str | None = None, device: str = "cpu",
                *, artifact: str | None = None, topk: str = "exact", threads: int | None = None,
                ort_device: str | None = None, gpu: int = 0, shape: Sequence[int] | None = None,
                dla_core: int | None = None, profile_dir: str | Path | None = None) -> Runner:
    """A runner for one artefact of a bundle, checked against the manifest ``bundle`` holds.

    Its sha256 and its lineage (it was made from the artefacts the manifest lists, see
    :mod:`fornet_deploy.bundle`) are checked here, and the runner checks the hash again on
    the bytes it loads: what runs is what this manifest records, even if another command
    commits to the bundle in between (then the runner stops with one line).

    ``runtime``: torch, ort, trt or openvino. ``precision``: fp32, fp16, int8, or bf16
    (OpenVINO on a CPU). ``device``: cpu, cuda or jetson (NVIDIA), gpu or npu (Intel, through
    OpenVINO). ``artifact``: a specific file when the bundle has several for one precision (``precision`` then
    defaults to the ``artifact``'s own).
    ``topk`` (torch): exact or threshold. ``threads``: CPU threads (torch / ONNX Runtime /
    OpenVINO). ``ort_device``: ONNX Runtime providers (cpu, cuda, tensorrt, auto; default
    follows ``device``). ``gpu``: CUDA device index. TensorRT: ``shape`` (NCHW) and
    ``dla_core`` pick the engine (:func:`select_engine`). ``profile_dir`` (ONNX Runtime):
    profile every run into that folder
    (:meth:`~fornet_deploy.runtimes.ort_runner.OrtRunner.end_profiling`).
    """
    cls = runner_class(runtime)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, verify=False)
    request = trt_request(gpu, shape, dla_core) if runtime == "trt" and artifact is None else None
    fmt = resolve_format(bundle, runtime, precision, device, artifact, request)
    precision = fmt.precision
    path = bundle.path(fmt.artifact)  # verifies the sha256 and the lineage
    return cls.from_request(LoadRequest(
        path=path, sha256=bundle.sha256(fmt.artifact), bundle_root=bundle.root, precision=precision, device=device,
        threads=threads, topk=topk, ort_device=ort_device, gpu=gpu,
        profile_dir=Path(profile_dir) if profile_dir is not None else None))
