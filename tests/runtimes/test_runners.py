import os
import shutil
import sys

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import FORMATS, ORT_TRT_CACHE_DIR
from fornet_deploy.errors import (
    ExitCode,
    FornetError,
    HardwareError,
    MissingDependencyError,
    OptionError,
    PackageClashError,
)
from fornet_deploy.runtimes.ort_runner import (
    CPU,
    CUDA,
    ORT_REPAIR,
    TENSORRT,
    OrtRunner,
    check_ort_install,
    import_onnxruntime,
    installed_ort_distributions,
    select_providers,
)
from fornet_deploy.runtimes.registry import available_formats, load_runner, resolve_format


def test_ort_matches_torch_on_the_same_batch(tiny_bundle):
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 256)).astype(np.float32)
    with load_runner(tiny_bundle, "torch", "fp32", "cpu", topk="threshold") as torch_runner, \
            load_runner(tiny_bundle, "ort", "fp32", "cpu", artifact="model.onnx") as ort_runner, \
            load_runner(tiny_bundle, "ort", "fp32", "cpu") as cpu_runner:
        a, b, c = torch_runner(x), ort_runner(x), cpu_runner(x)
    assert np.abs(a["logits"] - b["logits"]).max() < 1e-3
    assert np.abs(a["coarse_logits"] - c["coarse_logits"]).max() < 1e-3
    assert np.array_equal(a["topk_mask"], b["topk_mask"]) and np.array_equal(a["topk_mask"], c["topk_mask"])
    assert np.array_equal(b["labels"], c["labels"])
    assert ort_runner.last_inference_time > 0
    assert b.keys() == {"logits", "labels", "importance", "topk_mask"}
    assert c.keys() == {"coarse_logits", "labels", "importance", "topk_mask"}  # no full-resolution logits


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_wrong_input_shape_channels_dtype(tiny_bundle, runtime):
    with load_runner(tiny_bundle, runtime, "fp32", "cpu") as runner:
        with pytest.raises(FornetError, match="3"):
            runner(np.zeros((1, 1, 64, 64), np.float32))
        with pytest.raises(FornetError, match="float32"):
            runner(np.zeros((1, 3, 64, 64), np.float64))
        with pytest.raises(FornetError, match="every dim must be at least 1"):
            runner(np.zeros((1, 3, 0, 64), np.float32))
        with pytest.raises(FornetError, match="NCHW"):
            runner(np.zeros((3, 64, 64), np.float32))


def test_runner_must_be_activated(tiny_bundle):
    runner = load_runner(tiny_bundle, "ort", "fp32", "cpu")
    with pytest.raises(FornetError, match="not active"):
        runner(np.zeros((1, 3, 64, 64), np.float32))


def test_provider_selection():
    assert select_providers("cpu", [CPU]) == [CPU]
    assert select_providers("auto", [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(HardwareError) as err:
        select_providers("cuda", [CPU])
    assert str(err.value).endswith(f"needs CUDAExecutionProvider (on a machine with an NVIDIA GPU: {ORT_REPAIR})")


def test_cuda_provider_keeps_fp32_fp32(tiny_bundle):
    runner = OrtRunner(tiny_bundle / "model.onnx", device="cuda", gpu=1)
    assert runner._provider_options(CUDA) == {"device_id": "1", "use_tf32": "0"}  # ORT's default is TF32 on
    assert runner._provider_options(CPU) == {}


def test_the_tensorrt_engine_cache_is_never_written_through_a_link(tiny_bundle, tmp_path):
    """`BUNDLE/ort_trt_cache` as a link to a folder elsewhere: the TensorRT EP gets no engine
    cache (making the graph's folder below it would have written elsewhere); a plain folder is
    used; other providers make no folder. (The TensorRT EP itself cannot run here: this is the
    decision, on the runner the registry makes for a bundle.)"""
    runner = load_runner(tiny_bundle, "ort", "fp32", "cpu")
    cache = tiny_bundle / ORT_TRT_CACHE_DIR
    assert runner.cache_root == tiny_bundle and runner.cache_dir.parent == cache
    shutil.rmtree(cache, ignore_errors=True)
    assert not runner._engine_cache_ready([CUDA, CPU]) and not cache.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.symlink_to(elsewhere, target_is_directory=True)
    try:
        assert not runner._engine_cache_ready([TENSORRT, CUDA, CPU])
        assert list(elsewhere.iterdir()) == []
    finally:
        cache.unlink()
    assert runner._engine_cache_ready([TENSORRT, CUDA, CPU]) and runner.cache_dir.is_dir()
    runner._engine_cache = True
    assert runner._provider_options(TENSORRT)["trt_engine_cache_path"] == str(runner.cache_dir)
    runner._engine_cache = False
    assert runner._provider_options(TENSORRT) == {"device_id": "0"}


def test_one_onnxruntime_wheel_at_a_time():
    assert installed_ort_distributions() == ["onnxruntime"]  # this test environment: the [test] extra
    check_ort_install(["onnxruntime"])
    check_ort_install(["onnxruntime-gpu"])
    with pytest.raises(PackageClashError) as err:
        check_ort_install(["onnxruntime", "onnxruntime-gpu"])
    assert err.value.exit_code == ExitCode.MISSING_PACKAGE and "\n" not in str(err.value)
    assert str(err.value).endswith(ORT_REPAIR)


def test_missing_onnxruntime_names_both_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError) as err:
        import_onnxruntime("parity")
    assert str(err.value) == ("parity needs the Python package 'onnxruntime', which is not installed: "
                              "pip install 'fornet-deploy[cpu]' (or 'fornet-deploy[gpu]', never both)")


def test_both_wheels_installed_is_one_line_at_first_use(tmp_path, tiny_bundle, monkeypatch):
    # What pip leaves after `pip install onnxruntime-gpu` next to onnxruntime: a second
    # distribution owning the same import package (its metadata is all the check reads).
    info = tmp_path / "site" / "onnxruntime_gpu-1.24.4.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.24.4\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    result = run_cli("bench", "--bundle", str(tiny_bundle), "--iterations", "1", "--warmup", "0")
    assert result.returncode == ExitCode.MISSING_PACKAGE
    assert_one_line_error(result, "both onnxruntime and onnxruntime-gpu are installed", ORT_REPAIR)


def test_format_table_resolution(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert resolve_format(bundle, "ort", "fp32", "cpu").artifact == "model.cpu.onnx"  # the CPU tail's graph
    assert resolve_format(bundle, "ort", "fp32", "cuda").artifact == "model.onnx"
    with pytest.raises(FornetError, match="fornet-deploy calibrate"):
        resolve_format(bundle, "ort", "int8", "cpu")
    with pytest.raises(OptionError, match="--runtime trt --precision fp16 does not run on --device cpu "
                                          r"\(use --device cuda or jetson\)"):
        resolve_format(bundle, "trt", "fp16", "cpu")
    assert [(f.runtime, f.precision, f.artifact) for f in available_formats(bundle, "cpu")] == [
        ("torch", "fp32", "checkpoint.safetensors"), ("ort", "fp32", "model.cpu.onnx"), ("ort", "fp32", "model.onnx"),
        ("openvino", "fp32", "model.cpu.onnx"), ("openvino", "fp32", "model.onnx"),
        ("openvino", "bf16", "model.cpu.onnx"), ("openvino", "bf16", "model.onnx")]
    assert len({(f.runtime, f.precision, f.artifact) for f in FORMATS}) == len(FORMATS)


def test_cuda_requests_fail_cleanly_without_a_gpu(tiny_bundle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    with pytest.raises(HardwareError):
        load_runner(tiny_bundle, "torch", "fp32", "cuda").activate()


def test_torch_fp32_on_cuda_turns_cudnn_tf32_off_and_restores_it():
    import torch

    from fornet_deploy.runtimes.torch_runner import cudnn_tf32

    cudnn = torch.backends.cudnn
    new_api = hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    read = (lambda: cudnn.conv.fp32_precision) if new_api else (lambda: cudnn.allow_tf32)
    before = read()
    with cudnn_tf32(False):
        assert read() in ("ieee", False)
    assert read() == before
    with cudnn_tf32(None):
        assert read() == before
    with cudnn_tf32(True):
        assert read() in ("tf32", True)
    assert read() == before


@pytest.mark.gpu
def test_torch_fp32_on_cuda_is_the_cpu_reference(tiny_bundle):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    batch = np.random.default_rng(0).standard_normal((1, 3, 128, 256), dtype=np.float32)
    with load_runner(tiny_bundle, "torch", "fp32", device="cpu") as cpu, \
            load_runner(tiny_bundle, "torch", "fp32", device="cuda") as gpu:
        reference, candidate = cpu.infer(batch), gpu.infer(batch)
    assert np.abs(reference["logits"] - candidate["logits"]).max() < 1e-3
