"""TensorRT engine runner: loads an engine built by ``fornet-deploy build-trt`` and runs it.

Before it deserializes anything, the runner checks the engine's metadata file
(:mod:`.metadata`): an engine from another TensorRT or GPU ends in one sentence saying to
rebuild. CUDA plumbing (primary context, PyCUDA memory) is in :mod:`.cuda`.

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
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ...errors import FornetError, require
from ...io import read_bytes, sha256_bytes
from ..base import InputSpec, Runner, RunnerInfo
from .cuda import CudaContext, make_trt_logger
from .metadata import REBUILD_HINT, check_engine_metadata, input_spec_from_profile, read_engine_metadata


class TrtRunner(Runner):
    """Runs a TensorRT engine built by ``fornet-deploy build-trt``.

    Takes NCHW float32 batches of any shape inside the engine's optimization profile;
    returns the engine outputs keyed by their ONNX names (``logits``, ``labels``, …).
    FP16 outputs are returned as float32, integer outputs keep their type.
    """

    def __init__(self, engine_path: str | Path, device: int = 0, sha256: str | None = None):
        """``sha256``: the engine's hash in its bundle's manifest, checked on the bytes loaded."""
        self.engine_path = Path(engine_path)
        self.sha256 = sha256
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

    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

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
            data = read_bytes(self.engine_path, "TensorRT engine", sha256=self.sha256)
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

    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
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
        wanted = set(self._outputs if outputs is None else outputs)
        copies = {}
        for name, dtype in self._outputs.items():
            # Every output needs device memory; only the wanted ones are copied back.
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype)  # shapes follow the input
            address = self._device_buffer(name, host.nbytes)
            context.set_tensor_address(name, address)
            if name in wanted:
                copies[name] = host, address
        if not context.execute_async_v3(stream.handle):
            raise FornetError(f"TensorRT inference failed on {self.engine_path.name} for input shape {batch.shape}")
        for host, address in copies.values():
            driver.memcpy_dtoh_async(host, address, stream)
        stream.synchronize()
        return {
            name: host.astype(np.float32) if host.dtype == np.float16 else host for name, (host, _) in copies.items()
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
