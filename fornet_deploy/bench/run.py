"""``fornet-deploy bench``: latency, throughput and memory of one deployed artefact.

Two measurements per artefact, made by one timing helper
(:func:`~fornet_deploy.bench.timing.time_iterations`):

* **compute** -- ``runner(batch)`` asking for the labels only (the logits where an artefact has
  no labels output: what a deployed application fetches, not 160 MB of FP32 logits per
  1024x2048 frame), then ``runner.synchronize()``: what the runtime costs for a preprocessed
  batch already in memory; where the runner measures it with device events
  (TensorRT), ``device_split`` splits it into input copy (``h2d``), execution (``compute``)
  and output copies (``d2h``);
* **end-to-end** -- per frame: decode the encoded image, the one preprocessing function,
  inference, then the train-id labels back at the frame's size and their colour picture:
  what an application sees (:mod:`.frames`).

Each is reported as p50/p90/p99/mean/stdev/min/max in ms with a throughput in images/s,
next to the process's peak memory (:mod:`.memory`), how busy the machine was while each was
timed (``machine_load``: load averages and the CPU share other processes took, :mod:`.load`)
and, on ``--device jetson``, the board, power mode, clocks, loads, power and energy per frame
(:mod:`.telemetry`). ``--profile`` adds ONNX Runtime's profiler breakdown by op type and by
scope (:mod:`.profile`). Every artefact of a bundle at once: :mod:`.matrix`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ..bundle import Bundle
from ..contract import DEVICES, Format, check_batch, check_pixels, check_size, format_shape, formats_for
from ..data.labels import LabelSet, manifest_label_set
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError, HardwareError, MissingDependencyError, OptionError
from ..evaluation.postprocess import label_outputs
from ..io import atomic_write_json, now_iso
from ..runtimes.base import InputSpec, Runner
from ..runtimes.ort_runner import import_onnxruntime
from ..runtimes.registry import load_runner, resolve_format, trt_request
from ..runtimes.trt.cuda import CudaDevice
from .frames import Frame, bench_preprocessing, decode, load_frames, run_end_to_end
from .jetson import detect_board
from .load import LoadProbe, load_summary
from .memory import MemoryProbe
from .profile import profile_runner
from .sysinfo import describe_machine
from .telemetry import BenchEnvironment, jetson_section, telemetry, with_jetson_board
from .timing import Timed, device_split_summary, time_iterations, timing_summary

Progress = Callable[..., None]  # progress(done, total, note)


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how; the CLI's ``bench`` options map onto these fields."""

    device: str = "cpu"  # cpu | cuda | jetson | gpu | npu (Intel, OpenVINO)
    runtime: str = "ort"  # torch | ort | trt | openvino (ignored by the matrix)
    precision: str | None = None  # fp32 | fp16 | bf16 | int8; None: fp32, or the artifact's own (ignored by the matrix)
    artifact: str | None = None  # a specific file of the bundle; None: the format table's choice
    shape: tuple[int, int] | None = None  # (H, W); None = the bundle's export shape
    batch: int = 1
    warmup: int = 10
    iters: int = 50
    threads: int | None = None  # CPU threads of ONNX Runtime / PyTorch / OpenVINO; None = the runtime's default
    # Encoded frames for the end-to-end loop: an image file, a folder of images, or a
    # Cityscapes-layout root (its leftImg8bit/val images). None = one synthetic SynthCity
    # scene at the benchmark size, PNG-encoded once in memory.
    images: Path | None = None
    tegrastats_interval_ms: int = 100
    # ONNX Runtime provider choice (cpu | cuda | tensorrt | auto); None follows --device.
    ort_device: str | None = None
    # After the timing, the same iterations in a profiled ONNX Runtime session (bench/profile.py).
    profile: bool = False


# Timed and warm-up iterations per measurement: a per-iteration timing list is kept, and a
# run of 100 000 iterations of even a 1 ms model takes minutes already.
MAX_ITERATIONS = 100_000


def max_threads() -> int:
    """CPU threads a benchmark may ask for: this machine's CPUs (more only slows it down;
    100 000 made ONNX Runtime crash)."""
    return os.cpu_count() or 1


def validate_config(cfg: BenchConfig, env: BenchEnvironment = BenchEnvironment()) -> None:
    """Check every option and the device before any work; one line per problem."""
    if cfg.device not in DEVICES:
        raise OptionError(f"--device {cfg.device!r}: use one of {', '.join(DEVICES)}")
    for name, option, least, most in (("batch", "--batch", 1, None), ("iters", "--iterations", 1, MAX_ITERATIONS),
                                      ("warmup", "--warmup", 0, MAX_ITERATIONS),
                                      ("tegrastats_interval_ms", "--tegrastats-interval-ms", 1, None),
                                      ("threads", "--threads", 1, max_threads())):
        value = getattr(cfg, name)
        if value is None and name == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least or (most and value > most):
            bound = f"from {least} to {most}" if most else f">= {least}"
            raise OptionError(f"{option} must be an integer {bound}, got {value!r}")
    check_batch(cfg.batch)
    if cfg.shape is not None:
        check_size(*cfg.shape)
        check_pixels(cfg.batch, *cfg.shape, "bench --batch x --shape")
    check_device(cfg.device, env.jetson_root)


def check_device(device: str, jetson_root: Path = Path("/")) -> None:
    """Raise :class:`HardwareError` when ``device`` is not present on this machine."""
    if device == "cuda" and not (_torch_has_cuda() or "CUDAExecutionProvider" in _ort_providers() or _cuda_gpu()):
        raise HardwareError(
            "--device cuda: no NVIDIA GPU/CUDA here (torch.cuda.is_available() is False, "
            "onnxruntime has no CUDAExecutionProvider and cuda-python sees no GPU)"
        )
    if device == "jetson":
        detect_board(jetson_root)


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_gpu() -> bool:
    """A GPU as the TensorRT runner sees it (a TensorRT-only install has no CUDA torch / ORT)."""
    try:
        CudaDevice("bench")
    except FornetError:
        return False
    return True


def _ort_providers() -> list[str]:
    try:
        return import_onnxruntime("bench").get_available_providers()
    except MissingDependencyError:  # a TensorRT-only install
        return []


def bench_shape(bundle: Bundle, cfg: BenchConfig) -> tuple[int, int]:
    """``cfg.shape``, or the shape the bundle was exported at."""
    if cfg.shape is not None:
        return int(cfg.shape[0]), int(cfg.shape[1])
    export = bundle.manifest.get("export") or {}
    if not export.get("height") or not export.get("width"):
        raise FornetError(f"bundle {bundle.root} records no export shape; pass --shape HxW")
    return int(export["height"]), int(export["width"])


def check_input_shape(spec: InputSpec, shape: tuple[int, ...], artifact: str) -> None:
    """One clear line when an artefact cannot take the benchmarked NCHW ``shape``."""
    if any(want is not None and want != got for want, got in zip(spec.shape, shape)):
        fixed = [got if want is None else want for want, got in zip(spec.shape, shape)]
        raise FornetError(
            f"{artifact} takes a fixed input of {format_shape(spec.shape)}, not {format_shape(shape)}: bench it "
            f"with --batch {fixed[0]} --shape {fixed[2]}x{fixed[3]}, or re-export with --dynamic"
        )
    spec.check_shape(shape)  # bounds of a TensorRT optimization profile; the spec says which


def _ticker(progress: Progress | None, offset: int, total: int, note: str) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(offset + done, total, note)


def compute_batch(frames: Sequence[Frame], batch: int, pre: Preprocessing):
    """The preprocessed batch the compute-only loop (and the profiler) feed: the first frames."""
    return preprocess([decode(frames[j % len(frames)]) for j in range(batch)], pre)


def _measure(runner: Runner, cfg: BenchConfig, env: BenchEnvironment, pre: Preprocessing, frames: Sequence[Frame],
             labels: LabelSet, progress: Progress | None) -> tuple[dict, dict | None]:
    """Compute-only and end-to-end timings (and tegrastats on a Jetson) of an active runner."""
    def frames_of(i: int) -> list[Frame]:
        return [frames[(i * cfg.batch + j) % len(frames)] for j in range(cfg.batch)]

    batch = compute_batch(frames, cfg.batch, pre)
    wanted = label_outputs(runner.output_names())
    splits: list[dict[str, float]] = []

    def compute(_: int) -> None:
        runner(batch, outputs=wanted)
        runner.synchronize()
        split = runner.last_timings()  # device events (TensorRT): transfers apart from execution
        if split is not None:
            splits.append(split)

    def end_to_end(i: int) -> None:
        run_end_to_end(runner, frames_of(i), pre, labels)

    total = 2 * cfg.iters
    timings: dict[str, Timed] = {}
    loads: dict[str, dict] = {}
    with telemetry(cfg.device, cfg.tegrastats_interval_ms, env) as sampler:
        for offset, (stage, step) in enumerate((("compute", compute), ("end_to_end", end_to_end))):
            tick = _ticker(progress, offset * cfg.iters, total, stage.replace("_", "-"))
            with LoadProbe() as probe:
                timings[stage] = time_iterations(step, cfg.iters, cfg.warmup, tick)
            loads[stage] = probe.result()
    result = {stage: timing_summary(timed, cfg.batch) for stage, timed in timings.items()}
    result["machine_load"] = {**load_summary(loads.values()), **loads}
    device_split = device_split_summary(splits[-cfg.iters:])  # the timed iterations, not the warm-up
    if device_split is not None:
        result["device_split"] = device_split
    jetson = jetson_section(sampler, timings, cfg.tegrastats_interval_ms, cfg.batch) if sampler is not None else None
    return result, jetson


def bench_format(bundle: Bundle, fmt: Format, cfg: BenchConfig, env: BenchEnvironment, shape: tuple[int, int],
                 pre: Preprocessing,
                 frames: Sequence[Frame], progress: Progress | None = None,
                 also: Callable[[Runner], dict] | None = None) -> dict:
    """Measure one artefact; ``also(runner)`` adds fields while the runner is still loaded."""
    probe = MemoryProbe(cuda_allocator=fmt.runtime == "torch" and cfg.device != "cpu" and _torch_has_cuda())
    with load_runner(bundle, fmt.runtime, fmt.precision, cfg.device, artifact=fmt.artifact, threads=cfg.threads,
                     ort_device=cfg.ort_device) as runner:
        check_input_shape(runner.input_spec(), (cfg.batch, 3, *shape), fmt.artifact)
        timings, jetson = _measure(runner, cfg, env, pre, frames,
                                   manifest_label_set(bundle.manifest, f"bundle {bundle.root}"), progress)
        memory = probe.result()
        row = {
            "runtime": fmt.runtime, "precision": fmt.precision, "artifact": fmt.artifact, "note": fmt.note,
            "status": "ok", "runner": runner.info().to_dict(), **timings, "memory": memory,
        }
        if jetson is not None:
            row["jetson"] = jetson
        if also is not None:
            row.update(also(runner))
    if cfg.profile:
        row["profile"] = _profile(bundle, fmt, cfg, pre, frames)
    return row


def _profile(bundle: Bundle, fmt: Format, cfg: BenchConfig, pre: Preprocessing, frames: Sequence[Frame]) -> dict:
    """ONNX Runtime's profiler breakdown of the artefact, in a session of its own (after the
    timing, which never runs with the profiler); other runtimes say why there is none."""
    if fmt.runtime != "ort":
        return {"note": "the profiler breakdown is ONNX Runtime's (--runtime ort)"}
    batch = compute_batch(frames, cfg.batch, pre)

    def runner(folder: Path) -> Runner:
        return load_runner(bundle, fmt.runtime, fmt.precision, cfg.device, artifact=fmt.artifact,
                           threads=cfg.threads, ort_device=cfg.ort_device, profile_dir=folder)

    with LoadProbe() as probe:
        result = profile_runner(runner, batch, cfg.iters, cfg.warmup)
    return {**result, "machine_load": probe.result()}


def config_dict(cfg: BenchConfig, shape: tuple[int, int]) -> dict:
    config = asdict(cfg)
    config.update(shape=list(shape), images=str(cfg.images) if cfg.images else None)
    return config


def run_benchmark(bundle_dir: str | Path, cfg: BenchConfig = BenchConfig(), progress: Progress | None = None,
                  json_out: str | Path | None = None, env: BenchEnvironment = BenchEnvironment()) -> dict:
    """The library function behind ``fornet-deploy bench``: one artefact, JSON-ready result.

    ``progress(done, total, note)`` is called after each timed iteration; ``json_out``
    writes the result atomically.
    """
    validate_config(cfg, env)
    formats_for(cfg.runtime, cfg.precision or "fp32", cfg.device)  # unknown names, or not on this device
    # The benchmarked artefact's hash is checked when the runner loads it; hashing every
    # engine of the bundle up front would only add start-up time.
    bundle = Bundle.open(bundle_dir, verify=False)
    shape = bench_shape(bundle, cfg)
    request = trt_request(shape=(cfg.batch, 3, *shape)) if cfg.runtime == "trt" and cfg.artifact is None else None
    fmt = resolve_format(bundle, cfg.runtime, cfg.precision, cfg.device, cfg.artifact, request=request)
    cfg = replace(cfg, precision=fmt.precision)
    pre = bench_preprocessing(bundle, shape)
    frames, frames_source = load_frames(cfg.images, shape)
    machine = describe_machine(env.jetson_root)

    row = bench_format(bundle, fmt, cfg, env, shape, pre, frames, progress)
    result = {"created": now_iso(), "bundle": str(bundle.root), "config": config_dict(cfg, shape),
              "frames": frames_source, **row, "machine": machine}
    with_jetson_board(result, machine)
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result
