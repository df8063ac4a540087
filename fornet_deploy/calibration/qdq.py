"""``fornet-deploy calibrate``: calibration images -> INT8 Q/DQ graphs, one per target.

Precision lives in the graph (docs/design.md section 5): TensorRT 11 takes INT8 only from
explicit QuantizeLinear / DequantizeLinear nodes, so calibration happens here, once, on any
machine, and the result is an ONNX file that ONNX Runtime can check.

Both targets share one calibration: the same images (:mod:`.calibset`) and the same
activation ranges, measured once on ``model.onnx`` (:mod:`.collect`, ONNX Runtime's range
rules) and cached in the bundle per calibration key, method and percentile
(``calibration/calib_<key[:16]>.<method>.ranges.json``), so calibrating the second target
collects nothing.

``tensorrt`` -> ``model.int8.qdq.onnx`` (:mod:`.placement`)
    Built on the mixed FP16 graph ``model.fp16.onnx`` (made first by ``calibrate`` when the
    bundle has none): symmetric INT8 Q/DQ on convolution inputs only (per-tensor activations,
    per-channel weights, FP16 scales, opset 19), residual Adds and pools where TensorRT fuses
    them, everything else FP16 and the selector / Top-K FP32, as NVIDIA's placement guide
    asks. ``lint --target tensorrt`` reports no placement finding on it.
``cpu`` -> ``model.int8.cpu.onnx``
    U8S8 (asymmetric uint8 activations, symmetric int8 per-channel weights) in Q/DQ form on
    the FP32 graph, written by ONNX Runtime's own QDQ quantizer from the shared ranges: ONNX
    Runtime fuses it into its x86 integer kernels, where symmetric S8S8 runs slower than
    FP32. ``reduce_range`` stays off: it only matters on x86 without VNNI. Excluded
    (:func:`excluded_nodes`): the selector / Top-K subgraph (a quantized importance map
    creates ties), the nodes that read its outputs (ONNX Runtime puts one Q/DQ pair on a
    tensor for *all* its consumers, so quantizing ``mask * s`` would round the importance map
    the Top-K reads too) and the nodes that compute a graph output (through the crop to the
    image, at an export size that is not a multiple of the stride), so every output is
    computed in float rather than read from a DequantizeLinear.

``--max-drop POINTS`` (:mod:`.budget`) leaves the most sensitive convolutions float until the
mIoU drop against ``model.onnx`` on held-out labelled images is within the budget; every graph
it measures comes from the same ranges (:class:`GraphMaker`). A float convolution gets no Q/DQ
on its weight and reads its input unrounded: the TensorRT placement skips it
(:func:`.placement.plan_qdq`), and in the CPU graph it is excluded from ONNX Runtime's quantizer
and rewired to the float tensor (:func:`read_float_inputs`).

``quant_pre_process`` is not used: the export is already simplified and shape-inferred, and
its ORT graph optimisations would rename the nodes the exclusions are matched by.
"""

from __future__ import annotations

import functools
import inspect
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from .._version import __version__
from ..bundle import Bundle, Transaction, transaction
from ..contract import (
    CALIBRATION_DIR,
    CALIBRATION_METHODS,
    CALIBRATION_PERCENTILE,
    CALIBRATION_TARGETS,
    FP32_SCOPES,
    ONNX_CPU,
    ONNX_FP16,
    ONNX_FP32,
    ONNX_INT8_CPU,
    ONNX_INT8_QDQ,
    check_choice,
)
from ..data.formats import Dataset
from ..data.labels import manifest_label_set
from ..errors import CheckFailed, FornetError, OptionError
from ..export.fp16 import convert_fp16, fp32_scope_nodes
from ..export.onnx import check_runs, embed_metadata, load_onnx, read_metadata
from ..export.tail import calibrated_graph
from ..io import atomic_write_json, read_json
from ..runtimes.ort_runner import import_onnxruntime
from .budget import AccuracyBudget, heldout_set, measure_latency_ratio, open_heldout, search
from .calibset import CalibrationSet, bundle_calibration_set, check_source, graph_input_dims, tidy_cache
from .collect import CollectConfig, Ranges, collect_ranges, quantizer_tensors, with_aliases
from .placement import OPSET, plan_qdq, range_tensors, tensorrt_graph, to_opset

METHODS = CALIBRATION_METHODS
# Op types ONNX Runtime's quantizer quantizes in the CPU graph. Everything else in the graph
# (ArgMax, the selector / Top-K ops) stays float.
QUANTIZED_OPS = ("Conv", "Relu", "Add", "Mul", "Concat", "Resize", "GlobalAveragePool")
Progress = Callable[..., None]
RANGES_VERSION = 1  # bump when the range rules change: cached ranges are then collected again


@dataclass(frozen=True)
class Target:
    artifact: str
    source: str  # the graph it is built from (its manifest lineage)
    activations: str
    weights: str
    float_graph: str  # what to deploy where no INT8 graph meets an accuracy budget


TARGETS = {
    "tensorrt": Target(ONNX_INT8_QDQ, ONNX_FP16, "int8, symmetric, per tensor", "int8, symmetric, per output channel",
                       f"an FP16 engine ({ONNX_FP16})"),
    "cpu": Target(ONNX_INT8_CPU, ONNX_FP32, "uint8, asymmetric, per tensor", "int8, symmetric, per output channel",
                  f"the FP32 CPU graph ({ONNX_CPU})"),
}


def excluded_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes the CPU graph keeps float: the FP32 scopes, their direct consumers and the
    graph-output producers, an output's crop to the image included (module docstring)."""
    scope = set(fp32_scope_nodes(proto))
    scope_tensors = {o for n in proto.graph.node if n.name in scope for o in n.output}
    outputs = _output_sources(proto)
    return [
        n.name for n in proto.graph.node
        if n.name in scope or scope_tensors.intersection(n.input) or outputs.intersection(n.output)
    ]


def _output_sources(proto: onnx.ModelProto) -> set[str]:
    """The graph outputs and, behind an output cropped to the image (a chain of Slices,
    model/padding.py), every tensor of the chain: the crop only selects what its source computed."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    sources = set()
    for output in proto.graph.output:
        name = output.name
        sources.add(name)
        while name in producer and producer[name].op_type == "Slice":
            name = producer[name].input[0]
            sources.add(name)
    return sources


def needed_tensors(proto: onnx.ModelProto) -> tuple[list[str], dict[str, str]]:
    """``(measured, aliases)``: what one collection on the FP32 graph measures so that both
    targets are served (the CPU quantizer's tensors and the TensorRT graph's conv inputs),
    and the Relu inputs that borrow their output's range in the CPU quantizer."""
    measured, aliases = quantizer_tensors(proto, QUANTIZED_OPS, excluded_nodes(proto))
    tensorrt = range_tensors(proto)
    aliases = {source: target for source, target in aliases.items() if source not in tensorrt}
    return measured + [t for t in tensorrt if t not in measured], aliases


def quantized_op_types(proto: onnx.ModelProto) -> set[str]:
    """Op types of nodes that compute in integers (none in a Q/DQ graph)."""
    return {n.op_type for n in proto.graph.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")}


# --- the CPU graph: ONNX Runtime's quantizer on given ranges ----------------------------------


def quantize_cpu(source: Path, output: Path, ranges: Ranges, method: str, exclude: list[str],
                 route: str = "auto") -> None:
    """The U8S8 Q/DQ graph of ``source`` with ONNX Runtime's QDQ quantizer, which reads
    ``ranges`` (tensor -> (low, high)) instead of calibrating.

    ``route``: ``cache`` hands the ranges over as a calibration cache file
    (``quantize_static(calibration_cache_path=...)``, the public way, ONNX Runtime 1.32+);
    ``direct`` calls the ``QDQQuantizer`` that ``quantize_static`` calls, with the same
    arguments (its signature is the same from 1.18 to 1.32); ``auto`` takes the first the
    installed release has. Both write the same graph (tested). Like ``quantize_static``, both
    write a shape-inferred copy beside ``source`` (``<model>-inferred.onnx``): pass a private
    copy.
    """
    import_onnxruntime("INT8 quantization")  # one wheel installed, or one line
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    calibration_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                          "percentile": CalibrationMethod.Percentile}[method]
    tensors_range = TensorsData(calibration_method, {
        name: TensorData(lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32))
        for name, (low, high) in ranges.items()})
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "AddQDQPairToWeight": False, "QuantizeBias": True}
    if route == "auto":
        route = "cache" if "calibration_cache_path" in inspect.signature(quantize_static).parameters else "direct"
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its warning about pre-processing, skipped on purpose (module docstring)
    try:
        if route == "cache":
            from onnxruntime.quantization.calibrate import save_tensors_data

            cache = output.with_name(output.name + ".ranges.json")
            save_tensors_data(tensors_range, cache)
            quantize_static(str(source), str(output), None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=calibration_method, extra_options=extra)
            cache.unlink()
        else:
            from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
            from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

            quantizer = QDQQuantizer(load_model_with_shape_infer(Path(source)), True, False, QuantType.QInt8,
                                     QuantType.QUInt8, tensors_range, [], list(exclude), list(QUANTIZED_OPS), extra)
            quantizer.quantize_model()
            quantizer.model.save_model_to_file(str(output), False)
    finally:
        logging.disable(previous)


def read_float_inputs(quantized: onnx.ModelProto, fp32: onnx.ModelProto, convs: Sequence[str]) -> onnx.ModelProto:
    """``convs`` of ONNX Runtime's CPU graph ``quantized`` read their activation input in float,
    as the FP32 graph ``fp32`` computes it, rather than through the Q/DQ pair the quantizer put on
    it for a neighbour (a producer that quantizes its output, or another reader: one pair serves
    every reader), so a convolution the budget leaves float sees no INT8 rounding, as in the
    TensorRT graph (:func:`.placement.plan_qdq`). Where the quantizer removed the ReLU before
    the pair (its uint8 range from 0 does the clamping), the convolution reads a ReLU of the
    pair's input; any other pattern keeps reading the pair. A pair no longer read is removed.
    Edits ``quantized`` in place and returns it."""
    graph = quantized.graph
    producer = {o: n for n in graph.node for o in n.output}
    fp32_producer = {o: n for n in fp32.graph.node for o in n.output}
    fp32_input = {n.name: n.input[0] for n in fp32.graph.node if n.input}
    present = {n.name for n in graph.node}
    relus: dict[str, onnx.NodeProto] = {}  # conv name -> the ReLU to emit before it
    wanted = set(convs)
    for node in (n for n in graph.node if n.name in wanted):
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue  # reads a float tensor already
        rounded, original = q.input[0], fp32_input[node.name]
        source, made_by = fp32_producer.get(original), producer.get(rounded)
        if source is None or (made_by is not None and made_by.name == source.name):
            node.input[0] = rounded  # the tensor itself (a graph input, or made by the same node as in fp32)
        elif source.op_type == "Relu" and source.name not in present:
            relus[node.name] = onnx.helper.make_node("Relu", [rounded], [f"{original}_float_{node.name}"],
                                                     name=f"{source.name}_float_{node.name}")
            node.input[0] = relus[node.name].output[0]
    nodes = [n for node in graph.node for n in ([relus[node.name]] if node.name in relus else []) + [node]]
    for op_type in ("DequantizeLinear", "QuantizeLinear"):  # readers first: a Q is unread once its DQ is gone
        read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
        nodes = [n for n in nodes if n.op_type != op_type or n.output[0] in read]
    del graph.node[:]
    graph.node.extend(nodes)
    return quantized


# --- one target's graph, with some convolutions left float -------------------------------------


@dataclass
class GraphMaker:
    """Writes a target's INT8 graph from the shared ranges as the bundle gets it (checked
    against its source, post-processed, metadata embedded), with some convolutions left float:
    the graph ``calibrate`` writes, and the graphs the accuracy budget measures
    (:class:`.budget.TrialGraphs`)."""

    target: str
    fp32: onnx.ModelProto
    fp32_path: Path
    source: onnx.ModelProto  # the graph the target builds on (TARGETS[target].source)
    ranges: Ranges
    method: str
    key: str
    scratch: Path  # a private folder

    def __post_init__(self):
        # What the target keeps float whatever the budget says (module docstring).
        self.kept_float = fp32_scope_nodes(self.source) if self.target == "tensorrt" else excluded_nodes(self.fp32)
        if self.target == "cpu":
            # ONNX Runtime writes <model>-inferred.onnx beside its input: it reads a private copy,
            # so that file never lands in (or, through a link, outside) the bundle.
            self._private_fp32 = self.scratch / ONNX_FP32
            shutil.copyfile(self.fp32_path, self._private_fp32)

    @functools.cached_property
    def candidates(self) -> tuple[str, ...]:
        """The convolutions this target's graph quantizes, in graph order."""
        if self.target == "tensorrt":
            return tuple(plan_qdq(self._at_opset()).weights)
        kept = set(self.kept_float)
        return tuple(n.name for n in self.fp32.graph.node if n.op_type == "Conv" and n.name not in kept)

    @functools.cached_property
    def _converted(self) -> onnx.ModelProto:
        return to_opset(self.source)  # converted once, not for every graph the budget measures

    def _at_opset(self) -> onnx.ModelProto:
        """A copy of the source at the TensorRT graph's opset: the placement edits what it is given."""
        copy = onnx.ModelProto()
        copy.CopyFrom(self._converted)
        return copy

    def _quantize(self, path: Path, excluded: Sequence[str]) -> dict:
        """The quantized graph with ``excluded`` convolutions float, before :func:`_finish`."""
        if self.target == "tensorrt":
            proto, placement = tensorrt_graph(self._at_opset(), self.ranges, exclude=excluded)
            onnx.save(proto, str(path))
            return {"quantized_ops": ["Conv"], "placement": placement}
        quantize_cpu(self._private_fp32, path, self.ranges, self.method, [*self.kept_float, *excluded])
        if excluded:
            onnx.save(read_float_inputs(onnx.load(str(path)), self.fp32, excluded), str(path))
        return {"quantized_ops": list(QUANTIZED_OPS)}

    def write(self, path: Path, excluded: Sequence[str] = ()) -> tuple[dict, onnx.ModelProto]:
        """The graph with ``excluded`` convolutions float at ``path``: (entry details, graph)."""
        details = self._quantize(path, excluded)
        return details, _finish(path, self.source, self.target, self.method, self.key)

    def write_single(self, path: Path, conv: str) -> None:
        """Only ``conv`` quantized, and the export's full-resolution ``logits`` kept (no CPU
        tail): what the budget's sensitivity compares with ``model.onnx``. In the CPU graph,
        ONNX Runtime's quantizer is given ``conv`` alone: its own pairs (input, weight, output)."""
        if self.target == "tensorrt":
            self._quantize(path, [c for c in self.candidates if c != conv])
        else:
            quantize_cpu(self._private_fp32, path, self.ranges, self.method,
                         [n.name for n in self.fp32.graph.node if n.name != conv])


# --- the stage ----------------------------------------------------------------------------------


def calibrate_bundle(bundle_dir: str | Path, data_dir: str | Path, num_images: int = 64, method: str = "entropy",
                     target: str = "tensorrt", seed: int = 0, progress: Progress | None = None,
                     percentile: float = CALIBRATION_PERCENTILE, budget: AccuracyBudget | None = None) -> dict:
    """The library function behind ``fornet-deploy calibrate``; returns the manifest entry.

    ``data_dir``: a dataset, a folder of images or a video file (:class:`.calibset.CalibrationSet`:
    selection, resizing to the network input, key); the entry's ``calibration`` records its
    ``source``, ``network_size`` and what was ``resized``.

    ``budget`` (``--max-drop``): the most sensitive convolutions stay float until the mIoU
    drop against ``model.onnx`` on held-out labelled images is within it (:mod:`.budget`; the
    entry's ``accuracy_budget`` says what was left out, the drops and the speed cost); a budget
    that cannot be met raises :class:`~fornet_deploy.errors.CheckFailed` and writes nothing.

    ``progress(done, total)`` counts the images of a range collection (none when the ranges
    are cached), then ``progress(done, total, note)`` the graphs a budget measures.
    ``target="tensorrt"`` on a bundle without ``model.fp16.onnx`` makes it first
    (``export --precision fp16``, its own commit).
    """
    check_choice(method, METHODS, "calibration method")
    check_choice(target, CALIBRATION_TARGETS, "calibration target")
    if not 0.0 < percentile <= 100.0:
        raise OptionError(f"--percentile must be in (0, 100], got {percentile}")
    # a wrong --data or held-out folder fails before anything is written
    heldout_data = open_heldout(budget, data_dir) if budget is not None else None
    if target == "tensorrt" and not Bundle.open(bundle_dir, verify=False).has(ONNX_FP16):
        check_source(data_dir)
        convert_fp16(bundle_dir)
    with transaction(bundle_dir, f"calibrate --target {target}") as txn:
        return _calibrate(txn, data_dir, num_images, method, target, seed, progress, percentile, budget,
                          heldout_data)


def _calibrate(txn: Transaction, data_dir: str | Path, num_images: int, method: str, target: str, seed: int,
               progress: Progress | None, percentile: float, budget: AccuracyBudget | None,
               heldout_data: Dataset | None) -> dict:
    """:func:`calibrate_bundle` under the bundle's writer lock; the graph is committed on return."""
    bundle, spec = txn.bundle, TARGETS[target]
    fp32_path = bundle.path(ONNX_FP32)  # checks the sha256 the key is built from, and its lineage
    fp32 = load_onnx(fp32_path)
    source = fp32 if spec.source == ONNX_FP32 else load_onnx(bundle.path(spec.source))
    calib = bundle_calibration_set(bundle, graph_input_dims(fp32), data_dir, num=num_images, seed=seed)
    heldout = (heldout_set(heldout_data, manifest_label_set(bundle.manifest, f"bundle {bundle.root}"), budget, calib,
                           seed) if budget is not None else None)
    ranges, collected = _ranges(txn, calib, fp32, method, percentile, progress)
    maker = GraphMaker(target, fp32, fp32_path, source, ranges, method, collected["key"], txn.scratch())
    excluded_convs: list[str] = []
    if budget is not None:
        verdict = search(maker, fp32_path, heldout, budget.max_drop, txn.scratch(), progress)
        if not verdict.met:
            _store_ranges(txn.root, ranges, collected)  # valid whatever the budget: a retry collects nothing
            raise CheckFailed(
                f"--max-drop {budget.max_drop:g} cannot be met: the INT8 {target} graph loses "
                f"{verdict.drop_before:.2f} mIoU points against {ONNX_FP32} on {len(heldout.examples)} held-out "
                f"images, and still {verdict.drop_after:.2f} with all {verdict.candidates} quantized convolutions "
                f"left float; nothing was written: allow a larger drop, or deploy {spec.float_graph}")
        excluded_convs = verdict.excluded
    out = txn.path(spec.artifact)
    details, proto = maker.write(out, excluded_convs)
    check_runs(out, collected["input_shape"], f"the INT8 {target} graph")
    if budget is not None:
        ratio = (measure_latency_ratio(out, verdict.full_graph, next(iter(heldout.examples)).batch)
                 if excluded_convs else 1.0)
        details["accuracy_budget"] = verdict.record(budget, heldout, ratio)
    _store_ranges(txn.root, ranges, collected)
    tidy_cache(txn.root, collected["key"])
    return txn.record(
        spec.artifact, kind="onnx", precision="int8", target=target, method=method,
        **({"percentile": percentile} if method == "percentile" else {}), source=spec.source,
        source_sha256=bundle.sha256(spec.source), opset=_opset(proto), activations=spec.activations,
        weights=spec.weights, per_channel=True, **details,
        calibration={"key": collected["key"], "num_images": len(calib), "source": calib.source, "seed": seed,
                     "images": calib.names, "network_size": list(calib.size), "resized": calib.resized(),
                     "ranges_from": ONNX_FP32,
                     "ranges": {k: v for k, v in collected.items()
                                if k not in ("key", "input_shape", "calibration_set", "ranges")}},
        excluded_scopes=list(FP32_SCOPES), excluded_nodes=[*maker.kept_float, *excluded_convs],
        quantizer={"ranges": f"fornet-deploy {__version__} (ONNX Runtime's {method} rules)",
                   "graph": (f"fornet-deploy {__version__} Q/DQ placement" if target == "tensorrt"
                             else f"onnxruntime.quantization {_ort_version()} QDQQuantizer")},
    )


def _finish(path: Path, source: onnx.ModelProto, target: str, method: str, key: str) -> onnx.ModelProto:
    """Every target's graph ends here: the checks against its source, any post-processing of
    the quantized graph, and the bundle metadata embedded."""
    proto = load_onnx(path)
    want = OPSET if target == "tensorrt" else _opset(source)
    if _opset(proto) != want:  # a bug guard: TensorRT parses the opset its tests ran
        raise FornetError(f"the INT8 {target} graph has opset {_opset(proto)}, expected {want}")
    if target == "tensorrt" and quantized_op_types(proto):
        raise FornetError(f"the TensorRT Q/DQ graph holds integer ops {sorted(quantized_op_types(proto))}")
    proto = calibrated_graph(proto, target, read_metadata(source))  # issue 15: the CPU tail (export/tail.py)
    embed_metadata(proto, {**read_metadata(source), "precision": "int8",
                           "int8": {"target": target, "method": method, "calibration_key": key}})
    onnx.save(proto, str(path))
    return proto


# --- ranges: collected once per key, method and percentile, cached in the bundle ---------------


def _range_cache(root: Path, key: str, method: str, percentile: float) -> Path:
    suffix = f"{method}-{percentile!r}" if method == "percentile" else method
    return root / CALIBRATION_DIR / f"calib_{key[:16]}.{suffix}.ranges.json"


def _ranges(txn: Transaction, calib: CalibrationSet, fp32: onnx.ModelProto, method: str, percentile: float,
            progress: Progress | None) -> tuple[Ranges, dict]:
    """The ranges both targets read, and what they came from (``collected``): from the
    bundle's range cache, else from one collection (stored by :func:`_store_ranges` once
    the graph built from them has been written)."""
    fp32_sha = txn.bundle.sha256(ONNX_FP32)
    measured, aliases = needed_tensors(fp32)
    description = calib.describe()
    key = calib.key(fp32_sha, description)
    path = _range_cache(txn.root, key, method, percentile)
    cached = _read_range_cache(path, key, method, percentile, measured)
    if cached is not None:
        return with_aliases(cached["ranges"], aliases), {**cached, "cached": True}
    _check_input_shape(fp32, calib.shape)
    config = CollectConfig(method=method, percentile=percentile)
    ranges, stats = collect_ranges(fp32, calib, measured, config, txn.scratch(), progress)
    collected = {"version": RANGES_VERSION, "key": key, "method": method,
                 "percentile": percentile if method == "percentile" else None,
                 "input_shape": [1, *calib.shape[1:]], "tensors": len(ranges), "onnxruntime": _ort_version(),
                 **stats.to_dict(), "calibration_set": description, "ranges": ranges, "cached": False}
    return with_aliases(ranges, aliases), collected


def _read_range_cache(path: Path, key: str, method: str, percentile: float, needed: list[str]) -> dict | None:
    """The cache's content if it is for this key, method and percentile and holds every
    needed tensor; else None (collect again)."""
    if not path.is_file():
        return None
    try:
        cached = read_json(path, "calibration range cache")
    except FornetError:  # cut short or not JSON: collect again
        return None
    want = {"version": RANGES_VERSION, "key": key, "method": method,
            "percentile": percentile if method == "percentile" else None}
    if not isinstance(cached, dict) or any(cached.get(k) != v for k, v in want.items()):
        return None
    ranges = cached.get("ranges")
    if not isinstance(ranges, dict) or not all(
            isinstance(ranges.get(name), list) and len(ranges[name]) == 2
            and all(isinstance(v, float) for v in ranges[name]) for name in needed):
        return None
    cached["ranges"] = {name: (ranges[name][0], ranges[name][1]) for name in needed}
    return cached


def _store_ranges(root: Path, ranges: Ranges, collected: dict) -> None:
    if collected["cached"]:
        return
    path = _range_cache(root, collected["key"], collected["method"], collected["percentile"] or 0.0)
    atomic_write_json(path, {k: v for k, v in collected.items() if k != "cached"})


def _check_input_shape(proto: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    """A bug guard, but for one case a manifest can cause: a fixed resize in its preprocessing
    that disagrees with the graph (:func:`~..runtimes.base.network_size` obeys the resize)."""
    dims = graph_input_dims(proto)
    if any(want is not None and want != got for want, got in zip(dims[1:], shape[1:])):
        raise FornetError(
            f"calibration images are resized to {list(shape[1:])} (the manifest's preprocessing) but {ONNX_FP32} "
            f"takes {dims[1:]}: correct the preprocessing's height/width, or re-export"
        )


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _ort_version() -> str:
    return import_onnxruntime("INT8 quantization").__version__
