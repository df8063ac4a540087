"""Build TensorRT engines from a bundle's ONNX graphs (``fornet-deploy build-trt``).

Precision lives in the ONNX graph (docs/design.md §5). The default build is a *strongly typed*
network from the graph of the asked precision, which works on TensorRT 10.x and 11.x:

    fp32 -> model.onnx    fp16 -> model.fp16.onnx    int8 -> model.int8.qdq.onnx

In strongly typed mode TensorRT takes every tensor type from the graph and rejects layer
precision / output-type settings, so the selector / Top-K subgraph stays FP32 because the
graph says so. On TensorRT 10.x only, ``legacy_calibrator`` builds from ``model.onnx`` with
the weak-typing builder flags (FP16, INT8 + an entropy calibrator), and then pins the
selector / Top-K layers to FP32 itself with ``OBEY_PRECISION_CONSTRAINTS``.

Every build clears TF32. ``BuilderFlag.TF32`` is "Enabled by default" (``include/NvInfer.h``
on release/10.3, release/10.16 and main: FP32 inner products "rounding the inputs to 10-bit
mantissas"), so an FP32 engine would miss the FP32 parity threshold on Ampere / Orin and
later, and the FP32 selector / Top-K layers of the FP16 and INT8 engines would run in TF32.
Polygraphy clears it too unless asked (0.53.6 ``backend/trt/config.py``). ``tf32`` is in the
plan and in the engine's metadata. Builds keep detailed profiling information
(``ProfilingVerbosity.DETAILED``), so the engine inspector shows every layer's precision and
formats (reformat layers between INT8 convolutions, :mod:`fornet_deploy.runtimes.trt.inspect`).

Shape: decisions (which graph, which flags, profile, DLA rules, the calibration shape, which
layers stay FP32, engine name and metadata) are plain functions; the TensorRT calls sit in
the adapter at the end of this file, split like Polygraphy's loaders
(``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork``):
:func:`network_from_onnx`, :func:`create_config`, :func:`engine_bytes`; the runner
(:mod:`fornet_deploy.runtimes.trt.runner`) only loads and runs. Polygraphy's own loaders are
not used: its ``CreateConfig`` always puts DLA on core 0 and sets
``PREFER_PRECISION_CONSTRAINTS`` for DLA, logs through its own logger to stdout, and its
``EngineBytesFromNetwork`` writes the timing cache in place (not atomically).

TensorRT Python names, read in NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``,
``pyGraph.cpp``, ``pyFoundationalTypes.cpp``, ``python/src/parsers/pyOnnx.cpp`` and
``include/NvInfer.h`` on ``release/10.3`` (JetPack 6), ``release/10.16`` (newest 10.x) and
``main`` = ``release/11.1`` (table with line numbers: docs/research/tensorrt-facts.md §1):

- Same on all three: ``Builder(logger)``, ``create_network(flags)``,
  ``create_builder_config``, ``create_optimization_profile``,
  ``IOptimizationProfile.set_shape(input, min, opt, max)``,
  ``add_optimization_profile``, ``build_serialized_network`` (``None`` on failure),
  ``num_DLA_cores``; ``IBuilderConfig.set_flag`` / ``clear_flag``, ``BuilderFlag.TF32``,
  ``profiling_verbosity`` + ``ProfilingVerbosity.DETAILED``, ``set_memory_pool_limit`` +
  ``MemoryPoolType.WORKSPACE``, ``create_timing_cache(bytes)``,
  ``set_timing_cache(cache, ignore_mismatch)`` (``False`` on mismatch),
  ``get_timing_cache().serialize()``, ``default_device_type`` + ``DeviceType.DLA``,
  ``DLA_core``, ``BuilderFlag.GPU_FALLBACK``;
  ``OnnxParser(network, logger)``, ``parse_from_file(path)``, ``num_errors``,
  ``get_error(i).desc()`` / ``.node_name()``; ``INetworkDefinition.num_inputs`` /
  ``get_input`` / ``num_layers`` / ``get_layer``; ``ILayer.name`` / ``num_inputs`` /
  ``get_input`` / ``num_outputs`` / ``get_output``; ``ITensor.dtype``; ``trt.float32``.
  (Also present in the 11.4.0.106 bindings wheel.)
- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: bit 1 on 10.x (bit 0 is the ignored
  ``EXPLICIT_BATCH``), bit 0 on 11.x where it is deprecated and ignored because every
  network is strongly typed. The mask is computed from the installed enum, and on 11.x the
  flag is not passed at all.
- Only on 10.x (removed on ``main`` / 11.1 and in the 11.4 wheel): ``BuilderFlag.FP16``,
  ``INT8``, ``OBEY_PRECISION_CONSTRAINTS``, ``ILayer.precision``, ``ILayer.set_output_type``
  (all deprecated since 10.12; the layer settings are rejected by strongly typed networks),
  ``IBuilderConfig.int8_calibrator`` and ``set_calibration_profile`` (deprecated since 10.1),
  ``IInt8EntropyCalibrator2`` (``pyInt8.cpp`` is gone on ``main``).

DLA (:func:`dla_supported`): TensorRT 10.7 was the last 10.x release with DLA ("TensorRT 10.7
was the last 10.x release that supported DLA"), 11.0-11.3 had none, 11.4.0 only on Windows on
ARM, and 11.4.1 "supports DLA on NVIDIA Jetson AGX Orin when using NVIDIA JetPack 7.2.2 or
later" (docs.nvidia.com/deeplearning/tensorrt, "Working with DLA" and the 11.4.1 release
notes). The builder's ``num_DLA_cores`` says whether this device has the cores.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..bundle import Bundle, Transaction, transaction
from ..calibration.trt_calibrator import (
    calibration_cache_key,
    make_entropy_calibrator,
    peek_batches,
    stale_cache_reason,
)
from ..contract import (
    FP32_SCOPES,
    INPUT_CHANNELS,
    ONNX_FP32,
    PRECISIONS,
    TRT_CALIBRATION_CACHE,
    check_choice,
    check_size,
    format_shape,
    onnx_graph,
)
from ..errors import FornetError, HardwareError, require
from ..io import atomic_write_bytes, now_iso, sha256_bytes
from ..runtimes.trt.cuda import CudaDevice, make_trt_logger
from ..runtimes.trt.metadata import engine_metadata_path

Shape = tuple[int, int, int, int]

MIN_TRT_MAJOR = 10
LEGACY_TRT_MAJOR = 10  # the last major with implicit INT8 calibration and weak typing
# TensorRT releases with DLA (module docstring): 10.0-10.7 (JetPack 6), 11.4.1 on (JetPack 7.2.2).
DLA_RELEASES = (((10, 0), (10, 7)), ((11, 4, 1), None))
PROFILING_VERBOSITY = "DETAILED"  # every layer's precision and formats in the engine inspector
FLOAT_TYPES = {"FLOAT", "HALF", "BF16"}  # TensorRT DataType names


# --- shapes and profile ---------------------------------------------------------------


def nchw(hw: tuple[int, int], batch: int = 1) -> Shape:
    """``(512, 1024)``, batch 2 -> ``(2, 3, 512, 1024)``."""
    return (batch, INPUT_CHANNELS, int(hw[0]), int(hw[1]))


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile for the image input; checked on construction."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self):
        for label in ("min", "opt", "max"):
            shape = tuple(getattr(self, label))
            object.__setattr__(self, label, shape)
            if len(shape) != 4 or any(not isinstance(d, int) or d < 1 for d in shape):
                raise FornetError(f"profile {label} shape {shape} is not NCHW with positive sizes")
            if shape[1] != INPUT_CHANNELS:
                raise FornetError(
                    f"profile {label} shape {format_shape(shape)} has {shape[1]} channels, FoR-Net takes {INPUT_CHANNELS}"
                )
            try:
                check_size(shape[2], shape[3])
            except FornetError as exc:
                raise FornetError(f"profile {label} shape {format_shape(shape)}: {exc}") from None
        if not all(lo <= o <= hi for lo, o, hi in zip(self.min, self.opt, self.max)):
            raise FornetError(
                "optimization profile needs min <= opt <= max in every dimension, got "
                f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"
            )

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def tag(self) -> str:
        return format_shape(self.opt) if self.static else "-".join(format_shape(s) for s in (self.min, self.opt, self.max))

    def to_dict(self, input_name: str) -> dict:
        return {"input": input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


# --- configuration and plan -----------------------------------------------------------


@dataclass
class BuildConfig:
    """What ``fornet-deploy build-trt`` was asked for.

    Shapes left out default to the bundle's export shape: no shape given builds a static
    engine at that shape; a missing ``min_shape`` / ``max_shape`` equals ``opt_shape``.
    """

    precision: str = "fp16"
    min_shape: Shape | None = None
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_mb: int | None = None  # None: TensorRT's default (the whole device memory)
    timing_cache: str | Path | None = None  # loaded if present, saved after the build
    dla_core: int | None = None
    legacy_calibrator: bool = False  # TensorRT 10.x: weak typing + builder flags (+ calibrator for int8)
    # TF32 for FP32 tensors (module docstring): off, or FP32 parity and the FP32 scopes break.
    tf32: bool = False
    fp32_scopes: tuple[str, ...] = FP32_SCOPES  # legacy mode only
    # Legacy int8 only: NCHW float32 batches preprocessed as at inference, the hash that
    # identifies them (keys the cache), and where the trtexec-compatible cache lives
    # (default: <bundle>/model.int8.calib).
    calibration_batches: Iterable[np.ndarray] | None = None
    calibration_set_hash: str | None = None
    calibration_cache: str | Path | None = None

    def profile(self, default_shape: Sequence[int] | None = None) -> Profile:
        opt = self.opt_shape or default_shape
        if opt is None:
            raise FornetError("no input shape: the bundle records no export shape, so pass one (e.g. 1x3x512x1024)")
        return Profile(self.min_shape or opt, opt, self.max_shape or opt)


@dataclass(frozen=True)
class BuildPlan:
    """Everything the TensorRT adapter does, decided up front (flag names as in ``trt``)."""

    trt_version: str
    precision: str
    source_graph: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    use_calibrator: bool
    profile: Profile
    dla_core: int | None
    fp32_scopes: tuple[str, ...]  # layers pinned to FP32 (legacy mode; empty when strongly typed)
    workspace_bytes: int | None
    tf32: bool  # False: BuilderFlag.TF32 is cleared (TensorRT enables it by default)
    profiling_verbosity: str  # ProfilingVerbosity member name


def trt_major(version: str) -> int:
    """``"10.3.0.30"`` -> 10."""
    return trt_version_tuple(version)[0]


def trt_version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; ``"11.4.1"`` -> ``(11, 4, 1)``."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)(?:[^\d.]|\s*$)", version)
    if not match:
        raise FornetError(f"cannot read a TensorRT version from {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def dla_supported(version: str) -> bool:
    """Whether this TensorRT release runs DLA (10.0-10.7, or 11.4.1 and newer)."""
    parts = trt_version_tuple(version)
    for low, high in DLA_RELEASES:
        if parts[: len(low)] >= low and (high is None or parts[: len(high)] <= high):
            return True
    return False


def source_graph_name(precision: str, legacy: bool) -> str:
    check_choice(precision, PRECISIONS, "precision")
    return ONNX_FP32 if legacy else onnx_graph(precision).artifact


def select_source_graph(bundle: Bundle, precision: str, legacy: bool) -> str:
    """The bundle artefact a build takes; a missing one names the command that makes it."""
    name = source_graph_name(precision, legacy)
    if not bundle.has(name):
        command = onnx_graph("fp32" if legacy else precision).made_by
        raise FornetError(f"bundle {bundle.root} has no {name}: make it with `{command}`")
    return name


def export_shape(bundle: Bundle) -> Shape | None:
    """The NCHW shape the FP32 graph was exported at (``export_shape`` of its manifest entry;
    its ``input_shape`` has ``None`` for dynamic dimensions)."""
    shape = bundle.artifacts.get(ONNX_FP32, {}).get("export_shape")
    return tuple(shape) if shape else None


def check_dla(dla_core: int, trt_version: str, precision: str, profile: Profile) -> None:
    if dla_core < 0:
        raise FornetError(f"DLA core must be 0 or more, got {dla_core}")
    if not dla_supported(trt_version):
        raise FornetError(
            "DLA builds need TensorRT 10.0-10.7 (JetPack 6) or 11.4.1 and newer (JetPack 7.2.2, Jetson AGX Orin); "
            f"this machine has TensorRT {trt_version}"
        )
    if precision == "fp32":
        raise FornetError("DLA runs fp16 or int8 only: build with precision fp16 or int8")
    if not profile.static:
        raise FornetError("DLA needs a static input shape (min = opt = max): DLA layers do not take dynamic shapes")


def plan_build(config: BuildConfig, trt_version: str, default_shape: Sequence[int] | None = None) -> BuildPlan:
    """Decide graph, flags, profile, DLA and FP32 pinning for one build; raise on anything
    this TensorRT cannot do."""
    major = trt_major(trt_version)
    if major < MIN_TRT_MAJOR:
        raise FornetError(f"build-trt needs TensorRT 10 or newer, this machine has {trt_version}")
    precision, legacy = config.precision, config.legacy_calibrator
    check_choice(precision, PRECISIONS, "precision")
    if legacy and major > LEGACY_TRT_MAJOR:
        raise FornetError(
            "--legacy-calibrator needs TensorRT 10.x; TensorRT 11 removed implicit INT8 calibration, "
            f"use the Q/DQ graph (this machine has TensorRT {trt_version})"
        )
    if legacy and precision == "fp32":
        raise FornetError(f"--legacy-calibrator builds fp16 or int8 from {ONNX_FP32}; fp32 needs no precision flags")
    if legacy and precision == "int8" and not config.calibration_set_hash:
        raise FornetError("--legacy-calibrator int8 needs the calibration set (its hash keys the calibration cache)")
    if config.workspace_mb is not None and config.workspace_mb < 1:
        raise FornetError(f"workspace must be at least 1 MB, got {config.workspace_mb}")
    profile = config.profile(default_shape)

    builder_flags: list[str] = []
    if legacy:
        # INT8 keeps FP16 on too, so layers without an INT8 kernel fall back to FP16, not FP32.
        builder_flags += ["FP16", "INT8"] if precision == "int8" else ["FP16"]
        if config.fp32_scopes:
            builder_flags.append("OBEY_PRECISION_CONSTRAINTS")
    if config.dla_core is not None:
        check_dla(config.dla_core, trt_version, precision, profile)
        builder_flags.append("GPU_FALLBACK")  # DLA cannot run the Top-K threshold ops
    # Strong typing is opt-in on 10.x; TensorRT 11 networks always are, and the flag is deprecated.
    network_flags = ("STRONGLY_TYPED",) if not legacy and major <= LEGACY_TRT_MAJOR else ()
    return BuildPlan(
        trt_version=trt_version,
        precision=precision,
        source_graph=source_graph_name(precision, legacy),
        strongly_typed=not legacy,
        network_flags=network_flags,
        builder_flags=tuple(builder_flags),
        use_calibrator=legacy and precision == "int8",
        profile=profile,
        dla_core=config.dla_core,
        fp32_scopes=tuple(config.fp32_scopes) if legacy else (),
        workspace_bytes=config.workspace_mb << 20 if config.workspace_mb else None,
        tf32=config.tf32,
        profiling_verbosity=PROFILING_VERBOSITY,
    )


def check_calibration_shape(shape: Sequence[int], input_shape: Sequence[int | None] | None, profile: Profile) -> None:
    """Legacy int8: TensorRT calibrates at the images' preprocessed shape (the calibration
    profile), which must fit the network's fixed dims and lie inside the engine's profile
    (a static 512x1024 engine is not calibrated on 1024x2048 Cityscapes images)."""
    shape = tuple(int(d) for d in shape)
    if input_shape and any(want is not None and want != got for want, got in zip(input_shape[1:], shape[1:])):
        raise FornetError(
            f"calibration images preprocess to {format_shape(shape[1:])} but {ONNX_FP32} takes "
            f"{format_shape(input_shape[1:])}: calibrate on images of that size, or export at the images' size "
            "(or with --dynamic)"
        )
    low, high = profile.min[1:], profile.max[1:]
    if not all(lo <= d <= hi for d, lo, hi in zip(shape[1:], low, high)):
        raise FornetError(
            f"calibration images preprocess to {format_shape(shape[1:])}, outside the engine's profile "
            f"{format_shape(low)} to {format_shape(high)}: build for that size (--shape / --max-shape) or "
            "calibrate on images of the engine's size"
        )


def calibration_reason(cache_path: str | Path, key: dict, have_batches: bool) -> str | None:
    """Legacy int8: why it must calibrate, or ``None`` to reuse the cache; an unusable cache
    and no calibration images is an error."""
    reason = stale_cache_reason(cache_path, key)
    if reason is not None and not have_batches:
        raise FornetError(f"{reason}; --legacy-calibrator int8 needs the calibration images to calibrate")
    return reason


# --- FP32 pinning (legacy mode) -------------------------------------------------------


@dataclass(frozen=True)
class LayerView:
    """What pinning needs to know of a TensorRT layer (type names as in ``trt.DataType``)."""

    name: str
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]


@dataclass(frozen=True)
class Fp32Pin:
    index: int
    set_precision: bool  # the layer computes on float inputs
    outputs: tuple[int, ...]  # float outputs to type FP32


def fp32_pins(layers: Sequence[LayerView], scopes: Sequence[str]) -> list[Fp32Pin]:
    """Layers whose name contains one of ``scopes`` (the ONNX parser names layers after their
    node, e.g. ``/focus/selector/Sigmoid``) run in FP32 and write FP32. Only float tensors are
    touched: shape, index and boolean tensors have no precision to pin."""
    pins = []
    for index, layer in enumerate(layers):
        if not any(scope in layer.name for scope in scopes):
            continue
        outputs = tuple(i for i, kind in enumerate(layer.output_types) if kind in FLOAT_TYPES)
        computes_float = any(kind in FLOAT_TYPES for kind in layer.input_types)
        if computes_float or outputs:
            pins.append(Fp32Pin(index, computes_float, outputs))
    return pins


# --- engine name and metadata ---------------------------------------------------------


def engine_name(
    precision: str,
    profile: Profile,
    *,
    default_shape: Sequence[int] | None = None,
    legacy: bool = False,
    dla_core: int | None = None,
) -> str:
    """``model.fp16.engine`` for a static engine at the export shape; variants say what differs,
    e.g. ``model.int8.legacy.dla0.engine`` or ``model.fp16.1x3x256x512-1x3x512x1024-2x3x1024x2048.engine``."""
    parts = ["model", precision]
    if legacy:
        parts.append("legacy")
    if dla_core is not None:
        parts.append(f"dla{dla_core}")
    if not (profile.static and default_shape is not None and profile.opt == tuple(default_shape)):
        parts.append(profile.tag())
    return ".".join(parts) + ".engine"


def engine_metadata(
    plan: BuildPlan,
    *,
    engine: str,
    engine_sha256: str,
    input_name: str,
    gpu_name: str,
    compute_capability: str,
    source_sha256: str,
    fp32_layers: int,
    build_seconds: float,
) -> dict:
    """The ``<engine>.json`` the runner checks before it loads the engine."""
    return {
        "engine": engine,
        "engine_sha256": engine_sha256,
        "tensorrt_version": plan.trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "profile": plan.profile.to_dict(input_name),
        "source_onnx": plan.source_graph,
        "source_onnx_sha256": source_sha256,
        "dla_core": plan.dla_core,
        "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags),
        "tf32": plan.tf32,
        "profiling_verbosity": plan.profiling_verbosity,
        "fp32_layers": fp32_layers,
        "built": now_iso(),
        "build_seconds": round(build_seconds, 1),
    }


# --- the library entry point ----------------------------------------------------------


def build_engine(bundle_dir: str | Path, config: BuildConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Build one engine into the bundle; returns its metadata (also in ``<engine>.json``).

    Raises :class:`MissingDependencyError` without TensorRT / cuda-python,
    :class:`HardwareError` without a GPU, :class:`FornetError` for anything else a user can fix.
    """
    with transaction(bundle_dir, "build-trt") as txn:  # the writer lock, held while building
        return _build_into(txn, config, progress or (lambda message: None))


def _build_into(txn: Transaction, config: BuildConfig, say: Callable[[str], None]) -> dict:
    """:func:`build_engine` in a bundle transaction: engine and metadata commit together."""
    bundle = txn.bundle
    source = select_source_graph(bundle, config.precision, config.legacy_calibrator)
    default_shape = export_shape(bundle)
    trt = require("tensorrt", "tensorrt", "build-trt")
    plan = plan_build(config, trt.__version__, default_shape)
    batches = _calibration_batches(bundle, config, plan)  # checked before any GPU work
    legacy = not plan.strongly_typed
    name = engine_name(plan.precision, plan.profile, default_shape=default_shape, legacy=legacy, dla_core=plan.dla_core)
    onnx_path = bundle.path(source)  # checks its sha256 and lineage against the manifest
    source_sha256 = bundle.artifacts[source]["sha256"]

    gpu = CudaDevice("build-trt")
    started = time.monotonic()
    calibrator = None
    if plan.use_calibrator:
        calibrator = _calibrator(trt, gpu, bundle, config, plan, batches, source_sha256, say)
    try:
        engine, input_name, pinned = _build(trt, plan, onnx_path, config.timing_cache, calibrator, say)
    finally:
        if calibrator is not None:
            calibrator.free()
    seconds = time.monotonic() - started

    meta = engine_metadata(
        plan,
        engine=name,
        engine_sha256=sha256_bytes(engine),
        input_name=input_name,
        gpu_name=gpu.gpu_name,
        compute_capability=gpu.compute_capability,
        source_sha256=source_sha256,
        fp32_layers=pinned,
        build_seconds=seconds,
    )
    meta_name = engine_metadata_path(name).name
    txn.path(name).write_bytes(engine)
    txn.record(
        name, kind="tensorrt-engine", precision=plan.precision, source=source, source_sha256=source_sha256,
        metadata=meta_name, tensorrt_version=plan.trt_version, gpu_name=gpu.gpu_name,
    )
    txn.path(meta_name).write_text(json.dumps(meta, indent=2) + "\n")
    txn.record(meta_name, kind="tensorrt-engine-metadata", engine=name, source=name,
               source_sha256=meta["engine_sha256"])
    say(f"wrote {name} ({len(engine) / 1e6:.1f} MB, built in {seconds:.0f} s)")
    return meta


def _calibration_batches(bundle: Bundle, config: BuildConfig, plan: BuildPlan) -> Iterable[np.ndarray] | None:
    """Legacy int8: the calibration batches, their shape checked against the network input
    and the profile; ``None`` when the build takes no images (the cache must then do)."""
    if not plan.use_calibrator or config.calibration_batches is None:
        return None
    first, batches = peek_batches(config.calibration_batches)
    if first is None:
        raise FornetError("the calibration set yielded no batches")
    check_calibration_shape(first.shape, bundle.artifacts.get(ONNX_FP32, {}).get("input_shape"), plan.profile)
    return batches


# --- TensorRT adapter: loaders (network, config, engine bytes) ------------------------


def _calibrator(trt, gpu: CudaDevice, bundle: Bundle, config: BuildConfig, plan: BuildPlan,
                batches: Iterable[np.ndarray] | None, source_sha256: str, say):
    cache = Path(config.calibration_cache or bundle.root / TRT_CALIBRATION_CACHE)
    key = calibration_cache_key(source_sha256, config.calibration_set_hash, bundle.manifest.get("preprocessing"),
                                tensorrt_version=plan.trt_version, gpu_name=gpu.gpu_name,
                                compute_capability=gpu.compute_capability)
    reason = calibration_reason(cache, key, batches is not None)
    say(f"{reason}; calibrating" if reason else f"using calibration cache {cache}")
    return make_entropy_calibrator(trt, gpu, batches if reason else None, cache, key)


def _build(trt, plan: BuildPlan, onnx_path: Path, timing_cache: str | Path | None, calibrator, say):
    """Parse, configure and build; returns (serialized engine, input name, FP32-pinned layers)."""
    logger = make_trt_logger(trt)
    builder, network, parser = network_from_onnx(trt, plan, onnx_path, logger, say)
    input_name = network.get_input(0).name
    pinned = _pin_fp32(trt, network, plan.fp32_scopes)
    if pinned:
        say(f"keeping {pinned} selector / Top-K layers in FP32")
    config = create_config(trt, builder, plan, input_name, calibrator, timing_cache)
    say("building the engine (this can take minutes)")
    engine = engine_bytes(builder, network, config, logger, calibrator, timing_cache)
    del parser  # the parser owns the weights memory the network points to, until the build is done
    return engine, input_name, pinned


def network_from_onnx(trt, plan: BuildPlan, onnx_path: Path, logger, say):
    """``(builder, network, parser)`` for the ONNX file (Polygraphy's ``NetworkFromOnnxPath``);
    keep the parser alive while the network is built."""
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path.name} with TensorRT {plan.trt_version}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise FornetError(
            f"TensorRT {plan.trt_version} cannot parse {onnx_path.name}: {errors or logger.last_error('no details')}"
        )
    if network.num_inputs != 1:
        raise FornetError(f"{onnx_path.name} has {network.num_inputs} inputs, FoR-Net graphs take one image")
    return builder, network, parser


def create_config(trt, builder, plan: BuildPlan, input_name: str, calibrator, timing_cache: str | Path | None):
    """The ``IBuilderConfig`` the plan describes (Polygraphy's ``CreateConfig``)."""
    config = builder.create_builder_config()
    # TensorRT turns TF32 on by default (module docstring): clear it unless the plan asks for it.
    if plan.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, plan.profiling_verbosity)
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, list(plan.profile.min), list(plan.profile.opt), list(plan.profile.max))
    config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        if plan.dla_core >= builder.num_DLA_cores:
            raise HardwareError(
                f"DLA core {plan.dla_core} asked for, this device has {builder.num_DLA_cores} DLA core(s)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if calibrator is not None:
        # With dynamic shapes TensorRT calibrates at one shape, set by a calibration profile.
        shape = list(calibrator.shape or plan.profile.opt)
        calibration_profile = builder.create_optimization_profile()
        calibration_profile.set_shape(input_name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = calibrator
    if timing_cache is not None:
        _attach_timing_cache(config, Path(timing_cache))
    return config


def engine_bytes(builder, network, config, logger, calibrator, timing_cache: str | Path | None) -> bytes:
    """Build and serialize (Polygraphy's ``EngineBytesFromNetwork``); a calibration error
    that TensorRT swallowed is raised here, and the timing cache is saved atomically."""
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        if isinstance(calibrator.error, FornetError):
            raise calibrator.error
        raise FornetError(f"INT8 calibration failed: {calibrator.error}") from calibrator.error
    if serialized is None:
        raise FornetError(f"TensorRT could not build the engine: {logger.last_error('no details')}")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _network_flags(trt, names: Sequence[str]) -> int:
    # Bit positions differ between releases (STRONGLY_TYPED is 1 on 10.x, 0 on 11.x): read them.
    return sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, name)) for name in names)


def _parser_error(error) -> str:
    node = error.node_name()
    return f"{node}: {error.desc()}" if node else error.desc()


def _pin_fp32(trt, network, scopes: Sequence[str]) -> int:
    if not scopes:
        return 0
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    views = [
        LayerView(
            layer.name,
            tuple(_type_name(layer.get_input(i)) for i in range(layer.num_inputs)),
            tuple(_type_name(layer.get_output(i)) for i in range(layer.num_outputs)),
        )
        for layer in layers
    ]
    pins = fp32_pins(views, scopes)
    for pin in pins:
        layer = layers[pin.index]
        if pin.set_precision:
            layer.precision = trt.float32
        for output in pin.outputs:
            layer.set_output_type(output, trt.float32)
    return len(pins)


def _type_name(tensor) -> str:
    return "NONE" if tensor is None else tensor.dtype.name  # optional inputs are None


def _attach_timing_cache(config, path: Path) -> None:
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise FornetError(
            f"timing cache {path} is corrupt or from another GPU or TensorRT: delete it or pass another path"
        )


def build_with_calibration_data(bundle_dir: str | Path, config: BuildConfig, calib_data: str | Path | None = None,
                                num_images: int = 64, seed: int = 0,
                                progress: Callable[[str], None] | None = None) -> dict:
    """``fornet-deploy build-trt``: :func:`build_engine`, plus the calibration set that the
    legacy INT8 path (TensorRT 10.x entropy calibrator) reads from ``calib_data`` (a dataset,
    a folder of images or a video; :class:`~..calibration.calibset.CalibrationSet`)."""
    if config.legacy_calibrator and config.precision == "int8" and config.calibration_batches is None:
        if calib_data is None:
            raise FornetError("--legacy-calibrator --int8 needs --data (a dataset, a folder of images or a video) "
                              "to calibrate on")
        from ..calibration.calibset import bundle_calibration_set

        bundle = Bundle.open(bundle_dir, verify=False)
        bundle.path(ONNX_FP32)  # one line when it is missing or changed
        # resized to the network input as `calibrate` does (a dynamic graph: at the export shape);
        # the manifest records the graph's input shape
        calib = bundle_calibration_set(bundle, bundle.artifacts[ONNX_FP32]["input_shape"], calib_data,
                                       num=num_images, seed=seed)
        config.calibration_batches = calib.batches(1)
        config.calibration_set_hash = calib.key(bundle.artifacts[ONNX_FP32]["sha256"])
    return build_engine(bundle_dir, config, progress)
