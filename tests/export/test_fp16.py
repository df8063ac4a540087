"""model.fp16.onnx: FP16 everywhere except the selector/Top-K subgraph, float32 I/O."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.bundle import Bundle
from fornet_deploy.contract import ONNX_FP16, ONNX_FP32
from fornet_deploy.errors import FornetError
from fornet_deploy.export.fp16 import convert_fp16, fp32_scope_nodes, in_fp32_scope, to_mixed_fp16

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def converted(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("fp16") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    return bundle, convert_fp16(bundle)


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (shape inference also types Constant outputs)."""
    graph = onnx.shape_inference.infer_shapes(proto).graph
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)})
    return types


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: batch})))


def test_scope_is_matched_anywhere_in_the_node_name():
    assert in_fp32_scope("/focus/selector/score/Conv")
    assert in_fp32_scope("/model/focus/topk/ReduceSum_3")
    assert not in_fp32_scope("/focus/enhance/fuse/fuse.0/Conv")
    assert not in_fp32_scope("/focus/Mul")


def test_selector_and_topk_stay_float32(converted):
    bundle, entry = converted
    fp16 = onnx.load(str(bundle / ONNX_FP16))
    types = _types(fp16)
    scope = [n for n in fp16.graph.node if in_fp32_scope(n.name)]
    assert any(n.op_type == "Sigmoid" for n in scope) and any(n.op_type == "ReduceSum" for n in scope)
    for node in scope:
        assert FLOAT16 not in {types.get(t) for t in (*node.input, *node.output) if t}, node.name
    assert entry["fp32_nodes"] == sum(
        1 for n in scope if n.op_type != "Constant" and FLOAT in {types.get(t) for t in (*n.input, *n.output)}
    )


def test_rest_of_the_graph_is_float16_with_float32_io(converted):
    bundle, _ = converted
    fp16 = onnx.load(str(bundle / ONNX_FP16))
    types = _types(fp16)
    convs = [n for n in fp16.graph.node if n.op_type == "Conv" and not in_fp32_scope(n.name)]
    assert convs and all(types[n.input[1]] == FLOAT16 and types[n.output[0]] == FLOAT16 for n in convs)
    assert all(types[v.name] != FLOAT16 for v in (*fp16.graph.input, *fp16.graph.output))


def test_manifest_records_the_artefact(converted):
    bundle, entry = converted
    opened = Bundle.open(bundle)  # verifies every sha256
    assert opened.artifacts[ONNX_FP16] == entry
    assert entry["kind"] == "onnx" and entry["precision"] == "fp16" and entry["source"] == ONNX_FP32
    assert entry["converter"]["name"] and entry["converter"]["version"]


def test_fp16_agrees_with_fp32_on_a_smooth_input(converted):
    bundle, _ = converted
    yy, xx = np.meshgrid(np.linspace(-1, 1, 128), np.linspace(-1, 1, 256), indexing="ij")
    batch = np.stack([np.sin(3 * xx) + yy, np.cos(2 * yy) - xx, xx * yy])[None].astype(np.float32)
    ref = _run(_session(bundle / ONNX_FP32), batch)
    out = _run(_session(bundle / ONNX_FP16), batch)
    assert all(out[name].dtype == ref[name].dtype for name in ref)
    assert np.mean(out["labels"] == ref["labels"]) >= 0.99
    assert np.mean(out["topk_mask"] == ref["topk_mask"]) >= 0.99
    np.testing.assert_allclose(out["importance"], ref["importance"], atol=1e-2)


def _toy_model(weight: np.ndarray) -> onnx.ModelProto:
    """x -> Conv -> Sigmoid (selector scope) -> output s; the Conv output is an output too."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="/head/Conv"),
        helper.make_node("Sigmoid", ["y"], ["s"], name="/focus/selector/Sigmoid"),
    ]
    x, y, s = (helper.make_tensor_value_info(name, FLOAT, [1, 1, 4, 4]) for name in "xys")
    graph = helper.make_graph(nodes, "toy", [x], [y, s], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_casts_only_at_region_boundaries_and_weights_saturate():
    weight = np.array([[[[1e6]]]], np.float32)  # beyond float16's range
    model, summary = to_mixed_fp16(_toy_model(weight))
    assert [n.op_type for n in model.graph.node] == ["Cast", "Conv", "Cast", "Sigmoid"]  # input, output y
    assert model.graph.node[-1].input == ["y"]  # the selector reads the float32 output: no second Cast
    assert summary["fp32_nodes"] == 1 and summary["clipped_weights"] == 1
    x = np.full((1, 1, 4, 4), 1e-3, np.float32)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.isfinite(out[0]).all() and out[0].dtype == np.float32


def test_scope_nodes_found_in_a_real_export(tiny_bundle):
    names = fp32_scope_nodes(onnx.load(str(tiny_bundle / ONNX_FP32)))
    assert any(n.startswith("/focus/selector/") for n in names) and any(n.startswith("/focus/topk/") for n in names)


def test_bundle_without_onnx_is_a_clear_error(tmp_path):
    Bundle.create(tmp_path / "empty")
    with pytest.raises(FornetError, match="export"):
        convert_fp16(tmp_path / "empty")
    assert not (tmp_path / "empty" / ONNX_FP16).exists()
