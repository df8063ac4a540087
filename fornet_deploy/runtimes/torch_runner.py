"""PyTorch backend: the FP32 reference every other runtime is compared with."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..contract import COARSE_LOGITS, IMPORTANCE, LABELS, LOGITS, NVIDIA_DEVICES, TOPK_MASK
from ..errors import HardwareError
from ..model.checkpoint import load_checkpoint
from ..model.fornet import FoRNet
from .base import InputSpec, LoadRequest, Runner, RunnerInfo


def torch_device(device: str) -> torch.device:
    if device in ("auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HardwareError(f"--device {device}: PyTorch sees no CUDA GPU on this machine")
    return torch.device(device)


@contextlib.contextmanager
def cudnn_tf32(allowed: bool | None):
    """cuDNN convolutions with (``True``) or without (``False``) TF32 inside the block, the
    caller's setting restored after; ``None`` leaves it alone. PyTorch >= 2.9 has a per-backend
    setting (``cudnn.conv.fp32_precision``) and refuses to mix it with the legacy
    ``cudnn.allow_tf32``; older versions have only the latter."""
    if allowed is None:
        yield
        return
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        holder, name, value = cudnn.conv, "fp32_precision", "tf32" if allowed else "ieee"
    else:
        holder, name, value = cudnn, "allow_tf32", allowed
    previous = getattr(holder, name)
    setattr(holder, name, value)
    try:
        yield
    finally:
        setattr(holder, name, previous)


class TorchRunner(Runner):
    """Runs a FoR-Net checkpoint in PyTorch eager mode.

    ``topk``: "exact" (the reference) or "threshold" (to isolate export effects).
    ``precision``: "fp32", or "fp16" on CUDA (autocast; the Top-K stays FP32). FP32 on CUDA
    means FP32: cuDNN's TF32 convolutions (PyTorch's default on Ampere and later) are off
    while the runner infers, as TensorRT's FP32 engines and ORT's CUDA provider are built here.
    ``threads``: PyTorch's intra-op CPU threads while the runner is active (a process-wide
    setting, restored on deactivation).
    """

    def __init__(self, checkpoint: str | Path | FoRNet, topk: str = "exact", device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None, sha256: str | None = None):
        super().__init__(f"torch-{precision}")
        self.checkpoint = checkpoint
        self.sha256 = sha256  # of the checkpoint file, checked on the bytes loaded
        self.topk = topk
        self.device = torch_device(device)
        if precision not in ("fp32", "fp16"):
            raise HardwareError(f"PyTorch runner supports fp32 and fp16, not {precision}")
        if precision == "fp16" and self.device.type != "cuda":
            raise HardwareError("PyTorch fp16 inference needs a CUDA device")
        self.precision = precision
        self.threads = threads
        self._previous_threads: int | None = None
        self.model: FoRNet | None = None

    @classmethod
    def from_request(cls, request: LoadRequest) -> "TorchRunner":
        device = f"cuda:{request.gpu}" if request.device in NVIDIA_DEVICES else "cpu"
        return cls(request.path, topk=request.topk, device=device, precision=request.precision,
                   threads=request.threads, sha256=request.sha256)

    def _activate_impl(self) -> None:
        model = self.checkpoint if isinstance(self.checkpoint, FoRNet) else \
            load_checkpoint(self.checkpoint, sha256=self.sha256)[0]
        self.model = model.eval().set_topk_mode(self.topk).to(self.device)
        if self.threads:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _deactivate_impl(self) -> None:
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None

    def output_names(self) -> tuple[str, ...]:
        has_selector = self.model is not None and self.model.topk is not None
        always = (LOGITS, COARSE_LOGITS, LABELS)
        return (*always, IMPORTANCE, TOPK_MASK) if has_selector else always

    def input_spec(self) -> InputSpec:
        return InputSpec()

    @torch.inference_mode()
    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"), \
                cudnn_tf32(False if self.device.type == "cuda" and self.precision == "fp32" else None):
            out = self.model.forward_all(x)
        # Labels as the exported graph computes them (ArgMax over the FP32 logits).
        tensors = {LOGITS: out[LOGITS].float(), COARSE_LOGITS: out[COARSE_LOGITS].float(),
                   LABELS: out[LOGITS].argmax(1).to(torch.uint8)}
        if out[IMPORTANCE] is not None:
            tensors |= {IMPORTANCE: out[IMPORTANCE].float(), TOPK_MASK: out[TOPK_MASK].float()}
        wanted = tensors if outputs is None else [name for name in outputs if name in tensors]
        return {name: tensors[name].cpu().numpy() for name in wanted}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def info(self) -> RunnerInfo:
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return RunnerInfo(
            backend="torch", precision=self.precision, device=device,
            artifact=str(self.checkpoint) if not isinstance(self.checkpoint, FoRNet) else None,
            details={"torch": torch.__version__, "topk": self.topk, "threads": torch.get_num_threads()},
        )
