"""User-facing errors and the command line's exit codes.

Anything a user can cause (bad option, bad path, wrong shape, corrupt file, stale cache,
missing hardware or optional package) is raised as a :class:`FornetError`. The CLI prints
its message on one line and exits with the error's code; library users catch it like any
exception. Exit codes (also in the README):

====  =======================================================================
0     success
1     a check failed (parity below its thresholds, lint blockers, a demo check)
2     usage error: unknown command or option, a value out of range or not a choice
3     input error: missing or corrupt file, wrong shape, stale or foreign artefact
4     a missing optional package (the message names the extra to install), or installed
      packages that clash (the message gives the command that repairs the install)
5     missing hardware (no GPU, no Jetson board, no DLA core)
130   interrupted (Ctrl-C / SIGTERM); what was written so far is intact
====  =======================================================================
"""

from __future__ import annotations

import enum
import errno


class ExitCode(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    INPUT = 3
    MISSING_PACKAGE = 4
    NO_HARDWARE = 5
    INTERRUPTED = 130


# What a write fails with when the disk is full, over quota or over the file-size limit
# (``ulimit -f``; Python ignores SIGXFSZ, so the write returns EFBIG): the user's environment,
# not a bug, so one line naming the file.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class FornetError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = ExitCode.INPUT


class OptionError(FornetError):
    """An option or config value out of its range (a usage error)."""

    exit_code = ExitCode.USAGE


class MissingDependencyError(FornetError):
    """An optional dependency (an extra) is not installed."""

    exit_code = ExitCode.MISSING_PACKAGE

    def __init__(self, package: str, extra: str, purpose: str, alternative: str | None = None):
        # ``alternative``: a second extra that also provides the package (never install both)
        other = f" (or 'fornet-deploy[{alternative}]', never both)" if alternative else ""
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed: "
            f"pip install 'fornet-deploy[{extra}]'{other}"
        )


class PackageClashError(FornetError):
    """Installed packages that overwrite each other's files; the message gives the repair."""

    exit_code = ExitCode.MISSING_PACKAGE


class HardwareError(FornetError):
    """The requested device (GPU, Jetson board, DLA core) is not present."""

    exit_code = ExitCode.NO_HARDWARE


class CheckFailed(FornetError):
    """A verification ran and its result is below the required threshold."""

    exit_code = ExitCode.CHECK_FAILED


class Interrupted(FornetError):
    """Stopped by Ctrl-C or SIGTERM; the message says what was kept and how to continue."""

    exit_code = ExitCode.INTERRUPTED


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise a :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        package = module.split(".")[0]
        raise MissingDependencyError(package, extra, purpose) from exc
