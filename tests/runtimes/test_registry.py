"""Which TensorRT engine runs: picked by its metadata (precision, profile, DLA core, this
machine's TensorRT and GPU when known), never by its file name."""

from __future__ import annotations

import json

import pytest

from fornet_deploy.bundle import Bundle
from fornet_deploy.errors import FornetError
from fornet_deploy.runtimes import registry
from fornet_deploy.runtimes.registry import (
    EngineRequest,
    available_formats,
    rank_engines,
    resolve_format,
    select_engine,
)
from fornet_deploy.runtimes.trt import metadata as trt_metadata
from fornet_deploy.runtimes.trt.runner import TrtRunner

EXPORT = [1, 3, 512, 1024]


def meta(opt=EXPORT, low=None, high=None, dla_core=None, version="10.3.0", gpu=("Orin", "8.7"), precision="fp16"):
    return {"tensorrt_version": version, "gpu_name": gpu[0], "compute_capability": gpu[1], "engine_sha256": "0" * 64,
            "precision": precision, "dla_core": dla_core,
            "profile": {"input": "image", "min": low or opt, "opt": opt, "max": high or opt}}


ENGINES = {
    # the longest, oldest-looking name is the one that fits 1024x2048: names do not matter
    "model.fp16.engine": meta(),
    "model.fp16.dla0.engine": meta(dla_core=0),
    "model.fp16.1x3x256x512-1x3x1024x2048-1x3x1024x2048.engine": meta(
        opt=[1, 3, 1024, 2048], low=[1, 3, 256, 512], high=[1, 3, 1024, 2048]),
    "a.engine": meta(opt=[1, 3, 512, 1024], low=[1, 3, 256, 512], high=[4, 3, 1024, 2048]),
}


def test_the_profile_that_covers_the_shape_wins():
    ranked, problems = rank_engines(ENGINES, EngineRequest(shape=(1, 3, 1024, 2048)), EXPORT)
    # optimum at the asked shape first, then the wider profile
    assert ranked == ["model.fp16.1x3x256x512-1x3x1024x2048-1x3x1024x2048.engine", "a.engine"]
    assert problems == {
        "model.fp16.engine": "profile 1x3x512x1024 to 1x3x512x1024 does not cover 1x3x1024x2048",
        "model.fp16.dla0.engine": "profile 1x3x512x1024 to 1x3x512x1024 does not cover 1x3x1024x2048",
    }


def test_without_a_shape_the_export_shape_and_a_gpu_engine_win():
    ranked, problems = rank_engines(ENGINES, EngineRequest(), EXPORT)
    assert ranked[0] == "model.fp16.engine" and ranked[-1] == "model.fp16.dla0.engine" and not problems
    assert ranked[1] == "a.engine"  # optimum at the export shape, wider profile


def test_dla_core_machine_and_version_constraints():
    ranked, problems = rank_engines(ENGINES, EngineRequest(dla_core=0), EXPORT)
    assert ranked == ["model.fp16.dla0.engine"] and problems["a.engine"] == "built for the GPU"
    assert rank_engines(ENGINES, EngineRequest(dla_core=1), EXPORT)[1]["model.fp16.dla0.engine"] == "built for DLA core 0"
    ranked, problems = rank_engines(ENGINES, EngineRequest(tensorrt_version="10.3.0", gpu_name="Orin",
                                                           compute_capability="8.7"), EXPORT)
    assert len(ranked) == 4
    ranked, problems = rank_engines(ENGINES, EngineRequest(tensorrt_version="10.7.0"), EXPORT)
    assert ranked == [] and problems["a.engine"] == "built with TensorRT 10.3.0, this machine has 10.7.0"
    ranked, problems = rank_engines(ENGINES, EngineRequest(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0"),
                                    EXPORT)
    assert ranked == [] and problems["a.engine"] == (
        "built on Orin (compute capability 8.7), this machine has NVIDIA H100 80GB HBM3 (compute capability 9.0)")


def engine_bundle(tmp_path, engines):
    bundle = Bundle.create(tmp_path / "bundle", preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3})
    (bundle.root / "model.onnx").write_bytes(b"onnx")
    bundle.record("model.onnx", kind="onnx", export_shape=EXPORT)
    for name, m in engines.items():
        (bundle.root / name).write_bytes(b"engine " + name.encode())
        (bundle.root / (name + ".json")).write_text(json.dumps({**m, "engine": name}))
        bundle.record(name, kind="tensorrt-engine", precision=m["precision"], metadata=name + ".json")
    return Bundle.open(bundle.root)


def test_select_engine_reads_the_metadata_and_explains_a_miss(tmp_path):
    bundle = engine_bundle(tmp_path, {**ENGINES, "model.int8.engine": meta(precision="int8")})
    assert select_engine(bundle, "fp16") == "model.fp16.engine"
    assert select_engine(bundle, "fp16", EngineRequest(shape=(2, 3, 768, 1024))) == "a.engine"
    assert select_engine(bundle, "fp32") is None
    with pytest.raises(FornetError) as err:
        select_engine(bundle, "int8", EngineRequest(shape=(1, 3, 1024, 2048)))
    assert str(err.value) == (
        f"bundle {bundle.root} has no usable TensorRT int8 engine (model.int8.engine: profile 1x3x512x1024 to "
        "1x3x512x1024 does not cover 1x3x1024x2048); build one with `fornet-deploy build-trt --int8`")
    # a matrix still lists the precision, so its row says why it cannot run
    rows = available_formats(bundle, "cuda", EngineRequest(shape=(1, 3, 1024, 2048)))
    assert [f.artifact for f in rows if f.runtime == "trt"] == [
        "model.fp16.1x3x256x512-1x3x1024x2048-1x3x1024x2048.engine", "model.int8.engine"]
    # an unreadable metadata file rules out that engine only, and is named when none is left
    (bundle.root / "a.engine.json").write_text("{")
    assert resolve_format(bundle, "trt", "fp16", "cuda").artifact == "model.fp16.engine"
    with pytest.raises(FornetError, match=r"\(model.fp16.engine: profile .*; a.engine: .*is not valid JSON"):
        select_engine(bundle, "fp16", EngineRequest(shape=(2, 3, 768, 1024)))


def test_load_runner_asks_with_this_machine_and_the_gpu_index(tmp_path, monkeypatch):
    bundle = engine_bundle(tmp_path, ENGINES)
    asked = []

    def facts(gpu):
        asked.append(gpu)
        return {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}

    monkeypatch.setattr(trt_metadata, "machine_facts", facts)
    runner = registry.load_runner(bundle, "trt", "fp16", "jetson", gpu=1, shape=(1, 3, 1024, 2048))
    assert isinstance(runner, TrtRunner) and runner.device == 1 and asked == [1]
    assert runner.engine_path.name == "model.fp16.1x3x256x512-1x3x1024x2048-1x3x1024x2048.engine"
    assert registry.load_runner(bundle, "trt", "fp16", "jetson", dla_core=0).engine_path.name == "model.fp16.dla0.engine"


def test_machine_facts_here_leave_out_what_is_unknown():
    facts = trt_metadata.machine_facts(0)
    assert "gpu_name" not in facts or facts["compute_capability"]  # no GPU on CI: nothing about one


def test_a_named_artefact_must_be_in_the_bundle_of_its_runtime_and_precision(tiny_bundle):
    from fornet_deploy.runtimes.registry import artifact_precision, formats_present, named_format

    bundle = Bundle.open(tiny_bundle, verify=False)
    assert [f.artifact for f in formats_present(bundle, "ort", "fp32", "cpu")] == ["model.cpu.onnx", "model.onnx"]
    assert [f.artifact for f in formats_present(bundle, "ort", "fp32", "cuda")] == ["model.onnx"]
    with pytest.raises(FornetError, match="no ort int8 artefact .*calibrate"):
        formats_present(bundle, "ort", "int8", "cpu")
    assert named_format(bundle, "ort", None, "cpu", "model.onnx").precision == "fp32"
    assert artifact_precision(bundle, "model.onnx", None) == "fp32" and artifact_precision(bundle, None, None) == "fp32"
    with pytest.raises(FornetError, match="model.onnx is the bundle's fp32 artefact, not fp16"):
        named_format(bundle, "ort", "fp16", "cpu", "model.onnx")
    with pytest.raises(FornetError, match="checkpoint.safetensors is not run by --runtime ort .use --runtime torch"):
        named_format(bundle, "ort", None, "cpu", "checkpoint.safetensors")
    with pytest.raises(FornetError, match="has no model.fp16.onnx .artefacts: checkpoint.safetensors, model.cpu"):
        named_format(bundle, "ort", None, "cpu", "model.fp16.onnx")
