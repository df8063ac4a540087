"""User-facing errors.

Anything a user can cause (bad path, wrong shape, corrupt file, stale cache, missing
hardware or optional package) is raised as :class:`FornetError`. The CLI prints its
message on one line and exits non-zero; library users catch it like any exception.
"""

from __future__ import annotations


class FornetError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 2


class MissingDependencyError(FornetError):
    """An optional dependency (an extra) is not installed."""

    exit_code = 3

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed: "
            f"pip install 'fornet-deploy[{extra}]'"
        )


class HardwareError(FornetError):
    """The requested device (GPU, Jetson board, DLA core) is not present."""

    exit_code = 4


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise a :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        package = module.split(".")[0]
        raise MissingDependencyError(package, extra, purpose) from exc
