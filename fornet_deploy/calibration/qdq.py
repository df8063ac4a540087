"""``fornet-deploy calibrate``: FP32 ONNX + calibration images -> INT8 Q/DQ ONNX.

Precision lives in the graph (docs/design.md section 5): TensorRT 11 takes INT8 only from
explicit QuantizeLinear/DequantizeLinear nodes, so calibration happens here, once, on any
machine, and the result is an ONNX file that ONNX Runtime can check.

Two targets share one calibration (same images, same tensor ranges, same exclusions):

``tensorrt`` -> ``model.int8.qdq.onnx``
    Symmetric INT8 activations (per tensor) and weights (per output channel, axis 0 of
    Conv), float weights behind a Q -> DQ pair and float biases: the explicit-quantization
    form TensorRT's ONNX parser reads (it folds the weight Q itself, and has no INT32
    DequantizeLinear for a quantized bias).
``cpu`` -> ``model.int8.cpu.onnx``
    U8S8 (asymmetric uint8 activations, symmetric int8 per-channel weights) in Q/DQ form,
    which ONNX Runtime fuses into its x86 integer kernels; symmetric S8S8 runs slower than
    FP32 there. ``reduce_range`` stays off: it only matters on x86 without VNNI.

Excluded from quantization (:func:`excluded_nodes`): the selector / Top-K subgraph (nodes
named after ``FP32_SCOPES``), because a quantized importance map creates ties; the nodes
that read its outputs, because ONNX Runtime puts one Q/DQ pair on a tensor for *all* its
consumers, so quantizing the product ``mask * s`` would round the importance map the Top-K
reads too; and the nodes that compute a graph output, so every output (``importance``,
``topk_mask``, ``logits`` and the ArgMax behind ``labels``) is computed in float rather
than read from a DequantizeLinear. (The classifier's 1/4-scale output before the final
upsample is still int8; keeping it float as well changed argmax agreement by 0.002 %.)

The quantizer is ONNX Runtime's ``quantize_static`` (no extra dependency, runs on CPU);
:func:`quantize_int8` is the one function that knows it. ``quant_pre_process`` is not used:
the export is already simplified and shape-inferred, and its ORT graph optimisations would
rename the nodes the exclusions are matched by. Each target runs its own calibration pass
over the cached calibration tensors (deterministic, so both see the same ranges):
``quantize_static``'s own range cache (``calibration_cache_path``) only exists in recent
ONNX Runtime releases.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from ..bundle import Transaction, transaction
from ..contract import (
    CALIBRATION_METHODS,
    CALIBRATION_TARGETS,
    FP32_SCOPES,
    ONNX_FP32,
    ONNX_INT8_CPU,
    ONNX_INT8_QDQ,
    check_choice,
)
from ..data.transforms import Preprocessing
from ..errors import FornetError, OptionError
from ..export.fp16 import fp32_scope_nodes
from ..export.onnx import check_runs, embed_metadata, load_onnx, read_metadata
from ..export.tail import calibrated_graph
from .calibset import CalibrationSet

METHODS = CALIBRATION_METHODS
DEFAULT_PERCENTILE = 99.999
# Ops whose inputs (and outputs) get Q/DQ. Everything else in the graph (ArgMax, the
# selector/Top-K ops) stays float.
QUANTIZED_OPS = ("Conv", "Relu", "Add", "Mul", "Concat", "Resize", "GlobalAveragePool")
# Calibration runs in chunks of at most this many pixels: ORT keeps every intermediate
# tensor of a chunk in memory before it updates the ranges/histograms, ~90 MiB per
# 256x512 image for the default FoR-Net, so 8 such images (~0.7 GiB) or one 1024x2048.
CHUNK_PIXELS = 8 * 256 * 512


@dataclass(frozen=True)
class Target:
    artifact: str
    activation_type: str  # onnxruntime.quantization.QuantType member name
    weight_type: str
    symmetric_activations: bool
    weight_qdq_pair: bool  # float weight -> Q -> DQ (TensorRT) or int8 weight -> DQ (ORT)
    quantize_bias: bool


TARGETS = {
    "tensorrt": Target(ONNX_INT8_QDQ, "QInt8", "QInt8", symmetric_activations=True, weight_qdq_pair=True,
                       quantize_bias=False),
    "cpu": Target(ONNX_INT8_CPU, "QUInt8", "QInt8", symmetric_activations=False, weight_qdq_pair=False,
                  quantize_bias=True),
}


def _reader(input_name: str, images: np.ndarray, progress: Callable[[int, int], None] | None):
    """An ORT CalibrationDataReader over the cached N x 3 x H x W array, one image per run."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(images))

        def set_range(self, start_index: int, end_index: int) -> None:  # ORT's chunking hook
            self._iter: Iterator[int] = iter(range(start_index, end_index))

        def __len__(self) -> int:
            return len(images)

        def get_next(self) -> dict | None:
            index = next(self._iter, None)
            if index is None:
                return None
            if progress:
                progress(index + 1, len(images))
            return {input_name: images[index : index + 1]}

    return ArrayReader()


def chunk_size(images: np.ndarray) -> int:
    """Images per calibration chunk: the largest divisor of N (ORT's strided collection
    needs one) within the :data:`CHUNK_PIXELS` budget."""
    n, limit = len(images), max(1, CHUNK_PIXELS // (images.shape[2] * images.shape[3]))
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence quantize_static without touching sys.stdout (a progress bar may be drawing).

    Its histogram calibrators ``print`` progress lines from one module, shadowed here, and
    it logs a root-logger warning about pre-processing, skipped on purpose (module docstring).
    """
    from onnxruntime.quantization import calibrate

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    calibrate.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del calibrate.print
        logging.disable(previous)


def quantize_int8(source: Path, output: Path, images: np.ndarray, method: str, target: Target,
                  exclude: list[str], percentile: float = DEFAULT_PERCENTILE,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Calibrate on ``images`` and write the Q/DQ model to ``output``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile}[method]
    extra = {
        "ActivationSymmetric": target.symmetric_activations,
        "WeightSymmetric": True,
        "AddQDQPairToWeight": target.weight_qdq_pair,
        "QuantizeBias": target.quantize_bias,
        "CalibStridedMinMax": chunk_size(images),  # despite its name: chunking for every method
        "CalibPercentile": percentile,
        # Signed histograms for every method. The percentile default (|x| histograms with a
        # fixed bin count) fails on tensors whose values differ by less than float32 can
        # split into 2048 bins, such as the converged bounds of the Top-K bisection.
        "CalibTensorRangeSymmetric": False,
    }
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    with _quiet():
        quantize_static(
            str(source), str(output), _reader(input_name, images, progress), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType[target.activation_type], weight_type=QuantType[target.weight_type],
            nodes_to_exclude=exclude, calibrate_method=calibrate_method, extra_options=extra,
        )


def _check_input_shape(proto: onnx.ModelProto, images: np.ndarray) -> None:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if any(want is not None and want != got for want, got in zip(dims[1:], images.shape[1:])):
        raise FornetError(
            f"calibration images preprocess to {list(images.shape[1:])} but {ONNX_FP32} takes {dims[1:]}: "
            "export at the data's size, or set a fixed resize in the preprocessing"
        )


def excluded_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes kept float: the FP32 scopes, their direct consumers, and graph-output producers."""
    scope = set(fp32_scope_nodes(proto))
    scope_tensors = {o for n in proto.graph.node if n.name in scope for o in n.output}
    graph_outputs = {o.name for o in proto.graph.output}
    return [
        n.name for n in proto.graph.node
        if n.name in scope or scope_tensors.intersection(n.input) or graph_outputs.intersection(n.output)
    ]


def quantized_op_types(proto: onnx.ModelProto) -> set[str]:
    """Op types of nodes that compute in integers (none in a Q/DQ graph)."""
    return {n.op_type for n in proto.graph.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")}


def calibrate_bundle(bundle_dir: str | Path, data_dir: str | Path, num_images: int = 64, method: str = "entropy",
                     target: str = "tensorrt", seed: int = 0, progress: Callable[[int, int], None] | None = None,
                     percentile: float = DEFAULT_PERCENTILE) -> dict:
    """The library function behind ``fornet-deploy calibrate``; returns the manifest entry."""
    check_choice(method, METHODS, "calibration method")
    check_choice(target, CALIBRATION_TARGETS, "calibration target")
    if not 0.0 < percentile <= 100.0:
        raise OptionError(f"--percentile must be in (0, 100], got {percentile}")
    with transaction(bundle_dir, f"calibrate --target {target}") as txn:
        return _calibrate(txn, data_dir, num_images, method, target, seed, progress, percentile)


def _calibrate(txn: Transaction, data_dir: str | Path, num_images: int, method: str, target: str, seed: int,
               progress: Callable[[int, int], None] | None, percentile: float) -> dict:
    """:func:`calibrate_bundle` under the bundle's writer lock; the graph is committed on return."""
    bundle = txn.bundle
    source = bundle.path(ONNX_FP32)  # checks the sha256 the key is built from, and its lineage
    source_sha = bundle.artifacts[ONNX_FP32]["sha256"]
    proto = load_onnx(source)
    preprocessing = Preprocessing.from_dict(bundle.section("preprocessing"))
    calib = CalibrationSet.select(data_dir, preprocessing, num=num_images, seed=seed)
    images, key = calib.arrays(bundle.root, source_sha)
    _check_input_shape(proto, images)
    exclude = excluded_nodes(proto)
    spec = TARGETS[target]
    tmp = txn.path(spec.artifact)
    # The quantizer writes a fixed-name scratch file beside its input (<model>-inferred.onnx):
    # it reads a private copy, so that file never lands in (or, through a link, outside) the bundle.
    private_source = txn.scratch() / ONNX_FP32
    shutil.copyfile(source, private_source)
    quantize_int8(private_source, tmp, images, method, spec, exclude, percentile, progress)
    quantized = _finish(tmp, proto, target, method, key)
    check_runs(tmp, list(images[:1].shape), f"the INT8 {target} graph")
    return txn.record(
        spec.artifact, kind="onnx", precision="int8", target=target, method=method,
        **({"percentile": percentile} if method == "percentile" else {}), source=ONNX_FP32, source_sha256=source_sha,
        opset=_opset(quantized), activations=spec.activation_type, weights=spec.weight_type,
        symmetric_activations=spec.symmetric_activations, per_channel=True, quantized_ops=list(QUANTIZED_OPS),
        calibration={"key": key, "num_images": len(calib), "split": calib.split, "seed": seed,
                     "images": [s.name for s in calib.samples]},
        excluded_scopes=list(FP32_SCOPES), excluded_nodes=exclude,
        quantizer={"name": "onnxruntime.quantization.quantize_static", "version": _ort_version()},
    )


def _finish(path: Path, source: onnx.ModelProto, target: str, method: str, key: str) -> onnx.ModelProto:
    """Check the quantized graph against the source and embed the bundle metadata."""
    proto = load_onnx(path)
    if _opset(proto) != _opset(source):  # a bug guard: TensorRT parses what was exported
        raise FornetError(f"the quantizer changed the opset from {_opset(source)} to {_opset(proto)}")
    if target == "tensorrt" and quantized_op_types(proto):
        raise FornetError(f"the TensorRT Q/DQ graph holds integer ops {sorted(quantized_op_types(proto))}")
    proto = calibrated_graph(proto, target, read_metadata(source))  # issue 15: the CPU tail (export/tail.py)
    embed_metadata(proto, {**read_metadata(source), "precision": "int8", "int8": {"target": target, "method": method,
                                                                                     "calibration_key": key}})
    onnx.save(proto, str(path))
    return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
