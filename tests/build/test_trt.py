"""build-trt decisions (pure, run everywhere) and the TensorRT adapter against a stand-in
``tensorrt`` module that has exactly the Python names each release binds (read in
NVIDIA/TensorRT ``python/src`` on release/10.3, release/10.16 and main = 11.x): a call to a
name 11.x removed fails here as it would there. Real builds are marked ``tensorrt``."""

from __future__ import annotations

import enum
import json
import sys
import types

import numpy as np
import pytest
from fake_cudart import FakeCudart

from fornet_deploy.build.trt import (
    BuildConfig,
    LayerView,
    Profile,
    build_engine,
    calibration_reason,
    check_calibration_shape,
    dla_supported,
    engine_metadata,
    engine_name,
    fp32_pins,
    nchw,
    plan_build,
    select_source_graph,
    trt_major,
    trt_version_tuple,
)
from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.trt_calibrator import cache_sidecar_path
from fornet_deploy.contract import FP32_SCOPES as DEFAULT_FP32_SCOPES
from fornet_deploy.errors import FornetError, HardwareError, MissingDependencyError
from fornet_deploy.io import sha256_file
from fornet_deploy.runtimes.trt import cuda as trt_cuda
from fornet_deploy.runtimes.trt.metadata import check_engine_metadata, read_engine_metadata

EXPORT_SHAPE = (1, 3, 64, 128)
TRT_10_3, TRT_10_X, TRT_11 = "10.3.0", "10.16.0.72", "11.1.0"


# --- shapes and profiles --------------------------------------------------------------


def test_nchw_adds_batch_and_channels():
    assert nchw((512, 1024)) == (1, 3, 512, 1024)
    assert nchw((64, 128), batch=4) == (4, 3, 64, 128)


def test_profile_rules():
    assert Profile((1, 3, 64, 64), (1, 3, 64, 128), (2, 3, 128, 256)).static is False
    assert Profile([1, 3, 64, 64], [1, 3, 64, 64], [1, 3, 64, 64]).static  # lists are taken as shapes
    with pytest.raises(FornetError, match="min <= opt <= max"):
        Profile((1, 3, 128, 128), (1, 3, 64, 64), (1, 3, 256, 256))
    with pytest.raises(FornetError, match="min <= opt <= max"):
        Profile((1, 3, 64, 64), (4, 3, 64, 64), (2, 3, 64, 64))
    assert Profile((1, 3, 33, 47), (1, 3, 360, 480), (1, 3, 1080, 1920)).tag() == "1x3x33x47-1x3x360x480-1x3x1080x1920"
    with pytest.raises(FornetError, match="larger than the supported 8192"):
        Profile((1, 3, 64, 64), (1, 3, 64, 80), (1, 3, 64, 8200))
    with pytest.raises(FornetError, match="1 channels, FoR-Net takes 3"):
        Profile((1, 1, 64, 64), (1, 1, 64, 64), (1, 1, 64, 64))
    with pytest.raises(FornetError, match="not NCHW"):
        Profile((1, 3, 64), (1, 3, 64), (1, 3, 64))


def test_config_profile_defaults_to_the_export_shape():
    assert BuildConfig().profile(EXPORT_SHAPE) == Profile(EXPORT_SHAPE, EXPORT_SHAPE, EXPORT_SHAPE)
    opt = (1, 3, 128, 256)
    assert BuildConfig(opt_shape=opt).profile(EXPORT_SHAPE) == Profile(opt, opt, opt)
    dynamic = BuildConfig(min_shape=(1, 3, 64, 64), max_shape=(2, 3, 256, 512)).profile(EXPORT_SHAPE)
    assert (dynamic.min, dynamic.opt, dynamic.max) == ((1, 3, 64, 64), EXPORT_SHAPE, (2, 3, 256, 512))
    with pytest.raises(FornetError, match="no input shape"):
        BuildConfig().profile(None)


# --- versions, graphs, plans ----------------------------------------------------------


@pytest.mark.parametrize("version, major", [(TRT_10_3, 10), (TRT_10_X, 10), (TRT_11, 11), ("10", 10), ("8.6.1.6", 8)])
def test_trt_major(version, major):
    assert trt_major(version) == major


def test_trt_major_rejects_garbage():
    with pytest.raises(FornetError, match="cannot read a TensorRT version"):
        trt_major("ten")
    assert trt_version_tuple("10.3.0.30") == (10, 3, 0, 30) and trt_version_tuple("11.4.1") == (11, 4, 1)
    assert trt_version_tuple("10.16.0.72+cuda12.9") == (10, 16, 0, 72)


@pytest.mark.parametrize("version, dla", [
    ("10.0.1", True), ("10.3.0.30", True), ("10.7.0.23", True), ("10.8.0.43", False), ("10.16.1.11", False),
    ("11.0.0.114", False), ("11.3.0", False), ("11.4.0.106", False), ("11.4.1", True), ("11.5.0", True),
    ("12.0", True), ("9.2.0", False), ("8.6.1.6", False),
])
def test_dla_releases(version, dla):
    assert dla_supported(version) is dla


def make_bundle(tmp_path, *graphs):
    bundle = Bundle.create(tmp_path / "bundle", preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3})
    for name in graphs:
        (bundle.root / name).write_bytes(b"onnx bytes of " + name.encode())
        # as fornet_deploy.export.onnx records a dynamic export
        shapes = {"input_shape": [None, 3, None, None], "export_shape": list(EXPORT_SHAPE)}
        meta = {"kind": "onnx", **shapes} if name == "model.onnx" else {"kind": "onnx"}
        bundle.record(name, **meta)
    return bundle


@pytest.mark.parametrize(
    "precision, legacy, graph",
    [
        ("fp32", False, "model.onnx"),
        ("fp16", False, "model.fp16.onnx"),
        ("int8", False, "model.int8.qdq.onnx"),
        ("fp16", True, "model.onnx"),
        ("int8", True, "model.onnx"),
    ],
)
def test_select_source_graph(tmp_path, precision, legacy, graph):
    bundle = make_bundle(tmp_path, "model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx")
    assert select_source_graph(bundle, precision, legacy) == graph


@pytest.mark.parametrize(
    "precision, legacy, missing, command",
    [
        ("fp16", False, "model.fp16.onnx", "`fornet-deploy export --precision fp16`"),
        ("int8", False, "model.int8.qdq.onnx", "`fornet-deploy calibrate`"),
        ("fp32", False, "model.onnx", "`fornet-deploy export`"),
        ("int8", True, "model.onnx", "`fornet-deploy export`"),
    ],
)
def test_missing_graph_names_the_command_that_makes_it(tmp_path, precision, legacy, missing, command):
    bundle = make_bundle(tmp_path)
    with pytest.raises(FornetError) as err:
        select_source_graph(bundle, precision, legacy)
    assert f"has no {missing}: make it with {command}" in str(err.value)


def test_unknown_precision(tmp_path):
    with pytest.raises(FornetError, match="unknown precision 'bf16'"):
        select_source_graph(make_bundle(tmp_path, "model.onnx"), "bf16", False)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_plan_on_10x(precision):
    for version in (TRT_10_3, TRT_10_X):
        plan = plan_build(BuildConfig(precision=precision), version, EXPORT_SHAPE)
        assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",)
        assert plan.builder_flags == () and not plan.use_calibrator
        assert plan.fp32_scopes == ()  # precision comes from the graph only
        assert plan.source_graph == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.qdq.onnx"}[
            precision
        ]


@pytest.mark.parametrize("version", [TRT_10_3, TRT_10_X, TRT_11])
@pytest.mark.parametrize("config", [
    BuildConfig(precision="fp32"), BuildConfig(precision="fp16"), BuildConfig(precision="int8"),
    BuildConfig(precision="fp16", legacy_calibrator=True),
    BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash="abc"),
], ids=["fp32", "fp16", "int8", "legacy-fp16", "legacy-int8"])
def test_every_plan_clears_tf32_and_keeps_layer_details(config, version):
    if config.legacy_calibrator and version == TRT_11:
        pytest.skip("no legacy builds on TensorRT 11")
    plan = plan_build(config, version, EXPORT_SHAPE)
    assert plan.tf32 is False and "TF32" not in plan.builder_flags
    assert plan.profiling_verbosity == "DETAILED"
    assert plan_build(BuildConfig(precision=config.precision, tf32=True), version, EXPORT_SHAPE).tf32 is True


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_plan_on_11(precision):
    plan = plan_build(BuildConfig(precision=precision), TRT_11, EXPORT_SHAPE)
    # Every TensorRT 11 network is strongly typed; the flag is deprecated and not passed.
    assert plan.strongly_typed and plan.network_flags == () and plan.builder_flags == ()


@pytest.mark.parametrize("version", [TRT_10_3, TRT_10_X])
def test_legacy_plans_on_10x(version):
    fp16 = plan_build(BuildConfig(precision="fp16", legacy_calibrator=True), version, EXPORT_SHAPE)
    assert fp16.source_graph == "model.onnx" and not fp16.strongly_typed and fp16.network_flags == ()
    assert fp16.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and not fp16.use_calibrator
    assert fp16.fp32_scopes == DEFAULT_FP32_SCOPES == ("/focus/selector/", "/focus/topk/")

    config = BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash="abc")
    int8 = plan_build(config, version, EXPORT_SHAPE)
    assert int8.builder_flags == ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS") and int8.use_calibrator

    no_pins = plan_build(BuildConfig(precision="fp16", legacy_calibrator=True, fp32_scopes=()), version, EXPORT_SHAPE)
    assert no_pins.builder_flags == ("FP16",) and no_pins.fp32_scopes == ()


def test_legacy_is_rejected_on_11():
    config = BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash="abc")
    with pytest.raises(FornetError) as err:
        plan_build(config, TRT_11, EXPORT_SHAPE)
    assert str(err.value).startswith(
        "--legacy-calibrator needs TensorRT 10.x; TensorRT 11 removed implicit INT8 calibration, use the Q/DQ graph"
    )


def test_other_plan_errors():
    with pytest.raises(FornetError, match="fp32 needs no precision flags"):
        plan_build(BuildConfig(precision="fp32", legacy_calibrator=True), TRT_10_3, EXPORT_SHAPE)
    with pytest.raises(FornetError, match="needs the calibration set"):
        plan_build(BuildConfig(precision="int8", legacy_calibrator=True), TRT_10_3, EXPORT_SHAPE)
    with pytest.raises(FornetError, match="needs TensorRT 10 or newer, this machine has 8.6.1"):
        plan_build(BuildConfig(), "8.6.1", EXPORT_SHAPE)
    with pytest.raises(FornetError, match="workspace must be at least 1 MB"):
        plan_build(BuildConfig(workspace_mb=0), TRT_10_3, EXPORT_SHAPE)
    assert plan_build(BuildConfig(workspace_mb=512), TRT_10_3, EXPORT_SHAPE).workspace_bytes == 512 << 20


def test_dla_rules():
    plan = plan_build(BuildConfig(precision="fp16", dla_core=1), TRT_10_3, EXPORT_SHAPE)
    assert plan.dla_core == 1 and plan.builder_flags == ("GPU_FALLBACK",) and plan.strongly_typed
    legacy = BuildConfig(precision="int8", dla_core=0, legacy_calibrator=True, calibration_set_hash="abc")
    assert plan_build(legacy, TRT_10_3, EXPORT_SHAPE).builder_flags == (
        "FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK",
    )
    for version in (TRT_11, TRT_10_X, "11.4.0.106"):
        with pytest.raises(FornetError, match=r"DLA builds need TensorRT 10.0-10.7 \(JetPack 6\) or 11.4.1"):
            plan_build(BuildConfig(precision="fp16", dla_core=0), version, EXPORT_SHAPE)
    assert plan_build(BuildConfig(precision="fp16", dla_core=0), "11.4.1", EXPORT_SHAPE).dla_core == 0
    with pytest.raises(FornetError, match="DLA runs fp16 or int8 only"):
        plan_build(BuildConfig(precision="fp32", dla_core=0), TRT_10_3, EXPORT_SHAPE)
    with pytest.raises(FornetError, match="DLA needs a static input shape"):
        plan_build(BuildConfig(precision="fp16", dla_core=0, max_shape=(2, 3, 64, 128)), TRT_10_3, EXPORT_SHAPE)
    with pytest.raises(FornetError, match="DLA core must be 0 or more"):
        plan_build(BuildConfig(precision="fp16", dla_core=-1), TRT_10_3, EXPORT_SHAPE)


def test_fp32_pins_touch_only_float_tensors_in_scope():
    layers = [
        LayerView("/backbone/stem/Conv", ("HALF",), ("HALF",)),
        LayerView("/focus/selector/score/Conv", ("FLOAT",), ("FLOAT",)),
        LayerView("/focus/selector/Sigmoid", ("FLOAT",), ("FLOAT",)),
        LayerView("/focus/topk/GreaterOrEqual", ("FLOAT", "FLOAT"), ("BOOL",)),
        LayerView("/focus/topk/Shape", ("FLOAT",), ("INT64",)),
        LayerView("/focus/topk/ReduceSum", ("INT64",), ("INT64",)),
        LayerView("/focus/topk/Constant_3", (), ("FLOAT",)),
        LayerView("/focus/topk/Where", ("BOOL", "FLOAT", "NONE"), ("FLOAT", "INT32")),
    ]
    pins = {layers[p.index].name: (p.set_precision, p.outputs) for p in fp32_pins(layers, DEFAULT_FP32_SCOPES)}
    assert pins == {
        "/focus/selector/score/Conv": (True, (0,)),
        "/focus/selector/Sigmoid": (True, (0,)),
        "/focus/topk/GreaterOrEqual": (True, ()),  # compares in FP32, writes a bool
        "/focus/topk/Shape": (True, ()),
        "/focus/topk/Constant_3": (False, (0,)),
        "/focus/topk/Where": (True, (0,)),
    }
    assert fp32_pins(layers, ()) == []


def test_engine_names():
    static = Profile(EXPORT_SHAPE, EXPORT_SHAPE, EXPORT_SHAPE)
    assert engine_name("fp16", static, default_shape=EXPORT_SHAPE) == "model.fp16.engine"
    assert engine_name("int8", static, default_shape=list(EXPORT_SHAPE), legacy=True, dla_core=0) == (
        "model.int8.legacy.dla0.engine"
    )
    other = Profile((2, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64))
    assert engine_name("fp32", other, default_shape=EXPORT_SHAPE) == "model.fp32.2x3x64x64.engine"
    dynamic = Profile((1, 3, 64, 64), EXPORT_SHAPE, (2, 3, 128, 256))
    assert engine_name("fp16", dynamic, default_shape=EXPORT_SHAPE) == (
        "model.fp16.1x3x64x64-1x3x64x128-2x3x128x256.engine"
    )


def test_engine_metadata_is_what_the_runner_checks():
    plan = plan_build(BuildConfig(precision="fp16"), TRT_10_3, EXPORT_SHAPE)
    meta = engine_metadata(
        plan, engine="model.fp16.engine", engine_sha256="e" * 64, input_name="image", gpu_name="Orin",
        compute_capability="8.7", source_sha256="s" * 64, fp32_layers=0, build_seconds=12.34,
    )
    assert meta["tensorrt_version"] == TRT_10_3 and meta["precision"] == "fp16" and meta["strongly_typed"]
    assert meta["profile"] == {"input": "image", "min": list(EXPORT_SHAPE), "opt": list(EXPORT_SHAPE),
                               "max": list(EXPORT_SHAPE)}
    assert meta["source_onnx"] == "model.fp16.onnx" and meta["source_onnx_sha256"] == "s" * 64
    assert meta["dla_core"] is None and meta["build_seconds"] == 12.3 and meta["built"]
    assert meta["tf32"] is False and meta["profiling_verbosity"] == "DETAILED"
    check_engine_metadata(json.loads(json.dumps(meta)), TRT_10_3, "Orin", "8.7")


def test_calibration_reason(tmp_path):
    cache = tmp_path / "model.int8.calib"
    key = {"onnx_sha256": "a", "calibration_set": "b", "preprocessing": None}
    assert "no calibration cache" in calibration_reason(cache, key, have_batches=True)
    with pytest.raises(FornetError, match="needs the calibration images"):
        calibration_reason(cache, key, have_batches=False)


def test_calibration_shape_must_fit_the_network_and_the_profile():
    static = Profile((1, 3, 512, 1024), (1, 3, 512, 1024), (1, 3, 512, 1024))
    check_calibration_shape((1, 3, 512, 1024), [1, 3, 512, 1024], static)
    check_calibration_shape((4, 3, 512, 1024), [None, 3, None, None], static)  # the batch is TensorRT's business
    with pytest.raises(FornetError) as err:  # Cityscapes at full size into a 512x1024 export
        check_calibration_shape((1, 3, 1024, 2048), [1, 3, 512, 1024], static)
    assert str(err.value).startswith("calibration images preprocess to 3x1024x2048 but model.onnx takes 3x512x1024")
    with pytest.raises(FornetError, match=r"3x1024x2048, outside the engine's profile 3x512x1024 to 3x512x1024"):
        check_calibration_shape((1, 3, 1024, 2048), [None, 3, None, None], static)
    dynamic = Profile((1, 3, 256, 512), (1, 3, 512, 1024), (1, 3, 1024, 2048))
    check_calibration_shape((1, 3, 1024, 2048), [None, 3, None, None], dynamic)


# --- build_engine without TensorRT ----------------------------------------------------


def test_build_engine_without_tensorrt_names_the_extra(tmp_path, monkeypatch):
    bundle = make_bundle(tmp_path, "model.onnx", "model.fp16.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where TensorRT is installed
    with pytest.raises(MissingDependencyError) as err:
        build_engine(bundle.root, BuildConfig(precision="fp16"))
    message = str(err.value)
    assert "\n" not in message and "build-trt" in message and "pip install 'fornet-deploy[tensorrt]'" in message
    assert not list(bundle.root.glob("*.engine*"))


# --- the adapter against a stand-in TensorRT ------------------------------------------


# Module attributes of the stand-in that are the tests' own, not TensorRT's (test_trt_bindings.py
# checks every other public name of the stand-in against the real bindings of its version).
TEST_HOOKS = {"calls", "cudart"}


def fake_tensorrt(version: str, layers=(), parse_errors=(), build_ok=True, timing_cache_ok=True, dla_cores=0):
    """A ``tensorrt`` module with the names ``version`` binds, recording what is called; its
    classes are module attributes under TensorRT's class names, and its own state is private."""
    legacy = version.startswith("10.")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = {"flags": [], "cleared": [], "pinned_precision": [], "pinned_outputs": []}
    trt.float32 = "FLOAT"

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    trt.ILogger = ILogger
    creation_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if legacy else {"STRONGLY_TYPED": 0}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation_flags)
    builder_flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "TF32"]
    if legacy:
        builder_flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"])
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])

    class ITensor:
        def __init__(self, name="", kind="FLOAT"):
            self.name, self.dtype = name, types.SimpleNamespace(name=kind)  # DataType.FLOAT.name

    def tensor(kind):
        return None if kind == "NONE" else ITensor(kind=kind)

    class Layer:
        def __init__(self, view):
            self.name, self._in, self._out = view.name, view.input_types, view.output_types
            self.num_inputs, self.num_outputs = len(self._in), len(self._out)

        def get_input(self, i):
            return tensor(self._in[i])

        def get_output(self, i):
            return tensor(self._out[i])

    class LegacyLayer(Layer):  # ILayer.precision / set_output_type exist on 10.x only
        @property
        def precision(self):
            return None

        @precision.setter
        def precision(self, dtype):
            calls["pinned_precision"].append((self.name, dtype))

        def set_output_type(self, index, dtype):
            calls["pinned_outputs"].append((self.name, index, dtype))

    class Network:
        def __init__(self, flags):
            calls["network_flags"] = flags
            self.num_inputs = 1
            self._layers = [(LegacyLayer if legacy else Layer)(view) for view in layers]
            self.num_layers = len(self._layers)

        def get_input(self, i):
            return ITensor("image")

        def get_layer(self, i):
            return self._layers[i]

    class ParserError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def node_name(self):
            return self._node

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path):
            calls["parsed"] = path
            return not parse_errors

        def get_error(self, i):
            return ParserError(*parse_errors[i])

    class OptimizationProfile:
        def set_shape(self, input, min, opt, max):
            self._shape = (input, min, opt, max)

    class TimingCache:
        def __init__(self, data):
            self._data = data

        def serialize(self):
            return memoryview(self._data + b"+timings")

    class Config:
        def __init__(self):
            self._timing = TimingCache(b"")

        def set_flag(self, flag):
            calls["flags"].append(flag.name)

        def clear_flag(self, flag):
            calls["cleared"].append(flag.name)

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool.name, size)

        def add_optimization_profile(self, profile):
            calls.setdefault("profiles", []).append(profile._shape)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self._timing = cache
            return timing_cache_ok

        def get_timing_cache(self):
            return self._timing

    if legacy:

        def set_calibration_profile(self, profile):
            calls["calibration_profile"] = profile._shape

        Config.set_calibration_profile = set_calibration_profile
        Config.int8_calibrator = None

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            self._logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is not None and calibrator.read_calibration_cache() is None:
                calls["calibration_batches"] = 0
                while calibrator.get_batch(["image"]) is not None:
                    calls["calibration_batches"] += 1
                calibrator.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2\nimage: 3c010a14\n"))
            if not build_ok:
                self._logger.log(ILogger.Severity.ERROR, "out of memory while building")
                return None
            return memoryview(b"ENGINE " + version.encode())

    trt.Builder, trt.OnnxParser, trt.ParserError, trt.INetworkDefinition = Builder, OnnxParser, ParserError, Network
    trt.ILayer, trt.ITensor = LegacyLayer if legacy else Layer, ITensor
    trt.IBuilderConfig, trt.IOptimizationProfile, trt.ITimingCache = Config, OptimizationProfile, TimingCache
    return trt


@pytest.fixture
def with_fake(monkeypatch):
    """Install a stand-in TensorRT and a stand-in cuda-python with one GPU (``trt.cudart``)."""

    def install(trt, gpu=("NVIDIA Test GPU", 8, 9)):
        trt.cudart = FakeCudart(devices=[gpu])
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_cuda, "import_cudart", lambda purpose: trt.cudart)
        return trt

    return install


SELECTOR_LAYERS = (
    LayerView("/backbone/stem/Conv", ("FLOAT",), ("FLOAT",)),
    LayerView("/focus/selector/Sigmoid", ("FLOAT",), ("FLOAT",)),
    LayerView("/focus/topk/GreaterOrEqual", ("FLOAT", "FLOAT"), ("BOOL",)),
)


@pytest.mark.parametrize("version, network_flags", [(TRT_10_3, 1 << 1), (TRT_10_X, 1 << 1), (TRT_11, 0)])
def test_strongly_typed_build_writes_engine_and_metadata(tmp_path, with_fake, version, network_flags):
    bundle = make_bundle(tmp_path, "model.onnx", "model.fp16.onnx")
    trt = with_fake(fake_tensorrt(version, layers=SELECTOR_LAYERS))
    timing = tmp_path / "timing.cache"
    messages = []
    config = BuildConfig(precision="fp16", max_shape=(2, 3, 128, 256), workspace_mb=256, timing_cache=timing)
    meta = build_engine(bundle.root, config, progress=messages.append)

    calls = trt.calls
    assert calls["network_flags"] == network_flags  # STRONGLY_TYPED is bit 1 on 10.x; not passed on 11
    assert calls["parsed"] == str(bundle.root / "model.fp16.onnx")
    assert calls["flags"] == [] and calls["pinned_precision"] == calls["pinned_outputs"] == []
    assert calls["cleared"] == ["TF32"]  # TensorRT's default is TF32 on
    assert calls["config"].profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert calls["workspace"] == ("WORKSPACE", 256 << 20)
    assert calls["profiles"] == [("image", [1, 3, 64, 128], [1, 3, 64, 128], [2, 3, 128, 256])]
    assert timing.read_bytes() == b"+timings"

    name = "model.fp16.1x3x64x128-1x3x64x128-2x3x128x256.engine"
    assert meta["engine"] == name and (bundle.root / name).read_bytes() == b"ENGINE " + version.encode()
    reopened = Bundle.open(bundle.root)  # verifies every recorded hash
    assert reopened.artifacts_of("tensorrt-engine")[name]["metadata"] == name + ".json"
    assert reopened.artifacts_of("tensorrt-engine-metadata")[name + ".json"]["engine"] == name
    on_disk = read_engine_metadata(bundle.root / name)
    assert on_disk == meta and on_disk["engine_sha256"] == sha256_file(bundle.root / name)
    assert on_disk["source_onnx_sha256"] == sha256_file(bundle.root / "model.fp16.onnx")
    assert on_disk["gpu_name"] == "NVIDIA Test GPU" and on_disk["compute_capability"] == "8.9"
    assert on_disk["tf32"] is False
    check_engine_metadata(on_disk, version, "NVIDIA Test GPU", "8.9")
    assert any(m.startswith("wrote " + name) for m in messages)

    build_engine(bundle.root, config)  # the saved timing cache is loaded into the next build
    assert timing.read_bytes() == b"+timings+timings"


def test_legacy_fp16_pins_the_selector_subgraph(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    trt = with_fake(fake_tensorrt(TRT_10_X, layers=SELECTOR_LAYERS))
    meta = build_engine(bundle.root, BuildConfig(precision="fp16", legacy_calibrator=True))
    assert trt.calls["network_flags"] == 0
    assert trt.calls["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and trt.calls["cleared"] == ["TF32"]
    assert trt.calls["pinned_precision"] == [
        ("/focus/selector/Sigmoid", "FLOAT"),
        ("/focus/topk/GreaterOrEqual", "FLOAT"),
    ]
    assert trt.calls["pinned_outputs"] == [("/focus/selector/Sigmoid", 0, "FLOAT")]
    assert meta["engine"] == "model.fp16.legacy.engine" and meta["fp32_layers"] == 2 and not meta["strongly_typed"]


def test_legacy_int8_calibrates_once_then_reuses_the_cache(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    trt = with_fake(fake_tensorrt(TRT_10_3))
    batches = [np.zeros((2, 3, 64, 128), np.float32) for _ in range(3)]
    config = BuildConfig(
        precision="int8", legacy_calibrator=True, calibration_batches=batches, calibration_set_hash="set-1"
    )
    build_engine(bundle.root, config)
    assert trt.calls["flags"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert trt.calls["calibration_batches"] == 3
    assert trt.calls["calibration_profile"] == ("image", [2, 3, 64, 128], [2, 3, 64, 128], [2, 3, 64, 128])
    cache = bundle.root / "model.int8.calib"
    assert cache.read_bytes().startswith(b"TRT-100300-EntropyCalibration2\n")
    sidecar = json.loads(cache_sidecar_path(cache).read_text())
    assert sidecar["key"]["calibration_set"] == "set-1"
    assert sidecar["key"]["onnx_sha256"] == sha256_file(bundle.root / "model.onnx")
    assert sidecar["key"]["preprocessing"] == bundle.manifest["preprocessing"]

    trt = with_fake(fake_tensorrt(TRT_10_3))
    messages = []
    reuse = BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash="set-1")
    build_engine(bundle.root, reuse, progress=messages.append)
    assert "calibration_batches" not in trt.calls  # read from the cache, no images needed
    assert trt.calls["calibration_profile"][1] == [1, 3, 64, 128]  # the opt shape
    assert f"using calibration cache {cache}" in messages

    with pytest.raises(FornetError, match="stale: it was made for a different calibration set"):
        build_engine(bundle.root, BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash="set-2"))


def test_tf32_on_only_when_asked(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    trt = with_fake(fake_tensorrt(TRT_11))
    meta = build_engine(bundle.root, BuildConfig(precision="fp32", tf32=True))
    assert trt.calls["flags"] == ["TF32"] and trt.calls["cleared"] == [] and meta["tf32"] is True


def legacy_int8(set_hash="set-1", batches=None):
    return BuildConfig(precision="int8", legacy_calibrator=True, calibration_set_hash=set_hash,
                       calibration_batches=batches)


def images(n=2, shape=(1, 3, 64, 128)):
    return [np.full(shape, i, np.float32) for i in range(n)]


def test_calibration_cache_is_keyed_by_tensorrt_version_and_gpu(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    cache = bundle.root / "model.int8.calib"
    trt = with_fake(fake_tensorrt(TRT_10_3), gpu=("Orin", 8, 7))
    build_engine(bundle.root, legacy_int8(batches=images()))
    assert trt.calls["calibration_batches"] == 2
    key = json.loads(cache_sidecar_path(cache).read_text())["key"]
    assert (key["tensorrt_version"], key["gpu_name"], key["compute_capability"]) == (TRT_10_3, "Orin", "8.7")

    messages = []
    trt = with_fake(fake_tensorrt(TRT_10_3), gpu=("Orin", 8, 7))
    build_engine(bundle.root, legacy_int8(), progress=messages.append)  # same TensorRT, same GPU: the cache
    assert "calibration_batches" not in trt.calls and f"using calibration cache {cache}" in messages

    # After a JetPack / TensorRT upgrade TensorRT would skip the cache silently and ask for batches.
    for version, gpu, what in [("10.7.0", ("Orin", 8, 7), "TensorRT version"),
                               (TRT_10_3, ("Xavier", 7, 2), "GPU, compute capability"),
                               (TRT_10_3, ("Orin (other board)", 8, 7), "GPU")]:
        with_fake(fake_tensorrt(version), gpu=gpu)
        with pytest.raises(FornetError) as err:
            build_engine(bundle.root, legacy_int8())
        assert str(err.value) == (f"calibration cache {cache} is stale: it was made for a different {what}; "
                                  "--legacy-calibrator int8 needs the calibration images to calibrate")
    trt = with_fake(fake_tensorrt("10.7.0"), gpu=("Orin", 8, 7))
    messages = []
    build_engine(bundle.root, legacy_int8(batches=images(3)), progress=messages.append)
    assert trt.calls["calibration_batches"] == 3
    assert any("different TensorRT version; calibrating" in m for m in messages)
    assert json.loads(cache_sidecar_path(cache).read_text())["key"]["tensorrt_version"] == "10.7.0"


def test_a_cache_of_another_calibrator_is_not_used(tmp_path, with_fake):
    from fornet_deploy.calibration.trt_calibrator import calibration_cache_key, save_calibration_cache

    bundle = make_bundle(tmp_path, "model.onnx")
    cache = bundle.root / "model.int8.calib"
    key = calibration_cache_key(sha256_file(bundle.root / "model.onnx"), "set-1", bundle.manifest["preprocessing"],
                                tensorrt_version=TRT_10_3, gpu_name="NVIDIA Test GPU", compute_capability="8.9")
    save_calibration_cache(cache, b"TRT-100300-MinMaxCalibration\nimage: 3c010a14\n", key)
    with_fake(fake_tensorrt(TRT_10_3))
    with pytest.raises(FornetError, match="was written by the MinMaxCalibration calibrator, this build uses "
                                          "EntropyCalibration2; --legacy-calibrator int8 needs the calibration images"):
        build_engine(bundle.root, legacy_int8())


def test_calibration_images_of_the_wrong_size_fail_before_any_gpu_work(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    bundle.record("model.onnx", kind="onnx", input_shape=list(EXPORT_SHAPE), export_shape=list(EXPORT_SHAPE))
    trt = with_fake(fake_tensorrt(TRT_10_3))
    with pytest.raises(FornetError, match="calibration images preprocess to 3x128x256 but model.onnx takes 3x64x128"):
        build_engine(bundle.root, legacy_int8(batches=images(shape=(1, 3, 128, 256))))
    with pytest.raises(FornetError, match="the calibration set yielded no batches"):
        build_engine(bundle.root, legacy_int8(batches=iter([])))
    assert trt.cudart.calls == [] and not list(bundle.root.glob("*.engine*"))


def test_calibration_errors_surface_after_the_build(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    with_fake(fake_tensorrt(TRT_10_3))
    batches = [np.zeros((1, 3, 64, 128), np.float32), np.zeros((1, 3, 64, 64), np.float32)]
    config = BuildConfig(
        precision="int8", legacy_calibrator=True, calibration_batches=batches, calibration_set_hash="s"
    )
    with pytest.raises(FornetError, match="differs from the first batch"):
        build_engine(bundle.root, config)
    assert not list(bundle.root.glob("*.engine*"))


def test_parser_errors_are_listed(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    with_fake(fake_tensorrt(TRT_11, parse_errors=[("/focus/topk/Foo", "unsupported op Foo"), ("", "bad graph")]))
    with pytest.raises(FornetError) as err:
        build_engine(bundle.root, BuildConfig(precision="fp32"))
    assert str(err.value) == (
        "TensorRT 11.1.0 cannot parse model.onnx: /focus/topk/Foo: unsupported op Foo; bad graph"
    )


def test_build_failure_and_bad_timing_cache(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx")
    with_fake(fake_tensorrt(TRT_10_3, build_ok=False))
    with pytest.raises(FornetError, match="could not build the engine: out of memory while building"):
        build_engine(bundle.root, BuildConfig(precision="fp32"))
    with_fake(fake_tensorrt(TRT_10_3, timing_cache_ok=False))
    timing = tmp_path / "other-gpu.cache"
    timing.write_bytes(b"cache from elsewhere")
    with pytest.raises(FornetError, match="timing cache .* from another GPU or TensorRT"):
        build_engine(bundle.root, BuildConfig(precision="fp32", timing_cache=timing))
    assert timing.read_bytes() == b"cache from elsewhere"  # left as it was
    assert not Bundle.open(bundle.root).artifacts_of("tensorrt-engine")


def test_dla_build(tmp_path, with_fake):
    bundle = make_bundle(tmp_path, "model.onnx", "model.fp16.onnx")
    with_fake(fake_tensorrt(TRT_10_3, dla_cores=0))
    with pytest.raises(HardwareError, match="DLA core 0 asked for, this device has 0"):
        build_engine(bundle.root, BuildConfig(precision="fp16", dla_core=0))
    trt = with_fake(fake_tensorrt(TRT_10_3, dla_cores=2))
    meta = build_engine(bundle.root, BuildConfig(precision="fp16", dla_core=1))
    config = trt.calls["config"]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert trt.calls["flags"] == ["GPU_FALLBACK"] and meta["dla_core"] == 1
    assert meta["engine"] == "model.fp16.dla1.engine"


def test_missing_export_shape_asks_for_one(tmp_path, with_fake):
    bundle = Bundle.create(tmp_path / "bundle", preprocessing={})
    (bundle.root / "model.onnx").write_bytes(b"x")
    bundle.record("model.onnx", kind="onnx")
    with_fake(fake_tensorrt(TRT_10_3))
    with pytest.raises(FornetError, match="no input shape"):
        build_engine(bundle.root, BuildConfig(precision="fp32"))
    meta = build_engine(bundle.root, BuildConfig(precision="fp32", opt_shape=(1, 3, 32, 32)))
    assert meta["engine"] == "model.fp32.1x3x32x32.engine"
