"""The OpenVINO runner against the real openvino package (the [test] extra installs it)."""

from __future__ import annotations

import builtins
import json
import shutil

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.calibration.qdq import calibrate_bundle
from fornet_deploy.contract import FORMATS, OPENVINO_CACHE_DIR, RUNNERS, RUNTIMES, formats_for, onnx_graph
from fornet_deploy.errors import ExitCode, FornetError, HardwareError, MissingDependencyError, OptionError
from fornet_deploy.evaluation.parity import THRESHOLDS, parity_bundle
from fornet_deploy.model.topk import topk_count
from fornet_deploy.runtimes import openvino_runner
from fornet_deploy.runtimes.base import Runner
from fornet_deploy.runtimes.openvino_runner import (
    OpenVinoRunner,
    argmax_by_reductions,
    check_inference_precision,
    fp32_scope_ops,
    import_openvino,
    keep_fp32,
    keep_precision_attributes,
    keeps_f32,
    openvino_core,
    openvino_device,
)
from fornet_deploy.runtimes.registry import load_runner, runner_class

ov = pytest.importorskip("openvino")  # a hard dependency of the [test] extra; this names it when absent


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, tiny_data):
    """The shipped weights exported at the tiny images' size (static, as `export` makes it) with
    the U8S8 CPU graph: a selector that ranks real scenes (the tiny random model's importance
    map is flat, so its INT8 masks fail parity in ONNX Runtime too)."""
    from fornet_deploy.contract import SHIPPED_WEIGHTS
    from fornet_deploy.export.onnx import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("ov") / "bundle"
    export_bundle(SHIPPED_WEIGHTS, root, ExportConfig(height=128, width=256))
    calibrate_bundle(root, tiny_data, num_images=6, method="percentile", target="cpu")
    return root


def _batch(h: int = 128, w: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 3, h, w)).astype(np.float32)


def _cpu_runs_bf16() -> bool:
    return "BF16" in openvino_core(ov).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_bf16 = pytest.mark.skipif(not _cpu_runs_bf16(), reason="this CPU runs no bf16 (the runner refuses it)")


def test_openvino_fp32_matches_onnx_runtime_on_the_same_graph(tiny_bundle):
    with load_runner(tiny_bundle, "ort", "fp32", "cpu") as ort_runner, \
            load_runner(tiny_bundle, "openvino", "fp32", "cpu", threads=1) as ov_runner:
        assert ov_runner.info().artifact == ort_runner.info().artifact == "model.cpu.onnx"
        assert ov_runner.output_names() == ort_runner.output_names()
        for h, w in ((128, 256), (64, 128)):  # the tiny bundle is dynamic: one compiled model, any size
            x = _batch(h, w)
            a, b = ort_runner(x), ov_runner(x)
            assert np.abs(a["coarse_logits"] - b["coarse_logits"]).max() < 1e-4
            assert np.array_equal(a["labels"], b["labels"]) and b["labels"].dtype == np.uint8
            assert np.array_equal(a["topk_mask"], b["topk_mask"])
        assert ov_runner(x, outputs=("labels",)).keys() == {"labels"}
        assert ov_runner.last_inference_time > 0
        info = ov_runner.info().to_dict()
    assert info["backend"] == "openvino" and info["inference_precision"] == "f32" and info["threads"] == 1
    assert info["performance_hint"] == "LATENCY" and info["streams"] == 1 and info["openvino_device"] == "CPU"


def test_exactly_k_cells_at_every_size_of_a_dynamic_graph(tiny_bundle):
    # OpenVINO's CPU plugin computes the dynamic graph's k with a float32 integer division
    # (k + 1 regions); the runner compiles each input shape statically (module docstring).
    with load_runner(tiny_bundle, "openvino", "fp32", "cpu") as runner:
        for seed, (h, w) in enumerate([(128, 256), (64, 128), (96, 224), (128, 256)] * 3):
            mask = runner(_batch(h, w, seed), outputs=("topk_mask",))["topk_mask"]
            assert int(mask.sum()) == topk_count(0.25, mask.size), (h, w)
        assert runner.info().to_dict()["compiled_shapes"] == [[1, 3, 128, 256], [1, 3, 64, 128], [1, 3, 96, 224]]


def test_input_checks_apply(tiny_bundle):
    with load_runner(tiny_bundle, "openvino", "fp32", "cpu") as runner:
        with pytest.raises(FornetError, match="larger than the supported|beyond the supported"):
            runner(np.zeros((1, 3, 9000, 64), np.float32))
        with pytest.raises(FornetError, match="float32"):
            runner(np.zeros((1, 3, 64, 64), np.float64))


def test_bf16_is_explicit_and_recorded(int8_bundle):
    runner = load_runner(int8_bundle, "openvino", "bf16", "cpu")  # a static graph: compiled on activation
    if _cpu_runs_bf16():
        with runner:
            info = runner.info().to_dict()
            assert info["inference_precision"] == "bf16" and info["precision"] == "bf16"
            assert info["fp32_scope_ops"] > 0 and set(info["fp32_scope_precisions"]) >= {"f32"}
            assert runner(_batch())["labels"].shape == (1, 128, 256)
    else:  # OpenVINO would run f32 and call it bf16
        with pytest.raises(HardwareError, match="not the bf16 asked for"):
            runner.activate()


def test_which_ops_keep_f32():
    assert keeps_f32("/focus/selector/score/Conv/WithoutBiases") and keeps_f32("/focus/topk/ReduceSum_19")
    assert keeps_f32("/model/focus/selector/Sigmoid") and keeps_f32("importance") and keeps_f32("topk_mask")
    for name in ("/focus/enhance/fold/conv_0/Conv", "/neck/Resize", "coarse_logits", "labels", "/focus/Mul",
                 "model.focus.selector.score.weight"):  # a weight: a Constant named after its initializer
        assert not keeps_f32(name), name


def test_the_ops_kept_f32_are_the_selector_and_the_topk(int8_bundle):
    core = openvino_core(ov)
    model = core.read_model(str(int8_bundle / "model.cpu.onnx"))
    kept = {op.get_friendly_name(): op.get_type_name() for op in fp32_scope_ops(model)}
    convolutions = {name for name, kind in kept.items() if kind == "Convolution"}
    assert convolutions == {f"/focus/selector/{conv}/Conv/WithoutBiases" for conv in ("conv/conv.0", "score")}
    assert kept["importance"] == "Sigmoid"  # an output's op is named after the output
    assert kept["/focus/topk/MatMul"] == "MatMul"  # the tie ranking
    assert not any(name.startswith(("/backbone/", "/neck/", "/head/", "/focus/enhance/")) for name in kept)
    attributes = keep_precision_attributes(ov, core)
    assert attributes.keys() & {"DisablePrecisionConversion_0", "precise_0"}  # 2026.x / 2025.x
    assert keep_fp32(model, {}) == 0 and keep_fp32(model, attributes) == len(kept)
    op = next(op for op in model.get_ordered_ops() if op.get_friendly_name() in convolutions)
    assert attributes.keys() <= set(op.get_rt_info().keys())


@needs_bf16
def test_bf16_runs_the_selector_and_topk_in_f32(int8_bundle, monkeypatch):
    """What the compiled model runs the FP32 scopes' ops at, from its runtime model: f32 with
    the marks, and bf16 (the selector's convolutions, the tie ranking) without them."""
    with load_runner(int8_bundle, "openvino", "bf16", "cpu") as runner:
        marked = runner.info().to_dict()
    monkeypatch.setattr(openvino_runner, "keep_precision_attributes", lambda ov, core: {})
    with OpenVinoRunner(int8_bundle / "model.cpu.onnx", precision="bf16") as runner:
        unmarked = runner.info().to_dict()
    assert marked["inference_precision"] == unmarked["inference_precision"] == "bf16"
    assert "bf16" not in marked["fp32_scope_precisions"] and marked["fp32_scope_precisions"]["f32"] > 50
    assert unmarked["fp32_scope_ops"] == 0 and unmarked["fp32_scope_precisions"]["bf16"] >= 2


@needs_bf16
def test_bf16_selects_exactly_k_cells_where_bf16_counts_would_round(tiny_bundle, monkeypatch):
    """An input 8192 wide has 1024 cells per row: the Top-K's tie ranking counts past 256, which
    bf16 does not hold exactly, and the tiny model's flat map ties at the k-th value. Run in
    bf16 those counts selected k - 1 or k + 1 cells; kept f32 they select exactly k."""
    inputs = [np.zeros((1, 3, 16, 8192), np.float32), _batch(16, 8192), _batch(64, 8192, seed=1)]

    def cells(runner):
        return [int(runner(x, outputs=("topk_mask",))["topk_mask"].sum()) for x in inputs]

    k = [topk_count(0.25, x.shape[2] // 8 * x.shape[3] // 8) for x in inputs]
    with load_runner(tiny_bundle, "openvino", "bf16", "cpu") as runner:
        assert cells(runner) == k
    monkeypatch.setattr(openvino_runner, "keep_precision_attributes", lambda ov, core: {})
    with OpenVinoRunner(tiny_bundle / "model.cpu.onnx", precision="bf16") as runner:
        assert cells(runner) != k


def test_compiled_precision_check():
    check_inference_precision("f32", "f32", "CPU")
    with pytest.raises(HardwareError) as err:
        check_inference_precision("bf16", "f32", "CPU")
    assert err.value.exit_code == ExitCode.NO_HARDWARE and "use --precision fp32" in str(err.value)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_parity_passes_with_exactly_k_cells_per_image(int8_bundle, tiny_data, precision, tmp_path):
    report = parity_bundle(int8_bundle, "openvino", precision, "cpu", data=tiny_data, out_dir=tmp_path)
    assert report["summary"]["passed"], report["summary"]
    checked = report["artifacts"][{"fp32": "model.cpu.onnx", "int8": "model.int8.cpu.onnx"}[precision]]
    summary = checked["summary"]
    assert checked["candidate"]["backend"] == "openvino"
    assert checked["thresholds"]["min_argmax_agreement"] == THRESHOLDS[precision].min_argmax_agreement
    assert summary["checks"]["topk_count"] and summary["images"] == 3  # the per-image count of k
    assert summary["topk_selection"]["images_over_k"] == summary["topk_selection"]["images_under_k"] == 0
    assert summary["passed"], summary


def test_compiled_models_are_cached_in_the_bundle(int8_bundle):
    cache = int8_bundle / OPENVINO_CACHE_DIR
    shutil.rmtree(cache, ignore_errors=True)
    with load_runner(int8_bundle, "openvino", "int8", "cpu") as runner:
        assert runner.info().to_dict()["cache_dir"] == str(cache)
    blobs = sorted(p.name for p in cache.iterdir())
    assert blobs  # compiled once ...
    with load_runner(int8_bundle, "openvino", "int8", "cpu"):
        pass
    assert sorted(p.name for p in cache.iterdir()) == blobs  # ... and imported the second time


@needs_bf16
def test_the_cache_serves_each_precision_its_own_model(int8_bundle):
    x = _batch()
    with load_runner(int8_bundle, "openvino", "fp32", "cpu") as fp32:  # fills the bundle's cache first
        f32_logits = fp32(x)["coarse_logits"]
    with load_runner(int8_bundle, "openvino", "bf16", "cpu") as cached, \
            OpenVinoRunner(int8_bundle / "model.cpu.onnx", precision="bf16", cache_dir=None) as uncached:
        a, b = cached(x)["coarse_logits"], uncached(x)["coarse_logits"]
        assert "bf16" not in cached.info().to_dict()["fp32_scope_precisions"]  # the marks survive the blob
    assert np.array_equal(a, b) and not np.array_equal(a, f32_logits)


def test_absent_device_is_one_line(tiny_bundle):
    if any(d.startswith("NPU") for d in openvino_core(ov).available_devices):
        pytest.skip("this machine has an Intel NPU")
    with pytest.raises(HardwareError) as err:
        load_runner(tiny_bundle, "openvino", "fp32", "npu").activate()
    assert "--device npu needs its NPU device" in str(err.value)
    result = run_cli("parity", "--bundle", str(tiny_bundle), "--runtime", "openvino", "--device", "npu",
                     "--num-images", "1")
    assert result.returncode == ExitCode.NO_HARDWARE
    assert_one_line_error(result, "OpenVINO sees CPU", "--device npu needs its NPU device")


def test_device_names_pass_through():
    assert openvino_device("cpu", ["CPU"]) == "CPU"
    assert openvino_device("gpu", ["CPU", "GPU.0", "GPU.1"]) == "GPU"
    assert openvino_device("GPU.1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"
    assert openvino_device("npu", ["CPU", "NPU"]) == "NPU"
    with pytest.raises(HardwareError, match=r"OpenVINO sees CPU, GPU here; --device GPU.1 needs"):
        openvino_device("GPU.1", ["CPU", "GPU"])
    with pytest.raises(HardwareError, match="an Intel GPU and its compute driver"):
        openvino_device("gpu", ["CPU"])


def test_missing_package_names_the_extra(monkeypatch, tiny_bundle):
    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    with pytest.raises(MissingDependencyError) as err:
        import_openvino("parity")
    assert str(err.value) == ("parity needs the Python package 'openvino', which is not installed: "
                              "pip install 'fornet-deploy[openvino]'")
    with pytest.raises(MissingDependencyError, match=r"fornet-deploy\[openvino\]"):
        load_runner(tiny_bundle, "openvino", "fp32", "cpu").activate()


def test_missing_package_on_the_command_line(tmp_path, tiny_bundle, monkeypatch):
    # An `openvino` that cannot be imported, first on the path of the CLI's process.
    fake = tmp_path / "site" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: openvino is not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site") + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    result = run_cli("bench", "--bundle", str(tiny_bundle), "--runtime", "openvino", "--iters", "1", "--warmup", "0")
    assert result.returncode == ExitCode.MISSING_PACKAGE
    assert_one_line_error(result, "pip install 'fornet-deploy[openvino]'")


def test_the_format_table_creates_every_runner_and_nothing_else(tiny_bundle):
    assert RUNTIMES == tuple(RUNNERS) and "openvino" in RUNTIMES
    for runtime in RUNTIMES:
        cls = runner_class(runtime)
        assert issubclass(cls, Runner) and cls.__module__ == RUNNERS[runtime].split(":")[0]
        assert any(f.runtime == runtime for f in FORMATS)
    assert isinstance(load_runner(tiny_bundle, "openvino", "fp32", "cpu"), OpenVinoRunner)
    for unknown in ("tensorrt", "onnxruntime", ""):
        with pytest.raises(OptionError, match="unknown runtime"):
            runner_class(unknown)
        with pytest.raises(OptionError, match="unknown runtime"):  # not a TensorRT runner
            load_runner(tiny_bundle, unknown, "fp32", "cpu")


def test_precisions_and_devices_of_the_table():
    assert [f.artifact for f in formats_for("openvino", "fp32", "cpu")] == ["model.cpu.onnx", "model.onnx"]
    assert [f.artifact for f in formats_for("openvino", "int8", "cpu")] == ["model.int8.cpu.onnx"]
    with pytest.raises(FornetError, match="--runtime openvino --precision bf16 does not run on --device gpu"):
        formats_for("openvino", "bf16", "gpu")
    with pytest.raises(FornetError, match="--runtime openvino --precision fp16 does not run on --device cpu .use --device gpu or npu."):
        formats_for("openvino", "fp16", "cpu")
    with pytest.raises(FornetError, match="^--runtime trt has no bf16 precision$"):
        formats_for("trt", "bf16")
    with pytest.raises(OptionError, match="unknown precision 'bf16'"):  # no ONNX graph carries bf16
        onnx_graph("bf16")
    with pytest.raises(FornetError, match="--runtime torch --precision fp32 does not run on --device npu"):
        formats_for("torch", "fp32", "npu")


def test_eval_and_predict_run_on_openvino(int8_bundle, tiny_data, tmp_path):
    from fornet_deploy.api import evaluate, predict_files

    result = evaluate(int8_bundle, tiny_data, "openvino", "int8", "cpu")
    assert result["runner"]["backend"] == "openvino" and 0 <= result["miou"] <= 1
    assert result["topk_selection"]["images_over_k"] == result["topk_selection"]["images_under_k"] == 0
    images = sorted((tiny_data / "leftImg8bit" / "val").rglob("*.png"))[:1]
    summary = predict_files(int8_bundle, [str(images[0])], tmp_path / "out", "openvino", "fp32", "cpu")
    assert summary["files"] and json.loads((tmp_path / "out" / "predictions.json").read_text())


def test_demo_verifies_openvino(tmp_path, tiny_checkpoint):
    from fornet_deploy.demo import DemoConfig, load_results, run_demo

    cfg = DemoConfig(out=tmp_path / "demo", weights=tiny_checkpoint, synth_train=6, synth_val=2, height=64, width=128,
                     calib_images=2, bench_iters=2, accuracy_images=1, runtime="openvino")
    result = run_demo(cfg, log=lambda line: None)
    report = (tmp_path / "demo" / "report.md").read_text()
    results = load_results(tmp_path / "demo")
    for precision, artifact in (("fp32", "model.cpu.onnx"), ("int8", "model.int8.cpu.onnx")):
        s = results[f"results/parity_openvino_{precision}/parity.json"]["artifacts"][artifact]["summary"]
        assert s == result["parity"][artifact] and f"| openvino {precision} ({artifact}) |" in report
        assert results[f"results/eval_openvino_{precision}.json"]["runner"]["backend"] == "openvino"
    assert result["failed"] == [f"parity {name}" for name, s in result["parity"].items() if not s["passed"]]
    matrix = results["results/bench_matrix.json"]["rows"]
    assert {(r["runtime"], r["precision"]) for r in matrix} >= {("ort", "fp32"), ("openvino", "fp32"),
                                                               ("openvino", "int8")}
    with pytest.raises(OptionError, match="unknown demo runtime 'trt'"):
        run_demo(DemoConfig(out=tmp_path / "other", runtime="trt"))


def test_a_cache_folder_that_is_a_link_is_never_written_through(int8_bundle, tmp_path):
    """`BUNDLE/openvino_cache` as a symbolic link to a folder elsewhere: the runner runs without
    the cache rather than have OpenVINO write its blobs outside the bundle (issue 26)."""
    cache = int8_bundle / OPENVINO_CACHE_DIR
    shutil.rmtree(cache, ignore_errors=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.symlink_to(elsewhere, target_is_directory=True)
    try:
        with load_runner(int8_bundle, "openvino", "int8", "cpu") as runner:
            assert runner.info().to_dict()["cache_dir"] is None
            runner(_batch())
        assert list(elsewhere.iterdir()) == [] and cache.is_symlink()
    finally:
        cache.unlink()
    with load_runner(int8_bundle, "openvino", "int8", "cpu") as runner:  # a plain folder: used
        assert runner.info().to_dict()["cache_dir"] == str(cache)
    assert any(cache.iterdir())


@pytest.mark.parametrize("command", ["parity", "eval"])
def test_bf16_is_a_precision_parity_and_eval_take_from_the_command_line(int8_bundle, tiny_data, tmp_path, command):
    """`parity --runtime openvino --precision bf16` was refused as an unknown precision (the
    CLI checked the artefact precisions, not the run precisions)."""
    result = run_cli(command, "--bundle", str(int8_bundle), "--runtime", "openvino", "--precision", "bf16",
                     "--data", str(tiny_data), "--num-images", "2", "--json", str(tmp_path / "r.json"))
    assert "unknown precision" not in result.stderr
    if result.returncode == ExitCode.NO_HARDWARE:  # a CPU without BF16: one line, not an f32 run called bf16
        assert_one_line_error(result, "bf16")
        return
    assert result.returncode in (0, 1), result.stderr  # 1: a parity verdict, not a refusal
    report = json.loads((tmp_path / "r.json").read_text())
    if command == "parity":
        assert report["precision"] == "bf16"
        assert report["thresholds"]["min_mask_agreement"] == THRESHOLDS["fp16"].min_mask_agreement
    else:
        assert report["runner"]["precision"] == "bf16" and report["runner"]["inference_precision"] == "bf16"


def _argmax_model(shape: tuple[int, ...], axis: int, keepdims: int) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ArgMax", ["x"], ["y"], axis=axis, keepdims=keepdims)], "argmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("shape, axis, keepdims", [((16, 300, 19), 2, 0), ((1, 19, 8, 12), 1, 0), ((2, 5, 7), -1, 1),
                                                   ((4, 3, 6), 0, 0)])
def test_argmax_by_reductions_is_argmax_ties_to_the_lowest_index(shape, axis, keepdims):
    """The rewrite gives ONNX ArgMax's answer (numpy's: the first maximum) on data full of ties,
    each precision's marks or none; OpenVINO's own TopK gives the same (the reference is right)."""
    core = openvino_core(ov)
    onnx_bytes = _argmax_model(shape, axis, keepdims)
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 3, size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32),
            np.zeros(shape, np.float32)]
    for attributes in ({}, keep_precision_attributes(ov, core)):
        original, rewritten = core.read_model(onnx_bytes), core.read_model(onnx_bytes)
        assert argmax_by_reductions(rewritten, attributes) == 1
        runs = [core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": ov.Type.f32}).create_infer_request()
                for m in (original, rewritten)]
        for x in data:
            expected = np.argmax(x, axis=axis)
            if keepdims:
                expected = np.expand_dims(expected, axis)
            for run in runs:
                np.testing.assert_array_equal(run.infer({0: x})[0], expected)


def test_the_runner_computes_argmax_without_topk(int8_bundle, monkeypatch):
    """Every graph of the bundle: no TopK left in what the CPU plugin runs (the slow kernel),
    the outputs identical to the unrewritten graph's, bit for bit."""
    x = _batch()
    for artifact, precision in (("model.cpu.onnx", "fp32"), ("model.int8.cpu.onnx", "int8"), ("model.onnx", "fp32")):
        with OpenVinoRunner(int8_bundle / artifact, precision=precision, cache_dir=None) as runner:
            rewritten, info = runner(x), runner.info().to_dict()
            runtime = list(runner._compiled.values())[-1][0].get_runtime_model()
            kinds = {op.get_rt_info()["layerType"].astype(str) for op in runtime.get_ordered_ops()}
        assert info["argmax_by_reductions"] >= 1 and "TopK" not in kinds, artifact
        with monkeypatch.context() as patch:
            patch.setattr(openvino_runner, "argmax_by_reductions", lambda model, attributes: 0)
            with OpenVinoRunner(int8_bundle / artifact, precision=precision, cache_dir=None) as runner:
                original = runner(x)
        assert original.keys() == rewritten.keys()
        for name in original:
            np.testing.assert_array_equal(original[name], rewritten[name], err_msg=f"{artifact}: {name}")


# Two runners, the first closed (and freed) before the second; then Ctrl-C. Prints what Python
# made of the signal; a process killed by SIGSEGV prints nothing.
CROSSED_LIFETIMES_CHILD = """
import gc, os, signal, sys, time
from fornet_deploy.runtimes import openvino_runner
if sys.argv[2] == "a Core per runner":
    openvino_runner.openvino_core = lambda ov: ov.Core()
first = openvino_runner.OpenVinoRunner(sys.argv[1], precision="fp32", cache_dir=None).activate()
second = openvino_runner.OpenVinoRunner(sys.argv[1], precision="fp32", cache_dir=None).activate()
first.deactivate(); del first; gc.collect()
second.deactivate(); del second; gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    print("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


@pytest.mark.parametrize("cores", ["one Core", "a Core per runner"])
def test_ctrl_c_after_runners_closed_in_the_order_they_were_made(int8_bundle, cores):
    """OpenVINO's CPU plugin (one per Core) swaps the thread's alternate signal stack and puts the
    one it found back when destroyed (module docstring): with a Core per runner, closing the first
    runner first leaves the thread on an unmapped stack and Ctrl-C kills Python with SIGSEGV.
    With the runners' one Core, Ctrl-C is a KeyboardInterrupt. The planted variant shows the
    test sees the crash (skipped where OpenVINO no longer leaves the stack dangling)."""
    import signal
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", CROSSED_LIFETIMES_CHILD, str(int8_bundle / "model.cpu.onnx"), cores],
                           capture_output=True, text=True, timeout=300)
    if cores == "one Core":
        assert child.returncode == 0 and child.stdout.strip() == "KeyboardInterrupt", (child.returncode, child.stderr[-2000:])
    elif child.returncode == 0:
        pytest.skip("this OpenVINO puts the signal stack back in any order of destruction")
    else:
        assert child.returncode == -signal.SIGSEGV and not child.stdout.strip(), (child.returncode, child.stderr[-2000:])
