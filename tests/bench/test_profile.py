"""``bench --profile``: ONNX Runtime's profiler trace grouped by op type and by scope."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from fornet_deploy.bench import BenchConfig, run_benchmark, run_matrix
from fornet_deploy.bench.profile import SCOPE_ORDER, name_scope, node_scopes, profile_runner, summarize_trace
from fornet_deploy.bench.tables import profile_markdown, profile_tables
from fornet_deploy.contract import ONNX_CPU, ONNX_FP32
from fornet_deploy.runtimes.registry import load_runner


@pytest.mark.parametrize("name, scope", [
    ("/backbone/stem/stem.0/stem.0.0/Conv", "backbone"),
    ("/neck/context/context.1/Conv", "neck"),
    ("/focus/enhance/Concat", "focus"),
    ("/focus/selector/score/Conv", "selector"),
    ("/focus/topk/ReduceSum_3", "topk"),
    ("/head/classifier/Conv_output_0_QuantizeLinear", "head"),
    ("/tail/argmax_quarter_2", "tail"),
    ("/Resize", "tail"),  # the export's own tail: root-level names
    ("/Cast_1", "tail"),
    ("ReorderOutput_token_12", None),  # made by ONNX Runtime: decided by its neighbours
    ("image_QuantizeLinear", None),
])
def test_name_scope(name, scope):
    assert name_scope(name) == scope


def test_nodes_onnx_runtime_made_take_their_consumers_or_producers_scope():
    def node(name, inputs, outputs):
        return helper.make_node("Identity", inputs, outputs, name=name)

    graph = helper.make_graph([
        node("image_QuantizeLinear", ["image"], ["q"]),  # feeds the backbone
        node("/backbone/stem/Conv", ["q"], ["a"]),
        node("ReorderInput_1", ["a"], ["b"]),  # feeds the head only
        node("/head/classifier/Conv", ["b"], ["c"]),
        node("ReorderOutput_2", ["c"], ["d"]),  # feeds the tail and the neck: the producer's (head)
        node("/tail/argmax_3", ["d"], ["labels"]),
        node("/neck/x/Conv", ["d"], ["e"]),
        node("Made_4", ["e"], ["out"]),  # a graph output: no consumer, its producer's
        node("Orphan_5", ["nothing"], ["void"]),
    ], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("labels", "out", "void")])
    scopes = node_scopes(graph)
    assert scopes["image_QuantizeLinear"] == "backbone" and scopes["ReorderInput_1"] == "head"
    assert scopes["ReorderOutput_2"] == "head" and scopes["Made_4"] == "neck" and scopes["Orphan_5"] == "other"


def _event(name: str, op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_summarize_trace_skips_warmup_and_takes_median_kernel_times():
    trace = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 90} for t in (0, 100, 200, 300)]
    for run, ts in enumerate((0, 100, 200, 300)):
        warm = run == 0  # the warm-up run is 100x slower: it must not count
        trace.append(_event("/backbone/a/Conv", "Conv", ts + 1, 3000 if warm else 3000 + run))
        trace.append(_event("/Resize", "Upsample", ts + 10, 100000 if warm else 1000 * run))
        trace.append(_event("/tail/x_1", "ArgMax", ts + 20, 500))
        trace.append({"cat": "Node", "name": "/tail/x_1_fence_before", "ts": ts + 19, "dur": 0})
    result = summarize_trace(trace, warmup=1, scopes={})
    assert result["runs"] == 3
    assert result["by_op"]["Upsample"]["ms"] == pytest.approx(2.0)  # median of 1, 2, 3 ms
    assert result["by_scope"]["backbone"]["ms"] == pytest.approx(3.002)
    assert result["by_scope"]["tail"]["ms"] == pytest.approx(2.5)
    assert result["kernel_ms"] == pytest.approx(5.502)
    assert sum(v["share"] for v in result["by_scope"].values()) == pytest.approx(1.0)
    assert list(result["by_scope"]) == ["backbone", "tail"]  # in SCOPE_ORDER
    assert result["top_nodes"][0] == {"node": "/backbone/a/Conv", "op": "Conv", "scope": "backbone", "ms": 3.002}


@pytest.mark.parametrize("artefact, tail_ops", [(ONNX_FP32, {"Upsample", "Resize", "ArgMax"}),
                                                 (ONNX_CPU, {"NonZero", "ScatterND", "MatMul"})])
def test_profile_of_a_real_graph_finds_every_scope(tiny_bundle, artefact, tail_ops):
    batch = np.random.default_rng(0).normal(size=(1, 3, 128, 256)).astype(np.float32)
    result = profile_runner(lambda folder: load_runner(tiny_bundle, "ort", "fp32", "cpu", artifact=artefact,
                                                       threads=1, profile_dir=folder), batch, runs=3, warmup=1)
    assert result["runs"] == 3 and result["providers"] == ["CPUExecutionProvider"]
    assert set(result["by_scope"]) <= set(SCOPE_ORDER)
    assert {"backbone", "neck", "focus", "selector", "topk", "head", "tail"} <= set(result["by_scope"])
    assert "other" not in result["by_scope"], result["top_nodes"]
    assert sum(v["ms"] for v in result["by_scope"].values()) == pytest.approx(result["kernel_ms"])
    assert sum(v["ms"] for v in result["by_op"].values()) == pytest.approx(result["kernel_ms"])
    assert tail_ops & set(result["by_op"])


def test_bench_profile_json_and_tables(tiny_bundle, tmp_path):
    cfg = BenchConfig(iters=2, warmup=1, threads=1, profile=True)
    result = run_benchmark(tiny_bundle, cfg, json_out=tmp_path / "bench.json")
    profile = result["profile"]
    assert profile["by_scope"]["tail"]["ms"] > 0 and profile["machine_load"]["wall_s"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["profile"]["by_op"] == profile["by_op"]
    titles = [title for title, _, _ in profile_tables(result)]
    assert titles == [f"{ONNX_CPU} by scope", f"{ONNX_CPU} by op type"]
    scope_rows = profile_tables(result)[0][2]
    assert [r[0] for r in scope_rows][-1].startswith("all") and "Top-K" in [r[0] for r in scope_rows]
    table = profile_markdown(result)
    assert f"| `{ONNX_CPU}` |" in table and "| Top-K |" in table.splitlines()[0]

    torch = run_benchmark(tiny_bundle, BenchConfig(runtime="torch", iters=1, warmup=0, threads=1, profile=True))
    assert "ONNX Runtime" in torch["profile"]["note"] and profile_tables(torch) == []


def test_matrix_profiles_every_onnx_runtime_row(tiny_bundle):
    cfg = BenchConfig(iters=1, warmup=0, threads=1, profile=True)
    result = run_matrix(tiny_bundle, "cpu", accuracy_images=1, cfg=cfg)
    ort_rows = [r for r in result["rows"] if r["runtime"] == "ort" and r["status"] == "ok"]
    assert {r["artifact"] for r in ort_rows} >= {ONNX_CPU, ONNX_FP32}
    assert all("by_scope" in r["profile"] for r in ort_rows)
    table = profile_markdown(result)
    assert all(f"`{r['artifact']}`" in table for r in ort_rows)
