"""Implicit INT8 calibration for TensorRT 10.x (``build-trt --legacy-calibrator``).

TensorRT 11 removed implicit calibration (``IInt8EntropyCalibrator2``,
``IBuilderConfig.int8_calibrator``); there INT8 comes only from the Q/DQ graph. On
TensorRT 10.x (JetPack) the entropy calibrator still works, deprecated since 10.1.

The calibration cache is the standard TensorRT calibrator cache (the bytes TensorRT hands
to ``write_calibration_cache``, written unchanged and atomically), so
``trtexec --int8 --calib=<file>`` accepts it. Its first line is ``TRT-<version>-<algorithm>``
(``TRT-100300-EntropyCalibration2`` from TensorRT 10.3). TensorRT cannot tell whether a cache
belongs to the model and images at hand, and it *silently skips* a cache written by another
TensorRT version (NVIDIA/TensorRT#1378, maintainer: "trt will skip the file if it is
incompatible") and then asks for batches. So a JSON sidecar ``<cache>.json`` records a key
(model graph sha256, calibration-set hash, preprocessing, the full TensorRT version, the
GPU's name and compute capability) and the cache's own sha256; a cache whose key differs,
that was changed after the sidecar was written, or whose first line names another
algorithm than ``EntropyCalibration2``, is not used, and the build says why.

Names read in NVIDIA/TensorRT ``python/src/infer/pyInt8.cpp`` (``release/10.3``,
``release/10.16``; the file is gone on ``main`` = 11.x): ``IInt8EntropyCalibrator2`` with the
overridable ``get_batch_size()``, ``get_batch(names) -> list[int] | None`` (``None`` ends
calibration), ``read_calibration_cache() -> buffer | None`` and
``write_calibration_cache(cache)``. The pybind11 trampoline prints and swallows any
Python exception raised inside these methods, so the calibrator keeps the first one in
``error`` and the builder re-raises it after the build. The batch pattern (one device
buffer, host-to-device copy, return ``[int(pointer)]``) follows
``samples/python/efficientdet/build_engine.py`` on ``release/10.3`` and Polygraphy's
``backend/trt/calibrator.py``; device memory comes from cuda-python
(:class:`fornet_deploy.runtimes.trt.cuda.CudaDevice`), as in the runner.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import FornetError
from ..io import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file

# What each key field means, for the stale-cache message.
KEY_FIELDS = {
    "onnx_sha256": "model graph",
    "calibration_set": "calibration set",
    "preprocessing": "preprocessing",
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
}
ALGORITHM = "EntropyCalibration2"  # what IInt8EntropyCalibrator2 writes in the cache's first line
_HEADER = re.compile(rb"^TRT-(\d+)-(\w+)\s*$")


def _normalized(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists), so a fresh key compares equal."""
    return json.loads(json.dumps(key, sort_keys=True))


def calibration_cache_key(onnx_sha256: str, calibration_set_hash: str, preprocessing: dict | None, *,
                          tensorrt_version: str, gpu_name: str, compute_capability: str) -> dict:
    """The facts a calibration cache depends on: what was calibrated, and which TensorRT
    (full version) on which GPU, because TensorRT skips another version's cache."""
    return _normalized({
        "onnx_sha256": onnx_sha256, "calibration_set": calibration_set_hash, "preprocessing": preprocessing,
        "tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": compute_capability,
    })


def cache_algorithm(data: bytes) -> str | None:
    """The calibrator algorithm a TensorRT calibration cache names in its first line
    (``TRT-100300-EntropyCalibration2`` -> ``EntropyCalibration2``); ``None`` if it has no such line."""
    match = _HEADER.match(data.split(b"\n", 1)[0])
    return match.group(2).decode() if match else None


def cache_sidecar_path(cache_path: str | Path) -> Path:
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".json")


def stale_cache_reason(cache_path: str | Path, expected_key: dict) -> str | None:
    """Why the cache at ``cache_path`` must not be used for ``expected_key``; ``None`` if it may."""
    cache_path = Path(cache_path)
    sidecar = cache_sidecar_path(cache_path)
    if not cache_path.is_file():
        return f"no calibration cache at {cache_path}"
    if not sidecar.is_file():
        return f"calibration cache {cache_path} has no key file {sidecar.name}, so its origin is unknown"
    try:
        recorded = read_json(sidecar, "calibration cache key file")
    except FornetError as exc:
        return str(exc)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("key"), dict) or "sha256" not in recorded:
        return f"calibration cache key file {sidecar} is malformed"
    if recorded["sha256"] != sha256_file(cache_path):
        return f"calibration cache {cache_path} was changed after it was written"
    algorithm = cache_algorithm(cache_path.read_bytes())
    if algorithm is None:
        return f"calibration cache {cache_path} does not start with a TensorRT header (TRT-<version>-<algorithm>)"
    if algorithm != ALGORITHM:
        return f"calibration cache {cache_path} was written by the {algorithm} calibrator, this build uses {ALGORITHM}"
    expected = _normalized(expected_key)
    differing = [label for field, label in KEY_FIELDS.items() if recorded["key"].get(field) != expected.get(field)]
    if differing:
        return f"calibration cache {cache_path} is stale: it was made for a different {', '.join(differing)}"
    return None


def calibration_cache_valid(cache_path: str | Path, expected_key: dict) -> bool:
    return stale_cache_reason(cache_path, expected_key) is None


def save_calibration_cache(cache_path: str | Path, data: bytes, key: dict) -> None:
    """Write the TensorRT cache bytes and then its key file, each atomically.

    The old key file goes first: if writing stops half-way, a cache is left without a key
    (rejected) rather than with the key of the cache it replaced.
    """
    cache_sidecar_path(cache_path).unlink(missing_ok=True)
    atomic_write_bytes(cache_path, data)
    atomic_write_json(
        cache_sidecar_path(cache_path),
        {"format": "TensorRT calibration cache (trtexec --calib)", "sha256": sha256_bytes(data), "key": key},
    )


def peek_batches(batches: Iterable[np.ndarray]) -> tuple[np.ndarray | None, Iterator[np.ndarray]]:
    """The first batch (to check its shape before a build starts) and all batches, the first
    included; ``(None, empty)`` for an empty iterable."""
    iterator = iter(batches)
    first = next(iterator, None)
    return first, (itertools.chain([first], iterator) if first is not None else iterator)


def check_calibration_batch(batch, shape: tuple[int, ...] | None) -> None:
    """A calibration batch must be NCHW float32 and, after the first, keep the first's shape
    (TensorRT calibrates at one shape, the calibration profile)."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4:
        got = f"{batch.dtype} array of shape {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
        raise FornetError(f"calibration batches must be NCHW float32 arrays, got a {got}")
    if shape is not None and batch.shape != shape:
        raise FornetError(
            f"calibration batch of shape {batch.shape} differs from the first batch's {shape}; "
            "TensorRT calibrates at one shape"
        )


def make_entropy_calibrator(trt, gpu, batches: Iterable[np.ndarray] | None, cache_path: str | Path, key: dict):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (NCHW float32, preprocessed as at
    inference) from one device buffer, reading ``cache_path`` only if its key matches ``key``
    and writing it (with its key file) after calibration.

    ``trt`` is the tensorrt module and ``gpu`` a
    :class:`~fornet_deploy.runtimes.trt.cuda.CudaDevice` (``malloc``, ``copy_to_device``,
    ``free``). ``batches=None`` means "use the cache"; the caller checks that it is valid.
    The calibrator's ``shape`` is the calibration shape (``None`` without batches) and
    ``error`` the first exception raised inside a callback.
    """
    cache_path = Path(cache_path)
    first, pending = peek_batches(batches if batches is not None else ())
    if batches is not None and first is None:
        raise FornetError("the calibration set yielded no batches")
    if first is not None:
        check_calibration_batch(first, None)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the explicit base init
            self.shape = None if first is None else first.shape
            self.error: Exception | None = None
            self.batches_used = 0
            self._pending = pending
            self._device = None if first is None else gpu.malloc(first.nbytes)

        def get_batch_size(self):
            # Still abstract in the bindings, but unused since TensorRT 10 dropped implicit batch.
            return 1 if self.shape is None else self.shape[0]

        def get_batch(self, names):
            if self.error is not None:
                return None
            try:
                if len(names) != 1:
                    raise FornetError(f"calibration feeds one input, the network has {list(names)}")
                batch = next(self._pending, None)
                if batch is None:
                    return None
                check_calibration_batch(batch, self.shape)
                gpu.copy_to_device(self._device, batch)
                self.batches_used += 1
                return [int(self._device)]
            except Exception as exc:  # noqa: BLE001 - TensorRT would swallow it; re-raised after the build
                self.error = exc
                return None

        def read_calibration_cache(self):
            return cache_path.read_bytes() if calibration_cache_valid(cache_path, key) else None

        def write_calibration_cache(self, cache):
            try:
                save_calibration_cache(cache_path, bytes(cache), key)
            except Exception as exc:  # noqa: BLE001 - see get_batch
                self.error = self.error or exc

        def free(self) -> None:
            if self._device is not None:
                gpu.free(self._device)
                self._device = None

    return EntropyCalibrator()
