"""The one interface every inference backend implements.

Parity, evaluation, benchmark and predict are written once against :class:`Runner`:

    with make_runner(bundle, runtime="ort", precision="fp16") as runner:
        outputs = runner(batch)          # batch: NCHW float32, preprocessed
        outputs["logits"]                # N x C x H x W float32

Like Polygraphy's runners, a runner has a lifecycle (``activate`` / ``deactivate``, or a
``with`` block), subclasses fill ``_activate_impl`` / ``_infer_impl`` / ``_deactivate_impl``,
inputs are checked against the runner's input spec before inference, and every call
records its inference time.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import FornetError

# Named outputs. Every backend returns a dict with a subset of these keys; "logits" is
# always present when the artefact exports it, "labels" is the in-graph ArgMax.
LOGITS = "logits"
LABELS = "labels"
IMPORTANCE = "importance"
TOPK_MASK = "topk_mask"
OUTPUT_NAMES = (LOGITS, LABELS, IMPORTANCE, TOPK_MASK)
INPUT_NAME = "image"


@dataclass(frozen=True)
class InputSpec:
    """Name, dtype and shape of the network input; ``None`` marks a dynamic dimension."""

    name: str = INPUT_NAME
    dtype: str = "float32"
    shape: tuple[int | None, ...] = (None, 3, None, None)
    stride: int = 32  # H and W must be multiples of this
    # Inclusive (min, max) bounds for dynamic dims, e.g. a TensorRT optimization profile.
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    def check(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray):
            raise FornetError(f"input '{self.name}' must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.dtype(self.dtype):
            raise FornetError(f"input '{self.name}' must be {self.dtype}, got {batch.dtype}")
        if batch.ndim != len(self.shape):
            raise FornetError(
                f"input '{self.name}' must have {len(self.shape)} dims (NCHW), got shape {tuple(batch.shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, batch.shape)):
            if want is not None and want != got:
                raise FornetError(
                    f"input '{self.name}' has shape {tuple(batch.shape)}, this artefact takes "
                    f"{_fmt_shape(self.shape)} (dim {axis} must be {want})"
                )
        h, w = batch.shape[2], batch.shape[3]
        if h % self.stride or w % self.stride:
            raise FornetError(
                f"input size {h}x{w} is not a multiple of the network stride {self.stride}"
            )
        if self.min_shape is not None and any(g < m for g, m in zip(batch.shape, self.min_shape)):
            raise FornetError(f"input shape {tuple(batch.shape)} is below the artefact's minimum {self.min_shape}")
        if self.max_shape is not None and any(g > m for g, m in zip(batch.shape, self.max_shape)):
            raise FornetError(f"input shape {tuple(batch.shape)} is above the artefact's maximum {self.max_shape}")


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


@dataclass
class RunnerInfo:
    """What a runner is, for reports: backend, precision, device and library versions."""

    backend: str
    precision: str
    device: str
    artifact: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "artifact": self.artifact,
            **self.details,
        }


class Runner(abc.ABC):
    """Base class of all backends (PyTorch, ONNX Runtime, TensorRT)."""

    def __init__(self, name: str):
        self.name = name
        self.is_active = False
        self.last_inference_time: float | None = None  # seconds, compute only

    # lifecycle -----------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # inference -----------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one preprocessed NCHW float32 batch; returns named numpy outputs."""
        if not self.is_active:
            raise FornetError(f"runner {self.name} is not active (use it in a `with` block)")
        self.input_spec().check(batch)
        start = time.perf_counter()
        outputs = self._infer_impl(np.ascontiguousarray(batch))
        self.last_inference_time = time.perf_counter() - start
        return outputs

    __call__ = infer

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU backends); used by the benchmark."""

    # hooks ---------------------------------------------------------------------------
    @abc.abstractmethod
    def input_spec(self) -> InputSpec: ...

    @abc.abstractmethod
    def info(self) -> RunnerInfo: ...

    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def _deactivate_impl(self) -> None:
        pass
