"""TensorRT engine runner, and the CUDA / TensorRT plumbing ``trt_build`` shares.

An engine only runs with the TensorRT release and the GPU that built it, so every engine
``model.<precision>.engine`` has a metadata file ``model.<precision>.engine.json`` beside it
(written by ``fornet-deploy build-trt``) and the runner checks it before it deserializes
anything: a mismatch ends in one sentence that says to rebuild, not in a TensorRT error.

CUDA memory goes through PyCUDA (the ``[tensorrt]`` extra installs ``tensorrt`` + ``pycuda``).
TensorRT calls the CUDA runtime API, which works in the device's *primary* context, so
:class:`CudaContext` retains and pushes that context rather than creating a private one:
PyCUDA allocations and TensorRT then share one context. A runner must be used from the
thread that activated it (CUDA contexts are current per thread).

TensorRT names used here were read in NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` on
``release/10.3`` (JetPack 6), ``release/10.16`` (newest 10.x) and ``main`` / ``release/11.1``,
and are the same on all of them: ``ILogger`` (subclassable, ``log(severity, msg)``,
``ILogger.Severity.ERROR/INTERNAL_ERROR/WARNING``), ``Runtime(logger)``, ``Runtime.DLA_core``,
``Runtime.deserialize_cuda_engine(buffer)`` (``None`` on failure),
``ICudaEngine.create_execution_context``, ``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode`` / ``TensorIOMode.INPUT``, ``get_tensor_dtype``,
``IExecutionContext.set_input_shape`` / ``get_tensor_shape`` / ``set_tensor_address(name, int)``
/ ``execute_async_v3(stream_handle: int)`` (all return ``bool`` where they can fail),
``tensorrt.nptype`` and ``tensorrt.__version__`` (``python/packaging/bindings_wheel``).
PyCUDA names (inducer/pycuda ``src/wrapper/wrap_cudadrv.cpp``): ``init``, ``Device.count``,
``Device.name``, ``Device.compute_capability``, ``Device.retain_primary_context``,
``Context.push`` / ``Context.pop``, ``mem_alloc``, ``memcpy_htod_async``,
``memcpy_dtoh_async``, ``Stream().handle`` / ``synchronize``, ``Error``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from ..bundle import read_json, sha256_bytes
from ..errors import FornetError, HardwareError, require
from .base import InputSpec, Runner, RunnerInfo

_log = logging.getLogger(__name__)

REBUILD_HINT = "rebuild with `fornet-deploy build-trt`"
# Metadata keys the runner needs before it may deserialize an engine.
REQUIRED_METADATA = ("tensorrt_version", "gpu_name", "compute_capability", "engine_sha256", "precision", "profile")
PROFILE_KEYS = {"input", "min", "opt", "max"}


def engine_metadata_path(engine_path: str | Path) -> Path:
    """``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# --- CUDA / TensorRT plumbing (shared with trt_build) --------------------------------


class CudaContext:
    """The primary CUDA context of one GPU, current inside a ``with`` block.

    Construction raises :class:`MissingDependencyError` without PyCUDA and
    :class:`HardwareError` without an NVIDIA driver or GPU.
    """

    def __init__(self, purpose: str, device: int = 0):
        require("pycuda", "tensorrt", purpose)
        try:
            import pycuda.driver as driver
        except ImportError as exc:  # PyCUDA is installed, the NVIDIA driver (libcuda) is not
            raise HardwareError(f"{purpose} needs an NVIDIA GPU and driver ({exc})") from None
        try:
            driver.init()
            count = driver.Device.count()
        except driver.Error as exc:
            raise HardwareError(f"{purpose} needs an NVIDIA GPU; CUDA reports: {exc}") from None
        if device >= count:
            raise HardwareError(f"{purpose} asked for GPU {device}, this machine has {count} CUDA device(s)")
        self.driver = driver
        self.device = driver.Device(device)
        self.gpu_name: str = self.device.name()
        self.compute_capability: str = "{}.{}".format(*self.device.compute_capability())
        self._context = None

    def __enter__(self) -> "CudaContext":
        self._context = self.device.retain_primary_context()
        self._context.push()
        return self

    def __exit__(self, *exc) -> None:
        self._context.pop()
        self._context = None  # dropping the last reference releases the primary context


def make_trt_logger(trt):
    """A TensorRT logger that keeps error messages (for our one-line errors) and sends
    warnings and errors to Python logging instead of stdout."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11 trampolines need the explicit base init
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                _log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                _log.warning("TensorRT: %s", msg)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    return CollectingLogger()


# --- metadata checks (pure) -----------------------------------------------------------


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


# --- runner ---------------------------------------------------------------------------


class TrtRunner(Runner):
    """Runs a TensorRT engine built by ``fornet-deploy build-trt``.

    Takes NCHW float32 batches of any shape inside the engine's optimization profile;
    returns the engine outputs keyed by their ONNX names (``logits``, ``labels``, …).
    FP16 outputs are returned as float32, integer outputs keep their type.
    """

    def __init__(self, engine_path: str | Path, device: int = 0):
        self.engine_path = Path(engine_path)
        super().__init__(f"trt:{self.engine_path.name}")
        self.meta = read_engine_metadata(self.engine_path)
        self.device = device
        self._spec = input_spec_from_profile(self.meta["profile"]["input"], self.meta["profile"])
        self._closing: contextlib.ExitStack | None = None
        self._cuda: CudaContext | None = None
        self._engine = self._context = self._runtime = self._stream = None
        self._outputs: dict[str, np.dtype] = {}
        self._input_dtype: np.dtype | None = None
        self._buffers: dict[str, tuple[object, int]] = {}  # tensor name -> (device allocation, bytes)

    def input_spec(self) -> InputSpec:
        return self._spec

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            backend="tensorrt",
            precision=self.meta["precision"],
            device=self.meta["gpu_name"],
            artifact=self.engine_path.name,
            details={
                "tensorrt_version": self.meta["tensorrt_version"],
                "compute_capability": self.meta["compute_capability"],
                "strongly_typed": self.meta.get("strongly_typed"),
                "dla_core": self.meta.get("dla_core"),
            },
        )

    def _activate_impl(self) -> None:
        trt = require("tensorrt", "tensorrt", "the TensorRT runner")
        with contextlib.ExitStack() as closing:
            self._cuda = closing.enter_context(CudaContext("the TensorRT runner", self.device))
            closing.callback(self._release)  # runs before the context is popped (LIFO)
            check_engine_metadata(self.meta, trt.__version__, self._cuda.gpu_name, self._cuda.compute_capability)
            data = self.engine_path.read_bytes()
            if sha256_bytes(data) != self.meta["engine_sha256"]:
                raise FornetError(
                    f"{self.engine_path.name} does not match its metadata file (the engine was "
                    f"replaced after it was built): {REBUILD_HINT}"
                )
            logger = make_trt_logger(trt)
            self._runtime = trt.Runtime(logger)
            if self.meta.get("dla_core") is not None:
                # The runtime, not only the builder, picks the DLA core an engine runs on.
                self._runtime.DLA_core = int(self.meta["dla_core"])
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise FornetError(
                    f"TensorRT could not load {self.engine_path.name}: "
                    f"{logger.last_error('unknown error')} ({REBUILD_HINT})"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                reason = logger.last_error("out of GPU memory?")
                raise FornetError(f"TensorRT could not create an execution context: {reason}")
            self._read_io(trt)
            self._stream = self._cuda.driver.Stream()
            self._closing = closing.pop_all()

    def _read_io(self, trt) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [self._spec.name]:
            raise FornetError(
                f"{self.engine_path.name} has inputs {inputs}, its metadata says {self._spec.name!r}: {REBUILD_HINT}"
            )
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._spec.name)))
        self._outputs = {
            n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names if n not in inputs
        }

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """Device memory for one tensor, grown (never shrunk) as shapes change."""
        allocation, size = self._buffers.get(name, (None, 0))
        if nbytes > size:
            if allocation is not None:
                allocation.free()
            allocation = self._cuda.driver.mem_alloc(max(nbytes, 1))
            self._buffers[name] = (allocation, nbytes)
        return int(allocation)

    def _infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        driver, context, stream = self._cuda.driver, self._context, self._stream
        # FP16 graphs may take FP16 input; the runner contract is float32 in.
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if not context.set_input_shape(self._spec.name, batch.shape):
            raise FornetError(
                f"TensorRT rejected input shape {batch.shape} "
                f"(profile {self._spec.min_shape} to {self._spec.max_shape})"
            )
        address = self._device_buffer(self._spec.name, batch.nbytes)
        context.set_tensor_address(self._spec.name, address)
        # Pageable host memory is fine for these copies: CUDA stages a host-to-device copy
        # before returning and completes a device-to-host copy before returning.
        driver.memcpy_htod_async(address, batch, stream)
        outputs = {}
        for name, dtype in self._outputs.items():
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype)  # shapes follow the input
            outputs[name] = host, self._device_buffer(name, host.nbytes)
            context.set_tensor_address(name, outputs[name][1])
        if not context.execute_async_v3(stream.handle):
            raise FornetError(f"TensorRT inference failed on {self.engine_path.name} for input shape {batch.shape}")
        for host, address in outputs.values():
            driver.memcpy_dtoh_async(host, address, stream)
        stream.synchronize()
        return {
            name: host.astype(np.float32) if host.dtype == np.float16 else host for name, (host, _) in outputs.items()
        }

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    def _release(self) -> None:
        """Free device memory and TensorRT objects while the CUDA context is still current."""
        for allocation, _ in self._buffers.values():
            allocation.free()
        self._buffers = {}
        # Destroy in dependency order: execution context, engine, runtime.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    def _deactivate_impl(self) -> None:
        self._closing.close()
        self._closing = self._cuda = None
