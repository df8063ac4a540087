"""The Triton model repository: config.pbtxt parses with Triton's own schema and describes
the ONNX graph (as ONNX Runtime reads it), for static and dynamic bundles and engines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.bundle import Bundle
from fornet_deploy.errors import FornetError
from fornet_deploy.io import sha256_file
from fornet_deploy.package import package
from fornet_deploy.package.graph import graph_io
from fornet_deploy.package.output import MARKER
from fornet_deploy.package.triton import TritonOptions, check_config, read_config, trt_model

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (the [serve] extra) is not installed")
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(int32)": "TYPE_INT32"}


def ort_view(onnx_path: Path) -> dict:
    """name -> (Triton type, dims with -1 for dynamic), as ONNX Runtime sees the graph."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {t.name: (ORT_TYPES[t.type], [d if isinstance(d, int) else -1 for d in t.shape])
            for t in session.get_inputs() + session.get_outputs()}


def config_view(config) -> dict:
    batch = [-1] if config.max_batch_size > 0 else []
    return {t.name: (pb.DataType.Name(t.data_type), batch + list(t.dims)) for t in list(config.input) + list(config.output)}


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_config_parses_with_tritons_schema_and_matches_the_graph(kind, tiny_bundle, static_bundle, tmp_path):
    bundle = tiny_bundle if kind == "dynamic" else static_bundle
    summary = package(bundle, "triton", tmp_path / "repo", TritonOptions())
    model = tmp_path / "repo" / "fornet_ort_fp32"
    config = read_config(model / "config.pbtxt")  # Triton's own protobuf schema
    # the model file is the bundle's verified graph, byte for byte
    assert sha256_file(model / "1" / "model.onnx") == Bundle.open(bundle).artifacts["model.onnx"]["sha256"]
    assert config.platform == "onnxruntime_onnx" and config.name == "fornet_ort_fp32"
    assert config_view(config) == ort_view(model / "1" / "model.onnx")
    if kind == "dynamic":
        assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
        assert list(config.input[0].dims) == [3, -1, -1]
    else:  # a static batch-1 export: the batch dimension is spelled out, nothing is batched
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [1, 3, 128, 256]
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32"
    classes = config.parameters["classes"].string_value.split(",")
    assert classes == Bundle.open(bundle).manifest["labels"]["classes"]
    assert (model / "labels.txt").read_text().splitlines() == classes
    assert summary["notes"] == ["no tensorrt_plan model: the bundle has no fp32 TensorRT engine"]
    marker = json.loads((tmp_path / "repo" / MARKER).read_text())
    assert marker["files"]["fornet_ort_fp32/config.pbtxt"] == sha256_file(model / "config.pbtxt")
    # its size, as `package` reports it: every file of the folder, the marker included
    assert summary["bytes"] == sum((tmp_path / "repo" / f).stat().st_size for f in summary["files"])


def test_cpu_repository_has_cpu_instances_and_no_accelerator(tiny_bundle, tmp_path):
    package(tiny_bundle, "triton", tmp_path / "repo", TritonOptions(device="cpu", instances=2, max_batch=4))
    config = read_config(tmp_path / "repo" / "fornet_ort_fp32" / "config.pbtxt")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU and config.instance_group[0].count == 2
    assert not config.HasField("optimization")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]


def test_check_config_catches_a_config_that_is_not_the_graph(static_bundle, tmp_path):
    package(static_bundle, "triton", tmp_path / "repo", TritonOptions())
    path = tmp_path / "repo" / "fornet_ort_fp32" / "config.pbtxt"
    io = graph_io(tmp_path / "repo" / "fornet_ort_fp32" / "1" / "model.onnx")
    config = read_config(path)
    check_config(config, io, "fornet_ort_fp32")
    wrong_type = read_config(path)
    wrong_type.output[1].data_type = pb.TYPE_INT32
    with pytest.raises(FornetError, match="labels: TYPE_INT32 but the graph has uint8"):
        check_config(wrong_type, io, "fornet_ort_fp32")
    batched = read_config(path)
    batched.max_batch_size = 4
    with pytest.raises(FornetError, match="batch dimension is fixed at 1"):
        check_config(batched, io, "fornet_ort_fp32")
    path.write_text(path.read_text() + "\nmax_batch: 3\n")
    with pytest.raises(FornetError, match="not a valid Triton model config"):
        read_config(path)


def add_engine(bundle_dir: Path, tmp_path: Path, profile: dict, precision: str = "fp32") -> Path:
    """A copy of a bundle with a (fake-bytes) engine and the metadata build-trt writes."""
    copy = tmp_path / "with-engine"
    shutil.copytree(bundle_dir, copy)
    bundle = Bundle.open(copy)
    name = f"model.{precision}.engine"
    (copy / name).write_bytes(b"not a real engine: the repository copies it, TensorRT is not here")
    meta = {"engine": name, "tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7",
            "precision": precision, "profile": {"input": "image", **profile}, "source_onnx": "model.onnx",
            "engine_sha256": sha256_file(copy / name)}
    (copy / f"{name}.json").write_text(json.dumps(meta))
    bundle.record(name, kind="tensorrt-engine", precision=precision, source="model.onnx",
                  source_sha256=bundle.sha256("model.onnx"), metadata=f"{name}.json")
    bundle.record(f"{name}.json", kind="tensorrt-engine-metadata", engine=name, source=name,
                  source_sha256=sha256_file(copy / name))
    return copy


def test_engine_with_a_batch_profile_becomes_a_batching_plan_model(tiny_bundle, tmp_path):
    bundle = add_engine(tiny_bundle, tmp_path, {"min": [1, 3, 128, 256], "opt": [4, 3, 128, 256],
                                                "max": [8, 3, 128, 256]})
    summary = package(bundle, "triton", tmp_path / "repo", TritonOptions())
    model = tmp_path / "repo" / "fornet_trt_fp32"
    config = read_config(model / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    views = config_view(config)
    # H and W are fixed by the profile, the batch is not: dims without the batch dimension
    assert views["image"] == ("TYPE_FP32", [-1, 3, 128, 256])
    assert views["logits"] == ("TYPE_FP32", [-1, 19, 128, 256]) and views["labels"] == ("TYPE_UINT8", [-1, 128, 256])
    assert views["importance"] == ("TYPE_FP32", [-1, 1, 16, 32])
    assert (model / "1" / "model.plan").read_bytes().startswith(b"not a real engine")
    assert json.loads((model / "engine.json").read_text())["tensorrt_version"] == "10.3.0.30"
    assert "TensorRT 10.3.0.30" in (tmp_path / "repo" / "README.md").read_text()
    assert summary["notes"] == [] and set(summary["models"]) == {"fornet_ort_fp32", "fornet_trt_fp32"}


def test_engine_profile_at_a_size_that_is_not_a_multiple_of_32(tiny_bundle, tmp_path):
    """A dynamic graph pads and crops by its runtime shape: the dims the profile fixes (CamVid's
    360x480) are worked out through that shape arithmetic, the outputs cropped to the image."""
    bundle = add_engine(tiny_bundle, tmp_path, {"min": [1, 3, 360, 480], "opt": [1, 3, 360, 480],
                                                "max": [4, 3, 360, 480]})
    package(bundle, "triton", tmp_path / "repo", TritonOptions())
    views = config_view(read_config(tmp_path / "repo" / "fornet_trt_fp32" / "config.pbtxt"))
    assert views["logits"] == ("TYPE_FP32", [-1, 19, 360, 480]) and views["labels"] == ("TYPE_UINT8", [-1, 360, 480])
    assert views["importance"] == views["topk_mask"] == ("TYPE_FP32", [-1, 1, 45, 60])


def test_static_engine_spells_out_its_batch(static_bundle, tmp_path):
    bundle = add_engine(static_bundle, tmp_path, {"min": [1, 3, 128, 256], "opt": [1, 3, 128, 256],
                                                  "max": [1, 3, 128, 256]})
    plan = trt_model(Bundle.open(bundle), TritonOptions())
    assert plan.max_batch_size == 0 and plan.io.image.dims == (1, 3, 128, 256)
    assert trt_model(Bundle.open(bundle), TritonOptions(device="cpu")) is None


def test_writes_are_all_or_nothing_and_never_over_a_users_file(tiny_bundle, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    package(tiny_bundle, "triton", out, TritonOptions())
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import fornet_deploy.package.triton as triton

    def broken(*args, **kwargs):
        raise FornetError("disk full")

    monkeypatch.setattr(triton, "readme", broken)
    with pytest.raises(FornetError, match="disk full"):
        package(tiny_bundle, "triton", out, TritonOptions(max_batch=2))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no temporary folder left behind
    monkeypatch.undo()
    package(tiny_bundle, "triton", out, TritonOptions(max_batch=2))  # an earlier package is replaced
    assert read_config(out / "fornet_ort_fp32" / "config.pbtxt").max_batch_size == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("keep")
    with pytest.raises(FornetError, match="was not written by fornet-deploy package"):
        package(tiny_bundle, "triton", tmp_path / "mine", TritonOptions())
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["README.md"]
    assert (tmp_path / "mine" / "README.md").read_text() == "keep"
    (tmp_path / "mine" / "README.md").rename(tmp_path / "mine" / "notes.txt")
    package(tiny_bundle, "triton", tmp_path / "mine", TritonOptions())  # beside the user's files
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_package_triton(tiny_bundle, tmp_path):
    result = run_cli("package", "--bundle", str(tiny_bundle), "--target", "triton", "--out", str(tmp_path / "repo"),
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "fornet_ort_fp32" in result.stdout
    size = sum(p.stat().st_size for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert f"wrote 5 files, {size / 1e6:.1f} MB, to" in result.stdout
    assert read_config(tmp_path / "repo" / "fornet_ort_fp32" / "config.pbtxt").max_batch_size == 8
    bad = run_cli("package", "--bundle", str(tiny_bundle), "--target", "kubernetes", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    missing = run_cli("package", "--bundle", str(tiny_bundle), "--target", "triton", "--precision", "fp16",
                      "--out", str(tmp_path / "y"))
    assert_one_line_error(missing, "model.fp16.onnx")
    assert missing.returncode == 3 and not (tmp_path / "y").exists()
