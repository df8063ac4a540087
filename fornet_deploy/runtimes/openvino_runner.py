"""OpenVINO backend: the bundle's ONNX graphs on Intel's runtime (a CPU; an Intel GPU or NPU).

OpenVINO reads ONNX itself, so it runs the artefacts ONNX Runtime runs, unchanged:
``model.cpu.onnx`` (else ``model.onnx``) for ``fp32`` / ``bf16`` / ``fp16`` and the U8S8 Q/DQ
graph ``model.int8.cpu.onnx`` for ``int8`` (the format table, :data:`~fornet_deploy.contract.FORMATS`).

Precision is explicit: OpenVINO's own default inference precision is bf16 on a CPU with
BF16 instructions (AVX-512 BF16, AMX) and f16 on a GPU, so the runner always sets
``INFERENCE_PRECISION_HINT`` (:data:`INFERENCE_PRECISIONS`) and checks that the compiled model
reports it (a compiled model at another precision, e.g. bf16 asked on a CPU without BF16, is
one line, not a bf16 result that was never bf16). ``int8`` sets f32 for what the Q/DQ pairs
leave in float, as ONNX Runtime runs it (bf16 there was no faster, docs/benchmarks.md section 12).

The selector / Top-K subgraph runs in f32 under ``bf16`` too, as in every reduced-precision
artefact: the ops of :func:`fp32_scope_ops` (named after the ONNX nodes of
:data:`~fornet_deploy.contract.FP32_SCOPES`: the selector's convolutions, the importance map,
the Top-K search and its tie ranking) carry OpenVINO's "keep this op's precision" rt_info
attribute (:func:`keep_fp32`), and ``info()`` records what the compiled model runs them at,
from its runtime model (``fp32_scope_precisions``: a count per runtime precision; a test checks
that there is no ``bf16`` in it, and that there is without the marks). Unmarked, the CPU plugin ran the
selector's two convolutions and the tie ranking's ReduceSum and MatMul in bf16: the logits the
Top-K ranks were rounded to a few hundred distinct values, and the tie ranking's counts, which
pass 256 (where bf16 stops holding integers) on a map 1024 cells wide, selected k - 1 or k + 1
cells on an input 8192 wide (a test). The marks do not make ``bf16`` pass parity's FP16
thresholds: the selector reads features of the bf16 backbone, and the Top-K mask agreement stayed
where it was (16 SynthCity val images at 512x1024: 99.892 % marked, 99.890 % unmarked; 40
CamVid test images at 360x480: 99.735 % both), at the same speed.

How (OpenVINO 2026.4 and 2025.4, both checked): the CPU plugin's ``Node`` keeps its op's
precision when the op's rt_info disables conversion to f16 (``keepOriginalPrecision``;
src/plugins/intel_cpu/src/node.cpp: ``is_conversion_disabled(op, element::f16)``, the typed
attribute ``DisablePrecisionConversion`` in 2026.x; ``fp16_compression_is_disabled(op)``, the
key ``precise_0``, in 2025.x), and ``Graph::EnforceInferencePrecision`` (graph.cpp) leaves such
nodes alone. Python sets only strings and integers in rt_info, and a string under the 2026 key
makes ``compile_model`` fail ("Bad as from std::string to ov::DisablePrecisionConversion"), so
the attributes are made by OpenVINO's own IR reader from a one-op IR (:data:`KEEP_PRECISION_IR`;
the reader skips the one it does not know) and copied onto the ops with ``Node.set_rt_info``.
The marks are set at every precision (at f32 there is nothing to keep) and survive the compiled-
model cache; the GPU plugin's handling of them is not checked here (no Intel GPU).

ArgMax on the CPU: OpenVINO makes an ONNX ``ArgMax`` a ``TopK`` with k = 1, and the CPU plugin's
TopK over a short class axis was the single slowest node of the CPU graphs' refine tail (5.3 of
36.8 ms on the U8S8 graph at 512x1024). :func:`argmax_by_reductions` computes it as
``ReduceMin(Select(x == ReduceMax(x), index, C - 1))`` instead: the same answer, ties to the
lowest index included (a test against numpy on data full of ties, and the bundle's outputs bit
for bit against the unrewritten graph), recorded as ``argmax_by_reductions`` in ``info()``. The
ONNX graphs are not changed: ONNX Runtime's ArgMax is fast, and those reductions were 6x slower
there.

Devices: ``cpu`` (OpenVINO's ``CPU``), ``gpu`` / ``npu`` (``GPU`` / ``NPU``, passed through when
OpenVINO sees them; a library caller may name one such as ``GPU.1``), one line when absent.

Shapes: every model is compiled for a static input shape (a graph exported with ``--dynamic``
once per input shape it is fed, kept for the next batches of that shape), because OpenVINO's CPU
plugin computes the Top-K's ``k = (ratio * h * w + 999) // 1000`` wrongly at run time
(``(250 * 512 + 999) // 1000`` gives 129, not 128: its integer division goes through float32
and rounds, openvinotoolkit/openvino#35830, #37766), so a dynamic graph selected k + 1
regions; with a static shape that arithmetic is folded into constants by OpenVINO's reference
implementation, which is exact.

Settings: the ``LATENCY`` performance hint (one stream), because a runner serves one request
at a time (``infer`` returns its outputs): the ``THROUGHPUT`` hint's streams split the cores
between requests that would have to be in flight together. ``threads`` sets
``INFERENCE_NUM_THREADS`` (else OpenVINO's default, one per physical core). Compiled models are
cached in ``BUNDLE/openvino_cache`` (``CACHE_DIR``): the second start of a graph imports the
compiled blob instead of compiling it again (0.13-0.16 s instead of 0.36-0.77 s at 512x1024,
docs/benchmarks.md section 12). One folder serves every graph and precision: OpenVINO names a
blob after a hash of the model, and on the CPU an f32 and a bf16 compilation of one graph share
a blob from which each still runs at its own precision (a test checks it). The folder sits in
the bundle, like ONNX Runtime's TensorRT engines, so it goes away with the bundle and needs no
per-user state; a bundle folder that cannot be written runs without the cache, and so does one
whose ``openvino_cache`` is not a plain folder in it (a symbolic link would have OpenVINO write
its blobs outside the bundle: nothing is written through one, docs/reliability.md).

One ``openvino.Core`` serves every runner of a process (:func:`openvino_core`). OpenVINO's CPU
plugin, made once per Core, swaps the calling thread's alternate signal stack for one of its own
when it is made and, when it is destroyed, puts back the stack it found and unmaps its own
(``SigAltStackSetup``, src/plugins/intel_cpu/src/plugin.cpp / sigstack_manager.cpp). Two Cores
destroyed in the order they were made (a runner closed while the next one's Core exists, a
Core freed late by the garbage collector) leave the thread on the first one's unmapped stack,
and Python runs its signal handlers on that stack (``SA_ONSTACK``): the next Ctrl-C killed the
process with SIGSEGV instead of raising ``KeyboardInterrupt`` (OpenVINO 2026.4, a test). One
Core for the life of the process makes one CPU plugin, once.

Names called (OpenVINO 2025.x-2026.x Python API): ``openvino.Core`` (``available_devices``,
``get_property(device, "FULL_DEVICE_NAME")``, ``read_model(bytes)``, ``compile_model(model,
device, config)``), ``openvino.Type``, ``openvino.properties.hint.inference_precision`` /
``performance_mode`` / ``PerformanceMode.LATENCY``, ``openvino.properties.cache_dir`` /
``inference_num_threads`` / ``hint.num_requests``, ``CompiledModel.create_infer_request``,
``Model.clone`` / ``reshape`` / ``inputs`` / ``outputs`` / ``get_ordered_ops``,
``Node.get_friendly_name`` / ``get_rt_info`` / ``set_rt_info``, ``CompiledModel.get_runtime_model``
(its ops' ``runtimePrecision`` / ``originalLayersNames``), ``openvino.PartialShape``,
``openvino.Tensor``, ``InferRequest.infer(inputs, share_inputs, share_outputs)``.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract import IMPORTANCE, OPENVINO_CACHE_DIR, TOPK_MASK, in_fp32_scope
from ..errors import FornetError, HardwareError, MissingDependencyError
from ..io import plain_folder_below, read_bytes
from .base import InputSpec, LoadRequest, Runner, RunnerInfo

# --precision -> OpenVINO's inference precision (its element type name).
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# Compiled models a runner keeps for a dynamic graph (one per input shape fed, oldest dropped).
MAX_COMPILED_SHAPES = 8

# The graph outputs computed by the selector / Top-K subgraph.
SELECTOR_OUTPUTS = (IMPORTANCE, TOPK_MASK)

# A one-op OpenVINO IR whose op carries the rt_info attributes that keep an op at its own
# precision under a lower inference precision (module docstring, How): OpenVINO's IR reader
# makes the typed attributes, which Python cannot. DisablePrecisionConversion (2026.x) takes
# DisabledPrecisionMap's text form, "from:to,to" (any source type; no conversion to bf16 or
# f16); "precise" (2025.x's DisableFP16Compression) has no value.
KEEP_PRECISION_OP = "keep_precision"
KEEP_PRECISION_IR = f"""<?xml version="1.0"?>
<net name="keep_precision" version="11"><layers>
<layer id="0" name="x" type="Parameter" version="opset1"><data shape="1" element_type="f32"/>
<output><port id="0" precision="FP32"><dim>1</dim></port></output></layer>
<layer id="1" name="{KEEP_PRECISION_OP}" type="ReLU" version="opset1">
<rt_info><attribute name="DisablePrecisionConversion" version="0" value="dynamic:bf16,f16"/>
<attribute name="precise" version="0"/></rt_info>
<input><port id="0" precision="FP32"><dim>1</dim></port></input>
<output><port id="1" precision="FP32"><dim>1</dim></port></output></layer>
<layer id="2" name="y" type="Result" version="opset1">
<input><port id="0" precision="FP32"><dim>1</dim></port></input></layer>
</layers><edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>
<edge from-layer="1" from-port="1" to-layer="2" to-port="0"/></edges></net>"""


def import_openvino(purpose: str):
    """The ``openvino`` module; a missing one names the ``[openvino]`` extra."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", purpose) from None
    return openvino


@functools.cache
def openvino_core(ov):
    """The process's one ``openvino.Core`` (module docstring: why one)."""
    return ov.Core()


def openvino_device(device: str, available: Sequence[str]) -> str:
    """OpenVINO's name for ``device`` (``cpu`` -> ``CPU``; ``GPU.1`` stays), if OpenVINO sees it
    here; else one line naming what it sees. ``GPU`` is present when ``GPU`` or any ``GPU.n`` is."""
    name = device.upper()
    family = name.split(".")[0]
    if name in available or (name == family and any(d.split(".")[0] == family for d in available)):
        return name
    kind = {"GPU": "an Intel GPU and its compute driver", "NPU": "an Intel NPU and its driver"}.get(family, "it")
    raise HardwareError(f"OpenVINO sees {', '.join(available) or 'no device'} here; --device {device} needs its "
                        f"{name} device ({kind})")


def check_inference_precision(asked: str, compiled: str, device: str) -> None:
    """One line when the compiled model does not run at the asked precision (a CPU without
    BF16 instructions compiles a bf16 request as f32)."""
    if compiled != asked:
        where = " (bf16 needs a CPU with BF16 instructions)" if asked == "bf16" else ""
        raise HardwareError(f"OpenVINO's {device} runs this model at {compiled}, not the {asked} asked for: "
                            f"use --precision fp32{where}")


def keeps_f32(op_name: str) -> bool:
    """Whether an op OpenVINO read from a bundle's graph stays f32: one named after an ONNX node
    of the FP32 scopes (OpenVINO keeps an ONNX node's name, or appends to it:
    "/focus/selector/score/Conv/WithoutBiases"), or one producing a graph output of the
    selector, which OpenVINO names after the output ("importance": the selector's Sigmoid)."""
    return in_fp32_scope(op_name) or op_name in SELECTOR_OUTPUTS


def fp32_scope_ops(model) -> list:
    """The ops of an ``openvino.Model`` that stay f32 (:func:`keeps_f32`)."""
    return [op for op in model.get_ordered_ops() if keeps_f32(op.get_friendly_name())]


def keep_precision_attributes(ov, core) -> dict:
    """OpenVINO's rt_info attributes that keep an op at its own precision, by key, as its IR
    reader makes them from :data:`KEEP_PRECISION_IR` (empty if this OpenVINO knows none of
    them: its IR reader skips an rt_info attribute it does not know)."""
    model = core.read_model(KEEP_PRECISION_IR, ov.Tensor(np.zeros(0, np.uint8)))
    op = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == KEEP_PRECISION_OP)
    rt_info = op.get_rt_info()
    return {key: rt_info[key] for key in rt_info.keys()}


def mark(ops, attributes: dict) -> None:
    """Sets every rt_info attribute of ``attributes`` on every op of ``ops``."""
    for op in ops:
        for key, value in attributes.items():
            op.set_rt_info(value, key)


def keep_fp32(model, attributes: dict) -> int:
    """Marks the :func:`fp32_scope_ops` of ``model`` with ``attributes``; returns how many ops."""
    ops = fp32_scope_ops(model) if attributes else []
    mark(ops, attributes)
    return len(ops)


def fp32_scope_precisions(runtime_model) -> dict[str, int]:
    """How many nodes of a compiled model's runtime model that compute (part of) an op of
    :func:`fp32_scope_ops` run at each precision, e.g. ``{"f32": 91, "i32": 12, "u8": 7}``."""
    counts: Counter = Counter()
    for node in runtime_model.get_ordered_ops():
        rt_info = node.get_rt_info()
        names = rt_info["originalLayersNames"].astype(str).split(",")
        if any(keeps_f32(name) for name in names):
            counts[rt_info["runtimePrecision"].astype(str)] += 1
    return dict(sorted(counts.items()))


def argmax_by_reductions(model, attributes: dict) -> int:
    """Rewrites every ArgMax of ``model`` (an ``openvino.Model`` read from ONNX: OpenVINO makes
    an ONNX ArgMax a ``TopK`` with k = 1 whose values nobody reads) as the first index of the
    maximum: ``ReduceMin(Select(x == ReduceMax(x), 0..C-1, C - 1))`` over the same axis, which
    is ArgMax's answer, ties to the lowest index included. Why: the CPU plugin's TopK took
    5.3 ms of 36.8 on the U8S8 graph at 512x1024 (the refine tail's argmax over 19 classes of
    about 4 300 blocks x 16 pixels; ONNX Runtime's ArgMax of that tensor, 0.66 ms), the
    reductions a third of that (docs/benchmarks.md section 12). The new ops carry
    ``attributes`` (:func:`keep_fp32`'s, under bf16 / f16): the compare and the maximum then
    run at one precision, whatever the inference precision. Returns how many were rewritten."""
    import openvino.opset13 as ops

    rewritten = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "TopK" or op.output(0).get_target_inputs():
            continue
        attrs, data, k = op.get_attributes(), op.input_value(0), op.input_value(1).get_node()
        rank = data.get_partial_shape().rank
        if attrs.get("mode") != "max" or k.get_type_name() != "Constant" or k.get_data().size != 1 \
                or int(k.get_data().reshape(-1)[0]) != 1 or not rank.is_static:
            continue
        axis = int(attrs["axis"]) % rank.get_length()
        size = data.get_partial_shape()[axis]
        if not size.is_static:
            continue
        classes, axes = size.get_length(), np.array([axis], np.int64)
        positions = np.arange(classes, dtype=np.int32).reshape([classes if d == axis else 1
                                                                for d in range(rank.get_length())])
        largest = ops.reduce_max(data, axes, keep_dims=True)
        is_largest = ops.equal(data, largest)
        where = ops.select(is_largest, ops.constant(positions),
                           ops.constant(np.array(classes - 1, np.int32)))  # NaN everywhere: the last, not C
        smallest = ops.reduce_min(where, axes, keep_dims=True)
        first = ops.convert(smallest, attrs["index_element_type"])
        mark((largest, is_largest, where, smallest, first), attributes)
        for target in list(op.output(1).get_target_inputs()):
            target.replace_source_output(first.output(0))
        rewritten += 1
    return rewritten


class OpenVinoRunner(Runner):
    """Runs an ONNX file with OpenVINO (module docstring: precision, devices, settings, cache).

    ``sha256``: the hash the file must have, checked on the bytes OpenVINO reads.
    ``cache_dir``: OpenVINO's compiled-model cache (None: no cache), a plain folder (made if
    missing) in a folder that exists; anything else runs without the cache.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, sha256: str | None = None):
        if precision not in INFERENCE_PRECISIONS:
            raise FornetError(f"OpenVINO runs {', '.join(INFERENCE_PRECISIONS)}, not {precision!r}")
        super().__init__(f"openvino-{precision}")
        self.onnx_path = Path(onnx_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sha256 = sha256
        self.compile_seconds: float | None = None  # of the first compilation
        self._ov = self._core = self._model = None
        self._compiled: dict[tuple[int, ...], tuple] = {}  # input shape -> (compiled model, infer request)
        self._ov_device = ""
        self._device_name = ""
        self._cached = False
        self._ports: dict[str, int] = {}
        self._fp32_ops = 0  # ops of the FP32 scopes marked to keep f32
        self._argmax_rewritten = 0  # ArgMax ops computed by reductions (argmax_by_reductions)

    @classmethod
    def from_request(cls, request: LoadRequest) -> "OpenVinoRunner":
        return cls(request.path, device=request.device, precision=request.precision, threads=request.threads,
                   cache_dir=request.bundle_root / OPENVINO_CACHE_DIR, sha256=request.sha256)

    def _config(self, ov) -> dict:
        props, hint = ov.properties, ov.properties.hint
        config = {hint.inference_precision: getattr(ov.Type, INFERENCE_PRECISIONS[self.precision]),
                  hint.performance_mode: hint.PerformanceMode.LATENCY, hint.num_requests: 1}
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        if self._cached:
            config[props.cache_dir] = str(self.cache_dir)
        return config

    def _activate_impl(self) -> None:
        ov = self._ov = import_openvino("the OpenVINO runner")
        self._core = openvino_core(ov)
        self._ov_device = openvino_device(self.device, self._core.available_devices)
        model_bytes = read_bytes(self.onnx_path, "ONNX file", sha256=self.sha256)
        self._cached = self.cache_dir is not None and plain_folder_below(self.cache_dir.parent, self.cache_dir)
        try:
            self._model = self._core.read_model(model_bytes)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError (and subclasses) for what it cannot read
            raise self._error("read", exc) from None
        keep = keep_precision_attributes(ov, self._core)
        self._fp32_ops = keep_fp32(self._model, keep)
        # measured on the CPU plugin only (its TopK is the slow one); the marks matter only under
        # an inference precision below f32
        lower = keep if INFERENCE_PRECISIONS[self.precision] != "f32" else {}
        self._argmax_rewritten = argmax_by_reductions(self._model, lower) if self._ov_device == "CPU" else 0
        self._ports = {port.get_any_name(): i for i, port in enumerate(self._model.outputs)}
        self._device_name = self._core.get_property(self._ov_device, "FULL_DEVICE_NAME")
        shape = self._model.inputs[0].get_partial_shape()
        if shape.is_static:  # compile now: a wrong device, precision or graph fails here, not at the first batch
            self._request_for(tuple(d.get_length() for d in shape))

    def _error(self, what: str, exc: Exception) -> FornetError:
        said = str(exc).strip().splitlines()
        return FornetError(f"OpenVINO cannot {what} {self.onnx_path.name} for {self._ov_device}: "
                           f"{(said[0] if said else type(exc).__name__)[:200]}")

    def _request_for(self, shape: tuple[int, ...]):
        """The infer request of the model compiled for input ``shape`` (module docstring, Shapes)."""
        if shape in self._compiled:
            return self._compiled[shape][1]
        ov = self._ov
        model = self._model.clone()
        start = time.perf_counter()
        try:
            model.reshape({0: ov.PartialShape(list(shape))})
            compiled = self._core.compile_model(model, self._ov_device, self._config(ov))
        except RuntimeError as exc:
            raise self._error("compile", exc) from None
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start
        precision = compiled.get_property(ov.properties.hint.inference_precision).get_type_name()
        check_inference_precision(INFERENCE_PRECISIONS[self.precision], precision, self._ov_device)
        if len(self._compiled) >= MAX_COMPILED_SHAPES:  # e.g. a folder of images of many sizes
            self._compiled.pop(next(iter(self._compiled)))
        self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape][1]

    def _deactivate_impl(self) -> None:
        self._compiled = {}  # frees the compiled models and their threads
        self._model = self._core = None

    def output_names(self) -> tuple[str, ...]:
        return tuple(self._ports)

    def input_spec(self) -> InputSpec:
        port = self._model.inputs[0]
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return InputSpec(name=port.get_any_name(), dtype="float32", shape=shape)

    def _infer_impl(self, batch: np.ndarray, outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        names = tuple(self._ports) if outputs is None else [n for n in outputs if n in self._ports]
        request = self._request_for(batch.shape)
        # OpenVINO computes every output; only the ones asked for are copied out of the
        # request's own buffers (which the next call overwrites).
        results = request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return {name: np.array(results[self._ports[name]]) for name in names}

    def info(self) -> RunnerInfo:
        ov = import_openvino("the OpenVINO runner")
        details = {"openvino": ov.__version__, "threads": self.threads, "cache_dir": None}
        if self._model is not None:
            details.update(openvino_device=self._ov_device, device_name=self._device_name,
                           cache_dir=str(self.cache_dir) if self._cached else None,
                           compiled_shapes=[list(shape) for shape in self._compiled])
        if self._compiled:  # what the last compiled model runs with
            props, hint = ov.properties, ov.properties.hint
            compiled = list(self._compiled.values())[-1][0]
            details.update(
                inference_precision=compiled.get_property(hint.inference_precision).get_type_name(),
                performance_hint=str(compiled.get_property(hint.performance_mode)).rsplit(".", 1)[-1],
                threads=compiled.get_property(props.inference_num_threads),
                streams=int(compiled.get_property("NUM_STREAMS")),
                compile_seconds=self.compile_seconds,
                fp32_scope_ops=self._fp32_ops,
                argmax_by_reductions=self._argmax_rewritten,
                fp32_scope_precisions=fp32_scope_precisions(compiled.get_runtime_model()),
            )
        return RunnerInfo(backend="openvino", precision=self.precision, device=self.device,
                          artifact=self.onnx_path.name, details=details)
