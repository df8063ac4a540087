"""One pass over the calibration images: the activation ranges the INT8 graphs read, and no more.

What ``quantize_static`` did before (ONNX Runtime 1.32; measured in
docs/benchmarks.md section 9): its calibrator collects every float input and output of
every node of a quantized op type, excluded nodes included (236 tensors of FoR-Net, 130
inside the never-quantized ``/focus/topk/`` scope), runs the graph with optimisations off,
keeps histograms whose bin count grows without bound and searches their entropy threshold
in pure Python, so ``calibrate`` took a minute on one image set and days on another.

Here:

* only the tensors the quantizers read are measured (:func:`quantizer_tensors` for the CPU
  graph, :func:`.placement.range_tensors` for the TensorRT graph; the caller passes both, so
  one collection serves both targets);
* each image runs once through the FP32 graph with those tensors as extra outputs, on the
  fastest runtime present: ONNX Runtime's CUDA provider when it has one (TF32 off, as in
  every FP32 run of the toolkit), else the CPU with all cores but one (idle threads
  sleep), while this thread histograms the previous chunk (:func:`collect_ranges`). Graph
  optimisations are off and at least two threads run, as in ONNX Runtime's calibrator, so
  the activations are bit for bit the ones it measures (fused kernels and a single thread
  round differently; one entropy range moved by 1.5 % in the research). On the CPU that
  costs little: histograms are the bottleneck (~0.4 s per 512x1024 image, inference
  0.18 s on one thread, 0.12 s optimised);
* ranges follow ONNX Runtime's rules exactly, vectorised and with bounded growth
  (:mod:`.histogram`), on the same chunks of images (:func:`chunk_size`), without sampling:
  ``entropy`` and ``percentile`` from histograms, ``minmax`` from the extremes.

The result is a plain ``{tensor: (low, high)}`` mapping of float32 values, which the bundle
caches per calibration key, method and percentile (:mod:`.qdq`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from ..contract import CALIBRATION_METHODS, CALIBRATION_PERCENTILE, check_choice
from ..errors import FornetError
from ..runtimes.ort_runner import CUDA, _load_gpu_libraries, import_onnxruntime, select_providers
from .histogram import ENTROPY_BINS, MAX_GROWTH, PERCENTILE_BINS, Histogram, chunk_minmax

# Images per calibration chunk: ONNX Runtime's histograms depend on it (the first chunk sets
# the bin stride), so it stays what ``quantize_static`` was given before: the largest divisor
# of N within this many pixels (8 images at 256x512, 1 at 1024x2048).
CHUNK_PIXELS = 8 * 256 * 512
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
# ONNX Runtime's CPU kernels round differently on one thread than on several (13 of FoR-Net's
# 65 measured tensors moved by an ulp; 2 and 3 threads agree with each other and with its
# calibrator's default pool), so the CPU runs at least two: the same ranges on every machine.
MIN_CPU_THREADS = 2

Ranges = dict[str, tuple[float, float]]  # tensor -> (low, high), float32 values
Progress = Callable[..., None]


def chunk_size(num_images: int, height: int, width: int) -> int:
    """Images per chunk: the largest divisor of ``num_images`` within :data:`CHUNK_PIXELS`."""
    limit = max(1, CHUNK_PIXELS // (height * width))
    return max(d for d in range(1, min(num_images, limit) + 1) if num_images % d == 0)


def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = proto.graph
    return {info.name: info for info in (*graph.value_info, *graph.output, *graph.input)}


def quantizer_tensors(proto: onnx.ModelProto, op_types: Sequence[str],
                      exclude: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``(measured, aliases)`` for ONNX Runtime's QDQ quantizer: the float activations of the
    nodes it quantizes, and ``{relu_input: relu_output}`` for the single-consumer inputs of
    quantized Relu / Clip nodes, which take their output's range (its
    ``adjust_tensor_ranges``) and so need not be measured."""
    excluded = set(exclude)
    infos = _value_infos(proto)
    initializers = {t.name for t in proto.graph.initializer}
    quantized = [n for n in proto.graph.node if n.op_type in op_types and n.name not in excluded]
    tensors: dict[str, None] = {}
    for node in quantized:
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if info is not None and name not in initializers and info.type.tensor_type.elem_type in FLOAT_TYPES:
                tensors.setdefault(name)
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    aliases = {n.input[0]: n.output[0] for n in quantized
               if n.op_type in ("Relu", "Clip") and readers.get(n.input[0]) == 1 and n.input[0] in tensors}
    measured = [t for t in tensors if t not in aliases]
    measured += [t for t in aliases.values() if t not in tensors]
    return measured, aliases


def augmented_model(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs ``names`` (its own outputs kept)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    infos = _value_infos(model)
    if any(name not in infos for name in names):
        infos = _value_infos(onnx.shape_inference.infer_shapes(model))
    missing = [name for name in names if name not in infos]
    if missing:
        raise ValueError(f"tensors not in the graph: {missing[:5]}")
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(infos[name] for name in names if name not in present)
    return model


@dataclass(frozen=True)
class CollectConfig:
    """How :func:`collect_ranges` measures. ``device``: ``"cuda"``, ``"cpu"`` or None for the
    fastest present; ``threads``: ONNX Runtime's on the CPU (None: all cores but one, at
    least :data:`MIN_CPU_THREADS`)."""

    method: str = "entropy"
    percentile: float = CALIBRATION_PERCENTILE
    max_growth: int = MAX_GROWTH
    device: str | None = None
    threads: int | None = None

    def __post_init__(self):
        check_choice(self.method, CALIBRATION_METHODS, "calibration method")


@dataclass
class CollectStats:
    """What a collection did (recorded in the range cache and the benchmark)."""

    images: int = 0
    chunk_images: int = 0
    tensors: int = 0
    device: str = "cpu"
    threads: int | None = None
    run_s: float = 0.0  # ONNX Runtime, in the background thread
    stats_s: float = 0.0  # min / max / histograms
    threshold_s: float = 0.0  # entropy / percentile rules
    total_s: float = 0.0
    max_bins: int = 0
    coarsened: list[str] = field(default_factory=list)  # tensors whose growth hit the cap

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fastest_device() -> str:
    """``cuda`` when the installed ONNX Runtime has its CUDA provider, else ``cpu``."""
    ort = import_onnxruntime("INT8 calibration")
    return "cuda" if CUDA in ort.get_available_providers() else "cpu"


def calibration_session(path: Path, device: str, threads: int | None):
    """An ONNX Runtime session as its calibrator makes it (graph optimisations off), on
    ``device`` (``cpu`` or ``cuda``; TF32 off on CUDA, as :class:`~..runtimes.ort_runner.OrtRunner`)."""
    ort = import_onnxruntime("INT8 calibration")
    providers = select_providers(device, ort.get_available_providers())
    if CUDA in providers:
        _load_gpu_libraries(ort, tensorrt=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # idle ONNX Runtime threads sleep instead of spinning: the histogram thread needs the core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    provider_options = [{"use_tf32": "0"} if p == CUDA else {} for p in providers]
    try:
        return ort.InferenceSession(str(path), options, providers=providers, provider_options=provider_options)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise FornetError(f"ONNX Runtime cannot load the calibration graph: {str(exc).splitlines()[0][:200]}") from None


class _Statistics:
    """Per-tensor min / max and (entropy, percentile) histograms over the chunks."""

    def __init__(self, names: Sequence[str], config: CollectConfig):
        self.method = config.method
        self.percentile = config.percentile
        self.extremes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bins = PERCENTILE_BINS if config.method == "percentile" else ENTROPY_BINS
        self.histograms = {} if config.method == "minmax" else {
            name: Histogram(bins, config.max_growth, name) for name in names}

    def add(self, name: str, arrays: list[np.ndarray]) -> None:
        extremes = chunk_minmax(arrays)
        if self.histograms:
            self.histograms[name].add(arrays, extremes)
        if name in self.extremes:
            old_low, old_high = self.extremes[name]
            extremes = (min(old_low, extremes[0]), max(old_high, extremes[1]))
        self.extremes[name] = extremes

    def ranges(self) -> Ranges:
        out = {}
        for name, (low, high) in self.extremes.items():
            if self.method == "entropy":
                low, high = self.histograms[name].entropy_range()
            elif self.method == "percentile":
                low, high = self.histograms[name].percentile_range(self.percentile)
            out[name] = (float(np.float32(low)), float(np.float32(high)))
        return out


class Images(Protocol):
    """N x 3 x H x W float32 images read once, in order: a numpy array, or a stream such as
    :class:`~.calibset.CalibrationSet` (decoded on the way, never all in memory)."""

    shape: tuple[int, ...]

    def __iter__(self) -> Iterator[np.ndarray]: ...  # each 3 x H x W


def _chunks(images: Images, chunk: int) -> Iterator[list[np.ndarray]]:
    """Lists of ``chunk`` 1 x 3 x H x W private copies: ONNX Runtime may return the graph
    input (measured too) as its own buffer."""
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(np.array(image[None]))
        if len(batch) == chunk:
            yield batch
            batch = []


def collect_ranges(model: onnx.ModelProto, images: Images, tensors: Sequence[str], config: CollectConfig,
                   scratch: str | Path, progress: Progress | None = None) -> tuple[Ranges, CollectStats]:
    """Ranges of ``tensors`` over ``images`` (:class:`Images`: read once, in order).

    The FP32 ``model`` runs once per image (ONNX Runtime, ``config.device``); the augmented
    graph is written to ``scratch``. Chunks of :func:`chunk_size` images are histogrammed in
    order (ONNX Runtime's semantics depend on it) while the next chunk runs.
    ``progress(done, total)`` counts images.
    """
    start_time = time.perf_counter()
    names = list(dict.fromkeys(tensors))
    count, _, height, width = images.shape
    chunk = chunk_size(count, height, width)
    device = config.device or fastest_device()
    threads = config.threads or (max(MIN_CPU_THREADS, _usable_cores() - 1) if device == "cpu" else None)
    stats = CollectStats(images=count, chunk_images=chunk, tensors=len(names), device=device, threads=threads)
    path = Path(scratch) / "calibration.augmented.onnx"
    onnx.save(augmented_model(model, names), str(path))
    statistics = _Statistics(names, config)

    session = calibration_session(path, device, threads)
    input_name = session.get_inputs()[0].name

    chunks = _chunks(images, chunk)

    def run() -> tuple[dict[str, list[np.ndarray]], float]:
        """The next chunk, read (decoded, for a stream) and run; in the background thread."""
        began = time.perf_counter()
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
        batch = next(chunks, None)
        if batch is None:
            raise FornetError(f"the calibration images ended before the {count} announced")
        for image in batch:
            for name, value in zip(names, session.run(names, {input_name: image})):
                outputs[name].append(value)
        return outputs, time.perf_counter() - began

    starts = list(range(0, count, chunk))
    # ONNX Runtime computes chunk k + 1 (its threads release the GIL) while this thread
    # histograms chunk k: at most two chunks of outputs are alive.
    try:
        with ThreadPoolExecutor(1) as background:
            pending = background.submit(run)
            try:
                for k, first in enumerate(starts):
                    outputs, seconds = pending.result()
                    if k + 1 < len(starts):
                        pending = background.submit(run)
                    stats.run_s += seconds
                    began = time.perf_counter()
                    for name in names:
                        statistics.add(name, outputs.pop(name))
                    stats.stats_s += time.perf_counter() - began
                    if progress:
                        progress(first + chunk, count)
            finally:
                pending.cancel()
    finally:
        chunks.close()  # a stream stops decoding (the background thread is done with it)
    began = time.perf_counter()
    ranges = statistics.ranges()
    stats.threshold_s = time.perf_counter() - began
    if statistics.histograms:
        stats.max_bins = max(h.hist.size for h in statistics.histograms.values())
        stats.coarsened = [n for n, h in statistics.histograms.items() if h.coarsened]
    stats.total_s = time.perf_counter() - start_time
    return ranges, stats


def onnxruntime_ranges(model: str | Path, images: Images, op_types: Sequence[str], keep: Sequence[str],
                       method: str, percentile: float = CALIBRATION_PERCENTILE) -> Ranges:
    """The reference :func:`collect_ranges` is checked against: ONNX Runtime's own calibrator
    as ``quantize_static`` ran it before (``create_calibrator`` over ``op_types``, signed
    histograms, :func:`chunk_size` chunks), its threshold search restricted to ``keep``
    (on the other tensors it can take days: the module docstring). Tests and
    ``benchmarks/calibration_time.py`` use it; it is slow and memory-hungry by design."""
    import tempfile

    import_onnxruntime("INT8 calibration")
    from onnxruntime.quantization import calibrate

    methods = {"entropy": calibrate.CalibrationMethod.Entropy, "minmax": calibrate.CalibrationMethod.MinMax,
               "percentile": calibrate.CalibrationMethod.Percentile}
    count, _, height, width = images.shape
    chunk = chunk_size(count, height, width)
    quiet, calibrate.print = getattr(calibrate, "print", None), lambda *args, **kwargs: None  # progress lines
    try:
        with tempfile.TemporaryDirectory(prefix="fornet-ort-calibrator-") as tmp:
            calibrator = calibrate.create_calibrator(
                Path(model), list(op_types), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=methods[method], extra_options={"symmetric": False, "percentile": percentile})
            input_name = calibrator.infer_session.get_inputs()[0].name
            for batch in _chunks(images, chunk):
                feeds = iter([{input_name: image} for image in batch])
                get_next = {"get_next": lambda self: next(feeds, None)}
                reader = type("Reader", (calibrate.CalibrationDataReader,), get_next)
                calibrator.collect_data(reader())
            if method != "minmax":
                histograms = calibrator.collector.histogram_dict
                calibrator.collector.histogram_dict = {name: histograms[name] for name in keep}
            data = calibrator.compute_data()
    finally:
        if quiet is None:
            del calibrate.print
        else:
            calibrate.print = quiet
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in data.data[name].range_value) for name in keep}


def with_aliases(ranges: Mapping[str, tuple[float, float]], aliases: Mapping[str, str]) -> Ranges:
    """``ranges`` plus each alias source with its target's range (see :func:`quantizer_tensors`)."""
    return {**ranges, **{source: ranges[target] for source, target in aliases.items()}}
