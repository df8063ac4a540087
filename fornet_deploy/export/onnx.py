"""``fornet-deploy export``: checkpoint -> ONNX in a deploy bundle.

Steps: load the checkpoint, switch the Top-K to the requested form (``threshold`` by
default: no TopK/Sort/NonZero/Loop in the graph), trace with the TorchScript exporter,
run the ONNX checker and shape inference, simplify (onnxsim), embed the metadata a
deployment needs (classes, palette, preprocessing, Top-K mode/ratio), and write
``model.onnx`` + ``checkpoint.safetensors`` + ``manifest.json`` atomically.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..bundle import transaction
from ..contract import (
    CHECKPOINT,
    IMPORTANCE,
    INPUT_NAME,
    LABELS,
    LOGITS,
    ONNX_FP32,
    OUTPUT_NAMES,
    TOPK_FORMS,
    TOPK_MASK,
    check_batch,
    check_stride,
)
from ..data.cityscapes import CLASS_NAMES, PALETTE
from ..data.transforms import Preprocessing
from ..errors import FornetError, OptionError
from ..io import read_bytes, sha256_bytes
from ..model.checkpoint import MAX_FILE_BYTES, load_checkpoint_bytes
from ..model.fornet import FoRNet
from ..model.topk import SELECTION_RULE, search_schedule
from ..runtimes.ort_runner import import_onnxruntime

DEFAULT_OUTPUTS = (LOGITS, LABELS, IMPORTANCE, TOPK_MASK)
# Ops whose presence defeats the purpose of the threshold Top-K (TensorRT limits,
# data-dependent shapes, loops).
DYNAMIC_TOPK_OPS = ("TopK", "Sort", "NonZero", "Loop", "Scan", "Unique")


@dataclass(frozen=True)
class ExportConfig:
    height: int = 512
    width: int = 1024
    batch: int = 1
    dynamic: bool = False  # dynamic batch, height and width
    topk: str = "threshold"  # "threshold" | "exact"
    opset: int = 17
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    labels_dtype: str = "uint8"  # in-graph ArgMax output: "uint8" | "int32"
    simplify: bool = True

    def validate(self) -> None:
        """Every option in its range (one :class:`OptionError` line) before any work."""
        for name, value in (("height", self.height), ("width", self.width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError(f"export {name} must be an integer, got {value!r}")
        check_stride(self.height, self.width)
        check_batch(self.batch)
        unknown = [o for o in self.outputs if o not in OUTPUT_NAMES]
        if unknown or not self.outputs:
            raise OptionError(f"--outputs: unknown {unknown}; choose from {','.join(OUTPUT_NAMES)}")
        if self.topk not in TOPK_FORMS:
            raise OptionError(f"--topk must be threshold or exact, got {self.topk!r}")
        if self.labels_dtype not in ("uint8", "int32"):
            raise OptionError(f"labels dtype must be uint8 or int32, got {self.labels_dtype!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            raise OptionError(f"--opset {self.opset!r} is outside the supported range 13..21")


class ExportWrapper(nn.Module):
    """Returns the requested outputs as a tuple in a fixed order (ONNX needs one)."""

    def __init__(self, model: FoRNet, outputs: tuple[str, ...], labels_dtype: str):
        super().__init__()
        self.model = model
        self.outputs = outputs
        self.labels_dtype = labels_dtype

    def forward(self, image):
        out = self.model.forward_all(image)
        if (IMPORTANCE in self.outputs or TOPK_MASK in self.outputs) and out[IMPORTANCE] is None:
            raise FornetError("this model has no selector (focus='none'): drop importance/topk_mask from --outputs")
        out[LABELS] = labels_from_logits(out[LOGITS], self.labels_dtype)
        return tuple(out[name] for name in self.outputs)


def labels_from_logits(logits: torch.Tensor, dtype: str) -> torch.Tensor:
    """The in-graph ``labels``: ``ArgMax -> Cast(FLOAT16) -> Cast(UINT8)`` or ``ArgMax -> Cast(INT32)``.

    Never an integer -> UINT8 Cast: TensorRT documents UINT8 conversions only from/to FLOAT
    and HALF ("kUINT8 conversions are not supported for {kINT8, kINT32, kBOOL}",
    ``DataType::kUINT8`` in NVIDIA/TensorRT ``include/NvInferRuntimeBase.h`` on release/10.3,
    release/10.16 and main), and its ONNX parser types ArgMax's output INT64. The detour
    through FLOAT16 is exact: half precision holds every integer up to 2048, and the class
    count is far below that (checked in :func:`export_onnx_model`).
    """
    indices = logits.argmax(dim=1)
    if dtype == "int32":
        return indices.to(torch.int32)
    return indices.to(torch.float16).to(torch.uint8)


def export_onnx_model(model: FoRNet, cfg: ExportConfig) -> onnx.ModelProto:
    """Trace a model to an ONNX ModelProto (checked, shape-inferred, simplified)."""
    cfg.validate()
    model = model.eval().set_topk_mode(cfg.topk)
    wrapper = ExportWrapper(model, cfg.outputs, cfg.labels_dtype).eval()
    dummy = torch.zeros(cfg.batch, 3, cfg.height, cfg.width)
    dynamic_axes = _dynamic_axes(cfg.outputs) if cfg.dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected
        torch.onnx.export(
            wrapper, (dummy,), buffer, dynamo=False, opset_version=cfg.opset,
            input_names=[INPUT_NAME], output_names=list(cfg.outputs),
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    if cfg.simplify:
        proto = simplify(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _dynamic_axes(outputs: tuple[str, ...]) -> dict:
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name in outputs:
        if name == LABELS:
            axes[name] = {0: "batch", 1: "height", 2: "width"}
        elif name == LOGITS:
            axes[name] = {0: "batch", 2: "height", 3: "width"}
        else:  # 1/8-scale maps
            axes[name] = {0: "batch", 2: "height_8", 3: "width_8"}
    return axes


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:  # pragma: no cover - onnxsim's own self-check failed; keep the original
        warnings.warn("onnxsim could not validate the simplified model; keeping the unsimplified graph")
        return proto
    return simplified


def embed_metadata(proto: onnx.ModelProto, metadata: dict) -> None:
    """Store JSON metadata as ONNX metadata_props (readable by any runtime)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"fornet.{key}"
        entry.value = json.dumps(value)


def read_metadata(proto: onnx.ModelProto) -> dict:
    return {p.key[len("fornet."):]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("fornet.")}


def graph_op_types(proto: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in proto.graph.node}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; corrupt or truncated files give one clear line."""
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FornetError(f"{path} is not a valid ONNX model ({first[:160]})") from None
    return proto


def check_runs(path: Path, shape: list[int], what: str) -> None:
    """Load a graph with ONNX Runtime CPU and run it once, so a broken file never lands."""
    ort = import_onnxruntime(f"checking {what}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise FornetError(f"ONNX Runtime cannot run {what}: {str(exc).splitlines()[0][:200]}") from None


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ExportConfig = ExportConfig(),
    preprocessing: Preprocessing = Preprocessing(),
) -> dict:
    """The library function behind ``fornet-deploy export``; returns the manifest entry.

    The checkpoint is read once: the bytes the model is built from are the bytes copied
    into the bundle. Checkpoint, ``model.onnx`` and manifest are committed together; the
    commit removes the artefacts made from a previous, different ``model.onnx``
    (:mod:`fornet_deploy.bundle`).
    """
    cfg.validate()
    data = read_bytes(checkpoint, "checkpoint", MAX_FILE_BYTES)
    model, info = load_checkpoint_bytes(data, checkpoint)
    proto = export_onnx_model(model, cfg)
    ops = graph_op_types(proto)
    if cfg.topk == "threshold" and ops & set(DYNAMIC_TOPK_OPS):
        raise FornetError(f"threshold Top-K export still contains {sorted(ops & set(DYNAMIC_TOPK_OPS))}")  # a bug guard
    sections = {
        "model": model.config.to_dict(),
        "classes": list(CLASS_NAMES[: model.config.num_classes]),
        "palette": [list(c) for c in PALETTE[: model.config.num_classes]],
        "preprocessing": preprocessing.to_dict(),
        "topk": _topk_section(model, cfg.topk),
        "export": {**asdict(cfg), "outputs": list(cfg.outputs), "torch": torch.__version__, "onnx": onnx.__version__},
        "checkpoint_info": info,
    }
    embed_metadata(proto, {k: sections[k] for k in ("classes", "palette", "preprocessing", "topk", "model")})

    with transaction(out, "export", create=True) as txn:
        txn.update(**sections)
        txn.path(CHECKPOINT).write_bytes(data)
        txn.record(CHECKPOINT, kind="checkpoint")
        onnx.save(proto, str(txn.path(ONNX_FP32)))
        return txn.record(
            ONNX_FP32, kind="onnx", precision="fp32", source=CHECKPOINT, source_sha256=sha256_bytes(data),
            opset=cfg.opset, topk=cfg.topk,
            input_shape=[None, 3, None, None] if cfg.dynamic else [cfg.batch, 3, cfg.height, cfg.width],
            export_shape=[cfg.batch, 3, cfg.height, cfg.width], dynamic=cfg.dynamic, outputs=list(cfg.outputs),
            ops=sorted(ops),
        )


def _topk_section(model: FoRNet, mode: str) -> dict:
    c = model.config
    section = {"mode": mode, "focus": c.focus, "ratio": c.topk_ratio, "search_steps": c.topk_search_steps,
               "search_schedule": [list(bits) for bits in search_schedule(c.topk_search_steps)],
               "scores": "selector logits", "rule": SELECTION_RULE}
    if c.focus == "adaptive":
        section |= {"threshold": c.adaptive_threshold, "min_ratio": c.adaptive_min_ratio, "max_ratio": c.adaptive_max_ratio}
    return section
