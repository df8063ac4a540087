"""CUDA for the TensorRT runner, builder and calibrator, through NVIDIA's cuda-python.

TensorRT's own Python samples moved from PyCUDA to cuda-python (NVIDIA/TensorRT
``CHANGELOG.md`` 10.13: "use cuda-python instead of PyCUDA"; 10.14: "Replace all pycuda usages
with cuda-python APIs"; ``samples/python/common_runtime.py`` on release/10.16 imports
``from cuda.bindings import runtime as cudart`` and keeps pinned host memory from
``cudaMallocHost``). cuda-python ships binary wheels for x86-64 and aarch64 (JetPack 6), where
PyCUDA is an sdist compiled against the CUDA toolkit at install time.

TensorRT works through the CUDA runtime API in the device's primary context, so
``cudaSetDevice`` is all the context handling there is: :class:`CudaDevice` makes its GPU
current (per thread, so the runner repeats it before each run).

Names called (module ``cuda.bindings.runtime``, which exists since cuda-python 12.6 and is
the only one in 13.x; every name and signature below checked with ``inspect.signature`` in
cuda-python 12.9.10 and 13.4.4, and ``cudaGetDeviceCount()`` returns
``cudaErrorInsufficientDriver`` on a machine without a driver): ``cudaGetDeviceCount()``,
``cudaSetDevice(device)``, ``cudaGetDeviceProperties(device)`` (``.name``, ``.major``,
``.minor``), ``cudaGetErrorName(error)``, ``cudaMalloc(size)`` / ``cudaFree(devPtr)``,
``cudaMallocHost(size)`` / ``cudaFreeHost(ptr)``, ``cudaMemcpy(dst, src, count, kind)``,
``cudaMemcpyAsync(dst, src, count, kind, stream)``, ``cudaMemcpyKind``,
``cudaStreamCreateWithFlags(flags)`` + ``cudaStreamNonBlocking``, ``cudaStreamSynchronize`` /
``cudaStreamDestroy(stream)``, ``cudaEventCreate()``, ``cudaEventRecord(event, stream)``,
``cudaEventSynchronize(event)``, ``cudaEventElapsedTime(start, end)`` (milliseconds),
``cudaEventDestroy(event)``. Every call returns ``(error, *values)``.

TensorRT's ``ILogger`` (subclassable, ``log(severity, msg)``, ``ILogger.Severity.*``) is the
same on ``release/10.3``, ``release/10.16`` and ``main`` (``python/src/infer/pyCore.cpp``).
"""

from __future__ import annotations

import ctypes
import logging
from typing import Callable

import numpy as np

from ...errors import FornetError, HardwareError, MissingDependencyError

_log = logging.getLogger(__name__)

# Events of one run: before the input copy, after it, after execute, after the output copies.
H2D_START, COMPUTE_START, D2H_START, END = range(4)


def import_cudart(purpose: str):
    """``cuda.bindings.runtime``, or a :class:`MissingDependencyError` naming the extra."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise MissingDependencyError("cuda-python", "tensorrt", purpose) from None
    return runtime


def error_name(rt, error) -> str:
    name = rt.cudaGetErrorName(error)[1]
    return name.decode() if isinstance(name, bytes) else str(name)


def checked(rt, result, what: str):
    """The value(s) of a cuda-python call, or a one-line :class:`FornetError` naming the CUDA error."""
    error, *values = result
    if int(error) != 0:
        raise FornetError(f"CUDA {what} failed: {error_name(rt, error)}")
    return values[0] if len(values) == 1 else tuple(values) or None


class CudaDevice:
    """One GPU, made current, with its name and compute capability.

    Construction raises :class:`MissingDependencyError` without cuda-python and
    :class:`HardwareError` without an NVIDIA driver or GPU (or with fewer GPUs than ``index``).
    """

    def __init__(self, purpose: str, index: int = 0):
        self.rt = rt = import_cudart(purpose)
        error, count = rt.cudaGetDeviceCount()
        if int(error) != 0 or not count:
            reason = error_name(rt, error) if int(error) != 0 else "no CUDA device"
            raise HardwareError(f"{purpose} needs an NVIDIA GPU and driver; CUDA reports {reason}")
        if not 0 <= index < count:
            raise HardwareError(f"{purpose} asked for GPU {index}, this machine has {count} CUDA device(s)")
        self.index = index
        self.make_current()
        props = checked(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self.gpu_name: str = name.split("\x00", 1)[0].strip()
        self.compute_capability: str = f"{props.major}.{props.minor}"

    def make_current(self) -> None:
        checked(self.rt, self.rt.cudaSetDevice(self.index), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(checked(self.rt, self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc of {nbytes} bytes"))

    def free(self, pointer: int) -> None:
        checked(self.rt, self.rt.cudaFree(pointer), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        return int(checked(self.rt, self.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost of {nbytes} bytes"))

    def free_host(self, pointer: int) -> None:
        checked(self.rt, self.rt.cudaFreeHost(pointer), "cudaFreeHost")

    def copy_to_device(self, pointer: int, array: np.ndarray) -> None:
        """Synchronous host-to-device copy (the calibrator's batches)."""
        array = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        checked(self.rt, self.rt.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind), "cudaMemcpy")


class GrowingBuffers:
    """Named allocations reused across calls, grown (never shrunk) when a shape needs more."""

    def __init__(self, allocate: Callable[[int], int], release: Callable[[int], None]):
        self._allocate, self._release = allocate, release
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def get(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            if pointer:
                self._release(pointer)
                del self._buffers[name]
            pointer = self._allocate(nbytes)
            self._buffers[name] = (pointer, max(nbytes, 1))
        return pointer

    def release(self) -> None:
        buffers, self._buffers = self._buffers, {}
        for pointer, _ in buffers.values():
            self._release(pointer)


def host_view(pointer: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy array over pinned host memory at ``pointer`` (no copy)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Stream:
    """One non-blocking stream and the four events that split a run into input copy,
    execution and output copies (:data:`H2D_START` ... :data:`END`)."""

    def __init__(self, device: CudaDevice):
        self.device, rt = device, device.rt
        self._stream = checked(rt, rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._events: list = []
        try:
            for _ in range(END + 1):
                self._events.append(checked(rt, rt.cudaEventCreate(), "cudaEventCreate"))
        except FornetError:
            self.close()
            raise

    @property
    def handle(self) -> int:
        """What ``IExecutionContext.execute_async_v3(stream_handle)`` takes."""
        return int(self._stream)

    def record(self, mark: int) -> None:
        rt = self.device.rt
        checked(rt, rt.cudaEventRecord(self._events[mark], self._stream), "cudaEventRecord")

    def copy_in(self, pointer: int, host: np.ndarray) -> None:
        rt = self.device.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        checked(rt, rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, self._stream), "cudaMemcpyAsync")

    def copy_out(self, host: np.ndarray, pointer: int) -> None:
        rt = self.device.rt
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        checked(rt, rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind, self._stream), "cudaMemcpyAsync")

    def wait(self) -> None:
        """Until the :data:`END` event (the last thing a run records) has passed."""
        rt = self.device.rt
        checked(rt, rt.cudaEventSynchronize(self._events[END]), "cudaEventSynchronize")

    def synchronize(self) -> None:
        rt = self.device.rt
        checked(rt, rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def elapsed_ms(self, start: int, end: int) -> float:
        rt = self.device.rt
        return float(checked(rt, rt.cudaEventElapsedTime(self._events[start], self._events[end]),
                             "cudaEventElapsedTime"))

    def close(self) -> None:
        rt = self.device.rt
        for event in self._events:
            rt.cudaEventDestroy(event)
        self._events = []
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None


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
