"""The exported Top-K graph in ONNX Runtime (CPU) against the same references as in PyTorch.

One small dynamic-shape graph per form is exported once per session (TorchScript exporter,
opset 17, like the bundle export) and fed many maps of different sizes.
"""

import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model.topk_maps import (
    any_float,
    denormals,
    distinct,
    float_run,
    log_uniform,
    reference_mask,
    saturated_sigmoid,
    tiny_kth,
    topk_mask,
)

from fornet_deploy.model.topk import (
    DEFAULT_STEPS,
    TopK,
    exact_topk_mask,
    logit_threshold,
    threshold_topk_mask,
    topk_count,
)

ort = pytest.importorskip("onnxruntime")

FAST = settings(
    deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
SHAPES = [(1, 1), (1, 9), (13, 7), (7, 13), (8, 8), (16, 32), (5, 3)]

# Ops TensorRT's ONNX parser lists as supported ("Y", onnx-tensorrt docs/operators.md, 10.x),
# for the types used here. Clip is float-only there, so the graph must not Clip integers.
TENSORRT_OPS = {
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or",
    "Not", "IsNaN", "Where", "Cast", "ReduceSum", "ReduceMax", "ReduceProd", "Gather", "MatMul", "Shape",
    "Slice", "Range", "Unsqueeze", "Reshape", "Clip", "Constant",
}
FORBIDDEN = {"TopK", "Sort", "NonZero", "Loop", "Scan", "Unique", "CumSum", "If"}


def adaptive_topk() -> TopK:
    return TopK(0.25, "threshold", selection="adaptive", adaptive_threshold=0.3, min_ratio=0.05, max_ratio=0.5)


class WithK(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, scores, k):
        return self.fn(scores, k)


def export(module: torch.nn.Module, with_k: bool) -> onnx.ModelProto:
    args = (torch.randn(2, 1, 6, 5),) + ((torch.full((2, 1, 1, 1), 3.0),) if with_k else ())
    names = ["scores", "k"][: len(args)]
    axes = {"scores": {0: "n", 2: "h", 3: "w"}, "mask": {0: "n", 2: "h", 3: "w"}} | ({"k": {0: "nk"}} if with_k else {})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=17, input_names=names,
                          output_names=["mask"], dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    return proto


class Graph:
    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, values: np.ndarray, k=None) -> np.ndarray:
        x = np.ascontiguousarray(values, dtype=np.float32)
        x = x.reshape((1, 1) + x.shape) if x.ndim == 2 else x
        feeds = {"scores": x}
        if "k" in self.inputs:
            feeds["k"] = np.asarray(k, dtype=np.float32).reshape(-1, 1, 1, 1)
        mask = self.session.run(None, feeds)[0]
        return mask[0, 0] if values.ndim == 2 else mask


@pytest.fixture(scope="session")
def graphs() -> dict[str, Graph]:
    return {
        "threshold": Graph(export(WithK(lambda s, k: threshold_topk_mask(s, k, DEFAULT_STEPS)), True)),
        "exact": Graph(export(WithK(exact_topk_mask), True)),
        "ratio": Graph(export(TopK(0.3, "threshold"), False)),
        "adaptive": Graph(export(adaptive_topk(), False)),
    }


def check(graphs, values: np.ndarray, k: int, expected: np.ndarray) -> None:
    for mode in ("threshold", "exact"):
        assert np.array_equal(graphs[mode](values, k), expected), mode


k_strategy = st.one_of(st.just("one"), st.just("all"), st.floats(0.0, 1.0))


def pick_k(choice, n: int) -> int:
    if choice == "one":
        return 1
    if choice == "all":
        return n
    return max(1, min(n, math.ceil(choice * n)))


def test_threshold_graph_uses_only_tensorrt_parser_ops(graphs):
    for name in ("threshold", "ratio", "adaptive"):
        ops = {n.op_type for n in graphs[name].proto.graph.node}
        assert not ops & FORBIDDEN, name
        assert ops <= TENSORRT_OPS, (name, sorted(ops - TENSORRT_OPS))
    assert "TopK" in {n.op_type for n in graphs["exact"].proto.graph.node}


def test_threshold_graph_clips_floats_only(graphs):
    proto = onnx.shape_inference.infer_shapes(graphs["adaptive"].proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.input)}
    for node in proto.graph.node:
        if node.op_type == "Clip":
            assert types[node.input[0]] == onnx.TensorProto.FLOAT


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy,
       family=st.sampled_from(["log1", "log38", "any", "denormal", "run"]))
def test_tie_free_maps_equal_torch_topk(graphs, shape, seed, kc, family):
    rng = np.random.default_rng(seed)
    values = {
        "log1": lambda: log_uniform(rng, *shape, 1e-38, 1.0, signed=bool(seed % 2)),
        "log38": lambda: log_uniform(rng, *shape, 1e-38, 1e38, signed=bool(seed % 2)),
        "any": lambda: any_float(rng, *shape),
        "denormal": lambda: denormals(rng, *shape),
        "run": lambda: float_run(rng, *shape),
    }[family]()
    assert distinct(values)
    k = pick_k(kc, values.size)
    check(graphs, values, k, topk_mask(values, k))


@FAST
@given(shape=st.sampled_from([(13, 7), (8, 8), (16, 32)]), seed=st.integers(0, 2**32 - 1), kc=st.floats(0.0, 1.0))
def test_kth_value_tiny_relative_to_the_max(graphs, shape, seed, kc):
    n = shape[0] * shape[1]
    k = max(2, min(n, math.ceil(kc * n)))
    values = tiny_kth(np.random.default_rng(seed), *shape, k)
    check(graphs, values, k, topk_mask(values, k))


RUN_STARTS = [0.0, -3 * 2.0**-149, 2.0**-126 - 4 * 2.0**-149, 1.0 - 3 * 2**-24, 3e38, -3.4028235e38]


@pytest.mark.parametrize("start", RUN_STARTS)
def test_near_ties_across_zero_binade_and_range_edges(graphs, start):
    values = float_run(np.random.default_rng(1), 6, 5, np.float32(start))
    for k in range(1, 31):
        check(graphs, values, k, topk_mask(values, k))


@FAST
@given(
    shape=st.sampled_from(SHAPES + [(24, 40)]),
    seed=st.integers(0, 2**32 - 1),
    kc=k_strategy,
    scale=st.sampled_from([20.0, 200.0]),
)
def test_saturated_sigmoid_maps_select_exactly_k(graphs, shape, seed, kc, scale):
    values = saturated_sigmoid(np.random.default_rng(seed), *shape, scale)
    k = pick_k(kc, values.size)
    check(graphs, values, k, reference_mask(values, k))


@pytest.mark.parametrize("fill", [0.0, 0.5, 1.0, 2.0**-149, np.inf, -np.inf, np.nan])
def test_constant_maps(graphs, fill):
    for shape in [(1, 1), (13, 7)]:
        values = np.full(shape, fill, dtype=np.float32)
        for k in sorted({1, values.size // 2 or 1, values.size}):
            check(graphs, values, k, reference_mask(values, k))


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1), kc=k_strategy, p=st.floats(0.0, 1.0))
def test_nan_and_infinities_match_pytorch(graphs, shape, seed, kc, p):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 10, shape).astype(np.float32)
    special = rng.random(shape) < p
    values[special] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), int(special.sum()))
    k = pick_k(kc, values.size)
    expected = reference_mask(values, k)
    check(graphs, values, k, expected)
    x = torch.from_numpy(values).view(1, 1, *shape)
    assert np.array_equal(threshold_topk_mask(x, torch.tensor([float(k)]))[0, 0].numpy(), expected)


def test_batch_with_per_image_k(graphs):
    rng = np.random.default_rng(2)
    maps = np.stack([any_float(rng, 9, 11) for _ in range(3)])[:, None]
    ks = [1, 50, 99]
    for mode in ("threshold", "exact"):
        masks = graphs[mode](maps, ks)
        for i, k in enumerate(ks):
            assert np.array_equal(masks[i, 0], topk_mask(maps[i, 0], k))


@pytest.mark.parametrize("h, w", [(1, 1), (13, 7), (5, 10), (30, 32), (64, 128), (128, 256)])
def test_in_graph_k_follows_the_runtime_size(graphs, h, w):
    values = np.random.default_rng(h * w).normal(size=(2, 1, h, w)).astype(np.float32)
    mask = graphs["ratio"](values)
    assert mask.reshape(2, -1).sum(1).tolist() == [topk_count(0.3, h * w)] * 2
    for i in range(2):
        assert np.array_equal(mask[i, 0], topk_mask(values[i, 0], topk_count(0.3, h * w)))


def test_adaptive_k_graph_matches_pytorch(graphs):
    rng = np.random.default_rng(4)
    top = adaptive_topk()
    for shape in [(13, 7), (16, 32), (64, 128)]:
        logits = rng.normal(0, 30, (3, 1, *shape)).astype(np.float32)
        logits[0] -= 100  # nothing above tau: min_ratio
        logits[1] += 100  # everything above: max_ratio
        mask = graphs["adaptive"](logits)
        assert np.array_equal(mask, top(torch.from_numpy(logits)).numpy())
        n = shape[0] * shape[1]
        above = int((logits[2] >= logit_threshold(0.3)).sum())
        expected_k = [topk_count(0.05, n), topk_count(0.5, n), min(max(above, topk_count(0.05, n)), topk_count(0.5, n))]
        assert mask.reshape(3, -1).sum(1).tolist() == expected_k
