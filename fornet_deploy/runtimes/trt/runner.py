"""TensorRT engine runner: loads an engine built by ``fornet-deploy build-trt`` and runs it.

Load and run only, like Polygraphy's ``TrtRunner`` next to its loaders (the builder is
:mod:`fornet_deploy.build.trt`). Before it deserializes anything, the runner checks the
engine's metadata file (:mod:`.metadata`): an engine from another TensorRT or GPU ends in one
sentence saying to rebuild. CUDA (cuda-python) is in :mod:`.cuda`.

Per run: the batch is copied once into a pinned host buffer, then one stream carries the
host-to-device copy, ``execute_async_v3`` and the device-to-host copies of the outputs asked
for (a deployed engine need not move full-resolution logits), with a CUDA event between each
step, so :meth:`TrtRunner.last_timings` splits transfer from compute. Host (pinned) and device
buffers are kept per tensor and grow only when a larger shape needs it. Polygraphy's
``TrtRunner`` (0.53.6 ``backend/trt/runner.py``) copies outputs into pageable arrays, all or
none, and times the whole call with ``time.time()``, hence a runner of our own.

TensorRT names used here were read in NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` on
``release/10.3`` (JetPack 6), ``release/10.16`` (newest 10.x) and ``main`` / ``release/11.1``,
and are the same on all of them: ``Runtime(logger)``, ``Runtime.DLA_core``,
``Runtime.deserialize_cuda_engine(serialized_engine)`` (``None`` on failure),
``ICudaEngine.create_execution_context``, ``num_io_tensors``, ``get_tensor_name(index)``,
``get_tensor_mode(name)`` / ``TensorIOMode.INPUT``, ``get_tensor_dtype(name)``,
``ICudaEngine.create_engine_inspector()``, ``EngineInspector.get_engine_information(format)``
+ ``LayerInformationFormat.JSON``, ``IExecutionContext.set_input_shape(name, shape)`` /
``get_tensor_shape(name)`` / ``set_tensor_address(name, memory)`` /
``execute_async_v3(stream_handle)`` (``bool`` where they can fail), ``tensorrt.nptype`` and
``tensorrt.__version__`` (``python/packaging/bindings_wheel/tensorrt/__init__.py``).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ...errors import FornetError, require
from ...io import read_bytes, sha256_bytes
from ..base import InputSpec, LoadRequest, Runner, RunnerInfo
from .cuda import (
    COMPUTE_START,
    D2H_START,
    END,
    H2D_START,
    CudaDevice,
    GrowingBuffers,
    Stream,
    host_view,
    make_trt_logger,
)
from .metadata import REBUILD_HINT, check_engine_metadata, input_spec_from_profile, read_engine_metadata


class TrtRunner(Runner):
    """Runs a TensorRT engine built by ``fornet-deploy build-trt`` on GPU ``device``.

    Takes NCHW float32 batches of any shape inside the engine's optimization profile;
    returns the engine outputs keyed by their ONNX names (``logits``, ``labels``, …), each a
    fresh array (FP16 outputs as float32, integer outputs in their type). Use it from the
    thread that activated it or another one: the device is made current on every run.
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
        self._gpu: CudaDevice | None = None
        self._stream: Stream | None = None
        self._device_buffers: GrowingBuffers | None = None
        self._host_buffers: GrowingBuffers | None = None
        self._engine = self._context = self._runtime = None
        self._outputs: dict[str, np.dtype] = {}
        self._input_dtype: np.dtype | None = None
        self._timings: dict[str, float] | None = None

    @classmethod
    def from_request(cls, request: LoadRequest) -> "TrtRunner":
        return cls(request.path, device=request.gpu, sha256=request.sha256)

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
                "tf32": self.meta.get("tf32"),
                "dla_core": self.meta.get("dla_core"),
                "gpu_index": self.device,
            },
        )

    def last_timings(self) -> dict[str, float] | None:
        """CUDA-event times of the last run: input copy, ``execute_async_v3``, output copies."""
        return self._timings

    def _activate_impl(self) -> None:
        trt = require("tensorrt", "tensorrt", "the TensorRT runner")
        with contextlib.ExitStack() as closing:
            gpu = CudaDevice("the TensorRT runner", self.device)
            check_engine_metadata(self.meta, trt.__version__, gpu.gpu_name, gpu.compute_capability)
            data = read_bytes(self.engine_path, "TensorRT engine", sha256=self.sha256)
            if sha256_bytes(data) != self.meta["engine_sha256"]:
                raise FornetError(
                    f"{self.engine_path.name} does not match its metadata file (the engine was "
                    f"replaced after it was built): {REBUILD_HINT}"
                )
            self._gpu = gpu
            closing.callback(self._release)
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
            self._stream = Stream(gpu)
            self._device_buffers = GrowingBuffers(gpu.malloc, gpu.free)
            self._host_buffers = GrowingBuffers(gpu.malloc_host, gpu.free_host)
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

    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        context, stream, name = self._context, self._stream, self._spec.name
        self._gpu.make_current()
        if not context.set_input_shape(name, batch.shape):
            raise FornetError(
                f"TensorRT rejected input shape {batch.shape} "
                f"(profile {self._spec.min_shape} to {self._spec.max_shape})"
            )
        # The one host-side copy of the input, into pinned memory (and to FP16 for FP16 inputs).
        nbytes = batch.size * self._input_dtype.itemsize
        host_in = host_view(self._host_buffers.get(name, nbytes), self._input_dtype, batch.shape)
        np.copyto(host_in, batch, casting="same_kind")
        device_in = self._device_buffers.get(name, nbytes)
        context.set_tensor_address(name, device_in)
        wanted = set(self._outputs if outputs is None else outputs)
        copies = []
        for out, dtype in self._outputs.items():
            # Every output needs device memory; only the wanted ones come back.
            shape = tuple(context.get_tensor_shape(out))  # shapes follow the input shape
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            device_out = self._device_buffers.get(out, size)
            context.set_tensor_address(out, device_out)
            if out in wanted:
                copies.append((out, host_view(self._host_buffers.get(out, size), dtype, shape), device_out))
        stream.record(H2D_START)
        stream.copy_in(device_in, host_in)
        stream.record(COMPUTE_START)
        if not context.execute_async_v3(stream.handle):
            raise FornetError(f"TensorRT inference failed on {self.engine_path.name} for input shape {batch.shape}")
        stream.record(D2H_START)
        for _, host, device_out in copies:
            stream.copy_out(host, device_out)
        stream.record(END)
        stream.wait()
        self._timings = {"h2d_ms": stream.elapsed_ms(H2D_START, COMPUTE_START),
                         "compute_ms": stream.elapsed_ms(COMPUTE_START, D2H_START),
                         "d2h_ms": stream.elapsed_ms(D2H_START, END)}
        # Out of the reused pinned buffers: the next run overwrites them.
        return {out: host.astype(np.float32) if host.dtype == np.float16 else host.copy() for out, host, _ in copies}

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    def engine_information(self) -> dict:
        """The engine inspector's JSON (per-layer types, formats, tactics; full detail for
        engines built with ``ProfilingVerbosity.DETAILED``, as build-trt does)."""
        if self._engine is None:
            raise FornetError(f"runner {self.name} is not active (use it in a `with` block)")
        trt = require("tensorrt", "tensorrt", "the TensorRT engine inspector")
        inspector = self._engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

    def _release(self) -> None:
        """TensorRT objects first (they may use the memory below), then buffers and the stream."""
        self._context = None
        self._engine = None
        self._runtime = None
        for buffers in (self._device_buffers, self._host_buffers):
            if buffers is not None:
                buffers.release()
        if self._stream is not None:
            self._stream.close()
        self._device_buffers = self._host_buffers = self._stream = None
        self._timings = None

    def _deactivate_impl(self) -> None:
        self._closing.close()
        self._closing = self._gpu = None
