"""The contract every stage reads: tensor names, FP32 scopes, stride, artefact names, formats.

One home for each concept, so the exporter, the quantizer, the TensorRT builder, the
runners, the command line and the docs cannot drift apart:

* the graph's input/output tensor names and the network stride;
* the ONNX node-name scopes of the selector / Top-K subgraph that stays FP32 in every
  reduced-precision artefact (a half-precision or quantized importance map creates ties
  and changes which regions are selected);
* the file names of the artefacts of a deploy bundle;
* the table of deployable formats (runtime x precision -> file, the graph it is made
  from, the command that makes it, where it runs), which drives runner selection, the
  engine builder, the benchmark matrix, the CLI's choices and the docs, and beside it the
  runner class of each runtime (:data:`RUNNERS`): a new backend is one runner file, one
  entry there and its rows in :data:`FORMATS`;
* image sizes: one parser (``HxW``), one formatter, one bounds check and the size arithmetic
  of padding to the stride (the network takes any size, see :data:`STRIDE`).

This module imports nothing of the package but :mod:`fornet_deploy.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import FornetError, OptionError

# --- tensors --------------------------------------------------------------------------

INPUT_NAME = "image"
LOGITS = "logits"  # N x C x H x W float32
LABELS = "labels"  # N x H x W, train ids (in-graph ArgMax)
# The 1/8-scale maps hold the cells that hold image: ceil(H/8) x ceil(W/8) (output_side).
IMPORTANCE = "importance"  # N x 1 x ceil(H/8) x ceil(W/8) float32 in (0, 1)
TOPK_MASK = "topk_mask"  # N x 1 x ceil(H/8) x ceil(W/8) float32 in {0, 1}
OUTPUT_NAMES = (LOGITS, LABELS, IMPORTANCE, TOPK_MASK)
# The head's logits before the final x4 upsample: what a CPU graph (``model.cpu.onnx``,
# ``model.int8.cpu.onnx``) outputs where its source gives ``logits``, so parity still has
# logits to compare without the graph computing the full-resolution ones.
COARSE_LOGITS = "coarse_logits"  # N x C x ceil(H/4) x ceil(W/4) float32
EXPORT_OUTPUTS = (*OUTPUT_NAMES, COARSE_LOGITS)  # what `export --outputs` may name
INPUT_CHANNELS = 3

# Five stride-2 stages to 1/32: the network runs on H and W rounded up to multiples of this.
# An input of any other size is padded at the bottom and right inside the network (and the
# graph) and every output is cropped back to the cells that hold image (model/fornet.py).
STRIDE = 32
# Scale of the importance map and the Top-K mask relative to the input.
FOCUS_SCALE = 8
# Largest network input side: 8K video fits; beyond it the full-resolution logits alone
# would take gigabytes, so a larger size is a typo, not a request.
MAX_SIDE = 8192
# Largest batch any command builds or runs: 1024 full-HD images are already 25 GB of input.
MAX_BATCH = 1024
# Most pixels one network input holds, batch x height x width, checked before anything is
# allocated: 2048x4096, a 4K UHD frame (2160x3840; 2176x3840 padded to the stride) or 4 Cityscapes frames.
# Memory grows with it (exporting the shipped model peaks at about 1.2 GB + 0.7 KB per
# pixel: 6.1 GB at this bound, docs/reliability.md); MAX_SIDE alone let 8192x8192 through,
# which grew past 24 GB.
MAX_PIXELS = 2048 * 4096

# ONNX node-name scopes of the importance map and the Top-K subgraph (module paths as the
# TorchScript exporter names nodes, e.g. "/focus/selector/score/Conv"), kept FP32 by the FP16
# converter, the quantizer, TensorRT and OpenVINO's bf16 / f16 inference precision.
SELECTOR_SCOPE, TOPK_SCOPE = "/focus/selector/", "/focus/topk/"
FP32_SCOPES = (SELECTOR_SCOPE, TOPK_SCOPE)


def in_fp32_scope(node_name: str, scopes: tuple[str, ...] = FP32_SCOPES) -> bool:
    """Whether a node belongs to the selector/Top-K subgraph.

    Matched anywhere in the name, not as a prefix: the TorchScript exporter names nodes
    after module paths ("/focus/selector/score/Conv"), and a wrapper module or another
    exporter may put a prefix in front ("/model/focus/selector/..."); OpenVINO keeps the
    ONNX names and appends to them ("/focus/selector/score/Conv/WithoutBiases").
    """
    return any(scope in node_name for scope in scopes)


FOCUS_SCOPE = "/focus/"  # the selector, the Top-K and the branches they gate
# Nodes of a CPU graph's cheap tail (export/tail.py); the export's own tail (Resize, ArgMax,
# Casts) has root-level names ("/Resize"): it belongs to no module.
TAIL_SCOPE = "/tail/"

# --- bundle artefacts -----------------------------------------------------------------

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "fornet-deploy-bundle"  # the manifest's "format": what makes a folder a bundle
CHECKPOINT = "checkpoint.safetensors"
ONNX_FP32 = "model.onnx"
ONNX_CPU = "model.cpu.onnx"  # FP32 with the CPU tail: what ONNX Runtime runs on a CPU
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8_QDQ = "model.int8.qdq.onnx"  # symmetric INT8 Q/DQ on the FP16 graph: what TensorRT consumes
ONNX_INT8_CPU = "model.int8.cpu.onnx"  # U8S8 Q/DQ: fast on ONNX Runtime for x86
CALIBRATION_DIR = "calibration"  # the activation-range caches of `calibrate` (no images)
TRT_CALIBRATION_CACHE = "model.int8.calib"  # TensorRT 10.x entropy-calibrator cache
ORT_TRT_CACHE_DIR = "ort_trt_cache"  # engines built by ONNX Runtime's TensorRT EP
OPENVINO_CACHE_DIR = "openvino_cache"  # models compiled by OpenVINO (its CACHE_DIR)
PARITY_DIR = "parity"

# The SynthCity weights shipped inside the package (package data, so `pip install .` has them).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fornet_synthcity.safetensors"
SHIPPED = "shipped"  # what `--checkpoint shipped` means: SHIPPED_WEIGHTS (a file named so: ./shipped)


def checkpoint_path(checkpoint: str | Path) -> Path:
    """A checkpoint argument as a path: the word ``shipped`` is :data:`SHIPPED_WEIGHTS`."""
    return SHIPPED_WEIGHTS if str(checkpoint) == SHIPPED else Path(checkpoint)

# --- formats --------------------------------------------------------------------------

# The runner class of each runtime, as "module:Class": runtimes/registry.py imports it only
# when a runner of that runtime is made (heavy packages stay out of every other command).
RUNNERS = {
    "torch": "fornet_deploy.runtimes.torch_runner:TorchRunner",
    "ort": "fornet_deploy.runtimes.ort_runner:OrtRunner",
    "trt": "fornet_deploy.runtimes.trt.runner:TrtRunner",
    "openvino": "fornet_deploy.runtimes.openvino_runner:OpenVinoRunner",
}
RUNTIMES = tuple(RUNNERS)
# What an artefact carries (the manifest, build-trt, package).
PRECISIONS = ("fp32", "fp16", "int8")
# What a runner may be asked to run at (parity, eval, bench, predict): the artefacts' precisions
# and bf16, OpenVINO's inference precision on a CPU with BF16 instructions (its default there).
RUN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NVIDIA_DEVICES = ("cuda", "jetson")
INTEL_DEVICES = ("gpu", "npu")  # an Intel GPU / NPU, through OpenVINO's GPU / NPU devices
DEVICES = ("cpu", *NVIDIA_DEVICES, *INTEL_DEVICES)
OPENVINO_DEVICES = ("cpu", *INTEL_DEVICES)
TOPK_FORMS = ("threshold", "exact")
CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
CALIBRATION_PERCENTILE = 99.999  # --method percentile: the share of values a range keeps
# symmetric INT8 Q/DQ on the FP16 graph for TensorRT | U8S8 on the FP32 graph for ONNX Runtime on x86
CALIBRATION_TARGETS = ("tensorrt", "cpu")
MAX_DROP_IMAGES = 32  # calibrate --max-drop: held-out images the mIoU drop is measured on
# How the CPU graphs compute labels from the 1/4-scale logits (export/tail.py): refine (the
# labels of the full-resolution tail, cheaply), nearest (the 1/4-scale argmax, x4), full (the
# full-resolution Resize + ArgMax that model.onnx and every TensorRT-bound graph keep).
TAILS = ("refine", "full", "nearest")
DEFAULT_TAIL = "refine"
PACKAGE_TARGETS = ("triton", "deepstream")  # serving stacks `fornet-deploy package` writes for
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers (--runtime ort)


@dataclass(frozen=True)
class Format:
    """One deployable artefact kind.

    ``artifact`` is the file in the bundle (for TensorRT the default engine name; engines
    built for other shapes, DLA or the legacy calibrator carry longer names, found through
    their manifest entries). ``source`` is the graph the artefact is made from.
    """

    runtime: str
    precision: str
    artifact: str
    source: str
    devices: tuple[str, ...]
    made_by: str
    note: str = ""


FORMATS: tuple[Format, ...] = (
    Format("torch", "fp32", CHECKPOINT, CHECKPOINT, ("cpu", "cuda", "jetson"), "fornet-deploy export", "reference"),
    Format("torch", "fp16", CHECKPOINT, CHECKPOINT, ("cuda", "jetson"), "fornet-deploy export", "autocast"),
    # On a CPU, ONNX Runtime runs the graph with the cheap tail when the bundle has one.
    Format("ort", "fp32", ONNX_CPU, ONNX_FP32, ("cpu",), "fornet-deploy export", "CPU tail"),
    Format("ort", "fp32", ONNX_FP32, CHECKPOINT, ("cpu", "cuda", "jetson"), "fornet-deploy export"),
    Format("ort", "fp16", ONNX_FP16, ONNX_FP32, ("cpu", "cuda", "jetson"), "fornet-deploy export --precision fp16"),
    # x86 CPUs run U8S8 (unsigned activations) faster than the symmetric S8S8 graph.
    Format("ort", "int8", ONNX_INT8_CPU, ONNX_FP32, ("cpu",), "fornet-deploy calibrate --target cpu", "U8S8"),
    # INT8 convolutions, FP16 elsewhere, the selector / Top-K FP32: what a strongly typed TensorRT engine runs.
    Format("ort", "int8", ONNX_INT8_QDQ, ONNX_FP16, ("cpu", "cuda", "jetson"), "fornet-deploy calibrate",
           "S8 Q/DQ on FP16"),
    # OpenVINO reads the same ONNX graphs; the precision is its inference-precision hint
    # (runtimes/openvino_runner.py), the U8S8 graph's Q/DQ pairs give INT8.
    Format("openvino", "fp32", ONNX_CPU, ONNX_FP32, OPENVINO_DEVICES, "fornet-deploy export", "f32 hint, CPU tail"),
    Format("openvino", "fp32", ONNX_FP32, CHECKPOINT, OPENVINO_DEVICES, "fornet-deploy export", "f32 hint"),
    Format("openvino", "bf16", ONNX_CPU, ONNX_FP32, ("cpu",), "fornet-deploy export", "bf16 hint, CPU tail"),
    Format("openvino", "bf16", ONNX_FP32, CHECKPOINT, ("cpu",), "fornet-deploy export", "bf16 hint"),
    Format("openvino", "fp16", ONNX_CPU, ONNX_FP32, INTEL_DEVICES, "fornet-deploy export", "f16 hint, CPU tail"),
    Format("openvino", "fp16", ONNX_FP32, CHECKPOINT, INTEL_DEVICES, "fornet-deploy export", "f16 hint"),
    Format("openvino", "int8", ONNX_INT8_CPU, ONNX_FP32, OPENVINO_DEVICES, "fornet-deploy calibrate --target cpu",
           "U8S8"),
    Format("trt", "fp32", "model.fp32.engine", ONNX_FP32, ("cuda", "jetson"), "fornet-deploy build-trt --fp32"),
    Format("trt", "fp16", "model.fp16.engine", ONNX_FP16, ("cuda", "jetson"), "fornet-deploy build-trt --fp16"),
    Format("trt", "int8", "model.int8.engine", ONNX_INT8_QDQ, ("cuda", "jetson"), "fornet-deploy build-trt --int8"),
)


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices``; else one line listing them."""
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r} (use {', '.join(choices)})")
    return value


def formats_for(runtime: str, precision: str, device: str | None = None) -> list[Format]:
    """The table's rows for (runtime, precision[, device]); unknown names are one-line errors."""
    check_choice(runtime, RUNTIMES, "runtime")  # usage errors: the CLI's choices catch them first
    check_choice(precision, RUN_PRECISIONS, "precision")
    if device is not None:
        check_choice(device, DEVICES, "device")
    found = [f for f in FORMATS if f.runtime == runtime and f.precision == precision
             and (device is None or device in f.devices)]
    if not found:  # a usage error: the table says where each runtime and precision runs
        where = sorted({d for f in FORMATS if f.runtime == runtime and f.precision == precision for d in f.devices},
                       key=DEVICES.index)
        if not where:
            raise OptionError(f"--runtime {runtime} has no {precision} precision")
        raise OptionError(f"--runtime {runtime} --precision {precision} does not run on --device {device} "
                          f"(use --device {' or '.join(where)})")
    return found


def default_device(runtime: str) -> str:
    """The device a run of ``runtime`` takes when none is given: the CPU where the runtime
    runs there, else CUDA (TensorRT)."""
    check_choice(runtime, RUNTIMES, "runtime")
    return "cpu" if any("cpu" in f.devices for f in FORMATS if f.runtime == runtime) else "cuda"


def onnx_graph(precision: str) -> Format:
    """The ONNX graph that carries ``precision`` (the source of a strongly typed engine)."""
    check_choice(precision, PRECISIONS, "precision")
    return next(f for f in FORMATS if f.runtime == "ort" and f.precision == precision and "cuda" in f.devices)


def engine_format(precision: str) -> Format:
    return formats_for("trt", precision)[0]


# --- image sizes ----------------------------------------------------------------------

_HW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_hw(text: str, option: str = "--shape") -> tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)``; anything else is one line naming the option."""
    match = _HW.match(str(text))
    if not match:
        raise OptionError(f"{option} must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}")
    h, w = int(match.group(1)), int(match.group(2))
    if h <= 0 or w <= 0:
        raise OptionError(f"{option} must be positive, got {text!r}")
    if max(h, w) > MAX_SIDE:
        raise OptionError(f"{option} {text!r} is larger than the supported {MAX_SIDE} pixels per side")
    return h, w


def check_batch(batch: int, option: str = "--batch") -> int:
    """``batch`` if it is an integer in 1..:data:`MAX_BATCH`; else one line naming the option."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise OptionError(f"{option} must be an integer from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


def check_pixels(batch: int, height: int, width: int, what: str = "input",
                 error: type[FornetError] = OptionError) -> None:
    """``batch`` images of ``height`` x ``width`` within :data:`MAX_PIXELS`; else one line."""
    pixels = batch * height * width
    if pixels > MAX_PIXELS:
        shape = f"{batch} x {height}x{width}" if batch != 1 else f"{height}x{width}"
        raise error(f"{what} {shape} is {pixels / 2**20:.1f} M pixels, more than the {MAX_PIXELS // 2**20} M "
                    "(2048x4096) one network input may hold; use a smaller size or batch")


def format_shape(shape: Sequence[int | None]) -> str:
    """``(1, 3, 512, 1024)`` -> ``"1x3x512x1024"``; dynamic dims (``None``) print as ``?``."""
    return "x".join("?" if d is None else str(d) for d in shape)


def check_size(height: int, width: int) -> None:
    """An input size the network takes: H and W from 1 to :data:`MAX_SIDE` (any size: the
    network pads to :data:`STRIDE` itself)."""
    if height <= 0 or width <= 0:
        raise FornetError(f"input size {height}x{width} must be positive")
    if max(height, width) > MAX_SIDE:
        raise FornetError(f"input size {height}x{width} is larger than the supported {MAX_SIDE} pixels per side")


def padded_side(side: int, stride: int = STRIDE) -> int:
    """The side the network runs at: ``side`` rounded up to a multiple of ``stride``."""
    return -(-side // stride) * stride


def output_side(side: int, scale: int) -> int:
    """Cells of a 1/``scale`` output along a side of ``side`` pixels: ``ceil(side / scale)``,
    the cells that hold at least one image pixel (the padding's cells are cropped)."""
    return -(-side // scale)
