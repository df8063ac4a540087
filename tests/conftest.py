"""Shared fixtures: a tiny FoR-Net, a tiny SynthCity dataset and a tiny bundle (session-wide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from fornet_deploy.data.synthcity import SynthCityConfig, generate
from fornet_deploy.model.checkpoint import save_checkpoint
from fornet_deploy.model.fornet import FoRNetConfig, build_model

# CI (CI=true) runs every property test on the same derandomized examples, so a landing is never
# blocked by a draw nobody can reproduce; local runs draw new examples each time, which is where
# new counterexamples come from (a failure prints the blob that replays it).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _gpu_visible() -> bool:
    """A GPU as CUDA PyTorch or cuda-python sees it (GPU machines may run a CPU build of
    PyTorch: the TensorRT tests need only cuda-python)."""
    if torch.cuda.is_available():
        return True
    from fornet_deploy.errors import FornetError
    from fornet_deploy.runtimes.trt.cuda import CudaDevice

    try:
        CudaDevice("the GPU tests")
    except FornetError:
        return False
    return True


def _hardware_skip_reasons() -> dict[str, str]:
    import importlib.util

    reasons = {}
    if importlib.util.find_spec("tensorrt") is None:
        reasons["tensorrt"] = "TensorRT is not installed (pip install 'fornet-deploy[tensorrt]' on a GPU machine)"
    if not _gpu_visible():
        reasons["gpu"] = "no CUDA GPU on this machine"
    if not Path("/etc/nv_tegra_release").exists():
        reasons["jetson"] = "not a Jetson board"
    return reasons


def pytest_collection_modifyitems(config, items):
    """Hardware tests skip cleanly, with the reason, where the hardware is absent."""
    reasons = _hardware_skip_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


TINY = FoRNetConfig(
    stem_channels=8, stage_channels=(8, 16, 16, 16), stage_depths=(1, 1, 1, 1), expansions=(2, 2, 2),
    neck_channels=16, branch_channels=8, selector_channels=8, head_channels=8, detail_channels=8,
)


@pytest.fixture(scope="session")
def tiny_config() -> FoRNetConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY)
    # Move BatchNorm statistics away from identity so outputs are not trivially flat.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, {"note": "tiny test model"})
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthcity")
    generate(root, SynthCityConfig(train=6, val=3, height=128, width=256, seed=1))
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_bundle(tiny_checkpoint, out, ExportConfig(height=128, width=256, dynamic=True))
    return out


@pytest.fixture(scope="session")
def camvid_data(tmp_path_factory) -> Path:
    """A CamVid-layout SynthCity (SegNet folders, CamVid's 11 classes, 11 = void)."""
    root = tmp_path_factory.mktemp("camvid")
    generate(root, SynthCityConfig(train=4, val=2, test=2, height=96, width=128, seed=3, layout="camvid"))
    return root
