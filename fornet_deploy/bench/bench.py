"""``fornet-deploy bench``: latency, throughput and memory of deployed FoR-Net artefacts.

Two measurements per artefact, made by one timing helper (:func:`time_iterations`):

* **compute** -- ``runner(batch)`` then ``runner.synchronize()``: what the runtime costs for
  a preprocessed batch already in memory;
* **end-to-end** -- per frame: decode the encoded image (``cv2.imdecode``), the one
  preprocessing function, inference, then the train-id labels back at the frame's size and
  their colour picture: what an application sees.

Each is reported as p50/p90/p99/mean/stdev/min/max in ms (:func:`latency_stats`) with a
throughput in images/s, next to the process's peak memory and, on CUDA with PyTorch, the
peak of its allocator. On ``--device jetson`` the timed loops run under ``tegrastats``
and the result carries the board, power mode, clocks, loads, power and energy per frame.

:func:`run_matrix` measures every (runtime, precision) a bundle holds for a device in one
process, with the speed-up over PyTorch FP32 and accuracy beside latency: mIoU on labelled
images and argmax / Top-K mask agreement with the PyTorch FP32 reference (exact Top-K).
:func:`matrix_markdown` renders it for the docs, :func:`bench_rows` for the CLI.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from ..bundle import Bundle, atomic_write_json, now_iso
from ..data.cityscapes import IMAGE_EXTENSIONS, colorize, encode_png
from ..data.synthcity import render_scene
from ..data.transforms import Preprocessing, check_stride, preprocess
from ..errors import FornetError, HardwareError
from ..evaluation.evaluate import Example, iterate_examples, predicted_labels
from ..evaluation.metrics import SegmentationMetrics
from ..evaluation.parity import compare_outputs
from ..model.fornet import OUTPUT_STRIDE
from ..runtimes.base import LABELS, LOGITS, TOPK_MASK, InputSpec, Runner
from ..runtimes.formats import Format, available_formats, candidates, make_runner, resolve_format
from .jetson import TegrastatsSampler, TegrastatsSample, detect_board, summarize
from .sysinfo import describe_machine

DEVICES = ("cpu", "cuda", "jetson")
REFERENCE = ("torch", "fp32")
# Real images kept encoded in memory for the end-to-end loop (cycled through); enough to
# vary the content without holding a whole dataset in RAM.
MAX_FRAMES = 32
Progress = Callable[..., None]  # progress(done, total, note)


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how; the CLI's ``bench`` options map onto these fields."""

    device: str = "cpu"  # cpu | cuda | jetson
    runtime: str = "ort"  # torch | ort | trt (ignored by the matrix)
    precision: str = "fp32"  # fp32 | fp16 | int8 (ignored by the matrix)
    shape: tuple[int, int] | None = None  # (H, W); None = the bundle's export shape
    batch: int = 1
    warmup: int = 10
    iters: int = 50
    threads: int | None = None  # CPU threads of ONNX Runtime / PyTorch; None = the runtime's default
    # Encoded frames for the end-to-end loop: an image file, a folder of images, or a
    # Cityscapes-layout root (its leftImg8bit/val images). None = one synthetic SynthCity
    # scene at the benchmark size, PNG-encoded once in memory.
    images: Path | None = None
    tegrastats_interval_ms: int = 100
    # ONNX Runtime provider choice (cpu | cuda | tensorrt | auto); None follows --device.
    ort_device: str | None = None
    # Where Jetson board files are read and which command samples telemetry; tests point
    # these at fixtures and a fake emitter.
    jetson_root: Path = Path("/")
    tegrastats_command: Sequence[str] | None = None


# --------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------


def latency_stats(seconds: Sequence[float]) -> dict:
    """Latencies in seconds -> ``{n, mean_ms, stdev_ms, min_ms, max_ms, p50_ms, p90_ms, p99_ms}``.

    Percentiles interpolate linearly between order statistics (numpy's default, as
    ``statistics.quantiles(method="inclusive")``); ``stdev`` is the sample standard
    deviation (n - 1), 0 for a single value.
    """
    if len(seconds) == 0:
        raise ValueError("latency_stats needs at least one latency")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "mean_ms": float(ms.mean()),
        "stdev_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
    }


@dataclass
class Timed:
    """Per-iteration latencies (perf_counter seconds) and the timed window on the
    ``time.monotonic`` clock, which tegrastats samples are stamped with."""

    seconds: list[float]
    window: tuple[float, float]


def time_iterations(step: Callable[[int], object], iters: int, warmup: int = 0,
                    on_iteration: Callable[[int], None] | None = None) -> Timed:
    """Call ``step(i)`` ``warmup`` times untimed, then ``iters`` times, timing each call.

    ``on_iteration(done)`` runs between timed calls, outside the measured span.
    """
    for i in range(warmup):
        step(i)
    seconds: list[float] = []
    start = time.monotonic()
    for i in range(iters):
        begin = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - begin)
        if on_iteration is not None:
            on_iteration(i + 1)
    return Timed(seconds, (start, time.monotonic()))


def _timing_summary(timed: Timed, batch: int) -> dict:
    stats = latency_stats(timed.seconds)
    return {**stats, "throughput_ips": batch / (stats["mean_ms"] / 1e3)}


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def validate_config(cfg: BenchConfig) -> None:
    """Check every option and the device before any work; one line per problem."""
    if cfg.device not in DEVICES:
        raise FornetError(f"--device {cfg.device!r}: use one of {', '.join(DEVICES)}")
    for name, least in (("batch", 1), ("iters", 1), ("warmup", 0), ("tegrastats_interval_ms", 1)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise FornetError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise FornetError(f"--threads must be an integer >= 1, got {cfg.threads!r}")
    if cfg.shape is not None:
        height, width = cfg.shape
        check_stride(height, width, OUTPUT_STRIDE)
    check_device(cfg.device, cfg.jetson_root)


def check_device(device: str, jetson_root: Path = Path("/")) -> None:
    """Raise :class:`HardwareError` when ``device`` is not present on this machine."""
    if device == "cuda" and not _torch_has_cuda() and "CUDAExecutionProvider" not in _ort_providers():
        raise HardwareError(
            "--device cuda: no NVIDIA GPU/CUDA here (torch.cuda.is_available() is False "
            "and onnxruntime has no CUDAExecutionProvider)"
        )
    if device == "jetson":
        detect_board(jetson_root)


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


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
            f"{artifact} takes a fixed input of {_nchw(spec.shape)}, not {_nchw(shape)}: bench it with "
            f"--batch {fixed[0]} --shape {fixed[2]}x{fixed[3]}, or re-export with --dynamic"
        )
    # Bounds of a TensorRT optimization profile; the spec's own check says which.
    spec.check(np.empty(shape, dtype=np.dtype(spec.dtype)))


def _nchw(shape: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


# --------------------------------------------------------------------------------------
# Frames for the end-to-end loop
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    name: str
    data: bytes  # the encoded file (PNG, JPEG...): decoding is part of the end-to-end time


def decode(frame: Frame) -> np.ndarray:
    """Encoded bytes -> RGB uint8 (what :func:`~fornet_deploy.data.cityscapes.read_image` gives)."""
    bgr = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FornetError(f"cannot decode image {frame.name}: not an image file or corrupt")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def synthetic_frame(height: int, width: int, seed: int = 0) -> Frame:
    """One SynthCity street scene, PNG-encoded in memory: it decodes and compresses like a
    camera frame would, unlike flat or white-noise images."""
    image, _ = render_scene(np.random.default_rng(seed), height, width)
    name = f"synthcity_{height}x{width}.png"
    return Frame(name, encode_png(image, name))


def image_files(path: Path) -> list[Path]:
    """Images under ``path``: the file itself, a Cityscapes root's ``leftImg8bit/val``
    (or all of ``leftImg8bit``), or every image in a folder tree, sorted."""
    path = Path(path)
    if not path.exists():
        raise FornetError(f"--images {path} does not exist")
    if path.is_file():
        return [path]
    root = path / "leftImg8bit"
    if root.is_dir():  # never pick up the gtFine label PNGs beside the images
        root = root / "val" if (root / "val").is_dir() else root
    else:
        root = path
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FornetError(f"--images {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_frames(images: Path | None, shape: tuple[int, int]) -> tuple[list[Frame], str]:
    """Encoded frames for the end-to-end loop and a sentence saying where they came from."""
    if images is None:
        return [synthetic_frame(*shape)], f"one synthetic SynthCity scene {shape[0]}x{shape[1]}, PNG in memory"
    files = image_files(images)
    frames = [Frame(str(p), p.read_bytes()) for p in files[:MAX_FRAMES]]
    for frame in frames:
        decode(frame)  # a corrupt file fails here, not in the middle of the timed loop
    return frames, f"{len(frames)} of {len(files)} images from {images}"


def bench_preprocessing(bundle: Bundle, shape: tuple[int, int]) -> Preprocessing:
    """The bundle's preprocessing, resizing every frame to the benchmarked input size.

    A deployed pipeline feeds camera frames of any size to a network of one input size
    and maps the prediction back to the frame, so the end-to-end time includes both
    resizes (none when a frame already has the input size, as the synthetic one does).
    """
    pre = Preprocessing.from_dict(bundle.manifest.get("preprocessing", {}))
    return replace(pre, resize="fixed", height=shape[0], width=shape[1])


def run_end_to_end(runner: Runner, frames: Sequence[Frame], pre: Preprocessing) -> list[np.ndarray]:
    """Decode, preprocess, infer and postprocess one batch of frames; returns the colour
    pictures of the predictions at each frame's size."""
    images = [decode(frame) for frame in frames]
    outputs = runner(preprocess(images, pre))
    runner.synchronize()
    return [
        colorize(predicted_labels({k: v[i : i + 1] for k, v in outputs.items()}, image.shape[:2]))
        for i, image in enumerate(images)
    ]


# --------------------------------------------------------------------------------------
# Memory and telemetry
# --------------------------------------------------------------------------------------


def _proc_status_mb() -> dict[str, float]:
    """``VmRSS`` (current) and ``VmHWM`` (peak) of this process in MiB, Linux only."""
    values: dict[str, float] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM") and rest.split() and rest.split()[0].isdigit():
            values[key] = int(rest.split()[0]) / 1024
    return values


def _rss_snapshot() -> dict[str, float | None]:
    status = _proc_status_mb()
    rss, peak = status.get("VmRSS"), status.get("VmHWM")
    if rss is None:
        with contextlib.suppress(ImportError):  # psutil is optional, never a dependency
            import psutil

            rss = psutil.Process().memory_info().rss / 2**20
    return {"rss": rss, "peak": peak}


def _ru_maxrss_mb() -> float:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


class MemoryProbe:
    """Memory around one artefact's run (from before its runner loads to after timing).

    The process peak (``ru_maxrss``) covers the whole process life, imports included; the
    increase of the peak (``VmHWM``) is what this run added on top of earlier peaks, so in
    a matrix a later, smaller artefact may show 0 there while ``rss_increase_mb`` (resident
    memory held by the loaded runner) still shows its size.
    """

    def __init__(self, cuda_allocator: bool):
        self.cuda_allocator = cuda_allocator
        self.before = _rss_snapshot()
        if cuda_allocator:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        after = _rss_snapshot()

        def delta(key: str) -> float | None:
            return after[key] - self.before[key] if after[key] is not None and self.before[key] is not None else None

        cuda_peak = None
        if self.cuda_allocator:
            import torch

            cuda_peak = torch.cuda.max_memory_allocated() / 2**20
        return {
            "process_peak_rss_mb": _ru_maxrss_mb(),
            "peak_rss_increase_mb": delta("peak"),
            "rss_before_mb": self.before["rss"],
            "rss_after_mb": after["rss"],
            "rss_increase_mb": delta("rss"),
            "cuda_max_allocated_mb": cuda_peak,
        }


@contextlib.contextmanager
def _telemetry(cfg: BenchConfig) -> Iterator[TegrastatsSampler | None]:
    """tegrastats in the background on a Jetson, nothing elsewhere."""
    if cfg.device != "jetson":
        yield None
        return
    with TegrastatsSampler(cfg.tegrastats_interval_ms, cfg.tegrastats_command) as sampler:
        # tegrastats needs a moment to print its first line; without waiting, the start of
        # a short timed window would have no sample at all.
        deadline = time.monotonic() + max(2.0, 5 * cfg.tegrastats_interval_ms / 1000)
        while not sampler.samples and time.monotonic() < deadline:
            time.sleep(0.01)
        yield sampler


def _in_window(samples: Sequence[TegrastatsSample], window: tuple[float, float]) -> list[TegrastatsSample]:
    return [s for s in samples if s.host_time is not None and window[0] <= s.host_time <= window[1]]


def _jetson_section(sampler: TegrastatsSampler, timings: dict[str, Timed], cfg: BenchConfig) -> dict:
    samples, notes, summaries = sampler.samples, [], {}
    for stage, timed in timings.items():
        start, end = timed.window
        within = _in_window(samples, timed.window)
        if not within:
            notes.append(f"no tegrastats sample fell in the {stage} window ({end - start:.3f} s, interval "
                         f"{cfg.tegrastats_interval_ms} ms): raise --iters for power and load figures")
        summaries[stage] = summarize(within, frames=len(timed.seconds) * cfg.batch, seconds=end - start)
    return {
        "tegrastats_interval_ms": cfg.tegrastats_interval_ms,
        "tegrastats": summaries["compute"],
        "tegrastats_end_to_end": summaries["end_to_end"],
        "tegrastats_messages": sampler.messages[:20],
        "tegrastats_notes": notes,
    }


# --------------------------------------------------------------------------------------
# One artefact
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op threads for one run and restore them (a process-wide knob)."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _runner_options(cfg: BenchConfig) -> dict:
    options: dict = {"threads": cfg.threads}
    if cfg.ort_device is not None:
        options["ort_device"] = cfg.ort_device
    return options


def _ticker(progress: Progress | None, offset: int, total: int, note: str) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(offset + done, total, note)


def _measure(runner: Runner, cfg: BenchConfig, pre: Preprocessing, frames: Sequence[Frame],
             progress: Progress | None) -> tuple[dict, dict | None]:
    """Compute-only and end-to-end timings (and tegrastats on a Jetson) of an active runner."""
    def frames_of(i: int) -> list[Frame]:
        return [frames[(i * cfg.batch + j) % len(frames)] for j in range(cfg.batch)]

    batch = preprocess([decode(f) for f in frames_of(0)], pre)

    def compute(_: int) -> None:
        runner(batch)
        runner.synchronize()

    def end_to_end(i: int) -> None:
        run_end_to_end(runner, frames_of(i), pre)

    total = 2 * cfg.iters
    timings: dict[str, Timed] = {}
    with _telemetry(cfg) as sampler:
        for offset, (stage, step) in enumerate((("compute", compute), ("end_to_end", end_to_end))):
            tick = _ticker(progress, offset * cfg.iters, total, stage.replace("_", "-"))
            timings[stage] = time_iterations(step, cfg.iters, cfg.warmup, tick)
    result = {stage: _timing_summary(timed, cfg.batch) for stage, timed in timings.items()}
    jetson = _jetson_section(sampler, timings, cfg) if sampler is not None else None
    return result, jetson


def _bench_format(bundle: Bundle, fmt: Format, cfg: BenchConfig, shape: tuple[int, int], pre: Preprocessing,
                  frames: Sequence[Frame], progress: Progress | None = None,
                  also: Callable[[Runner], dict] | None = None) -> dict:
    """Measure one artefact; ``also(runner)`` adds fields while the runner is still loaded."""
    probe = MemoryProbe(cuda_allocator=fmt.runtime == "torch" and cfg.device != "cpu" and _torch_has_cuda())
    with _torch_threads(cfg.threads if fmt.runtime == "torch" else None), \
            make_runner(bundle, fmt.runtime, fmt.precision, cfg.device, artifact=fmt.artifact,
                        **_runner_options(cfg)) as runner:
        check_input_shape(runner.input_spec(), (cfg.batch, 3, *shape), fmt.artifact)
        timings, jetson = _measure(runner, cfg, pre, frames, progress)
        memory = probe.result()
        row = {
            "runtime": fmt.runtime, "precision": fmt.precision, "artifact": fmt.artifact, "note": fmt.note,
            "status": "ok", "runner": runner.info().to_dict(), **timings, "memory": memory,
        }
        if jetson is not None:
            row["jetson"] = jetson
        if also is not None:
            row.update(also(runner))
    return row


def _config_dict(cfg: BenchConfig, shape: tuple[int, int]) -> dict:
    config = asdict(cfg)
    config.update(shape=list(shape), images=str(cfg.images) if cfg.images else None,
                  jetson_root=str(cfg.jetson_root),
                  tegrastats_command=list(cfg.tegrastats_command) if cfg.tegrastats_command else None)
    return config


def _with_jetson_board(result: dict, machine: dict) -> None:
    """Board, power mode and clocks (read once, in the machine description) beside telemetry."""
    if machine.get("jetson") and "jetson" in result:
        result["jetson"] = {**machine["jetson"], **result["jetson"]}


def run_benchmark(bundle_dir: str | Path, cfg: BenchConfig = BenchConfig(), progress: Progress | None = None,
                  json_out: str | Path | None = None) -> dict:
    """The library function behind ``fornet-deploy bench``: one artefact, JSON-ready result.

    ``progress(done, total, note)`` is called after each timed iteration; ``json_out``
    writes the result atomically.
    """
    validate_config(cfg)
    candidates(cfg.runtime, cfg.precision, cfg.device)  # unknown names, or not on this device
    # The benchmarked artefact's hash is checked when make_runner loads it; hashing every
    # engine of the bundle up front would only add start-up time.
    bundle = Bundle.open(bundle_dir, verify=False)
    fmt = resolve_format(bundle, cfg.runtime, cfg.precision, cfg.device)
    shape = bench_shape(bundle, cfg)
    pre = bench_preprocessing(bundle, shape)
    frames, frames_source = load_frames(cfg.images, shape)
    machine = describe_machine(cfg.jetson_root)

    row = _bench_format(bundle, fmt, cfg, shape, pre, frames, progress)
    result = {"created": now_iso(), "bundle": str(bundle.root), "config": _config_dict(cfg, shape),
              "frames": frames_source, **row, "machine": machine}
    _with_jetson_board(result, machine)
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result


# --------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------


def _accuracy_examples(data: Path | None, count: int, shape: tuple[int, int],
                       pre: Preprocessing) -> tuple[list[Example], str]:
    """Images the accuracy columns are measured on, at the benchmarked input size."""
    if data is not None:
        examples = list(iterate_examples(data, "val", pre, limit=count))
        return examples, f"{len(examples)} val images of {data}, resized to {shape[0]}x{shape[1]}"
    examples = []
    for i in range(count):
        image, _ = render_scene(np.random.default_rng(1000 + i), *shape)
        examples.append(Example(f"synthcity_{i:03d}", image, None, preprocess(image, pre)))
    return examples, f"{count} synthetic SynthCity scenes {shape[0]}x{shape[1]} (no labels: no mIoU)"


def _reference_outputs(bundle: Bundle, examples: Sequence[Example],
                       threads: int | None = None) -> tuple[list[dict] | None, str | None]:
    """Labels and Top-K masks of the PyTorch FP32 reference (exact Top-K) on the CPU, as
    ``fornet-deploy parity`` defines it (GPU convolutions may use TF32). Logits are not
    kept: at full resolution they would hold hundreds of MB per image."""
    try:
        with _torch_threads(threads), make_runner(bundle, *REFERENCE, "cpu", topk="exact") as reference:
            kept = []
            for example in examples:
                out = reference(example.batch)
                labels = out[LABELS] if LABELS in out else out[LOGITS].argmax(1)
                kept.append({LABELS: labels, **({TOPK_MASK: out[TOPK_MASK]} if TOPK_MASK in out else {})})
            return kept, None
    except FornetError as exc:
        return None, f"no agreement columns: the PyTorch FP32 reference could not run ({exc})"


def _accuracy(runner: Runner, examples: Sequence[Example], reference: list[dict] | None,
              num_classes: int) -> dict:
    """mIoU (on labelled examples) and agreement with the reference, pooled over the
    images, from one inference per image."""
    result: dict = {"miou": None, "argmax_agreement": None, "mask_agreement": None}
    metrics = SegmentationMetrics(num_classes=num_classes)
    agreements = []
    try:
        for i, ex in enumerate(examples):
            outputs = runner(ex.batch)
            hw = ex.image.shape[:2]
            if ex.labels is not None:
                metrics.update(predicted_labels(outputs, hw), ex.labels)
            if reference is not None:
                agreements.append(compare_outputs(ex.name, reference[i], outputs, hw))
    except FornetError as exc:  # e.g. a fixed-batch engine cannot take single images
        result["accuracy_note"] = str(exc)
        return result
    if metrics.num_images:
        result["miou"] = metrics.result()["miou"]
    if agreements:
        # The images share one size, so the mean of per-image fractions is the pooled fraction.
        result["argmax_agreement"] = float(np.mean([a.argmax_agreement for a in agreements]))
        masks = [a.mask_agreement for a in agreements if a.mask_agreement is not None]
        result["mask_agreement"] = float(np.mean(masks)) if masks else None
    return result


def _skipped(fmt: Format, exc: Exception) -> dict:
    said = str(exc).strip().splitlines()
    reason = said[0] if said else type(exc).__name__
    if not isinstance(exc, FornetError):  # not a user error: keep the type for the bug report
        reason = f"{type(exc).__name__}: {reason}"
    return {"runtime": fmt.runtime, "precision": fmt.precision, "artifact": fmt.artifact, "note": fmt.note,
            "status": "skipped", "reason": reason}


def run_matrix(bundle_dir: str | Path, device: str = "cpu", data: Path | None = None, accuracy_images: int = 8,
               cfg: BenchConfig = BenchConfig(), progress: Progress | None = None,
               json_out: str | Path | None = None) -> dict:
    """Every (runtime, precision) the bundle can run on ``device``, measured in one process.

    Rows hold the compute and end-to-end latencies, the speed-up over PyTorch FP32 (ratio of
    mean compute latencies, both measured here), mIoU on ``accuracy_images`` val images of
    ``data`` and argmax / Top-K mask agreement with the PyTorch FP32 reference on the same
    images (synthetic scenes without ``data``). An artefact that cannot start here (no GPU
    provider, an engine for another GPU) becomes a skipped row with its reason.
    ``progress(done, total, note)`` is called per format.
    """
    cfg = replace(cfg, device=device)
    validate_config(cfg)
    if isinstance(accuracy_images, bool) or not isinstance(accuracy_images, int) or accuracy_images < 1:
        raise FornetError(f"--accuracy-images must be an integer >= 1, got {accuracy_images!r}")
    bundle = Bundle.open(bundle_dir, verify=False)
    formats = available_formats(bundle, device)
    if not formats:
        raise FornetError(f"bundle {bundle.root} has no artefact that runs on {device}")
    shape = bench_shape(bundle, cfg)
    pre = bench_preprocessing(bundle, shape)
    frames, frames_source = load_frames(cfg.images, shape)
    examples, accuracy_source = _accuracy_examples(data, accuracy_images, shape, pre)
    machine = describe_machine(cfg.jetson_root)
    reference, reference_note = _reference_outputs(bundle, examples, cfg.threads)
    num_classes = len(bundle.manifest.get("classes") or []) or 19

    def accuracy(runner: Runner) -> dict:
        return _accuracy(runner, examples, reference, num_classes)

    rows = []
    for done, fmt in enumerate(formats, start=1):
        try:
            rows.append(_bench_format(bundle, fmt, cfg, shape, pre, frames, also=accuracy))
        except Exception as exc:  # one artefact that cannot run must not sink the matrix
            rows.append(_skipped(fmt, exc))
        if progress is not None:
            progress(done, len(formats), f"{fmt.runtime} {fmt.precision}")

    base = next((r for r in rows if (r["runtime"], r["precision"]) == REFERENCE and r["status"] == "ok"), None)
    for row in rows:
        if row["status"] == "ok":
            row["speedup_vs_torch_fp32"] = base["compute"]["mean_ms"] / row["compute"]["mean_ms"] if base else None

    result = {
        "created": now_iso(), "bundle": str(bundle.root), "device": device, "config": _config_dict(cfg, shape),
        "frames": frames_source, "reference": " ".join(REFERENCE),
        "accuracy": {"images": len(examples), "source": accuracy_source,
                     "reference": "torch fp32, exact Top-K, on the CPU", "note": reference_note},
        "rows": rows, "machine": machine,
    }
    for row in rows:
        _with_jetson_board(row, machine)
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _stat(stage: str, key: str) -> Callable[[dict], float | None]:
    return lambda row: (row.get(stage) or {}).get(key)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _percent(digits: int) -> Callable[[float], str]:
    return lambda v: f"{100 * v:.{digits}f} %"


# (header, value of a row, Markdown formatting): one definition behind the docs table
# (matrix_markdown) and the CLI table (bench_rows).
MATRIX_COLUMNS: tuple[tuple[str, Callable[[dict], object], Callable], ...] = (
    ("runtime", lambda r: r["runtime"], str),
    ("precision", lambda r: r["precision"], str),
    ("artefact", lambda r: r["artifact"], lambda v: f"`{v}`"),
    ("p50 ms", _stat("compute", "p50_ms"), _ms),
    ("p90 ms", _stat("compute", "p90_ms"), _ms),
    ("p99 ms", _stat("compute", "p99_ms"), _ms),
    ("img/s", _stat("compute", "throughput_ips"), lambda v: f"{v:.1f}"),
    ("speed-up vs torch fp32", lambda r: r.get("speedup_vs_torch_fp32"), lambda v: f"{v:.2f}×"),
    ("e2e p50 ms", _stat("end_to_end", "p50_ms"), _ms),
    ("mIoU", lambda r: r.get("miou"), _percent(1)),
    ("argmax agreement", lambda r: r.get("argmax_agreement"), _percent(3)),
    ("mask agreement", lambda r: r.get("mask_agreement"), _percent(3)),
)

STAGE_COLUMNS = ("stage", "p50 ms", "p90 ms", "p99 ms", "mean ms", "stdev ms", "min ms", "img/s")


def machine_line(machine: dict) -> str:
    gpus = (machine.get("gpus") or {}).get("devices") or []
    board = ((machine.get("jetson") or {}).get("board") or {}).get("model")
    parts = [board or (machine.get("cpu") or {}).get("model") or "unknown CPU"]
    parts += [g["name"] for g in gpus if g.get("name")]
    packages = machine.get("packages") or {}
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v and k in ("torch", "onnxruntime", "tensorrt"))
    return "; ".join(parts) + (f" ({versions})" if versions else "")


def matrix_markdown(result: dict) -> str:
    """The matrix as the Markdown table in docs/benchmarks.md, with a caption and the
    reasons of skipped artefacts."""
    config = result["config"]
    height, width = config["shape"]
    header = [name for name, _, _ in MATRIX_COLUMNS]
    lines = [
        f"FoR-Net {height}x{width}, batch {config['batch']}, `--device {result['device']}` on "
        f"{machine_line(result['machine'])}; {config['iters']} timed iterations after {config['warmup']} "
        f"warm-up. p50/p90/p99 and img/s: compute only; e2e: decode + preprocess + infer + labels and "
        f"colours at frame size. Accuracy: {result['accuracy']['source']}, agreement with "
        f"{result['accuracy']['reference']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in result["rows"]:
        cells = []
        for _, value_of, fmt in MATRIX_COLUMNS:
            value = value_of(row)
            cells.append("–" if value is None else fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in result["rows"] if r["status"] != "ok"]
    if skipped:
        lines.append("")
        lines += [f"- {r['runtime']} {r['precision']} (`{r['artifact']}`) skipped: {r['reason']}" for r in skipped]
    if result["accuracy"].get("note"):
        lines += ["", result["accuracy"]["note"]]
    return "\n".join(lines) + "\n"


def bench_rows(result: dict) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` for a rich table: per format for a matrix result (with a note
    column for skipped ones), per stage (compute, end-to-end) for a single run."""
    if "rows" in result:
        columns = [name for name, _, _ in MATRIX_COLUMNS] + ["note"]
        rows = [[value_of(r) for _, value_of, _ in MATRIX_COLUMNS] + [r.get("reason") or r.get("accuracy_note")]
                for r in result["rows"]]
        return columns, rows
    rows = []
    for stage, label in (("compute", "compute"), ("end_to_end", "end-to-end")):
        s = result[stage]
        rows.append([label, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"], s["stdev_ms"], s["min_ms"],
                     s["throughput_ips"]])
    return list(STAGE_COLUMNS), rows
