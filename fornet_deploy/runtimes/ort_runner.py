"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

Every module of the package imports ONNX Runtime through :func:`import_onnxruntime`. The
CPU wheel ``onnxruntime`` and the GPU wheel ``onnxruntime-gpu`` install the same import
package (the same files under ``site-packages/onnxruntime/``): with both installed, the one
installed last wins and CUDA silently disappears ("Specified provider
'CUDAExecutionProvider' is not in available provider names", microsoft/onnxruntime#26996),
and uninstalling either deletes files of the other (microsoft/onnxruntime#3326). So the two
are exclusive extras (``[cpu]``, ``[gpu]``) and having both is one line with the repair the
ONNX Runtime maintainers give (#7748, #3326).

Execution-provider options (names present in onnxruntime-gpu 1.18.1 and 1.24.4,
``include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h``): CUDA
``device_id``, ``use_tf32`` (default 1: FP32 convolutions and matmuls round their inputs
to TF32 on Ampere and later, which breaks FP32 parity, so it is set to 0 here); TensorRT
``device_id``, ``trt_engine_cache_enable``, ``trt_engine_cache_path``,
``trt_timing_cache_enable``.

GPU libraries: the ``[gpu]`` extra installs CUDA and cuDNN as pip packages, which ONNX
Runtime loads only through ``onnxruntime.preload_dlls()`` (1.21+; its docstring: no need "if
`import torch` is done before", which holds for a CUDA PyTorch only), so a GPU session
preloads them first; the TensorRT EP finds libnvinfer once ``import tensorrt`` has loaded it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import NVIDIA_DEVICES, ORT_TRT_CACHE_DIR
from ..errors import FornetError, HardwareError, MissingDependencyError, PackageClashError
from ..io import plain_folder_below, read_bytes
from .base import InputSpec, LoadRequest, Runner, RunnerInfo

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# Distributions that install the ``onnxruntime`` import package.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
ORT_REPAIR = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def installed_ort_distributions() -> list[str]:
    """Which of :data:`ORT_DISTRIBUTIONS` are installed (by their distribution metadata)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_ort_install(installed: Sequence[str]) -> None:
    """One line with the repair when both ONNX Runtime wheels are installed."""
    if len(installed) > 1:
        raise PackageClashError(
            f"both {' and '.join(installed)} are installed; they overwrite each other's files and CUDA "
            f"disappears (microsoft/onnxruntime#26996): {ORT_REPAIR}"
        )


def import_onnxruntime(purpose: str):
    """The ``onnxruntime`` module, after checking that exactly one ONNX Runtime wheel is
    installed; a missing one names the ``[cpu]`` and ``[gpu]`` extras."""
    check_ort_install(installed_ort_distributions())
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "cpu", purpose, alternative="gpu") from None
    return onnxruntime


def select_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for a device request, best first, CPU always last.

    ``auto`` takes the best the installed onnxruntime has (TensorRT > CUDA > CPU);
    ``cuda`` and ``tensorrt`` fail with one line when the package lacks them (the CPU
    ``onnxruntime`` wheel has neither: install the ``[gpu]`` extra).
    """
    wanted = {
        "cpu": [CPU],
        "cuda": [CUDA, CPU],
        "tensorrt": [TENSORRT, CUDA, CPU],
        "auto": [p for p in (TENSORRT, CUDA) if p in available] + [CPU],
    }
    if device not in wanted:
        raise FornetError(f"unknown ONNX Runtime device {device!r} (use cpu, cuda, tensorrt or auto)")
    providers = wanted[device]
    missing = [p for p in providers if p not in available]
    if missing:
        raise HardwareError(
            f"ONNX Runtime here has {', '.join(available)}; --device {device} needs {missing[0]} "
            f"(on a machine with an NVIDIA GPU: {ORT_REPAIR})"
        )
    return providers


def _load_gpu_libraries(ort, tensorrt: bool) -> None:
    """CUDA / cuDNN from pip packages, and TensorRT's libraries (module docstring)."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints what it could not find
            ort.preload_dlls()
    if tensorrt:
        with contextlib.suppress(ImportError):
            import tensorrt  # noqa: F401 - loads libnvinfer for the TensorRT EP


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime.

    Session settings (measured at 512x1024 on a 2-core x86 VM, docs/benchmarks.md):
    ``ORT_ENABLE_ALL`` graph optimisations, because the NCHWc layout transformer that only
    that level runs is worth 1.37x on FP32 convolutions; intra-op threads = ``threads`` or
    ONNX Runtime's default (one per physical core: 1 -> 2 threads is 1.6-1.7x); sequential
    execution (the parallel mode with 2 inter-op threads was 2x slower); spinning worker
    threads (ONNX Runtime's default: 10 % lower latency than without, at the price of busy
    cores between runs).
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, gpu: int = 0, sha256: str | None = None,
                 profile_dir: str | Path | None = None, cache_root: str | Path | None = None):
        """``sha256``: the hash the file must have, checked on the bytes the session loads.
        ``cache_dir``: the TensorRT EP's engine cache, used only where every level of it below
        ``cache_root`` (default: its parent, which must exist) is a plain folder, made if
        missing (:func:`~fornet_deploy.io.plain_folder_below`); else no engine cache.
        ``profile_dir``: run with ONNX Runtime's profiler on, writing the trace
        (:meth:`end_profiling`) and the optimised graph (``optimized_model_path``) there."""
        super().__init__(f"ort-{precision}")
        self.sha256 = sha256
        self.onnx_path = Path(onnx_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_root = Path(cache_root) if cache_root is not None else \
            (self.cache_dir.parent if self.cache_dir is not None else None)
        self._engine_cache = False  # whether the TensorRT EP caches its engines (activate)
        self.gpu = gpu
        self.profile_dir = Path(profile_dir) if profile_dir is not None else None
        self.session = None
        self._output_names: list[str] = []

    @classmethod
    def from_request(cls, request: LoadRequest) -> "OrtRunner":
        # ONNX Runtime's TensorRT EP names cached engines after the graph's structure, not
        # its weights: one folder per graph hash keeps a re-exported model off old engines.
        device = request.ort_device or ("cuda" if request.device in NVIDIA_DEVICES else "cpu")
        return cls(request.path, device=device, precision=request.precision, threads=request.threads,
                   cache_dir=request.bundle_root / ORT_TRT_CACHE_DIR / request.sha256[:16], gpu=request.gpu,
                   sha256=request.sha256, profile_dir=request.profile_dir, cache_root=request.bundle_root)

    @property
    def optimized_model_path(self) -> Path | None:
        """The graph as ONNX Runtime optimised it (written when profiling)."""
        return self.profile_dir / "optimized.onnx" if self.profile_dir is not None else None

    def _activate_impl(self) -> None:
        ort = import_onnxruntime("the ONNX Runtime runner")
        model = read_bytes(self.onnx_path, "ONNX file", sha256=self.sha256)
        providers = select_providers(self.device, ort.get_available_providers())
        if CUDA in providers:
            _load_gpu_libraries(ort, TENSORRT in providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep ORT's warnings off the user's terminal
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # (class docstring)
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(self.profile_dir / "ort_profile")
            options.optimized_model_filepath = str(self.optimized_model_path)
        self._engine_cache = self._engine_cache_ready(providers)
        provider_options = [self._provider_options(p) for p in providers]
        try:
            self.session = ort.InferenceSession(model, options, providers=providers, provider_options=provider_options)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise FornetError(f"ONNX Runtime cannot load {self.onnx_path}: {str(exc).splitlines()[0][:200]}") from None
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _engine_cache_ready(self, providers: Sequence[str]) -> bool:
        """Whether the TensorRT EP caches its engines: only in a plain folder of the bundle
        (:func:`~fornet_deploy.io.plain_folder_below`; a link there would have it write engines
        elsewhere); without the cache it builds them at every session."""
        return TENSORRT in providers and self.cache_dir is not None \
            and plain_folder_below(self.cache_root, self.cache_dir)

    def _provider_options(self, provider: str) -> dict:
        if provider == TENSORRT and self._engine_cache:
            # Engines built by the TensorRT EP are cached beside the bundle: the first
            # session builds (minutes), later ones load.
            return {"device_id": str(self.gpu), "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(self.cache_dir), "trt_timing_cache_enable": "True"}
        if provider == CUDA:
            return {"device_id": str(self.gpu), "use_tf32": "0"}  # FP32 means FP32 (module docstring)
        if provider == TENSORRT:
            return {"device_id": str(self.gpu)}
        return {}

    def _deactivate_impl(self) -> None:
        self.session = None  # frees the session's memory and thread pool

    def end_profiling(self) -> Path:
        """Stop the profiler (a runner made with ``profile_dir``); the trace file's path."""
        if self.session is None or self.profile_dir is None:
            raise FornetError("end_profiling needs an active runner made with profile_dir")
        return Path(self.session.end_profiling())

    def output_names(self) -> tuple[str, ...]:
        return tuple(self._output_names)

    def input_spec(self) -> InputSpec:
        first = self.session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in first.shape)
        return InputSpec(name=first.name, dtype="float32", shape=shape)

    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        names = self._output_names if outputs is None else [n for n in outputs if n in self._output_names]
        values = self.session.run(names, {self.session.get_inputs()[0].name: batch})
        return dict(zip(names, values))

    def info(self) -> RunnerInfo:
        ort = import_onnxruntime("the ONNX Runtime runner")
        providers = self.session.get_providers() if self.session else []
        device = "cpu" if providers[:1] == [CPU] else providers[0] if providers else self.device
        return RunnerInfo(
            backend="onnxruntime", precision=self.precision, device=device, artifact=self.onnx_path.name,
            details={"onnxruntime": ort.__version__, "providers": providers, "threads": self.threads,
                     **({"trt_engine_cache": str(self.cache_dir) if self._engine_cache else None}
                        if TENSORRT in providers else {})},
        )
