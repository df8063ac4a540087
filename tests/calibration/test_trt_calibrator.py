"""Legacy INT8 calibrator: cache keys and the calibrator's TensorRT callbacks (driven here
by hand, as TensorRT 10.x's builder drives them)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from fake_cudart import FakeCudart

from fornet_deploy.calibration import trt_calibrator
from fornet_deploy.calibration.trt_calibrator import (
    cache_algorithm,
    cache_sidecar_path,
    calibration_cache_key,
    calibration_cache_valid,
    make_entropy_calibrator,
    peek_batches,
    save_calibration_cache,
    stale_cache_reason,
)
from fornet_deploy.errors import FornetError
from fornet_deploy.runtimes.trt import cuda as trt_cuda

PRE = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "resize": "none"}
CACHE_BYTES = b"TRT-100300-EntropyCalibration2\nimage: 3c010a14\n/focus/selector/Sigmoid: 3c000000\n"
MACHINE = {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7"}


def make_key(onnx_sha="a" * 64, calib="calib-set-1", pre=PRE, **machine):
    return calibration_cache_key(onnx_sha, calib, pre, **{**MACHINE, **machine})


@pytest.fixture
def key():
    return make_key()


def test_key_reads_back_equal_from_json(key):
    assert key == json.loads(json.dumps(key))
    assert key["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_saved_cache_is_valid_for_its_key_only(tmp_path, key):
    cache = tmp_path / "model.int8.calib"
    assert stale_cache_reason(cache, key) == f"no calibration cache at {cache}"
    save_calibration_cache(cache, CACHE_BYTES, key)
    assert cache.read_bytes() == CACHE_BYTES  # TensorRT's bytes, unchanged: trtexec --calib reads them
    assert calibration_cache_valid(cache, key)
    assert calibration_cache_valid(cache, make_key(pre=dict(PRE)))

    for other, what in [
        (make_key(onnx_sha="b" * 64), "model graph"),
        (make_key(calib="calib-set-2"), "calibration set"),
        (make_key(pre={**PRE, "resize": "fixed"}), "preprocessing"),
        (make_key("b" * 64, "calib-set-2", None), "model graph, calibration set, preprocessing"),
        # TensorRT skips another version's cache without a word and asks for batches again
        (make_key(tensorrt_version="10.3.0.26"), "TensorRT version"),
        (make_key(tensorrt_version="10.7.0.23"), "TensorRT version"),
        (make_key(gpu_name="Xavier", compute_capability="7.2"), "GPU, compute capability"),
        (make_key(compute_capability="8.6"), "compute capability"),
    ]:
        assert not calibration_cache_valid(cache, other)
        assert stale_cache_reason(cache, other) == (
            f"calibration cache {cache} is stale: it was made for a different {what}"
        )


def test_cache_without_trustworthy_key_is_rejected(tmp_path, key):
    cache = tmp_path / "calib.cache"
    sidecar = cache_sidecar_path(cache)
    assert sidecar.name == "calib.cache.json"
    cache.write_bytes(CACHE_BYTES)  # e.g. written by trtexec
    assert "has no key file calib.cache.json" in stale_cache_reason(cache, key)

    save_calibration_cache(cache, CACHE_BYTES, key)
    cache.write_bytes(CACHE_BYTES + b"edited: 0\n")
    assert stale_cache_reason(cache, key) == f"calibration cache {cache} was changed after it was written"

    sidecar.write_text("{not json")
    assert "is not valid JSON" in stale_cache_reason(cache, key)
    sidecar.write_text(json.dumps({"key": "flat"}))
    assert stale_cache_reason(cache, key) == f"calibration cache key file {sidecar} is malformed"


def test_the_cache_header_names_the_calibrator(tmp_path, key):
    assert cache_algorithm(CACHE_BYTES) == "EntropyCalibration2"
    assert cache_algorithm(b"TRT-8601-EntropyCalibration2\r\nx: 1\n") == "EntropyCalibration2"
    assert cache_algorithm(b"TRT-100300-MinMaxCalibration\n") == "MinMaxCalibration"
    assert cache_algorithm(b"image: 3c010a14\n") is None and cache_algorithm(b"") is None
    cache = tmp_path / "c"
    save_calibration_cache(cache, b"TRT-100300-LegacyCalibration\nimage: 3c010a14\n", key)
    assert stale_cache_reason(cache, key) == (f"calibration cache {cache} was written by the LegacyCalibration "
                                              "calibrator, this build uses EntropyCalibration2")
    save_calibration_cache(cache, b"garbage", key)
    assert "does not start with a TensorRT header" in stale_cache_reason(cache, key)


def test_peek_keeps_every_batch():
    first, rest = peek_batches(np.full((1, 3, 2, 2), i, np.float32) for i in range(3))
    assert first[0, 0, 0, 0] == 0 and [b[0, 0, 0, 0] for b in rest] == [0, 1, 2]
    assert peek_batches([])[0] is None


def test_an_interrupted_save_leaves_no_key(tmp_path, key, monkeypatch):
    cache = tmp_path / "model.int8.calib"
    save_calibration_cache(cache, CACHE_BYTES, key)

    def fail(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(trt_calibrator, "atomic_write_bytes", fail)
    with pytest.raises(OSError):
        save_calibration_cache(cache, b"new bytes", make_key(onnx_sha="b" * 64))
    assert cache.read_bytes() == CACHE_BYTES and not cache_sidecar_path(cache).exists()
    assert not calibration_cache_valid(cache, key)


# --- the calibrator's callbacks -------------------------------------------------------


@pytest.fixture
def gpu(monkeypatch):
    """A CudaDevice over the cuda-python stand-in; ``gpu.rt`` is the stand-in."""
    fake = FakeCudart()
    monkeypatch.setattr(trt_cuda, "import_cudart", lambda purpose: fake)
    return trt_cuda.CudaDevice("calibration")


def device_array(gpu, pointer, shape):
    return np.frombuffer(bytes(gpu.rt.device_memory[pointer]), np.float32).reshape(shape)


class IInt8EntropyCalibrator2:
    def __init__(self):
        self.base_initialised = True


FAKE_TRT = types.SimpleNamespace(IInt8EntropyCalibrator2=IInt8EntropyCalibrator2)
# Names of the stand-in that are the tests' own, not TensorRT's (test_trt_bindings.py checks the rest).
TEST_HOOKS = {"base_initialised"}


def batches(n, shape=(2, 3, 64, 128)):
    return (np.full(shape, i, np.float32) for i in range(n))


def test_calibrator_feeds_batches_and_writes_the_cache(tmp_path, key, gpu):
    cache = tmp_path / "model.int8.calib"
    calibrator = make_entropy_calibrator(FAKE_TRT, gpu, batches(3), cache, key)
    assert isinstance(calibrator, IInt8EntropyCalibrator2) and calibrator.base_initialised
    assert calibrator.shape == (2, 3, 64, 128) and calibrator.get_batch_size() == 2
    (pointer,) = gpu.rt.device_memory  # one device buffer for all batches
    assert len(gpu.rt.device_memory[pointer]) == 2 * 3 * 64 * 128 * 4
    assert calibrator.read_calibration_cache() is None  # no valid cache: calibrate

    seen = []
    while (pointers := calibrator.get_batch(["image"])) is not None:
        assert pointers == [pointer]
        seen.append(float(device_array(gpu, pointer, (2, 3, 64, 128))[1, 2, 63, 127]))
    assert seen == [0.0, 1.0, 2.0] and calibrator.batches_used == 3 and calibrator.error is None

    calibrator.write_calibration_cache(memoryview(CACHE_BYTES))
    assert calibration_cache_valid(cache, key) and cache.read_bytes() == CACHE_BYTES
    assert make_entropy_calibrator(FAKE_TRT, gpu, None, cache, key).read_calibration_cache() == CACHE_BYTES
    calibrator.free()
    calibrator.free()
    assert gpu.rt.calls.count("cudaFree") == 1 and not gpu.rt.device_memory


def test_calibrator_keeps_the_first_error(tmp_path, key, gpu):
    mixed = iter([np.zeros((1, 3, 64, 128), np.float32), np.zeros((1, 3, 32, 32), np.float32)])
    calibrator = make_entropy_calibrator(FAKE_TRT, gpu, mixed, tmp_path / "c", key)
    assert calibrator.get_batch(["image"]) == list(gpu.rt.device_memory)
    assert calibrator.get_batch(["image"]) is None  # TensorRT stops calibrating ...
    assert isinstance(calibrator.error, FornetError) and "differs from the first batch" in str(calibrator.error)
    assert calibrator.get_batch(["image"]) is None  # ... and the builder re-raises the error

    two_inputs = make_entropy_calibrator(FAKE_TRT, gpu, batches(1), tmp_path / "c", key)
    assert two_inputs.get_batch(["image", "other"]) is None
    assert "one input" in str(two_inputs.error)

    unwritable = make_entropy_calibrator(FAKE_TRT, gpu, batches(1), tmp_path / "missing-dir" / "x" / "c", key)
    (tmp_path / "missing-dir").write_text("a file where a folder should be")
    unwritable.write_calibration_cache(memoryview(CACHE_BYTES))
    assert unwritable.error is not None


@pytest.mark.parametrize(
    "first, message",
    [
        (np.zeros((1, 3, 64, 128), np.float64), "float64 array"),
        (np.zeros((3, 64, 128), np.float32), "of shape (3, 64, 128)"),
        ([[0.0]], "got a list"),
    ],
)
def test_calibration_batches_must_be_nchw_float32(tmp_path, key, gpu, first, message):
    with pytest.raises(FornetError, match="NCHW float32") as err:
        make_entropy_calibrator(FAKE_TRT, gpu, [first], tmp_path / "c", key)
    assert message in str(err.value)


def test_empty_calibration_set_and_cache_only_mode(tmp_path, key, gpu):
    with pytest.raises(FornetError, match="calibration set yielded no batches"):
        make_entropy_calibrator(FAKE_TRT, gpu, [], tmp_path / "c", key)
    cache_only = make_entropy_calibrator(FAKE_TRT, gpu, None, tmp_path / "c", key)
    assert cache_only.shape is None and cache_only.get_batch_size() == 1
    assert cache_only.get_batch(["image"]) is None and "cudaMalloc" not in gpu.rt.calls
    cache_only.free()
    assert "cudaFree" not in gpu.rt.calls
