"""What the threshold Top-K costs in ONNX Runtime (CPU): exact search vs the old bisection.

Measurements of the full FoR-Net export (static shape, as ``export_bundle`` writes it),
each variant in its own session, block-alternating (A x B runs, B x B runs, ...) so that
machine noise hits every variant alike:

* ``profile`` — ONNX Runtime's profiler (``SessionOptions.enable_profiling``): the Top-K
  share is the summed duration of the nodes whose name contains "/focus/topk/" over the
  summed duration of all nodes (``share_sum_pct``, the issue's measure), and the same with
  each node's median over the runs (``share_median_pct``, robust to outliers on a shared
  machine). The profiler adds a few microseconds to every node, so it overstates graphs of
  many small nodes (the Top-K) against graphs of few large ones (convolutions).
* ``wall`` — no profiler: the Top-K subgraph (selector scores -> mask) cut out of the same
  ONNX file and timed alone, against the full model; medians and their ratio.
* ``cpu_1thread`` — the same with one intra-op thread (no spinning) and the process's CPU
  time instead of the clock: the work done, least disturbed by other load on the machine.
* ``latency`` (``--latency``) — the earlier comparison: PyTorch eager (exact Top-K) vs
  ONNX Runtime with the threshold and the exact (TopK op) graph.

Variants: ``legacy`` is the Top-K this project shipped before (32 value-space bisection
steps on sigmoid(scores), rebuilt here; its extra Sigmoid is left out of the share);
``search-S`` is the exact search with S rounds (``topk_search_steps``). Numbers are
ratios measured in one process; absolute times depend on the machine and its load.

    python benchmarks/topk_overhead.py --checkpoint fornet_deploy/weights/fornet_synthcity.safetensors \
        --shape 512x1024 --shape 1024x2048 --steps 9 12 16 32 --json topk_overhead.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from legacy_topk import legacy_bisection_mask
from torch import nn

from fornet_deploy.bench.sysinfo import describe_machine
from fornet_deploy.bench.timing import latency_stats, time_iterations
from fornet_deploy.contract import SHIPPED_WEIGHTS, TOPK_SCOPE, parse_hw
from fornet_deploy.export.onnx import ExportConfig, export_bundle, export_onnx_model
from fornet_deploy.io import atomic_write_json
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.topk import DEFAULT_STEPS, TopK, search_schedule

SCORES = "/focus/selector/score/Conv_output_0"  # selector logits (input of the Top-K)
MASK = "topk_mask"


class LegacyBisectionTopK(nn.Module):
    """The previous threshold Top-K: 32 bisection steps over [min, max] of sigmoid(scores)."""

    def __init__(self, current: TopK, steps: int = 32):
        super().__init__()
        self.current = current  # for count(): the same k
        self.steps = steps
        self.mode = "threshold"

    def forward(self, scores):
        # the old Top-K read the importance map
        return legacy_bisection_mask(torch.sigmoid(scores), self.current.count(scores), self.steps).to(scores.dtype)


def export_variant(checkpoint: Path, variant: str, h: int, w: int) -> onnx.ModelProto:
    if variant == "legacy":
        model, _ = load_checkpoint(checkpoint)
        model.focus.topk = LegacyBisectionTopK(model.focus.topk)
    else:
        model, _ = load_checkpoint(checkpoint, topk_search_steps=int(variant.split("-")[1]))
    return export_onnx_model(model, ExportConfig(height=h, width=w, topk="threshold"))


def in_topk(name: str, op: str, variant: str) -> bool:
    return TOPK_SCOPE in name and not (variant == "legacy" and op == "Sigmoid")


def topk_input(proto: onnx.ModelProto) -> str:
    consumers = {i for n in proto.graph.node if TOPK_SCOPE in n.name for i in n.input}
    return SCORES if SCORES in consumers else "importance"


def session(ort, path_or_bytes, threads: int | None, profile_prefix: str | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if threads == 1:  # no spinning thread pool: process CPU time is the work done
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def profile_shares(ort, paths: dict, image: np.ndarray, rounds: int, block: int, threads, tmp: Path) -> dict:
    sessions = {v: session(ort, str(p), threads, str(tmp / f"profile_{v}")) for v, p in paths.items()}
    feeds = {v: {s.get_inputs()[0].name: image} for v, s in sessions.items()}
    for v, s in sessions.items():  # warm-up, dropped below by run index
        s.run(None, feeds[v])
    for _ in range(rounds):
        for v, s in sessions.items():
            for _ in range(block):
                s.run(None, feeds[v])
    out = {}
    for v, s in sessions.items():
        events = json.loads(Path(s.end_profiling()).read_text())
        durations = collections.defaultdict(list)
        ops = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                name = e["name"][: -len("_kernel_time")]
                durations[name].append(e["dur"])
                ops[name] = e.get("args", {}).get("op_name", "")
        runs = rounds * block
        durations = {n: d[-runs:] for n, d in durations.items()}  # drop the warm-up run
        topk = [n for n in durations if in_topk(n, ops[n], v)]
        total = sum(sum(d) for d in durations.values())
        topk_total = sum(sum(durations[n]) for n in topk)
        medians = {n: statistics.median(d) for n, d in durations.items()}
        out[v] = {
            "topk_nodes": len(topk),
            "share_sum_pct": 100.0 * topk_total / total,
            "share_median_pct": 100.0 * sum(medians[n] for n in topk) / sum(medians.values()),
            "topk_us_per_run": topk_total / runs,
            "model_ms_per_run": total / runs / 1e3,
            "topk_ops": dict(collections.Counter(ops[n] for n in topk)),
        }
    return out


def timed_shares(ort, paths: dict, image: np.ndarray, rounds: int, threads, clock=time.perf_counter) -> dict:
    """Top-K subgraph (cut out of each ONNX file) vs the full model, no profiler: medians."""
    full, sub = {}, {}
    for v, p in paths.items():
        proto = onnx.load(str(p))
        part = onnx.utils.Extractor(proto).extract_model([topk_input(proto)], [MASK])
        full[v] = session(ort, str(p), threads)
        sub[v] = session(ort, part.SerializeToString(), threads)
    rng = np.random.default_rng(0)
    sub_feeds = {}
    for v, s in sub.items():
        spec = s.get_inputs()[0]
        scores = rng.normal(0, 3, [d if isinstance(d, int) else 1 for d in spec.shape]).astype(np.float32)
        sub_feeds[v] = {spec.name: scores if spec.name == SCORES else 1 / (1 + np.exp(-scores))}
    times = {v: {"topk": [], "model": []} for v in paths}
    for v in paths:
        full[v].run(None, {full[v].get_inputs()[0].name: image})
        sub[v].run(None, sub_feeds[v])
    for _ in range(rounds):
        for v in paths:
            start = clock()
            for _ in range(20):
                sub[v].run(None, sub_feeds[v])
            times[v]["topk"].append((clock() - start) / 20 * 1e6)
            start = clock()
            full[v].run(None, {full[v].get_inputs()[0].name: image})
            times[v]["model"].append((clock() - start) * 1e3)
    out = {}
    for v, t in times.items():
        topk_us, model_ms = statistics.median(t["topk"]), statistics.median(t["model"])
        out[v] = {
            "topk_us": topk_us, "topk_min_us": min(t["topk"]), "model_ms": model_ms,
            "share_pct": 100.0 * topk_us / 1e3 / model_ms,
        }
    return out


def alternating_medians(runners: dict, batch: np.ndarray, warmup: int, iters: int, block: int = 5) -> dict[str, float]:
    times = {name: [] for name in runners}
    for _ in range(max(1, iters // block)):
        for name, runner in runners.items():
            timed = time_iterations(lambda i: runner(batch), block, warmup)
            times[name] += timed.seconds
    return {name: latency_stats(t)["p50_ms"] for name, t in times.items()}


def latency(checkpoint: Path, h: int, w: int, batch: np.ndarray, warmup: int, iters: int, tmp: Path) -> dict:
    from fornet_deploy.runtimes.ort_runner import OrtRunner
    from fornet_deploy.runtimes.torch_runner import TorchRunner

    paths = {}
    for mode in ("threshold", "exact"):
        export_bundle(checkpoint, tmp / mode, ExportConfig(height=h, width=w, topk=mode))
        paths[mode] = tmp / mode / "model.onnx"
    runners = {
        "torch_exact": TorchRunner(checkpoint, topk="exact"),
        "ort_threshold": OrtRunner(paths["threshold"]),
        "ort_exact": OrtRunner(paths["exact"]),
    }
    for r in runners.values():
        r.activate()
    ms = alternating_medians(runners, batch, warmup, iters)
    for r in runners.values():
        r.deactivate()
    return {"median_ms": ms, "ort_vs_torch_speedup": ms["torch_exact"] / ms["ort_threshold"],
            "threshold_over_exact": ms["ort_threshold"] / ms["ort_exact"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS, help="default: the shipped weights")
    parser.add_argument("--shape", action="append", help="HxW, repeatable (default 512x1024)")
    parser.add_argument("--steps", type=int, nargs="+", default=[DEFAULT_STEPS], help="search rounds to compare")
    parser.add_argument("--no-legacy", action="store_true", help="leave out the old bisection")
    parser.add_argument("--rounds", type=int, default=8, help="alternation rounds (profile and wall)")
    parser.add_argument("--block", type=int, default=3, help="profiled runs per variant and round")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's)")
    parser.add_argument("--latency", action="store_true", help="also time torch vs ORT threshold vs ORT exact")
    parser.add_argument("--iters", type=int, default=40, help="--latency: timed calls per runner")
    parser.add_argument("--warmup", type=int, default=2, help="--latency: untimed calls before each block")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort

    variants = ([] if args.no_legacy else ["legacy"]) + [f"search-{s}" for s in args.steps]
    results = []
    for shape in args.shape or ["512x1024"]:
        h, w = parse_hw(shape, "--shape")
        image = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            paths = {}
            for v in variants:
                paths[v] = tmp / f"{v}.onnx"
                onnx.save(export_variant(args.checkpoint, v, h, w), str(paths[v]))
            row = {
                "shape": [h, w],
                "schedules": {v: search_schedule(int(v.split("-")[1])) for v in variants if v != "legacy"},
                "profile": profile_shares(ort, paths, image, args.rounds, args.block, args.threads, tmp),
                "wall": timed_shares(ort, paths, image, args.rounds, args.threads),
                "cpu_1thread": timed_shares(ort, paths, image, args.rounds, 1, time.process_time),
            }
            if args.latency:
                row["latency"] = latency(args.checkpoint, h, w, image, args.warmup, args.iters, tmp)
        results.append(row)
        print(json.dumps(row))
    report = {"machine": describe_machine(), "onnxruntime": ort.__version__, "rounds": args.rounds, "block": args.block,
              "threads": args.threads, "results": results}
    print("| shape | variant | Top-K nodes | profiler share (sum) | profiler share (node medians) "
          "| Top-K wall us | wall share | Top-K CPU us (1 thread) | CPU share (1 thread) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for v in variants:
            p, wl, cpu = r["profile"][v], r["wall"][v], r["cpu_1thread"][v]
            print(f"| {r['shape'][0]}x{r['shape'][1]} | {v} | {p['topk_nodes']} | {p['share_sum_pct']:.2f} % "
                  f"| {p['share_median_pct']:.2f} % | {wl['topk_us']:.0f} | {wl['share_pct']:.2f} % "
                  f"| {cpu['topk_us']:.0f} | {cpu['share_pct']:.2f} % |")
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
