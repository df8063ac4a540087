"""TensorRT runner: metadata checks before deserializing, buffer handling against a
stand-in engine and device memory, and (marked ``tensorrt``/``gpu``) a real engine built
from a tiny ONNX and compared with PyTorch."""

from __future__ import annotations

import enum
import json
import sys
import types

import numpy as np
import pytest
from fake_cudart import FakeCudart

from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import LABELS, LOGITS
from fornet_deploy.errors import FornetError, HardwareError, MissingDependencyError
from fornet_deploy.io import sha256_bytes
from fornet_deploy.runtimes.trt import cuda as trt_cuda
from fornet_deploy.runtimes.trt.metadata import check_engine_metadata, engine_metadata_path, read_engine_metadata
from fornet_deploy.runtimes.trt.runner import TrtRunner

ENGINE_BYTES = b"serialized engine"
META = {
    "engine": "model.fp16.engine",
    "engine_sha256": sha256_bytes(ENGINE_BYTES),
    "tensorrt_version": "10.3.0",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "precision": "fp16",
    "strongly_typed": True,
    "profile": {"input": "image", "min": [1, 3, 64, 64], "opt": [1, 3, 64, 128], "max": [2, 3, 128, 256]},
    "source_onnx": "model.fp16.onnx",
    "dla_core": None,
}


def write_engine(tmp_path, meta=META, data=ENGINE_BYTES):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(data)
    engine_metadata_path(engine).write_text(json.dumps(meta))
    return engine


# --- metadata (pure) ------------------------------------------------------------------


def test_matching_metadata_passes():
    check_engine_metadata(META, "10.3.0", "Orin", "8.7")


def test_engine_from_another_tensorrt_is_refused():
    forged = {**META, "tensorrt_version": "10.3.0"}
    with pytest.raises(FornetError) as err:
        check_engine_metadata(forged, "11.4.0", "Orin", "8.7")
    assert str(err.value) == (
        "engine built with TensorRT 10.3.0, this machine has 11.4.0: rebuild with `fornet-deploy build-trt`"
    )


@pytest.mark.parametrize("gpu, capability", [("NVIDIA A100-SXM4-80GB", "8.0"), ("Orin", "8.6"), ("Xavier", "8.7")])
def test_engine_from_another_gpu_is_refused(gpu, capability):
    with pytest.raises(FornetError) as err:
        check_engine_metadata(META, "10.3.0", gpu, capability)
    assert str(err.value) == (
        f"engine built on Orin (compute capability 8.7), this machine has {gpu} (compute capability "
        f"{capability}): rebuild with `fornet-deploy build-trt`"
    )


def test_missing_or_corrupt_metadata(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    with pytest.raises(FornetError, match="does not exist"):
        read_engine_metadata(engine)
    engine.write_bytes(ENGINE_BYTES)
    with pytest.raises(FornetError, match="has no metadata file model.fp16.engine.json.*build-trt"):
        TrtRunner(engine)
    engine_metadata_path(engine).write_text('{"tensorrt_version": ')
    with pytest.raises(FornetError, match="is not valid JSON"):
        TrtRunner(engine)
    engine_metadata_path(engine).write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    with pytest.raises(FornetError, match="lacks gpu_name, compute_capability, engine_sha256, precision, profile"):
        TrtRunner(engine)
    engine_metadata_path(engine).write_text(json.dumps({**META, "profile": {"min": [1, 3, 64, 64]}}))
    with pytest.raises(FornetError, match="lacks profile input/max/min/opt"):
        TrtRunner(engine)
    engine_metadata_path(engine).write_text("[1, 2]")
    with pytest.raises(FornetError, match="lacks tensorrt_version"):
        TrtRunner(engine)


def test_spec_and_info_come_from_the_metadata(tmp_path):
    runner = TrtRunner(write_engine(tmp_path))
    spec = runner.input_spec()
    assert (spec.name, spec.shape) == ("image", (None, 3, None, None))
    assert (spec.min_shape, spec.max_shape) == ((1, 3, 64, 64), (2, 3, 128, 256))
    info = runner.info().to_dict()
    assert info["backend"] == "tensorrt" and info["precision"] == "fp16" and info["device"] == "Orin"
    assert info["tensorrt_version"] == "10.3.0" and info["compute_capability"] == "8.7"


def test_activation_without_tensorrt_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fornet-deploy\[tensorrt\]'"):
        TrtRunner(write_engine(tmp_path)).activate()


def test_activation_without_cuda_python_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(MissingDependencyError, match=r"'cuda-python'.*fornet-deploy\[tensorrt\]"):
        TrtRunner(write_engine(tmp_path)).activate()


# --- the runner against a stand-in engine and CUDA ------------------------------------


# Module attributes of the stand-in that are the tests' own, not TensorRT's (test_trt_bindings.py
# checks every other public name of the stand-in against the real bindings of its version).
TEST_HOOKS = {"events", "cudart"}


def fake_tensorrt(version="10.3.0", deserialize_ok=True):
    """Engine with an FP16 input, FP16 logits = 2 * image[:, :2] and int64 labels = argmax,
    computed from the device memory of the installed FakeCudart (``trt.cudart``)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.events = []
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", ["ONELINE", "JSON"])
    trt.nptype = lambda dtype: dtype

    class ILogger:
        Severity = enum.IntEnum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

        def __init__(self):
            pass

    class Context:
        def __init__(self):
            self._addresses, self._shape = {}, None

        def set_input_shape(self, name, shape):
            self._shape = tuple(shape)
            return self._shape[3] <= 128  # this "engine" refuses shapes its metadata allows

        def get_tensor_shape(self, name):
            n, _, h, w = self._shape
            return (n, 2, h, w) if name == LOGITS else (n, h, w)

        def set_tensor_address(self, name, address):
            self._addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            memory = trt.cudart.device_memory
            assert stream_handle in trt.cudart.streams
            trt.events.append("execute")
            count = int(np.prod(self._shape))
            image = np.frombuffer(memory[self._addresses["image"]][: count * 2], np.float16).reshape(self._shape)
            logits = (2 * image[:, :2]).astype(np.float16)
            labels = logits.argmax(1).astype(np.int64)
            for name, value in ((LOGITS, logits), (LABELS, labels)):
                memory[self._addresses[name]][: value.nbytes] = value.tobytes()
            return True

    class Inspector:
        def get_engine_information(self, format):
            assert format == trt.LayerInformationFormat.JSON
            return json.dumps({"Layers": [{"Name": "conv", "LayerType": "CaskConvolution"}]})

    class Engine:
        num_io_tensors = 3
        _io = {"image": (trt.TensorIOMode.INPUT, np.float16), LOGITS: (trt.TensorIOMode.OUTPUT, np.float16),
               LABELS: (trt.TensorIOMode.OUTPUT, np.int64)}

        def get_tensor_name(self, i):
            return list(self._io)[i]

        def get_tensor_mode(self, name):
            return self._io[name][0]

        def get_tensor_dtype(self, name):
            return self._io[name][1]

        def create_execution_context(self):
            return Context()

        def create_engine_inspector(self):
            return Inspector()

    class Runtime:
        def __init__(self, logger):
            self._logger = logger

        def deserialize_cuda_engine(self, data):
            trt.events.append(("deserialize", bytes(data), getattr(self, "DLA_core", None), trt.cudart.current))
            if not deserialize_ok:
                self._logger.log(ILogger.Severity.ERROR, "plan was built for another platform")
                return None
            return Engine()

    trt.ILogger, trt.Runtime = ILogger, Runtime
    trt.ICudaEngine, trt.IExecutionContext, trt.EngineInspector = Engine, Context, Inspector
    return trt


@pytest.fixture
def fake(monkeypatch):
    def install(devices=(("Orin", 8, 7),), **kwargs):
        trt = fake_tensorrt(**kwargs)
        trt.cudart = FakeCudart(devices=devices)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_cuda, "import_cudart", lambda purpose: trt.cudart)
        return trt

    return install


def test_inference_over_two_shapes(tmp_path, fake):
    trt = fake()
    cudart = trt.cudart
    with TrtRunner(write_engine(tmp_path)) as runner:
        assert runner.last_timings() is None
        for shape in [(1, 3, 64, 128), (2, 3, 128, 128), (1, 3, 64, 64)]:
            batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            out = runner(batch)
            expected = (2 * batch[:, :2].astype(np.float16)).astype(np.float16)
            assert set(out) == {LOGITS, LABELS}
            assert out[LOGITS].dtype == np.float32 and out[LOGITS].shape == (shape[0], 2) + shape[2:]
            np.testing.assert_array_equal(out[LOGITS], expected.astype(np.float32))
            assert out[LABELS].dtype == np.int64
            np.testing.assert_array_equal(out[LABELS], expected.argmax(1))
            assert runner.last_inference_time is not None
            # four events a run: input copy, execute, output copies (0.25 ms per step in the stand-in)
            assert runner.last_timings() == {"h2d_ms": 0.25, "compute_ms": 0.25, "d2h_ms": 0.25}
        runner.synchronize()
        # pinned host and device buffers: one per tensor, grown once for the larger shape
        assert cudart.calls.count("cudaMallocHost") == cudart.calls.count("cudaMalloc") == 6
        assert cudart.calls.count("cudaFreeHost") == cudart.calls.count("cudaFree") == 3
        with pytest.raises(FornetError, match="TensorRT rejected input shape"):
            runner(np.zeros((1, 3, 64, 256), np.float32))
        with pytest.raises(FornetError, match="above the artefact's maximum"):
            runner(np.zeros((1, 3, 64, 512), np.float32))
    assert trt.events[0] == ("deserialize", ENGINE_BYTES, None, 0)
    assert cudart.leaks() == {"device": 0, "host": 0, "streams": 0, "events": 0}  # all freed on deactivate


def test_outputs_are_copied_only_when_asked(tmp_path, fake):
    trt = fake()
    cudart = trt.cudart
    batch = np.ones((1, 3, 64, 128), np.float32)
    with TrtRunner(write_engine(tmp_path)) as runner:
        full = runner(batch)
        cudart.calls.clear()
        labels = runner(batch, outputs=(LABELS,))
        assert set(labels) == {LABELS} and np.array_equal(labels[LABELS], full[LABELS])
        assert cudart.calls.count("cudaMemcpyAsync(DeviceToHost)") == 1  # not the logits
        assert cudart.calls.count("cudaMemcpyAsync(HostToDevice)") == 1
        # results are fresh arrays: the next run reuses the pinned buffers underneath
        kept = runner(batch)[LOGITS]
        runner(np.zeros_like(batch))
        np.testing.assert_array_equal(kept, full[LOGITS])
        assert runner.engine_information()["Layers"][0]["LayerType"] == "CaskConvolution"


def test_the_gpu_index_reaches_cuda(tmp_path, fake):
    trt = fake(devices=(("Other GPU", 9, 0), ("Orin", 8, 7)))
    with TrtRunner(write_engine(tmp_path), device=1) as runner:
        runner(np.ones((1, 3, 64, 128), np.float32))
        assert runner.info().to_dict()["gpu_index"] == 1
    assert trt.events[0][-1] == 1  # deserialized with GPU 1 current
    assert set(c for c in trt.cudart.calls if c.startswith("cudaSetDevice")) == {"cudaSetDevice(1)"}
    with pytest.raises(HardwareError, match="asked for GPU 2, this machine has 2"):
        TrtRunner(write_engine(tmp_path), device=2).activate()


def test_checks_run_before_deserializing(tmp_path, fake):
    trt = fake(version="11.4.0")
    with pytest.raises(FornetError, match="built with TensorRT 10.3.0, this machine has 11.4.0"):
        TrtRunner(write_engine(tmp_path)).activate()
    assert trt.events == []

    trt = fake(devices=(("NVIDIA A100-SXM4-80GB", 8, 0),))
    with pytest.raises(FornetError, match="built on Orin .* this machine has NVIDIA A100-SXM4-80GB"):
        TrtRunner(write_engine(tmp_path)).activate()

    trt = fake()
    replaced = write_engine(tmp_path, data=b"an engine trtexec wrote over ours")
    with pytest.raises(FornetError, match="does not match its metadata file"):
        TrtRunner(replaced).activate()
    assert trt.events == [] and trt.cudart.leaks() == {"device": 0, "host": 0, "streams": 0, "events": 0}


def test_failed_deserialization_and_dla(tmp_path, fake):
    trt = fake(deserialize_ok=False)
    runner = TrtRunner(write_engine(tmp_path, meta={**META, "dla_core": 1}))
    with pytest.raises(FornetError, match="could not load model.fp16.engine: plan was built for another platform"):
        runner.activate()
    assert trt.events == [("deserialize", ENGINE_BYTES, 1, 0)] and not runner.is_active


def test_engine_inputs_must_match_the_metadata(tmp_path, fake):
    trt = fake()
    meta = {**META, "profile": {**META["profile"], "input": "pixels"}}
    with pytest.raises(FornetError, match=r"has inputs \['image'\], its metadata says 'pixels'"):
        TrtRunner(write_engine(tmp_path, meta=meta)).activate()
    assert trt.cudart.leaks()["streams"] == 0


# --- real TensorRT (deselected by default) --------------------------------------------


def tiny_bundle(tmp_path, export_shape=(1, 3, 64, 128)):
    """A bundle holding a small conv net exported like FoR-Net: input ``image``, outputs
    ``logits`` and ``labels``, dynamic N/H/W."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.classifier = torch.nn.Conv2d(8, 5, 1)

        def forward(self, image):
            logits = torch.nn.functional.interpolate(
                self.classifier(torch.relu(self.conv(image))), scale_factor=2.0, mode="bilinear"
            )
            return logits, logits.argmax(1)

    torch.manual_seed(0)
    model = Tiny().eval()
    bundle = Bundle.create(tmp_path / "bundle", preprocessing={})
    torch.onnx.export(
        model, torch.zeros(export_shape), str(bundle.root / "model.onnx"), dynamo=False,
        input_names=["image"], output_names=[LOGITS, LABELS], opset_version=17,
        dynamic_axes={
            "image": {0: "n", 2: "h", 3: "w"}, LOGITS: {0: "n", 2: "h", 3: "w"}, LABELS: {0: "n", 1: "h", 2: "w"}
        },
    )
    bundle.record("model.onnx", kind="onnx", input_shape=[None, 3, None, None], export_shape=list(export_shape))
    return bundle, model


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_matches_torch(tmp_path):
    import torch

    from fornet_deploy.build.trt import BuildConfig, build_engine

    bundle, model = tiny_bundle(tmp_path)
    config = BuildConfig(precision="fp32", min_shape=(1, 3, 32, 32), max_shape=(2, 3, 128, 256),
                         timing_cache=tmp_path / "timing.cache")
    meta = build_engine(bundle.root, config)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    with TrtRunner(bundle.path(meta["engine"])) as runner:
        for shape in [(1, 3, 64, 128), (2, 3, 96, 160), (1, 3, 32, 32)]:
            batch = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            out = runner(batch)
            with torch.no_grad():
                logits, _ = model(torch.from_numpy(batch))
            np.testing.assert_allclose(out[LOGITS], logits.numpy(), atol=1e-2, rtol=1e-2)
            assert (out[LABELS] == logits.argmax(1).numpy()).mean() > 0.99


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_legacy_fp16_engine(tmp_path):
    import tensorrt

    from fornet_deploy.build.trt import BuildConfig, build_engine, trt_major

    if trt_major(tensorrt.__version__) > 10:
        pytest.skip("weak typing and builder precision flags exist on TensorRT 10.x only")
    bundle, model = tiny_bundle(tmp_path)
    meta = build_engine(bundle.root, BuildConfig(precision="fp16", legacy_calibrator=True, fp32_scopes=("/conv/",)))
    assert meta["fp32_layers"] >= 1 and not meta["strongly_typed"]
    with TrtRunner(bundle.path(meta["engine"])) as runner:
        out = runner(np.zeros((1, 3, 64, 128), np.float32))
    assert out[LOGITS].shape == (1, 5, 64, 128)
