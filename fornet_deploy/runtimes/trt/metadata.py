"""The metadata file beside every engine, and the checks made before an engine loads.

An engine only runs with the TensorRT release and the GPU that built it, so every engine
``model.<precision>.engine`` has a metadata file ``model.<precision>.engine.json`` beside it
(written by ``fornet-deploy build-trt``); the runner checks it before it deserializes
anything, so a mismatch ends in one sentence that says to rebuild, not in a TensorRT error.
"""

from __future__ import annotations

from pathlib import Path

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


def check_engine_metadata(meta: dict, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Raise a :class:`FornetError` unless the engine was built by this TensorRT on this GPU.

    TensorRT engines are not portable across TensorRT releases or GPU models (we never
    build version- or hardware-compatible engines), so both must match exactly.
    """
    built_with = meta.get("tensorrt_version")
    if built_with != trt_version:
        raise FornetError(f"engine built with TensorRT {built_with}, this machine has {trt_version}: {REBUILD_HINT}")
    built_on = (meta.get("gpu_name"), meta.get("compute_capability"))
    if built_on != (gpu_name, compute_capability):
        raise FornetError(
            f"engine built on {built_on[0]} (compute capability {built_on[1]}), this machine has "
            f"{gpu_name} (compute capability {compute_capability}): {REBUILD_HINT}"
        )


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
