"""``fornet-deploy bench --profile``: where an ONNX Runtime graph's time goes.

After the timed iterations, the artefact runs again in a session with ONNX Runtime's
profiler on (``SessionOptions.enable_profiling``; the profiler costs a few microseconds per
node, so the timing itself never runs with it). Every node's kernel time is read from the
trace, its median over the profiled runs taken (robust to a preempted run on a shared
machine), and summed

* by op type as executed, after ONNX Runtime's graph optimisations (``FusedConv``,
  ``QLinearConv``, the NCHWc ``Conv`` / ``Upsample`` and their ``ReorderInput`` /
  ``ReorderOutput``, ...);
* by scope (:data:`SCOPES`): FoR-Net's modules name their nodes (``/backbone/...``), the Top-K
  and the selector are the FP32 scopes of the contract, the export's own tail sits at the
  graph's root (``/Resize``, ``/ArgMax``, ``/Cast``) and a CPU tail under ``/tail/``. A node
  ONNX Runtime made (a layout reorder, a fused node named after no module) takes the scope
  of its consumers when they share one (a reorder exists for them), else of its producer,
  read from the optimised graph the profiled session saves.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..contract import FOCUS_SCOPE, SELECTOR_SCOPE, TAIL_SCOPE, TOPK_SCOPE
from ..runtimes.base import Runner

# Node-name prefix -> scope, first match wins (the Top-K and the selector sit inside /focus/).
SCOPES = ((TOPK_SCOPE, "topk"), (SELECTOR_SCOPE, "selector"), (FOCUS_SCOPE, "focus"), ("/backbone/", "backbone"),
          ("/neck/", "neck"), ("/head/", "head"), (TAIL_SCOPE, "tail"))
SCOPE_ORDER = ("backbone", "neck", "focus", "selector", "topk", "head", "tail", "other")
SCOPE_LABELS = {"topk": "Top-K"}
TOP_NODES = 10


def name_scope(name: str) -> str | None:
    """The scope a node's name puts it in; ``None`` for a name that tells nothing (a node
    ONNX Runtime made). Root-level names (``/Resize``) are the export's tail: the exporter
    names every other node after its module."""
    for prefix, scope in SCOPES:
        if name.startswith(prefix):
            return scope
    if name.startswith("/") and name.count("/") == 1:
        return "tail"
    return None


def node_scopes(graph: onnx.GraphProto) -> dict[str, str]:
    """Scope of every node of an (optimised) graph: by name, else by its neighbours."""
    producer = {out: node.name for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node.name)
    scope = {node.name: name_scope(node.name) for node in graph.node}
    for _ in range(len(graph.node)):  # until nothing changes (a chain of made nodes)
        changed = False
        for node in graph.node:
            if scope[node.name] is not None:
                continue
            after = {scope[c] for out in node.output for c in consumers.get(out, [])}
            before = [scope[producer[i]] for i in node.input if i in producer and scope[producer[i]] is not None]
            found = next(iter(after)) if len(after) == 1 and None not in after else before[0] if before else None
            if found is not None:
                scope[node.name] = found
                changed = True
        if not changed:
            break
    return {name: found or "other" for name, found in scope.items()}


def summarize_trace(trace: list[dict], warmup: int, scopes: dict[str, str]) -> dict:
    """Kernel times of an ONNX Runtime profiler trace, grouped by op type and by scope.

    ``trace``: the profiler's events; the first ``warmup`` model runs are left out. Each
    node's time per run is the median of its kernel times times its calls per run.
    """
    runs = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    profiled = runs[warmup:]
    if not profiled:
        raise ValueError("the profiler trace holds no profiled run")  # a bug guard: runs > 0
    start = profiled[0]
    durations: dict[str, list[float]] = defaultdict(list)
    op_type: dict[str, str] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < start:
            continue
        node = event["name"].removesuffix("_kernel_time")
        durations[node].append(event["dur"] / 1e3)
        op_type[node] = event.get("args", {}).get("op_name", "?")
    per_node = {node: statistics.median(ms) * max(1, round(len(ms) / len(profiled))) for node, ms in durations.items()}
    total = sum(per_node.values())

    def grouped(key: Callable[[str], str], order: tuple[str, ...] = ()) -> dict[str, dict]:
        sums: dict[str, float] = defaultdict(float)
        for node, ms in per_node.items():
            sums[key(node)] += ms
        names = [n for n in order if n in sums] + sorted((n for n in sums if n not in order), key=lambda n: -sums[n])
        return {n: {"ms": sums[n], "share": sums[n] / total if total else 0.0} for n in names}

    top = sorted(per_node, key=lambda n: -per_node[n])[:TOP_NODES]
    return {
        "runs": len(profiled), "statistic": "median kernel time per node", "kernel_ms": total,
        "by_scope": grouped(lambda n: scopes.get(n) or name_scope(n) or "other", SCOPE_ORDER),
        "by_op": grouped(lambda n: op_type[n]),
        "top_nodes": [{"node": n, "op": op_type[n], "scope": scopes.get(n) or name_scope(n) or "other",
                       "ms": per_node[n]} for n in top],
    }


def profile_runner(make_runner: Callable[[Path], Runner], batch: np.ndarray, runs: int, warmup: int) -> dict:
    """Run ``batch`` ``warmup + runs`` times in a profiling runner (``make_runner(folder)``
    builds one that writes its trace and optimised graph into ``folder``) and summarize."""
    with tempfile.TemporaryDirectory(prefix="fornet-profile-") as folder:
        with make_runner(Path(folder)) as runner:
            for _ in range(warmup + runs):
                runner(batch)
            providers = runner.info().details.get("providers")
            trace_path = runner.end_profiling()
            optimised = onnx.load(str(runner.optimized_model_path), load_external_data=False)
        trace = json.loads(Path(trace_path).read_text())
    return {**summarize_trace(trace, warmup, node_scopes(optimised.graph)), "providers": providers}
