"""What the engine inspector says about an engine's layers: reformats, and precisions.

Input: ``json.loads(IEngineInspector.get_engine_information(LayerInformationFormat.JSON))``
(:meth:`~fornet_deploy.runtimes.trt.runner.TrtRunner.engine_information`; full detail needs
``ProfilingVerbosity.DETAILED`` at build time, which build-trt sets). Layout:

* TensorRT 10.x: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Dimensions",
  "Format/Datatype", ...}], "Outputs": [...], "Origin", ...}], "Bindings": [...]}``
  (NVIDIA/TensorRT release/10.3 ``tools/experimental/trt-engine-explorer/examples``).
  A reformat layer has ``"LayerType": "Reformat"``; ``"Origin": "QDQ"`` marks a standalone
  quantize / dequantize kernel, ``"REFORMAT"`` a layout or type copy.
* TensorRT 11.x: "Bindings" became "I/O Tensors" and the per-tensor "Format/DataType" field is
  split into a data type and a format ("Migrating IEngineInspector Usage from TensorRT 10.x to
  11.x", docs.nvidia.com/deeplearning/tensorrt/11.0.0; Polygraphy 0.53.6
  ``tools/inspect/subtool/model/extractors/_trt.py`` reads ``Datatype`` and ``Format``; the
  migration page's example spells ``DataType``). Both spellings are read.

The number the INT8 work is judged by is :func:`summarize_layers`'
``reformats_between_int8_convs``: reformat layers on a path from a convolution with an INT8
input to the next convolution with an INT8 input. Extra Q/DQ pairs that split fusions show up
there (NVIDIA's trex examples: ResNet QAT 7, with residual Q/DQ 1, with the pooling input
quantized too 0), and NVIDIA's trex linter flags the same ("Reformat layer is converting operand
data type", release/10.3 ``trex/lint.py``).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

# Substring -> data type, in an order where no key hides a later one (UINT8 before INT8, ...).
_DTYPES = (("UINT8", "uint8"), ("INT8", "int8"), ("INT64", "int64"), ("INT32", "int32"), ("BFLOAT16", "bf16"),
           ("BF16", "bf16"), ("FLOAT16", "fp16"), ("FP16", "fp16"), ("HALF", "fp16"), ("FP8", "fp8"),
           ("FP32", "fp32"), ("FLOAT", "fp32"), ("BOOL", "bool"))
# Layers that only move data between the ones that compute.
PASS_THROUGH = frozenset({"Reformat", "NoOp", "Shuffle"})


def tensor_dtype(tensor: dict) -> str:
    """``fp32`` / ``fp16`` / ``int8`` / ... of one Inputs/Outputs entry, in either layout."""
    for key in ("Datatype", "DataType"):  # 11.x: a field of its own
        if tensor.get(key):
            return _dtype_of(str(tensor[key]))
    for key in ("Format/Datatype", "Format/DataType", "Format"):  # 10.x: inside the format text
        if tensor.get(key):
            return _dtype_of(str(tensor[key]))
    return "?"


def _dtype_of(text: str) -> str:
    upper = text.upper()
    return next((name for key, name in _DTYPES if key in upper), "?")


def _is_conv(layer: dict) -> bool:
    return "Convolution" in str(layer.get("LayerType", "")) or "Conv" == layer.get("LayerType")


def _int8_conv(layer: dict) -> bool:
    inputs = layer.get("Inputs") or []
    return _is_conv(layer) and bool(inputs) and tensor_dtype(inputs[0]) == "int8"


def _walk(start: Iterable[dict], step) -> list[dict]:
    """Compute layers reached from ``start`` through pass-through layers (``step``: next layers)."""
    found, seen, stack = [], set(), list(start)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.get("LayerType") in PASS_THROUGH:
            stack.extend(step(layer))
        else:
            found.append(layer)
    return found


def summarize_layers(engine_information: dict) -> dict:
    """Reformat and precision counts of an engine (either inspector layout)."""
    layers = [layer for layer in engine_information.get("Layers", []) if isinstance(layer, dict)]
    producer = {t["Name"]: layer for layer in layers for t in layer.get("Outputs") or []}
    consumers: dict[str, list[dict]] = {}
    for layer in layers:
        for t in layer.get("Inputs") or []:
            consumers.setdefault(t["Name"], []).append(layer)

    def before(layer: dict) -> list[dict]:
        return [producer[t["Name"]] for t in layer.get("Inputs") or [] if t["Name"] in producer]

    def after(layer: dict) -> list[dict]:
        return [c for t in layer.get("Outputs") or [] for c in consumers.get(t["Name"], [])]

    reformats = [layer for layer in layers if layer.get("LayerType") == "Reformat"]
    converting, between = [], []
    for r in reformats:
        types_in = {tensor_dtype(t) for t in r.get("Inputs") or []}
        types_out = {tensor_dtype(t) for t in r.get("Outputs") or []}
        if types_in != types_out:
            converting.append(r["Name"])
        if any(map(_int8_conv, _walk(before(r), before))) and any(map(_int8_conv, _walk(after(r), after))):
            between.append(r["Name"])
    convs = Counter(
        f"{tensor_dtype((layer.get('Inputs') or [{}])[0])}->{tensor_dtype((layer.get('Outputs') or [{}])[0])}"
        for layer in layers if _is_conv(layer)
    )
    return {
        "layout": "11.x" if "I/O Tensors" in engine_information else "10.x",
        "layers": len(layers),
        "reformats": len(reformats),
        "reformat_origins": dict(sorted(Counter(str(r.get("Origin")) for r in reformats).items())),
        "type_converting_reformats": len(converting),
        "reformats_between_int8_convs": len(between),
        "reformats_between_int8_convs_names": between,
        "conv_precisions": dict(sorted(convs.items())),
    }
