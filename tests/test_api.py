"""The public Python API: the README's example runs as written, and its labels are the ones
`fornet-deploy predict` writes for the same image."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

import fornet_deploy as fd

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_package_exports_the_api_lazily():
    import subprocess
    import sys

    names = ("export_model", "calibrate", "evaluate", "benchmark", "parity", "predict_files", "load_runner",
             "load_segmenter", "build_engine", "train_model", "run_demo", "FornetError")
    assert all(name in dir(fd) and callable(getattr(fd, name)) for name in names)
    # importing the package (what `fornet-deploy --version` does) does not import PyTorch
    probe = "import sys, fornet_deploy; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_readme_example_runs_and_matches_predict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README
    prediction = scope["prediction"]
    assert prediction.labels.shape == (256, 512) and prediction.labels.dtype == np.uint8
    assert scope["report"]["summary"]["passed"]
    assert 0.0 <= scope["metrics"]["miou"] <= 1.0 and scope["timing"]["compute"]["p50_ms"] > 0

    image = "data/leftImg8bit/val/synthv/synthv_000000_000019_leftImg8bit.png"
    result = run_cli("predict", image, "--bundle", "bundle", "--out", "preds", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from fornet_deploy.io import read_image

    written = read_image(tmp_path / "preds" / "synthv_000000_000019_leftImg8bit_trainIds.png")[..., 0]
    assert np.array_equal(written, prediction.labels)


def test_api_arguments_are_checked(tiny_bundle, tmp_path):
    with pytest.raises(fd.OptionError, match="--num-images"):
        fd.calibrate(tiny_bundle, tmp_path, num_images=0)
    with pytest.raises(fd.OptionError, match="fp32 or fp16"):
        fd.export_model(tmp_path / "x.safetensors", tmp_path / "b", precision="int8")
    with pytest.raises(fd.OptionError, match="unknown precision"):
        fd.build_engine(tiny_bundle, "fp8")
    assert os.path.isdir(tiny_bundle)


def test_no_api_name_is_shadowed_by_a_submodule():
    """Importing fornet_deploy.X binds X on the package, so an API function named like a
    module would turn into that module once anything imports it."""
    import pkgutil

    from fornet_deploy import api

    modules = {m.name for m in pkgutil.iter_modules(fd.__path__)}
    assert not modules & set(api.__all__)
    import fornet_deploy.export  # noqa: F401 - the import that used to shadow fd.export
    import fornet_deploy.predict  # noqa: F401
    assert callable(fd.export_model) and callable(fd.predict_files)
