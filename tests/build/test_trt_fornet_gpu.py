"""FoR-Net's own graphs on real TensorRT (marked ``gpu`` + ``tensorrt``: they skip, with the
reason, where either is missing; ``benchmarks/gpu_suite.sh`` runs them on a GPU machine).

From a real exported bundle (the shipped SynthCity weights, 256x512, threshold Top-K): the
FP32, mixed-FP16 and INT8 Q/DQ graphs built strongly typed, the FP16 / INT8 legacy path on
TensorRT 10.x, each checked against the PyTorch FP32 reference with ``parity``'s thresholds,
and the INT8 engine's layers read back through the engine inspector. With
``FORNET_GPU_RESULTS=DIR`` the inspector summaries are written there too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fornet_deploy.build.trt import BuildConfig, build_engine, build_with_calibration_data, trt_major
from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import FP32_SCOPES, SHIPPED_WEIGHTS
from fornet_deploy.data.transforms import Preprocessing
from fornet_deploy.evaluation.examples import dataset_examples
from fornet_deploy.evaluation.parity import THRESHOLDS, parity_bundle, run_parity
from fornet_deploy.runtimes.registry import load_runner
from fornet_deploy.runtimes.trt.inspect import summarize_layers

# Engine builds take minutes each on a small GPU: more than the suite's per-test timeout.
pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt, pytest.mark.slow, pytest.mark.timeout(1800)]

SHAPE = (256, 512)


@pytest.fixture(scope="module")
def fornet(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle with model.onnx, model.fp16.onnx, model.int8.qdq.onnx; SynthCity data)."""
    from fornet_deploy.api import calibrate, export_model, synthcity

    root = tmp_path_factory.mktemp("fornet-gpu")
    data, bundle = root / "synthcity", root / "bundle"
    synthcity(data, train=16, val=8, shape=SHAPE, seed=0)
    export_model(SHIPPED_WEIGHTS, bundle, shape=SHAPE, precision="fp16")
    calibrate(bundle, data, num_images=16)
    return bundle, data


def _parity(bundle: Path, data: Path, precision: str, tmp_path: Path) -> dict:
    report = parity_bundle(bundle, "trt", precision, "cuda", data, limit=8, out_dir=tmp_path / "parity")
    (engine,) = report["artifacts"].values()  # a TensorRT run checks the engine this machine picks
    return engine["summary"]


def _results(name: str, payload: dict) -> None:
    folder = os.environ.get("FORNET_GPU_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(payload, indent=2) + "\n")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_engine_matches_the_pytorch_reference(fornet, precision, tmp_path):
    bundle, data = fornet
    meta = build_engine(bundle, BuildConfig(precision=precision, timing_cache=bundle / "timing.cache"))
    assert meta["strongly_typed"] and meta["tf32"] is False and meta["profiling_verbosity"] == "DETAILED"
    summary = _parity(bundle, data, precision, tmp_path)
    assert summary["passed"], summary
    with load_runner(bundle, "trt", precision, "cuda") as runner:
        runner(np.zeros((1, 3, *SHAPE), np.float32), outputs=("labels",))
        timings = runner.last_timings()
        assert timings["compute_ms"] > 0 and timings["d2h_ms"] >= 0


def test_int8_engine_layers_through_the_inspector(fornet):
    bundle, _ = fornet
    meta = build_engine(bundle, BuildConfig(precision="int8", timing_cache=bundle / "timing.cache"))
    with load_runner(bundle, "trt", "int8", "cuda") as runner:
        summary = summarize_layers(runner.engine_information())
    _results("int8_layers_256x512.json", {"engine": meta["engine"], "tensorrt": meta["tensorrt_version"],
                                          "gpu": meta["gpu_name"], **summary})
    assert summary["layers"] > 0
    # the Q/DQ graph runs INT8 convolutions (how many reformats sit between them is the
    # INT8 graph's placement result, recorded above and in docs/results/gpu/)
    assert any(key.startswith("int8->") for key in summary["conv_precisions"]), summary


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_legacy_builds_on_tensorrt_10(fornet, precision, tmp_path):
    import tensorrt

    if trt_major(tensorrt.__version__) > 10:
        pytest.skip("weak typing and the implicit INT8 calibrator exist on TensorRT 10.x only")
    bundle, data = fornet
    config = BuildConfig(precision=precision, legacy_calibrator=True, fp32_scopes=FP32_SCOPES)
    meta = build_with_calibration_data(bundle, config, data, num_images=16)
    assert not meta["strongly_typed"] and meta["fp32_layers"] > 0 and meta["tf32"] is False
    if precision == "int8":
        header = (bundle / "model.int8.calib").read_bytes().split(b"\n", 1)[0]
        assert header.startswith(b"TRT-") and header.endswith(b"-EntropyCalibration2")
    # the legacy engine is one of two of this precision: run that one by name
    pre = Preprocessing.from_dict(Bundle.open(bundle).section("preprocessing"))
    with load_runner(bundle, "torch", "fp32", "cpu", topk="exact") as reference, \
            load_runner(bundle, "trt", precision, "cuda", artifact=meta["engine"]) as candidate:
        report = run_parity(reference, candidate, dataset_examples(data, "val", pre, 8), THRESHOLDS[precision])
    assert report["candidate"]["artifact"] == meta["engine"]
    assert report["summary"]["passed"], report["summary"]


def test_build_trt_command(fornet, tmp_path):
    """`build-trt` as a user runs it (the real entry point): exit 0, the engine's table, its JSON."""
    from cli_helpers import run_cli

    bundle, _ = fornet
    result = run_cli("build-trt", "--bundle", str(bundle), "--fp16", "--json", str(tmp_path / "engine.json"))
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["strongly_typed"] and meta["tf32"] is False
    assert meta == json.loads((bundle / f"{meta['engine']}.json").read_text())
    assert f"engine {meta['engine']}" in result.stdout and meta["tensorrt_version"] in result.stdout
