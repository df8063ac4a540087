"""The metadata file beside every engine, and the one check of an engine against a run.

An engine only runs with the TensorRT release and the GPU that built it, so every engine
``model.<precision>.engine`` has a metadata file ``model.<precision>.engine.json`` beside it
(written by ``fornet-deploy build-trt``). :func:`engine_problem` is the one place that says
whether an engine fits a run (release, GPU, DLA core, profile): engine selection ranks with
it, and the runner checks it before it deserializes anything, so a mismatch ends in one
sentence that says to rebuild, not in a TensorRT error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ...contract import format_shape
from ...errors import FornetError
from ...io import read_json
from ..base import InputSpec
from .cuda import CudaDevice

REBUILD_HINT = "rebuild with `fornet-deploy build-trt`"
# Metadata keys the runner needs before it may deserialize an engine.
REQUIRED_METADATA = ("tensorrt_version", "gpu_name", "compute_capability", "engine_sha256", "precision", "profile")
PROFILE_KEYS = {"input", "min", "opt", "max"}


def engine_metadata_path(engine_path: str | Path) -> Path:
    """``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_metadata(engine_path: str | Path) -> dict:
    """Read ``<engine>.json``; a missing, corrupt or incomplete file is a :class:`FornetError`."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FornetError(f"TensorRT engine {engine_path} does not exist ({REBUILD_HINT})")
    meta_path = engine_metadata_path(engine_path)
    if not meta_path.is_file():
        raise FornetError(
            f"TensorRT engine {engine_path.name} has no metadata file {meta_path.name}; "
            f"engines from other tools cannot be checked: {REBUILD_HINT}"
        )
    meta = read_json(meta_path, "TensorRT engine metadata")
    missing = [key for key in REQUIRED_METADATA if not isinstance(meta, dict) or key not in meta]
    if not missing and not (isinstance(meta["profile"], dict) and PROFILE_KEYS <= meta["profile"].keys()):
        missing = [f"profile {'/'.join(sorted(PROFILE_KEYS))}"]
    if missing:
        raise FornetError(f"TensorRT engine metadata {meta_path} lacks {', '.join(missing)}: {REBUILD_HINT}")
    return meta


@dataclass(frozen=True)
class EngineRequest:
    """What a run needs of a TensorRT engine; ``None`` fields do not constrain the choice."""

    shape: tuple[int, ...] | None = None  # NCHW the engine will be fed
    dla_core: int | None = None  # None: any engine, GPU engines first
    tensorrt_version: str | None = None  # this machine's, when TensorRT is installed
    gpu_name: str | None = None  # this machine's GPU, when CUDA sees one
    compute_capability: str | None = None


def engine_problem(meta: Mapping, request: EngineRequest) -> str | None:
    """Why an engine (its metadata) cannot serve ``request``; ``None`` if it can.

    TensorRT engines are not portable across TensorRT releases or GPU models (we never
    build version- or hardware-compatible engines), so both must match exactly.
    """
    if request.dla_core is not None and meta.get("dla_core") != request.dla_core:
        return f"built for {'the GPU' if meta.get('dla_core') is None else 'DLA core ' + str(meta['dla_core'])}"
    if request.tensorrt_version is not None and meta.get("tensorrt_version") != request.tensorrt_version:
        return f"built with TensorRT {meta.get('tensorrt_version')}, this machine has {request.tensorrt_version}"
    built_on = (meta.get("gpu_name"), meta.get("compute_capability"))
    if request.gpu_name is not None and built_on != (request.gpu_name, request.compute_capability):
        return (f"built on {built_on[0]} (compute capability {built_on[1]}), this machine has {request.gpu_name} "
                f"(compute capability {request.compute_capability})")
    profile = meta.get("profile") or {}
    if request.shape is not None and profile:
        low, high = profile["min"], profile["max"]
        if len(low) != len(request.shape) or not all(lo <= d <= hi for d, lo, hi in zip(request.shape, low, high)):
            return f"profile {format_shape(low)} to {format_shape(high)} does not cover {format_shape(request.shape)}"
    return None


def check_engine_metadata(meta: dict, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Raise a :class:`FornetError` unless the engine was built by this TensorRT on this GPU
    (:func:`engine_problem`, asked with this machine's facts)."""
    problem = engine_problem(meta, EngineRequest(tensorrt_version=trt_version, gpu_name=gpu_name,
                                                 compute_capability=compute_capability))
    if problem is not None:
        raise FornetError(f"engine {problem}: {REBUILD_HINT}")


def input_spec_from_profile(name: str, profile: dict) -> InputSpec:
    """The runner's input spec from the profile recorded at build time; dims that the
    profile fixes (min == max) are fixed in the spec too."""
    low, high = tuple(profile["min"]), tuple(profile["max"])
    shape = tuple(lo if lo == hi else None for lo, hi in zip(low, high))
    return InputSpec(name=name, shape=shape, min_shape=low, max_shape=high)




def machine_facts(gpu: int = 0) -> dict[str, str]:
    """This machine's ``tensorrt_version`` and GPU ``gpu_name`` / ``compute_capability`` (as
    the engine metadata spells them), each left out when it cannot be read here: no
    TensorRT, no cuda-python, no GPU. Engine selection relies only on what is known."""
    facts = {}
    try:
        import tensorrt

        facts["tensorrt_version"] = tensorrt.__version__
    except (ImportError, OSError):  # not installed, or its libraries missing
        pass
    try:
        device = CudaDevice("engine selection", gpu)
    except FornetError:
        return facts
    return {**facts, "gpu_name": device.gpu_name, "compute_capability": device.compute_capability}
