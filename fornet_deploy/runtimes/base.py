"""The one interface every inference backend implements.

Parity, evaluation, benchmark and predict are written once against :class:`Runner`:

    with load_runner(bundle, runtime="ort", precision="fp16") as runner:
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
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import (
    COARSE_LOGITS,
    INPUT_CHANNELS,
    INPUT_NAME,
    LOGITS,
    MAX_BATCH,
    MAX_SIDE,
    ONNX_FP32,
    check_pixels,
    format_shape,
)
from ..errors import FornetError


@dataclass(frozen=True)
class InputSpec:
    """Name, dtype and shape of the network input; ``None`` marks a dynamic dimension.

    The one input check of the package: runners call :meth:`check` on every batch, and
    bench / predict call :meth:`check_shape` before any work with the shape they will feed.
    """

    name: str = INPUT_NAME
    dtype: str = "float32"
    shape: tuple[int | None, ...] = (None, INPUT_CHANNELS, None, None)
    # Inclusive (min, max) bounds for dynamic dims, e.g. a TensorRT optimization profile.
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    def check(self, batch: np.ndarray) -> None:
        """A batch must be a numpy array of the spec's dtype and an accepted shape."""
        if not isinstance(batch, np.ndarray):
            raise FornetError(f"input '{self.name}' must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.dtype(self.dtype):
            raise FornetError(f"input '{self.name}' must be {self.dtype}, got {batch.dtype}")
        self.check_shape(tuple(batch.shape))

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Rank, fixed dims, size bounds and profile bounds, with the fix in the message."""
        if len(shape) != len(self.shape):
            raise FornetError(
                f"input '{self.name}' must have {len(self.shape)} dims (NCHW), got shape {tuple(shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, shape)):
            if want is not None and want != got:
                raise FornetError(
                    f"input '{self.name}' has shape {format_shape(shape)}, this artefact takes "
                    f"{format_shape(self.shape)} (dim {axis} must be {want})"
                )
        h, w = shape[2], shape[3]
        if min(shape) < 1:
            raise FornetError(f"input '{self.name}' has shape {format_shape(shape)}: every dim must be at least 1")
        if max(h, w) > MAX_SIDE or shape[0] > MAX_BATCH:
            raise FornetError(f"input shape {format_shape(shape)} is beyond the supported {MAX_BATCH} images of at "
                              f"most {MAX_SIDE} pixels per side")
        check_pixels(shape[0], h, w, "input", FornetError)
        if self.min_shape is not None and any(g < m for g, m in zip(shape, self.min_shape)):
            raise FornetError(f"input shape {format_shape(shape)} is below the artefact's minimum {format_shape(self.min_shape)}")
        if self.max_shape is not None and any(g > m for g, m in zip(shape, self.max_shape)):
            raise FornetError(f"input shape {format_shape(shape)} is above the artefact's maximum {format_shape(self.max_shape)}")


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


@dataclass(frozen=True)
class LoadRequest:
    """One checked artefact of a bundle and how to run it: what
    :func:`~fornet_deploy.runtimes.registry.load_runner` hands the runner class of the
    artefact's runtime (:meth:`Runner.from_request`). Each runner reads the fields that apply
    to it and ignores the others."""

    path: Path  # the artefact, its sha256 and lineage checked against the manifest
    sha256: str  # what the runner checks again on the bytes it loads
    bundle_root: Path  # where a runtime's caches live (ONNX Runtime's TensorRT engines, OpenVINO's blobs)
    precision: str
    device: str  # contract.DEVICES
    threads: int | None = None  # CPU threads; None: the runtime's default
    topk: str = "exact"  # PyTorch: exact or threshold
    ort_device: str | None = None  # ONNX Runtime providers; None: follows ``device``
    gpu: int = 0  # CUDA device index
    profile_dir: Path | None = None  # ONNX Runtime: profile every run into this folder


class Runner(abc.ABC):
    """Base class of all backends (PyTorch, ONNX Runtime, TensorRT, OpenVINO)."""

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
    def infer(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one preprocessed NCHW float32 batch; returns named numpy outputs.

        ``outputs`` names the outputs wanted (default: all the artefact has); a backend
        then copies only those to host memory, which matters for full-resolution logits.
        A name the artefact does not produce is one line listing the names it has (an empty
        result would read as "no prediction", not as a typo).
        """
        if not self.is_active:
            raise FornetError(f"runner {self.name} is not active (use it in a `with` block)")
        if outputs is not None and (isinstance(outputs, str) or not set(outputs) <= set(self.output_names())):
            check_output_names(outputs, self.output_names(), self.info().artifact or self.name)
        self.input_spec().check(batch)
        start = time.perf_counter()
        result = self._infer_impl(np.ascontiguousarray(batch), tuple(outputs) if outputs is not None else None)
        self.last_inference_time = time.perf_counter() - start
        return result

    __call__ = infer

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU backends); used by the benchmark."""

    def last_timings(self) -> dict[str, float] | None:
        """Device-side split of the last run, ``{"h2d_ms", "compute_ms", "d2h_ms"}`` (input
        copy, execution, copies of the outputs asked for), for runners that measure it with
        device events (TensorRT); ``None`` for the others."""
        return None

    # hooks ---------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_request(cls, request: LoadRequest) -> "Runner":
        """The runner for one artefact of a bundle (how ``load_runner`` makes every runner)."""

    @abc.abstractmethod
    def input_spec(self) -> InputSpec: ...

    @abc.abstractmethod
    def info(self) -> RunnerInfo: ...

    @abc.abstractmethod
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs the artefact produces (valid once active)."""

    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]: ...

    def _deactivate_impl(self) -> None:
        pass


def check_output_names(wanted: Sequence[str], available: Sequence[str], artifact: str) -> None:
    """Every name of ``wanted`` is an output of the artefact; else one line listing its
    outputs. ``logits`` asked of a CPU graph says what that graph has instead."""
    if isinstance(wanted, str):  # "labels" would be read as the names l, a, b, e, l, s
        raise FornetError(f"outputs must be a list of names, e.g. outputs=[{wanted!r}], got the string {wanted!r}")
    unknown = [name for name in wanted if name not in available]
    if not unknown:
        return
    has = ", ".join(available)
    if unknown[0] == LOGITS and COARSE_LOGITS in available:
        raise FornetError(
            f"{artifact} has no output {LOGITS!r}: it is a CPU graph, which computes the 1/4-scale "
            f"{COARSE_LOGITS!r} and its labels without the full-resolution logits (its outputs: {has}); "
            f"ask for {COARSE_LOGITS!r}, or run {ONNX_FP32} for full-resolution logits"
        )
    raise FornetError(f"{artifact} has no output {unknown[0]!r} (its outputs: {has})")


def network_size(spec: InputSpec, preprocessing, image_hw: tuple[int, int],
                 shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """The network input (H, W) an image of size ``image_hw`` is resized to, the one rule of
    every stage that feeds images (predict, eval, parity, calibrate, package): ``shape``
    when given, else the preprocessing's fixed resize, else the artefact's fixed size, else
    (a dynamic artefact) the image's own size: the network pads to its stride and crops
    itself. Predictions are resized back to the image (labels nearest-neighbour)."""
    if shape is not None:
        return int(shape[0]), int(shape[1])
    if preprocessing.resize == "fixed":
        return preprocessing.target_size(image_hw)
    fixed_h, fixed_w = spec.shape[2:]
    if fixed_h is not None and fixed_w is not None:
        return fixed_h, fixed_w
    return int(image_hw[0]), int(image_hw[1])
