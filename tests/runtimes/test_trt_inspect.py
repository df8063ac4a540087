"""Engine-inspector summaries on NVIDIA's own inspector output (trex examples, TensorRT 10.x
layout; fixtures/trex/SOURCES.md) and on the same data in the TensorRT 11.x layout."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from fornet_deploy.runtimes.trt.inspect import summarize_layers, tensor_dtype

FIXTURES = Path(__file__).parent / "fixtures" / "trex"

# NVIDIA's point with these four engines: every extra Q/DQ pair costs reformat layers
# between INT8 convolutions, until the residual and pooling inputs are quantized too.
EXPECTED = {
    "fp16": {"reformats": 2, "reformat_origins": {"REFORMAT": 2}, "reformats_between_int8_convs": 0,
             "conv_precisions": {"fp16->fp16": 21}},
    "qat": {"reformats": 12, "reformat_origins": {"QDQ": 10, "REFORMAT": 2}, "reformats_between_int8_convs": 7,
            "conv_precisions": {"int8->fp16": 11, "int8->fp32": 2, "int8->int8": 8}},
    "qat-residual": {"reformats": 3, "reformat_origins": {"QDQ": 3}, "reformats_between_int8_convs": 1,
                     "conv_precisions": {"int8->fp32": 2, "int8->int8": 18}},
    "qat-residual-qgap": {"reformats": 1, "reformat_origins": {"QDQ": 1}, "reformats_between_int8_convs": 0,
                          "conv_precisions": {"int8->fp32": 1, "int8->int8": 19}},
}


def load(variant: str) -> dict:
    return json.loads((FIXTURES / f"resnet-{variant}.graph.json").read_text())


def as_trt11(info: dict) -> dict:
    """The 11.x layout: "Bindings" -> "I/O Tensors", "Format/Datatype" -> "DataType" + "Format"."""
    info = copy.deepcopy(info)
    names = {"FP32": "Float", "FP16": "Half", "Int8": "Int8", "Int32": "Int32"}
    for layer in info["Layers"]:
        for tensor in (*(layer.get("Inputs") or []), *(layer.get("Outputs") or [])):
            text = tensor.pop("Format/Datatype")
            word = re.search(r"\b(FP32|FP16|Int8|Int32)\b", text).group(1)
            tensor["DataType"] = names[word]
            tensor["Format"] = text.replace(word, "").replace("  ", " ").strip()
    info["I/O Tensors"] = [{"Name": name, "IOMode": "Input"} for name in info.pop("Bindings")]
    return info


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_nvidia_examples_in_both_layouts(variant):
    for info, layout in ((load(variant), "10.x"), (as_trt11(load(variant)), "11.x")):
        summary = summarize_layers(info)
        assert summary["layout"] == layout
        assert {k: summary[k] for k in EXPECTED[variant]} == EXPECTED[variant], (variant, layout)
        assert len(summary["reformats_between_int8_convs_names"]) == summary["reformats_between_int8_convs"]


def test_tensor_types():
    assert tensor_dtype({"Format/Datatype": "Four wide channel vectorized row major Int8 format"}) == "int8"
    assert tensor_dtype({"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}) == "fp16"
    assert tensor_dtype({"DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}) == "fp32"
    assert tensor_dtype({"Datatype": "UInt8", "Format": "Row major linear"}) == "uint8"
    assert tensor_dtype({"Name": "x"}) == "?"
