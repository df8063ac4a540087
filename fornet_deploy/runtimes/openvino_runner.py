"""OpenVINO backend: the bundle's ONNX graphs on Intel's runtime (a CPU; an Intel GPU or NPU).

OpenVINO reads ONNX itself, so it runs the artefacts ONNX Runtime runs, unchanged:
``model.cpu.onnx`` (else ``model.onnx``) for ``fp32`` / ``bf16`` / ``fp16`` and the U8S8 Q/DQ
graph ``model.int8.cpu.onnx`` for ``int8`` (the format table, :data:`~fornet_deploy.contract.FORMATS`).

Precision is explicit: OpenVINO's own default inference precision is bf16 on a CPU with
BF16 instructions (AVX-512 BF16, AMX) and f16 on a GPU, so the runner always sets
``INFERENCE_PRECISION_HINT`` (:data:`INFERENCE_PRECISIONS`) and checks that the compiled model
reports it (a compiled model at another precision, e.g. bf16 asked on a CPU without BF16, is
one line, not a bf16 result that was never bf16). ``int8`` sets f32 for what the Q/DQ pairs leave in float, as ONNX
Runtime runs it: the selector / Top-K subgraph stays FP32 in every quantized artefact
(bf16 there was no faster, docs/benchmarks.md section 12). ``bf16`` cannot keep it FP32: the
CPU plugin runs the selector's convolutions in bf16 and its per-node opt-out is not reachable
from Python, so near-tie Top-K cells swap (parity judges bf16 with the FP16 thresholds, and its
mask check failed at 99.88 % on SynthCity) while exactly k cells stay selected.

Devices: ``cpu`` (OpenVINO's ``CPU``), ``gpu`` / ``npu`` (``GPU`` / ``NPU``, passed through when
OpenVINO sees them; a library caller may name one such as ``GPU.1``), one line when absent.

Shapes: every model is compiled for a static input shape (a graph exported with ``--dynamic``
once per input shape it is fed, kept for the next batches of that shape), because OpenVINO's CPU
plugin computes the Top-K's ``k = (ratio * h * w + 999) // 1000`` wrongly at run time
(``(250 * 512 + 999) // 1000`` gives 129, not 128: its integer division goes through float32
and rounds, openvinotoolkit/openvino#35830, #37766), so a dynamic graph selected k + 1
regions; with a static shape that arithmetic is folded into constants by OpenVINO's reference
implementation, which is exact.

Settings: the ``LATENCY`` performance hint (one stream), because a runner serves one request
at a time (``infer`` returns its outputs): the ``THROUGHPUT`` hint's streams split the cores
between requests that would have to be in flight together. ``threads`` sets
``INFERENCE_NUM_THREADS`` (else OpenVINO's default, one per physical core). Compiled models are
cached in ``BUNDLE/openvino_cache`` (``CACHE_DIR``): the second start of a graph imports the
compiled blob instead of compiling it again (0.13-0.16 s instead of 0.36-0.77 s at 512x1024,
docs/benchmarks.md section 12). One folder serves every graph and precision: OpenVINO names a
blob after a hash of the model, and on the CPU an f32 and a bf16 compilation of one graph share
a blob from which each still runs at its own precision (a test checks it). The folder sits in
the bundle, like ONNX Runtime's TensorRT engines, so it goes away with the bundle and needs no
per-user state; a bundle folder that cannot be written runs without the cache, and so does one
whose ``openvino_cache`` is not a plain folder in it (a symbolic link would have OpenVINO write
its blobs outside the bundle: nothing is written through one, docs/reliability.md).

Names called (OpenVINO 2025.x-2026.x Python API): ``openvino.Core`` (``available_devices``,
``get_property(device, "FULL_DEVICE_NAME")``, ``read_model(bytes)``, ``compile_model(model,
device, config)``), ``openvino.Type``, ``openvino.properties.hint.inference_precision`` /
``performance_mode`` / ``PerformanceMode.LATENCY``, ``openvino.properties.cache_dir`` /
``inference_num_threads`` / ``hint.num_requests``, ``CompiledModel.create_infer_request``,
``Model.clone`` / ``reshape`` / ``inputs`` / ``outputs``, ``openvino.PartialShape``,
``InferRequest.infer(inputs, share_inputs, share_outputs)``.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import OPENVINO_CACHE_DIR
from ..errors import FornetError, HardwareError, MissingDependencyError
from ..io import read_bytes
from .base import InputSpec, LoadRequest, Runner, RunnerInfo

# --precision -> OpenVINO's inference precision (its element type name).
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# Compiled models a runner keeps for a dynamic graph (one per input shape fed, oldest dropped).
MAX_COMPILED_SHAPES = 8


def import_openvino(purpose: str):
    """The ``openvino`` module; a missing one names the ``[openvino]`` extra."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", purpose) from None
    return openvino


def openvino_device(device: str, available: Sequence[str]) -> str:
    """OpenVINO's name for ``device`` (``cpu`` -> ``CPU``; ``GPU.1`` stays), if OpenVINO sees it
    here; else one line naming what it sees. ``GPU`` is present when ``GPU`` or any ``GPU.n`` is."""
    name = device.upper()
    family = name.split(".")[0]
    if name in available or (name == family and any(d.split(".")[0] == family for d in available)):
        return name
    kind = {"GPU": "an Intel GPU and its compute driver", "NPU": "an Intel NPU and its driver"}.get(family, "it")
    raise HardwareError(f"OpenVINO sees {', '.join(available) or 'no device'} here; --device {device} needs its "
                        f"{name} device ({kind})")


def check_inference_precision(asked: str, compiled: str, device: str) -> None:
    """One line when the compiled model does not run at the asked precision (a CPU without
    BF16 instructions compiles a bf16 request as f32)."""
    if compiled != asked:
        where = " (bf16 needs a CPU with BF16 instructions)" if asked == "bf16" else ""
        raise HardwareError(f"OpenVINO's {device} runs this model at {compiled}, not the {asked} asked for: "
                            f"use --precision fp32{where}")


class OpenVinoRunner(Runner):
    """Runs an ONNX file with OpenVINO (module docstring: precision, devices, settings, cache).

    ``sha256``: the hash the file must have, checked on the bytes OpenVINO reads.
    ``cache_dir``: OpenVINO's compiled-model cache (None: no cache).
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, sha256: str | None = None):
        if precision not in INFERENCE_PRECISIONS:
            raise FornetError(f"OpenVINO runs {', '.join(INFERENCE_PRECISIONS)}, not {precision!r}")
        super().__init__(f"openvino-{precision}")
        self.onnx_path = Path(onnx_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sha256 = sha256
        self.compile_seconds: float | None = None  # of the first compilation
        self._ov = self._core = self._model = None
        self._compiled: dict[tuple[int, ...], tuple] = {}  # input shape -> (compiled model, infer request)
        self._ov_device = ""
        self._device_name = ""
        self._cached = False
        self._ports: dict[str, int] = {}

    @classmethod
    def from_request(cls, request: LoadRequest) -> "OpenVinoRunner":
        return cls(request.path, device=request.device, precision=request.precision, threads=request.threads,
                   cache_dir=request.bundle_root / OPENVINO_CACHE_DIR, sha256=request.sha256)

    def _config(self, ov) -> dict:
        props, hint = ov.properties, ov.properties.hint
        config = {hint.inference_precision: getattr(ov.Type, INFERENCE_PRECISIONS[self.precision]),
                  hint.performance_mode: hint.PerformanceMode.LATENCY, hint.num_requests: 1}
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        if self._cached:
            config[props.cache_dir] = str(self.cache_dir)
        return config

    def _activate_impl(self) -> None:
        ov = self._ov = import_openvino("the OpenVINO runner")
        self._core = ov.Core()
        self._ov_device = openvino_device(self.device, self._core.available_devices)
        model_bytes = read_bytes(self.onnx_path, "ONNX file", sha256=self.sha256)
        self._cached = self._cache_ready()
        try:
            self._model = self._core.read_model(model_bytes)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError (and subclasses) for what it cannot read
            raise self._error("read", exc) from None
        self._ports = {port.get_any_name(): i for i, port in enumerate(self._model.outputs)}
        self._device_name = self._core.get_property(self._ov_device, "FULL_DEVICE_NAME")
        shape = self._model.inputs[0].get_partial_shape()
        if shape.is_static:  # compile now: a wrong device, precision or graph fails here, not at the first batch
            self._request_for(tuple(d.get_length() for d in shape))

    def _error(self, what: str, exc: Exception) -> FornetError:
        said = str(exc).strip().splitlines()
        return FornetError(f"OpenVINO cannot {what} {self.onnx_path.name} for {self._ov_device}: "
                           f"{(said[0] if said else type(exc).__name__)[:200]}")

    def _request_for(self, shape: tuple[int, ...]):
        """The infer request of the model compiled for input ``shape`` (module docstring, Shapes)."""
        if shape in self._compiled:
            return self._compiled[shape][1]
        ov = self._ov
        model = self._model.clone()
        start = time.perf_counter()
        try:
            model.reshape({0: ov.PartialShape(list(shape))})
            compiled = self._core.compile_model(model, self._ov_device, self._config(ov))
        except RuntimeError as exc:
            raise self._error("compile", exc) from None
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start
        precision = compiled.get_property(ov.properties.hint.inference_precision).get_type_name()
        check_inference_precision(INFERENCE_PRECISIONS[self.precision], precision, self._ov_device)
        if len(self._compiled) >= MAX_COMPILED_SHAPES:  # e.g. a folder of images of many sizes
            self._compiled.pop(next(iter(self._compiled)))
        self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape][1]

    def _cache_ready(self) -> bool:
        if self.cache_dir is None:
            return False
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # lstat: a link to a folder elsewhere passes mkdir(exist_ok=True) and is not the bundle's
            return stat.S_ISDIR(os.lstat(self.cache_dir).st_mode)
        except OSError:  # a read-only bundle, or a file where the folder goes: no cache
            return False

    def _deactivate_impl(self) -> None:
        self._compiled = {}  # frees the compiled models and their threads
        self._model = self._core = None

    def output_names(self) -> tuple[str, ...]:
        return tuple(self._ports)

    def input_spec(self) -> InputSpec:
        port = self._model.inputs[0]
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return InputSpec(name=port.get_any_name(), dtype="float32", shape=shape)

    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        names = tuple(self._ports) if outputs is None else [n for n in outputs if n in self._ports]
        request = self._request_for(batch.shape)
        # OpenVINO computes every output; only the ones asked for are copied out of the
        # request's own buffers (which the next call overwrites).
        results = request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return {name: np.array(results[self._ports[name]]) for name in names}

    def info(self) -> RunnerInfo:
        ov = import_openvino("the OpenVINO runner")
        details = {"openvino": ov.__version__, "threads": self.threads, "cache_dir": None}
        if self._model is not None:
            details.update(openvino_device=self._ov_device, device_name=self._device_name,
                           cache_dir=str(self.cache_dir) if self._cached else None,
                           compiled_shapes=[list(shape) for shape in self._compiled])
        if self._compiled:  # what the last compiled model runs with
            props, hint = ov.properties, ov.properties.hint
            compiled = list(self._compiled.values())[-1][0]
            details.update(
                inference_precision=compiled.get_property(hint.inference_precision).get_type_name(),
                performance_hint=str(compiled.get_property(hint.performance_mode)).rsplit(".", 1)[-1],
                threads=compiled.get_property(props.inference_num_threads),
                streams=int(compiled.get_property("NUM_STREAMS")),
                compile_seconds=self.compile_seconds,
            )
        return RunnerInfo(backend="openvino", precision=self.precision, device=self.device,
                          artifact=self.onnx_path.name, details=details)
