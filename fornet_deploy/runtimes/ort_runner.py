"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FornetError, HardwareError
from ..io import read_bytes
from .base import InputSpec, Runner, RunnerInfo

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


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
            "(pip install 'fornet-deploy[gpu]' on a machine with an NVIDIA GPU)"
        )
    return providers


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, gpu: int = 0, sha256: str | None = None):
        """``sha256``: the hash the file must have, checked on the bytes the session loads."""
        super().__init__(f"ort-{precision}")
        self.sha256 = sha256
        self.onnx_path = Path(onnx_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.cache_dir = cache_dir
        self.gpu = gpu
        self.session = None
        self._output_names: list[str] = []

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        model = read_bytes(self.onnx_path, "ONNX file", sha256=self.sha256)
        providers = select_providers(self.device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep ORT's warnings off the user's terminal
        if self.threads:
            options.intra_op_num_threads = self.threads
        provider_options = [self._provider_options(p) for p in providers]
        if TENSORRT in providers and self.cache_dir:
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.session = ort.InferenceSession(model, options, providers=providers, provider_options=provider_options)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise FornetError(f"ONNX Runtime cannot load {self.onnx_path}: {str(exc).splitlines()[0][:200]}") from None
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _provider_options(self, provider: str) -> dict:
        if provider == TENSORRT and self.cache_dir:
            # Engines built by the TensorRT EP are cached beside the bundle: the first
            # session builds (minutes), later ones load.
            return {"device_id": str(self.gpu), "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(self.cache_dir), "trt_timing_cache_enable": "True"}
        if provider in (TENSORRT, CUDA):
            return {"device_id": str(self.gpu)}
        return {}

    def _deactivate_impl(self) -> None:
        self.session = None  # frees the session's memory and thread pool

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
        import onnxruntime as ort

        providers = self.session.get_providers() if self.session else []
        device = "cpu" if providers[:1] == [CPU] else providers[0] if providers else self.device
        return RunnerInfo(
            backend="onnxruntime", precision=self.precision, device=device, artifact=self.onnx_path.name,
            details={"onnxruntime": ort.__version__, "providers": providers, "threads": self.threads},
        )
