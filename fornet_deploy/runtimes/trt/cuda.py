"""CUDA and TensorRT plumbing shared by the engine runner and the engine builder.

CUDA memory goes through PyCUDA (the ``[tensorrt]`` extra installs ``tensorrt`` + ``pycuda``).
TensorRT calls the CUDA runtime API, which works in the device's *primary* context, so
:class:`CudaContext` retains and pushes that context rather than creating a private one:
PyCUDA allocations and TensorRT then share one context. Objects made in a context must be
used from the thread that entered it (CUDA contexts are current per thread).

PyCUDA names (inducer/pycuda ``src/wrapper/wrap_cudadrv.cpp``): ``init``, ``Device.count``,
``Device.name``, ``Device.compute_capability``, ``Device.retain_primary_context``,
``Context.push`` / ``Context.pop``, ``mem_alloc``, ``memcpy_htod_async``,
``memcpy_dtoh_async``, ``Stream().handle`` / ``synchronize``, ``Error``. TensorRT's
``ILogger`` (subclassable, ``log(severity, msg)``, ``ILogger.Severity.*``) is the same on
``release/10.3``, ``release/10.16`` and ``main`` (``python/src/infer/pyCore.cpp``).
"""

from __future__ import annotations

import logging

from ...errors import HardwareError, require

_log = logging.getLogger(__name__)


class CudaContext:
    """The primary CUDA context of one GPU, current inside a ``with`` block.

    Construction raises :class:`MissingDependencyError` without PyCUDA and
    :class:`HardwareError` without an NVIDIA driver or GPU.
    """

    def __init__(self, purpose: str, device: int = 0):
        require("pycuda", "tensorrt", purpose)
        try:
            import pycuda.driver as driver
        except ImportError as exc:  # PyCUDA is installed, the NVIDIA driver (libcuda) is not
            raise HardwareError(f"{purpose} needs an NVIDIA GPU and driver ({exc})") from None
        try:
            driver.init()
            count = driver.Device.count()
        except driver.Error as exc:
            raise HardwareError(f"{purpose} needs an NVIDIA GPU; CUDA reports: {exc}") from None
        if device >= count:
            raise HardwareError(f"{purpose} asked for GPU {device}, this machine has {count} CUDA device(s)")
        self.driver = driver
        self.device = driver.Device(device)
        self.gpu_name: str = self.device.name()
        self.compute_capability: str = "{}.{}".format(*self.device.compute_capability())
        self._context = None

    def __enter__(self) -> "CudaContext":
        self._context = self.device.retain_primary_context()
        self._context.push()
        return self

    def __exit__(self, *exc) -> None:
        self._context.pop()
        self._context = None  # dropping the last reference releases the primary context


def make_trt_logger(trt):
    """A TensorRT logger that keeps error messages (for our one-line errors) and sends
    warnings and errors to Python logging instead of stdout."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11 trampolines need the explicit base init
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                _log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                _log.warning("TensorRT: %s", msg)

        def last_error(self, default: str) -> str:
            return self.errors[-1] if self.errors else default

    return CollectingLogger()


