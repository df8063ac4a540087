"""Concat folding (export/rewrite.py): the same outputs up to float rounding, or no change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fornet_deploy.export.onnx import ExportConfig, export_onnx_model
from fornet_deploy.export.rewrite import fold_concats
from fornet_deploy.model.checkpoint import load_checkpoint


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def concat_graph(sizes=(3, 5, 2), depthwise: bool = True, kernel: int = 1, multiplier: int = 1, axis: int = 1,
                 extra_reader: bool = False, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """parts -> Concat [-> depthwise 3x3 -> Relu] -> Conv(kernel) -> y; random weights."""
    rng = np.random.default_rng(seed)
    total, out = (sum(sizes) if axis == 1 else sizes[0]), 4
    inputs = [helper.make_tensor_value_info(f"p{k}", TensorProto.FLOAT, [1, c, 6, 7]) for k, c in enumerate(sizes)]
    nodes = [helper.make_node("Concat", [f"p{k}" for k in range(len(sizes))], ["cat"], name="/head/Concat", axis=axis)]
    weights = {"w": rng.normal(size=(out, total, kernel, kernel)).astype(np.float32),
               "b": rng.normal(size=out).astype(np.float32)}
    tensor = "cat"
    if depthwise:
        weights |= {"dw": rng.normal(size=(total * multiplier, 1, 3, 3)).astype(np.float32),
                    "dwb": rng.normal(size=total * multiplier).astype(np.float32)}
        weights["w"] = rng.normal(size=(out, total * multiplier, kernel, kernel)).astype(np.float32)
        nodes += [helper.make_node("Conv", ["cat", "dw", "dwb"], ["d"], name="/head/fuse/dw/Conv", group=total,
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["d"], ["r"], name="/head/fuse/Relu")]
        tensor = "r"
    pad = kernel // 2
    nodes.append(helper.make_node("Conv", [tensor, "w", "b"], ["y"], name="/head/fuse/pw/Conv",
                                  kernel_shape=[kernel, kernel], pads=[pad] * 4))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["cat"], ["cat_copy"], name="/head/Identity"))
        outputs.append(helper.make_tensor_value_info("cat_copy", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    feeds = {f"p{k}": rng.normal(size=(1, c, 6, 7)).astype(np.float32) for k, c in enumerate(sizes)}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds


@pytest.mark.parametrize("sizes, depthwise, kernel", [((3, 5, 2), True, 1), ((4, 4), False, 1), ((2, 6), False, 3),
                                                      ((1, 2, 3, 4), True, 3)])
def test_folded_concat_computes_the_same(sizes, depthwise, kernel):
    proto, feeds = concat_graph(sizes, depthwise, kernel)
    folded, names = fold_concats(proto)
    assert names == ["/head/Concat"]
    assert "Concat" not in {n.op_type for n in folded.graph.node}
    assert all(n.name.startswith("/head/") for n in folded.graph.node)  # the profiler's scope is kept
    np.testing.assert_allclose(run(folded, feeds)["y"], run(proto, feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", [{"axis": 2, "sizes": (3, 3), "depthwise": False}, {"multiplier": 2},
                                     {"extra_reader": True}])
def test_what_cannot_be_folded_is_left_alone(changes):
    proto, _ = concat_graph(**changes)
    folded, names = fold_concats(proto)
    assert names == [] and folded is proto


def test_fornet_graph_folds_both_concats(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    proto = export_onnx_model(model, ExportConfig(height=64, width=128))
    folded, names = fold_concats(proto)
    assert names == ["/focus/enhance/Concat", "/head/Concat"]
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 128)).astype(np.float32)
    want, got = run(proto, {"image": x}), run(folded, {"image": x})
    assert np.abs(want["logits"] - got["logits"]).max() < 1e-4
    np.testing.assert_array_equal(want["topk_mask"], got["topk_mask"])
