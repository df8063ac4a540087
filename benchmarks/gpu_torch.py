"""FoR-Net in PyTorch on an NVIDIA GPU: the Top-K's exactness and cost on CUDA, and TF32.

    python benchmarks/gpu_torch.py --json gpu_torch.json [--shape 512x1024 --shape 1024x2048]

For a GPU machine with PyTorch (CUDA) and no TensorRT (what ``benchmarks/gpu_torch_suite.sh``
drives); the TensorRT numbers come from ``benchmarks/gpu_suite.sh``.

* ``topk_maps``: adversarial score maps (log-uniform 1e-38..1e38 of both signs, denormals, a
  tiny k-th value, runs of values one float32 step apart, saturated logits, constant maps, NaN
  and +-inf, k = 1 and k = h*w, odd shapes) on CUDA: the threshold mask against the exact
  (stable sort) mask on CUDA and against the threshold mask on the CPU, also under FP16
  autocast. Every map must match (``mismatches`` = 0).
* ``topk_cost``: the shipped model at each shape, FP32 (TF32 off) and FP16 autocast: the
  forward with the threshold Top-K, with the exact Top-K (torch.topk sort), and the Top-K
  module alone on that image's selector scores, at the default rounds and at each ``--steps``
  (and the forward at the fewest); CUDA-event medians. ``share`` = Top-K alone /
  forward (the PyTorch analogue of the issue's "share of the engine's time").
* ``tf32``: max |logit| difference against the CPU FP32 reference for CUDA FP32 with cuDNN's
  TF32 on (PyTorch's default), with it off (what ``TorchRunner`` does), and FP16 autocast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from fornet_deploy.contract import LOGITS, SHIPPED_WEIGHTS, parse_hw
from fornet_deploy.io import atomic_write_json
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.topk import DEFAULT_STEPS, MIN_STEPS, exact_topk_mask, threshold_topk_mask
from fornet_deploy.runtimes.torch_runner import cudnn_tf32


def adversarial_maps(rng: np.random.Generator) -> list[tuple[str, np.ndarray, int]]:
    """(name, (1, 1, h, w) float32 map, k) covering the families of tests/model/topk_maps.py."""
    maps: list[tuple[str, np.ndarray, int]] = []

    def add(name: str, values: np.ndarray, ks: tuple[int, ...]) -> None:
        for k in ks:
            maps.append((f"{name} k={k}", values.astype(np.float32).reshape(1, 1, *values.shape), k))

    for h, w in ((64, 128), (128, 256), (37, 91), (1, 1), (1, 300), (255, 3)):
        n = h * w
        ks = tuple(sorted({1, max(1, n // 4), max(1, n // 2), n}))
        sign = rng.choice([-1.0, 1.0], n)
        add(f"log-uniform 1e-38..1e38 {h}x{w}", (sign * 10.0 ** rng.uniform(-38, 38, n)).reshape(h, w), ks)
        add(f"log-uniform 1e-38..1 {h}x{w}", (10.0 ** rng.uniform(-38, 0, n)).reshape(h, w), ks)
        denormal = np.frombuffer(rng.integers(1, 1 << 23, n, dtype=np.uint32).tobytes(), np.float32)
        add(f"denormals {h}x{w}", denormal.reshape(h, w), ks)
        tiny = np.full(n, 1e-30, np.float32) * rng.uniform(1, 2, n).astype(np.float32)
        tiny[: n // 8] = 1e30
        add(f"tiny k-th value {h}x{w}", rng.permutation(tiny).reshape(h, w), ks)
        for magnitude in (1e-37, 1e-3, 1.0, 3e5, 1e37):
            steps = np.arange(n, dtype=np.int64) % 7
            run = np.frombuffer((np.array(magnitude, np.float32).view(np.int32) + steps).astype(np.int32).tobytes(),
                                np.float32)
            add(f"one-step runs at {magnitude:g} {h}x{w}", rng.permutation(run).reshape(h, w), ks)
        saturated = rng.choice([-200.0, 200.0, 0.5], n, p=[0.45, 0.45, 0.1])
        add(f"saturated logits {h}x{w}", saturated.reshape(h, w), ks)
        add(f"constant {h}x{w}", np.full((h, w), 0.25), ks)
        broken = rng.standard_normal(n)
        broken[rng.choice(n, max(1, n // 10), replace=False)] = rng.choice([np.nan, np.inf, -np.inf], max(1, n // 10))
        add(f"NaN and inf {h}x{w}", broken.reshape(h, w), ks)
    return maps


def check_topk_maps(device: torch.device) -> dict:
    mismatches, checked = [], 0
    for name, values, k in adversarial_maps(np.random.default_rng(0)):
        cpu = torch.from_numpy(values)
        kk = torch.tensor([float(k)])
        on_cpu = threshold_topk_mask(cpu, kk)
        gpu = cpu.to(device)
        exact = exact_topk_mask(gpu, kk.to(device)).cpu()
        on_gpu = threshold_topk_mask(gpu, kk.to(device)).cpu()
        with torch.autocast("cuda", dtype=torch.float16):
            under_autocast = threshold_topk_mask(gpu, kk.to(device)).cpu()
        checked += 1
        for label, mask in (("cuda", on_gpu), ("cuda autocast fp16", under_autocast), ("cpu", on_cpu)):
            if not torch.equal(mask, exact) or int(mask.sum()) != k:
                mismatches.append({"map": name, "where": label, "selected": int(mask.sum()), "k": k})
    return {"maps": checked, "mismatches": len(mismatches), "details": mismatches[:20]}


def cuda_median_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed_median_ms(fn, iters: int, warmup: int) -> float | str:
    """``fn`` captured once as a CUDA graph and replayed: the time without per-kernel launch
    cost (what an engine's fused, pre-planned execution gets closer to); the error where
    ``fn`` cannot be captured (a host-to-device copy inside it, say)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return cuda_median_ms(graph.replay, iters, warmup)
    except Exception as err:  # noqa: BLE001 - reported, not raised: the other numbers still count
        torch.cuda.synchronize()
        return f"not capturable: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


@torch.inference_mode()
def topk_cost(model, device: torch.device, shape: tuple[int, int], iters: int, warmup: int,
              sweep: tuple[int, ...] = ()) -> list[dict]:
    x = torch.randn(1, 3, *shape, device=device, generator=torch.Generator(device).manual_seed(0))
    scores = {}
    hook = model.focus.selector.register_forward_hook(lambda _m, _i, out: scores.__setitem__("s", out[0]))
    rows = []
    for precision in ("fp32", "fp16"):
        with torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"), \
                cudnn_tf32(False if precision == "fp32" else None):
            times = {}
            for mode in ("threshold", "exact"):
                model.set_topk_mode(mode)
                times[f"forward_{mode}_ms"] = cuda_median_ms(lambda: model.forward_all(x), iters, warmup)
            model.set_topk_mode("threshold")
            model.forward_all(x)
            selector_scores = scores["s"].detach()
            times["topk_alone_ms"] = cuda_median_ms(lambda: model.focus.topk(selector_scores), iters, warmup)
            # fewer, wider rounds: fewer kernel launches (each round compares up to 255 thresholds)
            by_steps = {}
            for steps in sweep:
                model.focus.topk.steps = steps
                by_steps[steps] = cuda_median_ms(lambda: model.focus.topk(selector_scores), iters, warmup)
            if sweep:
                model.focus.topk.steps = min(sweep)
                times[f"forward_threshold_{min(sweep)}_steps_ms"] = cuda_median_ms(lambda: model.forward_all(x), iters,
                                                                                  warmup)
            model.focus.topk.steps = DEFAULT_STEPS
            times["topk_alone_ms_by_steps"] = by_steps
            times["cuda_graph_forward_threshold_ms"] = graphed_median_ms(lambda: model.forward_all(x), iters, warmup)
            times["cuda_graph_topk_alone_ms"] = graphed_median_ms(lambda: model.focus.topk(selector_scores), iters,
                                                                  warmup)
            model.set_topk_mode("exact")
            times["cuda_graph_forward_exact_ms"] = graphed_median_ms(lambda: model.forward_all(x), iters, warmup)
            model.set_topk_mode("threshold")
        times["share_pct"] = 100 * times["topk_alone_ms"] / times["forward_threshold_ms"]
        times["threshold_vs_exact_pct"] = 100 * (times["forward_threshold_ms"] / times["forward_exact_ms"] - 1)
        rows.append({"shape": list(shape), "precision": precision, **times})
        print(json.dumps(rows[-1]), flush=True)
    hook.remove()
    return rows


@torch.inference_mode()
def tf32_effect(model, device: torch.device, shape: tuple[int, int]) -> dict:
    x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(1))
    model.set_topk_mode("exact")
    reference = model.to("cpu").forward_all(x)[LOGITS]
    model.to(device)
    xg = x.to(device)
    out = {}
    with cudnn_tf32(True):
        out["cuda_fp32_tf32_on"] = float((model.forward_all(xg)[LOGITS].cpu() - reference).abs().max())
    with cudnn_tf32(False):
        out["cuda_fp32_tf32_off"] = float((model.forward_all(xg)[LOGITS].cpu() - reference).abs().max())
    with torch.autocast("cuda", dtype=torch.float16):
        out["cuda_fp16_autocast"] = float((model.forward_all(xg)[LOGITS].float().cpu() - reference).abs().max())
    out["shape"] = list(shape)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--shape", action="append", help="HxW, repeatable (default 512x1024 and 1024x2048)")
    parser.add_argument("--steps", type=int, nargs="*", default=[MIN_STEPS, 6, 8, 12, DEFAULT_STEPS, 32],
                        help="search rounds to time the Top-K alone with (topk_search_steps)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_torch: PyTorch sees no CUDA device", file=sys.stderr)
        return 5
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device),
              "topk_maps": check_topk_maps(device)}
    print(json.dumps({k: v for k, v in result["topk_maps"].items() if k != "details"}), flush=True)
    model = load_checkpoint(args.checkpoint)[0].eval().to(device)
    shapes = [parse_hw(s) for s in (args.shape or ["512x1024", "1024x2048"])]
    result["topk_cost"] = [row for shape in shapes for row in topk_cost(model, device, shape, args.iters, args.warmup,
                                                                               tuple(args.steps))]
    result["tf32"] = tf32_effect(model, device, shapes[0])
    print(json.dumps(result["tf32"]), flush=True)
    if args.json:
        atomic_write_json(args.json, result)
    return 1 if result["topk_maps"]["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
