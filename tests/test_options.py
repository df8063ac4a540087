"""Every option bounded at the boundary, in the library and on the command line (issue 14,
defect 9): one line, the usage exit code, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

import fornet_deploy as fd
from fornet_deploy.contract import MAX_BATCH, MAX_PIXELS, MAX_SIDE, parse_hw
from fornet_deploy.errors import ExitCode, FornetError, OptionError
from fornet_deploy.export.onnx import ExportConfig, export_bundle
from fornet_deploy.runtimes.base import InputSpec
from fornet_deploy.train import TrainConfig


@pytest.mark.parametrize("changes, message", [
    ({"batch": 0}, "--batch must be an integer from 1 to"),  # SIGFPE in the exporter before
    ({"batch": MAX_BATCH + 1}, "--batch must be an integer from 1 to"),
    ({"opset": 99}, "--opset 99 is outside"),
    ({"opset": 17.0}, "--opset 17.0 is outside"),
    ({"height": 2 * MAX_SIDE}, "larger than the supported"),
    ({"outputs": ("logits", "scores")}, "--outputs: unknown"),
])
def test_export_options_are_bounded_before_anything_is_written(tmp_path, tiny_checkpoint, changes, message):
    with pytest.raises(FornetError, match=message):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(**changes))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("changes, option", [
    ({"iterations": 0}, "--iterations"), ({"iterations": -1}, "--iterations"), ({"batch_size": 0}, "--batch "),
    ({"val_interval": 0}, "--val-interval"), ({"lr": float("nan")}, "--lr"), ({"lr": float("inf")}, "--lr"),
    ({"lr": 0.0}, "--lr"), ({"crop_height": 0}, "--crop-height"), ({"crop_width": 10**6}, "--crop-width"),
    ({"scale_min": 2.0, "scale_max": 1.0}, "scale_min"), ({"optimizer": "adam"}, "optimizer"),
    ({"val_images": 0}, "--val-images"), ({"momentum": 1.5}, "--momentum"), ({"init": ""}, "--init"),
    ({"init": 3}, "--init"),
])
def test_train_options_are_bounded(tmp_path, changes, option):
    with pytest.raises(OptionError, match=option):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **changes).validate()


@pytest.mark.parametrize("topk_ratio", [1.5, 0.0, float("nan")])
def test_train_refuses_a_bad_topk_ratio_before_writing(tmp_path, tiny_data, topk_ratio):
    with pytest.raises(OptionError, match="topk_ratio must be a number in"):
        fd.train_model(tiny_data, tmp_path / "run", topk_ratio=topk_ratio, iterations=1)
    with pytest.raises(OptionError, match="--iterations"):
        fd.train_model(tiny_data, tmp_path / "run", iterations=-1)  # exited 0, "trained to iteration -1"
    assert not (tmp_path / "run").exists()


def test_train_model_takes_a_path_to_start_from(tmp_path, tiny_data, tiny_checkpoint):
    # a Path is taken (as a str would be): the checkpoint is read, and its classes checked
    with pytest.raises(FornetError, match="architecture|classes"):
        fd.train_model(tiny_data, tmp_path / "run", init=Path(tiny_checkpoint), iterations=1)
    assert not (tmp_path / "run").exists()


def test_image_sizes_and_batches_have_upper_bounds():
    with pytest.raises(OptionError, match="larger than the supported 8192"):
        parse_hw("100000x64")
    with pytest.raises(FornetError, match="beyond the supported"):
        InputSpec().check_shape((1, 3, MAX_SIDE + 32, 64))
    with pytest.raises(FornetError, match="beyond the supported"):
        InputSpec().check_shape((MAX_BATCH + 1, 3, 64, 64))
    with pytest.raises(FornetError, match="M pixels"):  # each bound alone is not enough: 8192x8192 is 64 M
        InputSpec().check_shape((1, 3, MAX_SIDE, MAX_SIDE))
    with pytest.raises(FornetError, match="M pixels"):
        InputSpec().check_shape((MAX_BATCH, 3, MAX_SIDE, 32))
    InputSpec().check_shape((1, 3, MAX_SIDE, MAX_PIXELS // MAX_SIDE))
    InputSpec().check_shape((MAX_BATCH, 3, 32, MAX_PIXELS // MAX_BATCH // 32))


def test_library_counts_are_checked(tiny_bundle, tiny_data):
    with pytest.raises(OptionError, match="--num-images"):
        fd.parity(tiny_bundle, num_images=-1)
    with pytest.raises(OptionError, match="--num-images"):
        fd.evaluate(tiny_bundle, tiny_data, num_images=0)
    with pytest.raises(OptionError, match="--boundary-width"):
        fd.evaluate(tiny_bundle, tiny_data, boundary_width=-1)
    with pytest.raises(OptionError, match="--batch"):
        fd.benchmark(tiny_bundle, batch=MAX_BATCH + 1)


@pytest.mark.parametrize("args, fragment", [
    (["train", "--data", "d", "--out", "{tmp}/run", "--topk-ratio", "nan"], "topk_ratio"),
    (["train", "--data", "d", "--out", "{tmp}/run", "--lr", "inf"], "--lr"),
    (["bench", "--bundle", "b", "--shape", "16384x64"], "larger than the supported"),
    (["eval", "--bundle", "b", "--data", "d", "--boundary-width", "-1"], "--boundary-width"),
])
def test_out_of_range_options_are_usage_errors(tmp_path, args, fragment):
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(result, fragment)
    assert result.returncode == ExitCode.USAGE
    assert not (tmp_path / "run").exists()
