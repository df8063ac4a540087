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


SMALL_SHAPE = (64, 128)  # half the tiny SynthCity images' size: calibration resizes them


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model exported static at 64x128 (read-only: copy to write)."""
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("small") / "bundle"
    export_bundle(tiny_checkpoint, root, ExportConfig(height=SMALL_SHAPE[0], width=SMALL_SHAPE[1]))
    return root


VIDEO_FRAMES, VIDEO_HW = 20, (96, 128)


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    """A 20-frame 96x128 clip (mp4v in .mp4, what this OpenCV writes) whose frames all differ."""
    import cv2
    import numpy as np

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    h, w = VIDEO_HW
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    for index in range(VIDEO_FRAMES):
        frame = np.broadcast_to(ramp, (h, w, 3)).copy()
        frame[8:40, 4 * index : 4 * index + 24] = (40 + 10 * index, 200, 255 - 10 * index)  # a moving block
        writer.write(frame)
    writer.release()
    return path
