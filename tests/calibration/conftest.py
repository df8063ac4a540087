"""The real FoR-Net (shipped SynthCity weights), exported small: what the placement rules are for."""

from __future__ import annotations

from pathlib import Path

import pytest

FORNET_SHAPE = (128, 256)  # the tiny SynthCity images' size, so calibration fits the export


@pytest.fixture(scope="session")
def fornet_bundle(tmp_path_factory) -> Path:
    """``model.onnx`` + ``model.fp16.onnx`` of the shipped weights at 128x256 (read-only: copy to write)."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.export.fp16 import convert_fp16
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("fornet") / "bundle"
    export_bundle(SHIPPED_WEIGHTS, root, ExportConfig(height=FORNET_SHAPE[0], width=FORNET_SHAPE[1]))
    convert_fp16(root)
    return root
