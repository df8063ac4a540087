"""CUDA through cuda-python: the names against the real, installed bindings (no GPU here:
its calls report cudaErrorInsufficientDriver), and the buffer / stream / event helpers
against the stand-in of tests/fake_cudart.py."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest
from fake_cudart import CALLED, FakeCudart

from fornet_deploy.errors import ExitCode, FornetError, HardwareError, MissingDependencyError
from fornet_deploy.runtimes.trt import cuda
from fornet_deploy.runtimes.trt.cuda import COMPUTE_START, D2H_START, END, H2D_START, CudaDevice, GrowingBuffers, Stream


def test_every_function_called_exists_in_cuda_python_with_these_parameters():
    real = pytest.importorskip("cuda.bindings.runtime")
    for name in CALLED:
        fake_parameters = list(inspect.signature(getattr(FakeCudart, name)).parameters)[1:]  # without self
        assert list(inspect.signature(getattr(real, name)).parameters) == fake_parameters, name
    assert real.cudaMemcpyKind.cudaMemcpyHostToDevice == 1 and real.cudaMemcpyKind.cudaMemcpyDeviceToHost == 2
    assert int(real.cudaStreamNonBlocking) == FakeCudart.cudaStreamNonBlocking


def test_without_a_driver_the_real_bindings_give_one_hardware_error():
    pytest.importorskip("cuda.bindings.runtime")
    if cuda.import_cudart("test").cudaGetDeviceCount()[0] == 0:
        pytest.skip("this machine has a CUDA driver")
    with pytest.raises(HardwareError) as err:
        CudaDevice("build-trt")
    assert str(err.value) == "build-trt needs an NVIDIA GPU and driver; CUDA reports cudaErrorInsufficientDriver"
    assert err.value.exit_code == ExitCode.NO_HARDWARE


def test_without_cuda_python_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(MissingDependencyError) as err:
        CudaDevice("the TensorRT runner")
    assert "'cuda-python'" in str(err.value) and "pip install 'fornet-deploy[tensorrt]'" in str(err.value)


@pytest.fixture
def cudart(monkeypatch):
    fake = FakeCudart(devices=[("NVIDIA A100-SXM4-80GB", 8, 0), ("NVIDIA H100 80GB HBM3", 9, 0)])
    monkeypatch.setattr(cuda, "import_cudart", lambda purpose: fake)
    return fake


def test_device_name_capability_and_index(cudart):
    gpu = CudaDevice("bench", 1)
    assert (gpu.gpu_name, gpu.compute_capability, cudart.current) == ("NVIDIA H100 80GB HBM3", "9.0", 1)
    with pytest.raises(HardwareError, match="asked for GPU 2, this machine has 2 CUDA device"):
        CudaDevice("bench", 2)


def test_buffers_grow_only_and_are_all_released(cudart):
    gpu = CudaDevice("test")
    buffers = GrowingBuffers(gpu.malloc, gpu.free)
    first = buffers.get("logits", 100)
    assert buffers.get("logits", 100) == first and buffers.get("logits", 50) == first  # reused
    bigger = buffers.get("logits", 200)
    assert bigger != first and cudart.calls.count("cudaMalloc") == 2 and cudart.calls.count("cudaFree") == 1
    buffers.get("labels", 10)
    buffers.release()
    assert cudart.leaks()["device"] == 0


def test_a_failed_allocation_is_one_line(cudart):
    cudart.fail_malloc_over = 1 << 20
    with pytest.raises(FornetError, match="CUDA cudaMalloc of 2097152 bytes failed: cudaErrorMemoryAllocation"):
        CudaDevice("test").malloc(2 << 20)


def _round_trip(stream: Stream, host: np.ndarray, device: int, back: np.ndarray) -> None:
    """host -> device -> back on one stream, the four events recorded as a runner records them."""
    stream.record(H2D_START)
    stream.copy_in(device, host)
    stream.record(COMPUTE_START)
    stream.record(D2H_START)
    stream.copy_out(back, device)
    stream.record(END)
    stream.wait()
    np.testing.assert_array_equal(back, host)


def test_stream_copies_and_times_a_run(cudart):
    gpu = CudaDevice("test")
    stream = Stream(gpu)
    host = cuda.host_view(gpu.malloc_host(16), np.float32, (2, 2))
    host[:] = [[1, 2], [3, 4]]
    device = gpu.malloc(16)
    back = cuda.host_view(gpu.malloc_host(16), np.float32, (2, 2))
    _round_trip(stream, host, device, back)
    assert [stream.elapsed_ms(H2D_START, COMPUTE_START), stream.elapsed_ms(H2D_START, END)] == [0.25, 0.75]
    stream.close()
    assert cudart.leaks()["streams"] == cudart.leaks()["events"] == 0


@pytest.mark.gpu
def test_real_gpu_buffers_stream_and_events():
    """The same round trip on a real GPU through the real cuda-python bindings: pinned host
    memory, device buffers, copies both ways on one non-blocking stream, event timings."""
    rt = pytest.importorskip("cuda.bindings.runtime")
    error, count = rt.cudaGetDeviceCount()
    if error != rt.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("no CUDA device")
    gpu = CudaDevice("test")
    assert gpu.gpu_name and gpu.compute_capability.count(".") == 1
    stream = Stream(gpu)
    shape, nbytes = (1, 19, 512, 1024), 19 * 512 * 1024 * 4
    pinned = [gpu.malloc_host(nbytes), gpu.malloc_host(nbytes)]
    host = cuda.host_view(pinned[0], np.float32, shape)
    host[:] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    buffers = GrowingBuffers(gpu.malloc, gpu.free)
    device = buffers.get("logits", nbytes)
    back = cuda.host_view(pinned[1], np.float32, shape)
    _round_trip(stream, host, device, back)
    upload, total = stream.elapsed_ms(H2D_START, COMPUTE_START), stream.elapsed_ms(H2D_START, END)
    assert 0 < upload < total < 1000
    stream.close()
    buffers.release()
    for pointer in pinned:
        gpu.free_host(pointer)
