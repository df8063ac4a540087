"""INT8 Q/DQ artefacts: TensorRT-shaped (symmetric, per-channel), CPU U8S8, FP32 selector."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration.qdq import calibrate_bundle, excluded_nodes
from fornet_deploy.contract import ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ
from fornet_deploy.errors import FornetError
from fornet_deploy.export.fp16 import in_fp32_scope
from fornet_deploy.export.lint import lint_tensorrt

NUM = 3  # calibration images: enough to exercise chunking, fast on the tiny model


def _copy(bundle: Path, tmp: Path) -> Path:
    out = tmp / "bundle"
    shutil.copytree(bundle, out)
    return out


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tiny_data, tmp_path_factory) -> tuple[Path, dict, dict]:
    bundle = _copy(tiny_bundle, tmp_path_factory.mktemp("qdq"))
    trt = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="tensorrt")
    cpu = calibrate_bundle(bundle, tiny_data, num_images=NUM, method="minmax", target="cpu")
    return bundle, trt, cpu


def _graph(path: Path):
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return proto, producers, constants


def test_tensorrt_graph_is_symmetric_qdq_with_per_channel_conv_weights(calibrated):
    bundle, _, _ = calibrated
    proto, producers, constants = _graph(bundle / ONNX_INT8_QDQ)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not any(op.startswith("QLinear") or op.endswith("Integer") for op in ops)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = constants[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and not in_fp32_scope(n.name)]
    assert convs
    for conv in convs:
        dq = producers[conv.input[1]]
        q = producers[dq.input[0]]  # float weight -> Q -> DQ, the pair TensorRT folds
        assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear") and q.input[0] in constants
        out_channels = constants[q.input[0]].shape[0]
        assert {a.name: a.i for a in dq.attribute}.get("axis") == 0
        assert constants[dq.input[1]].shape == (out_channels,)
        assert len(conv.input) < 3 or conv.input[2] in constants  # float bias: no INT32 DQ
    assert not [f for f in lint_tensorrt(proto) if f.severity == "blocker"]


def test_selector_topk_and_outputs_stay_float(calibrated, tiny_bundle):
    bundle, trt, _ = calibrated
    source = onnx.load(str(tiny_bundle / ONNX_FP32))
    assert trt["excluded_nodes"] == excluded_nodes(source)
    proto, producers, constants = _graph(bundle / ONNX_INT8_QDQ)
    for node in proto.graph.node:
        if not in_fp32_scope(node.name):
            continue
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        if node.op_type == "Conv":  # float weights, not dequantized ones
            assert node.input[1] in constants
        if "/topk/" in node.name:  # the bisection reads the float importance map
            assert all(producers.get(t) is None or producers[t].op_type != "DequantizeLinear" for t in node.input)
    for output in proto.graph.output:
        assert producers[output.name].op_type != "DequantizeLinear", output.name


def test_cpu_graph_is_u8s8_and_runs(calibrated, tiny_data):
    bundle, _, cpu = calibrated
    proto, producers, constants = _graph(bundle / ONNX_INT8_CPU)
    activations = {constants[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    weights = {constants[producers[n.input[1]].input[2]].dtype for n in proto.graph.node
               if n.op_type == "Conv" and n.input[1] in producers}
    assert activations == {np.dtype(np.uint8)} and weights == {np.dtype(np.int8)}
    session = ort.InferenceSession(str(bundle / ONNX_INT8_CPU), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"image": np.zeros((1, 3, 128, 256), np.float32)})))
    # the CPU tail (export/tail.py): logits at 1/4 scale, labels at full resolution
    assert outputs["coarse_logits"].shape == (1, 19, 32, 64) and outputs["labels"].shape == (1, 128, 256)
    assert cpu["calibration"]["num_images"] == NUM and cpu["precision"] == "int8" and cpu["target"] == "cpu"


def test_manifest_and_shared_calibration(calibrated):
    bundle, trt, cpu = calibrated
    opened = Bundle.open(bundle)  # every sha256 checks out
    assert opened.artifacts[ONNX_INT8_QDQ] == trt and opened.artifacts[ONNX_INT8_CPU] == cpu
    assert trt["calibration"]["key"] == cpu["calibration"]["key"]
    assert trt["method"] == "minmax" and trt["opset"] == opened.artifacts[ONNX_FP32]["opset"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_reruns_are_byte_identical(tiny_bundle, tiny_data, tmp_path, method):
    outputs = []
    for run in ("first", "second"):  # fresh bundles: no cache, the whole calibration again
        bundle = _copy(tiny_bundle, tmp_path / run)
        calibrate_bundle(bundle, tiny_data, num_images=NUM, method=method, target="tensorrt", seed=3)
        outputs.append((bundle / ONNX_INT8_QDQ).read_bytes())
    calibrate_bundle(bundle, tiny_data, num_images=NUM, method=method, target="tensorrt", seed=3)  # cached tensors
    outputs.append((bundle / ONNX_INT8_QDQ).read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_bad_arguments_are_clear_errors(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    with pytest.raises(FornetError, match="does not exist"):
        calibrate_bundle(bundle, tmp_path / "no-data")
    (tmp_path / "empty" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FornetError, match="no"):
        calibrate_bundle(bundle, tmp_path / "empty")
    with pytest.raises(FornetError, match="calibration method"):
        calibrate_bundle(bundle, tmp_path / "empty", method="kl")
    with pytest.raises(FornetError, match="calibration target"):
        calibrate_bundle(bundle, tmp_path / "empty", target="gpu")
    assert not (bundle / ONNX_INT8_QDQ).exists() and not (bundle / ONNX_INT8_CPU).exists()


def test_the_quantizer_scratch_file_never_lands_in_the_bundle(tiny_bundle, tiny_data, tmp_path):
    """Issue 14 defect 4: ONNX Runtime's quantizer writes `<model>-inferred.onnx` beside its
    input; a symlink planted there made calibrate overwrite a file outside the bundle."""
    from fornet_deploy.calibration.calibset import CalibrationSet
    from fornet_deploy.calibration.qdq import TARGETS, quantize_int8
    from fornet_deploy.data.transforms import Preprocessing

    precious = tmp_path / "precious.txt"
    # The hazard is real: run the quantizer on a graph inside a folder with the planted link.
    exposed = _copy(tiny_bundle, tmp_path / "exposed")
    precious.write_text("keep me")
    (exposed / "model-inferred.onnx").symlink_to(precious)
    images, _ = CalibrationSet.select(tiny_data, Preprocessing(), num=1).arrays(tmp_path / "cache", "0" * 64)
    quantize_int8(exposed / ONNX_FP32, tmp_path / "out.onnx", images, "minmax", TARGETS["cpu"], [])
    assert precious.read_bytes() != b"keep me"  # ONNX Runtime wrote through the link

    bundle = _copy(tiny_bundle, tmp_path / "guarded")
    precious.write_text("keep me")
    (bundle / "model-inferred.onnx").symlink_to(precious)
    before = sorted(p.name for p in bundle.iterdir())
    calibrate_bundle(bundle, tiny_data, num_images=2, method="minmax", target="cpu")
    assert precious.read_text() == "keep me" and (bundle / "model-inferred.onnx").is_symlink()
    assert sorted(p.name for p in bundle.iterdir()) == sorted({*before, ONNX_INT8_CPU, "calibration"})
