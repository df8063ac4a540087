"""The commands as a user runs them: clear one-line errors, non-zero exits, nothing half-written."""

from cli_helpers import assert_one_line_error, run_cli


def test_train_on_a_missing_dataset(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--iterations", "1")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "run").exists()


def test_train_on_an_empty_dataset_folder(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_cli("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--iterations", "1")
    assert_one_line_error(result, "not a dataset in a known layout")


def test_export_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    result = run_cli("export", "--checkpoint", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "b"))
    assert_one_line_error(result, "corrupt")
    assert not (tmp_path / "b").exists()


def test_export_shape_out_of_bounds_and_lint_of_a_corrupt_onnx(tmp_path, tiny_checkpoint):
    result = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--shape", "9000x64")
    assert_one_line_error(result, "larger than the supported 8192")
    (tmp_path / "x.onnx").write_bytes(b"\x08\x07garbage")
    assert_one_line_error(run_cli("lint", str(tmp_path / "x.onnx")), "not a valid ONNX model")


def test_export_at_sizes_that_are_not_multiples_of_32(tmp_path, tiny_checkpoint):
    """CamVid's 360x480 and a camera's 1080x1920: padded inside the graph, outputs cropped."""
    import json

    for shape, extra in (("360x480", ()), ("1080x1920", ("--dynamic",))):
        out = tmp_path / shape
        result = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--shape", shape, *extra)
        assert result.returncode == 0, result.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["artifacts"]["model.onnx"]["export_shape"] == [1, 3, *map(int, shape.split("x"))]


def test_parity_on_a_tampered_bundle(tmp_path, tiny_checkpoint):
    import shutil

    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(height=64, width=64))
    onnx_path = tmp_path / "b" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    assert_one_line_error(run_cli("parity", "--bundle", str(tmp_path / "b")), "does not match the sha256")
    shutil.rmtree(tmp_path / "b")
    assert_one_line_error(run_cli("parity", "--bundle", str(tmp_path / "b")), "does not exist")


def test_info_reports_parameters_and_gflops():
    result = run_cli("info", "--shape", "512x1024")
    assert result.returncode == 0, result.stderr
    assert "GFLOPs at 512x1024" in result.stdout


def test_build_trt_without_tensorrt_names_the_extra(tiny_bundle):
    import importlib.util

    import pytest

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    result = run_cli("build-trt", "--bundle", str(tiny_bundle), "--fp32")
    assert_one_line_error(result, "pip install 'fornet-deploy[tensorrt]'")
    assert not list(tiny_bundle.glob("*.engine"))


def test_version_prints_the_package_version():
    from fornet_deploy import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fornet-deploy {__version__}"


def test_a_wrong_choice_is_a_one_line_usage_error_listing_the_choices(tiny_bundle):
    result = run_cli("parity", "--bundle", str(tiny_bundle), "--runtime", "tflite")
    assert result.returncode == 2
    assert_one_line_error(result, "'tflite' is not one of 'torch', 'ort', 'trt', 'openvino'")
    result = run_cli("bench", "--bundle", str(tiny_bundle), "--precision", "int4")
    assert result.returncode == 2
    assert_one_line_error(result, "'int4' is not one of 'fp32', 'fp16', 'bf16', 'int8'")


def test_usage_and_input_errors_have_their_own_exit_codes(tmp_path, tiny_bundle):
    from fornet_deploy.errors import ExitCode

    assert run_cli("export", "--bogus").returncode == ExitCode.USAGE
    assert run_cli("bench", "--bundle", str(tiny_bundle), "--iterations", "0").returncode == ExitCode.USAGE
    assert run_cli("bench", "--bundle", str(tmp_path / "none")).returncode == ExitCode.INPUT
    missing_gpu = run_cli("bench", "--bundle", str(tiny_bundle), "--device", "cuda")
    assert missing_gpu.returncode == ExitCode.NO_HARDWARE, missing_gpu.stderr


def test_ort_provider_is_for_onnx_runtime_and_needs_its_gpu_build(tiny_bundle):
    from fornet_deploy.errors import ExitCode
    from fornet_deploy.runtimes.ort_runner import ORT_REPAIR

    wrong = run_cli("parity", "--bundle", str(tiny_bundle), "--runtime", "torch", "--ort-provider", "cuda")
    assert wrong.returncode == ExitCode.USAGE
    assert_one_line_error(wrong, "--ort-provider applies to --runtime ort, not torch")
    unknown = run_cli("eval", "--bundle", str(tiny_bundle), "--data", ".", "--ort-provider", "rocm")
    assert unknown.returncode == ExitCode.USAGE
    cuda = run_cli("parity", "--bundle", str(tiny_bundle), "--ort-provider", "cuda", "--num-images", "1")
    assert cuda.returncode == ExitCode.NO_HARDWARE  # the CPU wheel has no CUDA provider
    assert_one_line_error(cuda, "needs CUDAExecutionProvider", ORT_REPAIR)


def test_every_size_option_is_spelled_shape():
    """No --height/--width/--crop/--size anywhere: image sizes are --shape HxW (build-trt's
    profile bounds are --min-shape/--max-shape, HxW too)."""
    import re

    from typer.main import get_command

    from fornet_deploy.cli import app

    group = get_command(app)
    sizes = re.compile(r"--(height|width|crop|size|resolution|min-size|max-size)\b")
    for name, command in group.commands.items():
        for param in command.params:
            for opt in getattr(param, "opts", []):
                assert not sizes.match(opt), f"{name} {opt}"
                if "shape" in opt:
                    assert opt in ("--shape", "--min-shape", "--max-shape"), f"{name} {opt}"
    for name in ("export", "bench", "predict", "train", "synthcity", "info", "build-trt", "demo"):
        assert any("--shape" in getattr(p, "opts", []) for p in group.commands[name].params), name


def test_export_tail_and_bench_profile(tmp_path, tiny_checkpoint):
    import json

    from fornet_deploy.errors import ExitCode

    wrong = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--tail", "bicubic")
    assert wrong.returncode == ExitCode.USAGE
    assert_one_line_error(wrong, "'bicubic' is not one of 'refine', 'full', 'nearest'")
    result = run_cli("export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--shape", "64x128",
                     "--tail", "nearest")
    assert result.returncode == 0, result.stderr
    assert "model.cpu.onnx" in result.stdout
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["artifacts"]["model.cpu.onnx"]["tail"] == "nearest"
    result = run_cli("bench", "--bundle", str(tmp_path / "b"), "--iterations", "2", "--warmup", "1", "--threads", "1",
                     "--profile", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    assert "model.cpu.onnx by scope" in result.stdout and "model.cpu.onnx by op type" in result.stdout
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert "tail" in bench["profile"]["by_scope"] and "machine_load" in bench
    assert ("measured on a busy machine" in result.stdout) == bool(bench["machine_load"]["busy"])
