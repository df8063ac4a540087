import numpy as np
import pytest

from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import FORMATS
from fornet_deploy.errors import FornetError, HardwareError
from fornet_deploy.runtimes.ort_runner import CPU, CUDA, TENSORRT, select_providers
from fornet_deploy.runtimes.registry import available_formats, load_runner, resolve_format


def test_ort_matches_torch_on_the_same_batch(tiny_bundle):
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 256)).astype(np.float32)
    with load_runner(tiny_bundle, "torch", "fp32", "cpu", topk="threshold") as torch_runner, \
            load_runner(tiny_bundle, "ort", "fp32", "cpu") as ort_runner:
        a, b = torch_runner(x), ort_runner(x)
    assert np.abs(a["logits"] - b["logits"]).max() < 1e-3
    assert np.array_equal(a["topk_mask"], b["topk_mask"])
    assert ort_runner.last_inference_time > 0
    assert b.keys() == {"logits", "labels", "importance", "topk_mask"}


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_wrong_input_shape_channels_dtype(tiny_bundle, runtime):
    with load_runner(tiny_bundle, runtime, "fp32", "cpu") as runner:
        with pytest.raises(FornetError, match="3"):
            runner(np.zeros((1, 1, 64, 64), np.float32))
        with pytest.raises(FornetError, match="float32"):
            runner(np.zeros((1, 3, 64, 64), np.float64))
        with pytest.raises(FornetError, match="stride 32"):
            runner(np.zeros((1, 3, 60, 64), np.float32))
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
    with pytest.raises(HardwareError, match=r"fornet-deploy\[gpu\]"):
        select_providers("cuda", [CPU])


def test_format_table_resolution(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    assert resolve_format(bundle, "ort", "fp32", "cpu").artifact == "model.onnx"
    with pytest.raises(FornetError, match="fornet-deploy calibrate"):
        resolve_format(bundle, "ort", "int8", "cpu")
    with pytest.raises(FornetError, match="does not run on cpu"):
        resolve_format(bundle, "trt", "fp16", "cpu")
    assert [(f.runtime, f.precision) for f in available_formats(bundle, "cpu")] == [("torch", "fp32"), ("ort", "fp32")]
    assert len({(f.runtime, f.precision, f.artifact) for f in FORMATS}) == len(FORMATS)


def test_cuda_requests_fail_cleanly_without_a_gpu(tiny_bundle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    with pytest.raises(HardwareError):
        load_runner(tiny_bundle, "torch", "fp32", "cuda").activate()
