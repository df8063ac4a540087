"""Bundles for the package tests: the session's tiny dynamic bundle (conftest one level up)
and a static batch-1 export of the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def static_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("static") / "bundle"
    export_bundle(tiny_checkpoint, out, ExportConfig(height=128, width=256, dynamic=False))
    return out
