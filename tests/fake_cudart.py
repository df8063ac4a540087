"""A stand-in for ``cuda.bindings.runtime`` (cuda-python) on a machine without a GPU.

Only the functions fornet-deploy calls, with the real module's parameter names (checked
against the installed cuda-python by tests/runtimes/test_trt_cuda.py), returning
``(error, *values)`` as the real ones do. Pinned host memory is real memory (ctypes
buffers, so numpy views over it work); device memory is a dict pointer -> bytearray.
"""

from __future__ import annotations

import ctypes
import enum
import types


class cudaError_t(enum.IntEnum):  # noqa: N801 - the real module's name
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


OK = cudaError_t.cudaSuccess


class FakeCudart:
    """``devices``: (name, major, minor) per GPU; none = no driver."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamNonBlocking = 1

    def __init__(self, devices=(("NVIDIA Test GPU", 8, 9),), fail_malloc_over: int | None = None):
        self.devices = list(devices)
        self.fail_malloc_over = fail_malloc_over
        self.current = None
        self.device_memory: dict[int, bytearray] = {}
        self.host_memory: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.events: dict[int, int | None] = {}  # event -> tick when recorded
        self.calls: list[str] = []
        self._next = 0x10000
        self._tick = 0

    def _pointer(self, nbytes: int) -> int:
        pointer, self._next = self._next, self._next + nbytes + 0x100
        return pointer

    # device --------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        if not self.devices:
            return cudaError_t.cudaErrorInsufficientDriver, None
        return OK, len(self.devices)

    def cudaSetDevice(self, device):
        self.calls.append(f"cudaSetDevice({device})")
        self.current = device
        return (OK,)

    def cudaGetDeviceProperties(self, device):
        name, major, minor = self.devices[device]
        return OK, types.SimpleNamespace(name=name.encode() + b"\x00" * 8, major=major, minor=minor)

    def cudaGetErrorName(self, error):
        return OK, cudaError_t(error).name.encode()

    # memory --------------------------------------------------------------------------
    def cudaMalloc(self, size):
        self.calls.append("cudaMalloc")
        if self.fail_malloc_over is not None and size > self.fail_malloc_over:
            return cudaError_t.cudaErrorMemoryAllocation, None
        pointer = self._pointer(size)
        self.device_memory[pointer] = bytearray(size)
        return OK, pointer

    def cudaFree(self, devPtr):  # noqa: N803 - the real parameter name
        self.calls.append("cudaFree")
        del self.device_memory[devPtr]
        return (OK,)

    def cudaMallocHost(self, size):
        self.calls.append("cudaMallocHost")
        buffer = ctypes.create_string_buffer(size)
        self.host_memory[ctypes.addressof(buffer)] = buffer
        return OK, ctypes.addressof(buffer)

    def cudaFreeHost(self, ptr):
        self.calls.append("cudaFreeHost")
        del self.host_memory[ptr]
        return (OK,)

    def _copy(self, dst, src, count, kind):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.device_memory[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(self.device_memory[src][:count]), count)

    def cudaMemcpy(self, dst, src, count, kind):
        self._copy(dst, src, count, kind)
        return (OK,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        assert stream in self.streams
        self.calls.append(f"cudaMemcpyAsync({cudaMemcpyKind(kind).name[10:]})")
        self._copy(dst, src, count, kind)
        return (OK,)

    # streams and events --------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        stream = self._pointer(1)
        self.streams.add(stream)
        return OK, stream

    def cudaStreamSynchronize(self, stream):
        return (OK,)

    def cudaStreamDestroy(self, stream):
        self.streams.remove(stream)
        return (OK,)

    def cudaEventCreate(self):
        event = self._pointer(1)
        self.events[event] = None
        return OK, event

    def cudaEventRecord(self, event, stream):
        assert stream in self.streams
        self._tick += 1
        self.events[event] = self._tick
        self.calls.append("cudaEventRecord")
        return (OK,)

    def cudaEventSynchronize(self, event):
        return (OK,)

    def cudaEventElapsedTime(self, start, end):
        # each step between two records "takes" 0.25 ms
        return OK, 0.25 * (self.events[end] - self.events[start])

    def cudaEventDestroy(self, event):
        del self.events[event]
        return (OK,)

    def leaks(self) -> dict:
        return {"device": len(self.device_memory), "host": len(self.host_memory), "streams": len(self.streams),
                "events": len(self.events)}


CALLED = sorted(n for n in vars(FakeCudart) if n.startswith("cuda") and callable(getattr(FakeCudart, n))
                and not isinstance(getattr(FakeCudart, n), type))
