"""fornet-deploy: FoR-Net from training to fast, verified inference.

The Python API (the same functions the ``fornet-deploy`` command calls) is importable from
here; see :mod:`fornet_deploy.api` and the README. Names are loaded on first use, so
``import fornet_deploy`` (and ``fornet-deploy --version``) does not import PyTorch.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_API = (
    "SHIPPED_WEIGHTS", "Bundle", "Prediction", "Preprocessing", "Runner", "Segmenter", "benchmark", "build_engine",
    "calibrate", "deploy_checkpoint", "evaluate", "export_model", "info", "inspect_bundle", "lint", "load_runner",
    "load_segmenter", "package_bundle", "parity", "predict_files", "run_demo", "synthcity", "train_model",
)
_ERRORS = ("FornetError", "OptionError", "MissingDependencyError", "HardwareError", "CheckFailed", "ExitCode")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _ERRORS:
        return getattr(importlib.import_module(".errors", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
