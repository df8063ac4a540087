"""Legacy INT8 calibrator: cache keys and the calibrator's TensorRT callbacks (driven here
by hand, as TensorRT 10.x's builder drives them)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from fornet_deploy.calibration import trt_calibrator
from fornet_deploy.calibration.trt_calibrator import (
    cache_sidecar_path,
    calibration_cache_key,
    calibration_cache_valid,
    make_entropy_calibrator,
    save_calibration_cache,
    stale_cache_reason,
)
from fornet_deploy.errors import FornetError

PRE = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "resize": "none"}
CACHE_BYTES = b"TRT-100300-EntropyCalibration2\nimage: 3c010a14\n/focus/selector/Sigmoid: 3c000000\n"


@pytest.fixture
def key():
    return calibration_cache_key("a" * 64, "calib-set-1", PRE)


def test_key_reads_back_equal_from_json(key):
    assert key == json.loads(json.dumps(key))
    assert key["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_saved_cache_is_valid_for_its_key_only(tmp_path, key):
    cache = tmp_path / "model.int8.calib"
    assert stale_cache_reason(cache, key) == f"no calibration cache at {cache}"
    save_calibration_cache(cache, CACHE_BYTES, key)
    assert cache.read_bytes() == CACHE_BYTES  # TensorRT's bytes, unchanged: trtexec --calib reads them
    assert calibration_cache_valid(cache, key)
    assert calibration_cache_valid(cache, calibration_cache_key("a" * 64, "calib-set-1", dict(PRE)))

    for other, what in [
        (calibration_cache_key("b" * 64, "calib-set-1", PRE), "model graph"),
        (calibration_cache_key("a" * 64, "calib-set-2", PRE), "calibration set"),
        (calibration_cache_key("a" * 64, "calib-set-1", {**PRE, "resize": "fixed"}), "preprocessing"),
        (calibration_cache_key("b" * 64, "calib-set-2", None), "model graph, calibration set, preprocessing"),
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


def test_an_interrupted_save_leaves_no_key(tmp_path, key, monkeypatch):
    cache = tmp_path / "model.int8.calib"
    save_calibration_cache(cache, CACHE_BYTES, key)

    def fail(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(trt_calibrator, "atomic_write_bytes", fail)
    with pytest.raises(OSError):
        save_calibration_cache(cache, b"new bytes", calibration_cache_key("b" * 64, "calib-set-1", PRE))
    assert cache.read_bytes() == CACHE_BYTES and not cache_sidecar_path(cache).exists()
    assert not calibration_cache_valid(cache, key)


# --- the calibrator's callbacks -------------------------------------------------------


class FakeDriver:
    """The part of pycuda.driver the calibrator uses; device memory is a dict of arrays."""

    def __init__(self):
        self.memory, self.allocations, self.freed = {}, [], 0

    def mem_alloc(self, nbytes):
        self.allocations.append(nbytes)
        return _Pointer(0x1000 * len(self.allocations), nbytes, self)

    def memcpy_htod(self, pointer, array):
        assert array.nbytes == pointer.nbytes and array.flags.c_contiguous
        self.memory[int(pointer)] = array.copy()


class _Pointer:
    def __init__(self, address, nbytes, driver):
        self.address, self.nbytes, self.driver = address, nbytes, driver

    def __int__(self):
        return self.address

    def free(self):
        self.driver.freed += 1


class IInt8EntropyCalibrator2:
    def __init__(self):
        self.base_initialised = True


FAKE_TRT = types.SimpleNamespace(IInt8EntropyCalibrator2=IInt8EntropyCalibrator2)


def batches(n, shape=(2, 3, 64, 128)):
    return (np.full(shape, i, np.float32) for i in range(n))


def test_calibrator_feeds_batches_and_writes_the_cache(tmp_path, key):
    driver, cache = FakeDriver(), tmp_path / "model.int8.calib"
    calibrator = make_entropy_calibrator(FAKE_TRT, driver, batches(3), cache, key)
    assert isinstance(calibrator, IInt8EntropyCalibrator2) and calibrator.base_initialised
    assert calibrator.shape == (2, 3, 64, 128) and calibrator.get_batch_size() == 2
    assert driver.allocations == [2 * 3 * 64 * 128 * 4]  # one device buffer for all batches
    assert calibrator.read_calibration_cache() is None  # no valid cache: calibrate

    seen = []
    while (pointers := calibrator.get_batch(["image"])) is not None:
        assert pointers == [0x1000]
        seen.append(float(driver.memory[0x1000][0, 0, 0, 0]))
    assert seen == [0.0, 1.0, 2.0] and calibrator.batches_used == 3 and calibrator.error is None

    calibrator.write_calibration_cache(memoryview(CACHE_BYTES))
    assert calibration_cache_valid(cache, key) and cache.read_bytes() == CACHE_BYTES
    assert make_entropy_calibrator(FAKE_TRT, driver, None, cache, key).read_calibration_cache() == CACHE_BYTES
    calibrator.free()
    calibrator.free()
    assert driver.freed == 1


def test_calibrator_keeps_the_first_error(tmp_path, key):
    driver = FakeDriver()
    mixed = iter([np.zeros((1, 3, 64, 128), np.float32), np.zeros((1, 3, 32, 32), np.float32)])
    calibrator = make_entropy_calibrator(FAKE_TRT, driver, mixed, tmp_path / "c", key)
    assert calibrator.get_batch(["image"]) == [0x1000]
    assert calibrator.get_batch(["image"]) is None  # TensorRT stops calibrating ...
    assert isinstance(calibrator.error, FornetError) and "differs from the first batch" in str(calibrator.error)
    assert calibrator.get_batch(["image"]) is None  # ... and the builder re-raises the error

    two_inputs = make_entropy_calibrator(FAKE_TRT, driver, batches(1), tmp_path / "c", key)
    assert two_inputs.get_batch(["image", "other"]) is None
    assert "one input" in str(two_inputs.error)

    unwritable = make_entropy_calibrator(FAKE_TRT, driver, batches(1), tmp_path / "missing-dir" / "x" / "c", key)
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
def test_calibration_batches_must_be_nchw_float32(tmp_path, key, first, message):
    with pytest.raises(FornetError, match="NCHW float32") as err:
        make_entropy_calibrator(FAKE_TRT, FakeDriver(), [first], tmp_path / "c", key)
    assert message in str(err.value)


def test_empty_calibration_set_and_cache_only_mode(tmp_path, key):
    with pytest.raises(FornetError, match="calibration set yielded no batches"):
        make_entropy_calibrator(FAKE_TRT, FakeDriver(), [], tmp_path / "c", key)
    driver = FakeDriver()
    cache_only = make_entropy_calibrator(FAKE_TRT, driver, None, tmp_path / "c", key)
    assert cache_only.shape is None and cache_only.get_batch_size() == 1
    assert cache_only.get_batch(["image"]) is None and driver.allocations == []
    cache_only.free()
    assert driver.freed == 0
