"""``fornet-deploy export``: checkpoint -> ONNX in a deploy bundle.

Steps: load the checkpoint, switch the Top-K to the requested form (``threshold`` by
default: no TopK/Sort/NonZero/Loop in the graph), trace with the TorchScript exporter,
run the ONNX checker and shape inference, simplify (onnxsim), embed the metadata a
deployment needs (classes, palette, preprocessing, Top-K mode/ratio), and write
``model.onnx`` + ``checkpoint.safetensors`` + ``manifest.json`` atomically.

``model.onnx`` is the reference graph every other artefact is made from (FP16, INT8, engines)
and keeps the full-resolution tail (Resize of the logits x4, ArgMax). Unless ``--tail full``,
the export also writes ``model.cpu.onnx``, what ONNX Runtime runs on a CPU: the same network
with the cheap tail of :mod:`.tail` and its channel Concats folded into the convolutions
after them (:mod:`.rewrite`).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from ..bundle import Bundle, transaction
from ..contract import (
    CHECKPOINT,
    COARSE_LOGITS,
    DEFAULT_TAIL,
    EXPORT_OUTPUTS,
    IMPORTANCE,
    INPUT_NAME,
    LABELS,
    LOGITS,
    ONNX_CPU,
    ONNX_FP32,
    TAILS,
    TOPK_FORMS,
    TOPK_MASK,
    check_batch,
    check_pixels,
    check_size,
)
from ..data.labels import LabelSet, label_set_for
from ..data.transforms import Preprocessing
from ..errors import FornetError, OptionError
from ..evaluation.parity import stale_parity_reports
from ..io import read_bytes, sha256_bytes
from ..model.checkpoint import MAX_FILE_BYTES, checkpoint_labels, load_checkpoint_bytes
from ..model.fornet import FoRNet
from ..model.topk import SELECTION_RULE, search_schedule
from ..runtimes.ort_runner import import_onnxruntime
from .rewrite import fold_concats
from .tail import cpu_graph

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
    # How model.cpu.onnx (and the CPU INT8 graph calibrated later) compute labels (export/tail.py);
    # "full": no CPU graph, ONNX Runtime runs model.onnx on a CPU too.
    tail: str = DEFAULT_TAIL

    @property
    def cpu_tail(self) -> str:
        """The tail the CPU graphs get: ``tail``, or ``full`` when ``labels`` is not exported
        (the tail computes labels; without them there is nothing to make cheaper)."""
        return self.tail if LABELS in self.outputs else "full"

    def validate(self) -> None:
        """Every option in its range (one :class:`OptionError` line) before any work."""
        for name, value in (("height", self.height), ("width", self.width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError(f"export {name} must be an integer, got {value!r}")
        check_size(self.height, self.width)
        check_batch(self.batch)
        check_pixels(self.batch, self.height, self.width, "export")
        unknown = [o for o in self.outputs if o not in EXPORT_OUTPUTS]
        if unknown or not self.outputs:
            raise OptionError(f"--outputs: unknown {unknown}; choose from {','.join(EXPORT_OUTPUTS)}")
        if self.tail not in TAILS:
            raise OptionError(f"--tail must be one of {', '.join(TAILS)}, got {self.tail!r}")
        if self.topk not in TOPK_FORMS:
            raise OptionError(f"--topk must be threshold or exact, got {self.topk!r}")
        if self.labels_dtype not in ("uint8", "int32"):
            raise OptionError(f"labels dtype must be uint8 or int32, got {self.labels_dtype!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            raise OptionError(f"--opset {self.opset!r} is outside the supported range 13..21")


class ExportWrapper(nn.Module):
    """Returns the requested outputs as a tuple in a fixed order (ONNX needs one).

    ``dynamic``: the graph takes any size, so the model pads and crops by the runtime shape
    (``FoRNet.forward_all(traced_size=True)``); a static graph gets constant amounts.
    """

    def __init__(self, model: FoRNet, outputs: tuple[str, ...], labels_dtype: str, dynamic: bool = False):
        super().__init__()
        self.model = model
        self.outputs = outputs
        self.labels_dtype = labels_dtype
        self.dynamic = dynamic

    def forward(self, image):
        out = self.model.forward_all(image, traced_size=self.dynamic)
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
    wrapper = ExportWrapper(model, cfg.outputs, cfg.labels_dtype, cfg.dynamic).eval()
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
        elif name == COARSE_LOGITS:
            axes[name] = {0: "batch", 2: "height_4", 3: "width_4"}
        else:  # 1/8-scale maps
            axes[name] = {0: "batch", 2: "height_8", 3: "width_8"}
    return axes


# onnxsim passes left out: fusing two consecutive Slices (a crop to the image, one per axis,
# model/padding.py) names the fused node without its module scope ("Slice_1" for
# "/focus/selector/Slice"), and the FP32 scopes (contract.FP32_SCOPES) go by those names.
SKIPPED_SIMPLIFICATIONS = ["fuse_consecutive_slices"]


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(proto, skipped_optimizers=SKIPPED_SIMPLIFICATIONS)
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
    labels: LabelSet | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """The library function behind ``fornet-deploy export``; returns the manifest entries
    written, by artefact name (``model.onnx``, and ``model.cpu.onnx`` unless the tail is full).

    The checkpoint is read once: the bytes the model is built from are the bytes copied
    into the bundle. Checkpoint, graphs and manifest are committed together; the commit
    removes the artefacts made from a previous, different ``model.onnx``
    (:mod:`fornet_deploy.bundle`). ``log`` is told, one line each, which artefacts the
    export removed and which parity reports of the bundle no longer describe its artefacts.

    The label set written to the manifest is ``labels`` (``export --labels FILE``), else the
    checkpoint's own, else the default for its class count (Cityscapes for 19 classes).
    """
    cfg.validate()
    data = read_bytes(checkpoint, "checkpoint", MAX_FILE_BYTES)
    model, info = load_checkpoint_bytes(data, checkpoint)
    if labels is None:
        stored = checkpoint_labels(data, checkpoint)
        labels = label_set_for(model.config.num_classes, stored, f"checkpoint {checkpoint}")
    elif labels.num_classes != model.config.num_classes:
        raise FornetError(f"--labels names {labels.num_classes} classes; checkpoint {checkpoint} has "
                          f"{model.config.num_classes}")
    proto = export_onnx_model(model, cfg)
    ops = graph_op_types(proto)
    if cfg.topk == "threshold" and ops & set(DYNAMIC_TOPK_OPS):
        raise FornetError(f"threshold Top-K export still contains {sorted(ops & set(DYNAMIC_TOPK_OPS))}")  # a bug guard
    sections = {
        "model": model.config.to_dict(),
        "labels": labels.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "topk": _topk_section(model, cfg.topk),
        "export": {**asdict(cfg), "outputs": list(cfg.outputs), "cpu_tail": cfg.cpu_tail, "torch": torch.__version__,
                   "onnx": onnx.__version__},
        "checkpoint_info": info,
    }
    # The CPU tail is part of what model.onnx stands for: the calibrated CPU graph made from it
    # later reads it here, and another tail makes another model.onnx (its derived graphs stale).
    # classes / palette as flat keys too: what tools reading ONNX metadata look for
    metadata = {"classes": list(labels.classes), "palette": sections["labels"]["palette"],
                **{k: sections[k] for k in ("labels", "preprocessing", "topk", "model")}}
    embed_metadata(proto, {**metadata, "cpu_tail": cfg.cpu_tail})
    cpu, folded = fold_concats(cpu_graph(proto, cfg.cpu_tail)) if cfg.cpu_tail != "full" else (None, [])
    input_shape = [None, 3, None, None] if cfg.dynamic else [cfg.batch, 3, cfg.height, cfg.width]
    export_shape = [cfg.batch, 3, cfg.height, cfg.width]
    shapes = {"opset": cfg.opset, "topk": cfg.topk, "input_shape": input_shape, "export_shape": export_shape,
              "dynamic": cfg.dynamic}

    with transaction(out, "export", create=True) as txn:
        txn.update(**sections)
        txn.path(CHECKPOINT).write_bytes(data)
        txn.record(CHECKPOINT, kind="checkpoint")
        onnx.save(proto, str(txn.path(ONNX_FP32)))
        entries = {ONNX_FP32: txn.record(
            ONNX_FP32, kind="onnx", precision="fp32", source=CHECKPOINT, source_sha256=sha256_bytes(data), **shapes,
            outputs=list(cfg.outputs), tail="full", ops=sorted(ops),
        )}
        if cpu is None:
            txn.remove(ONNX_CPU)  # an earlier export's: ONNX Runtime runs model.onnx on a CPU now
        else:
            onnx.save(cpu, str(txn.path(ONNX_CPU)))
            check_runs(txn.path(ONNX_CPU), export_shape, f"the CPU graph ({cfg.cpu_tail} tail)")
            entries[ONNX_CPU] = txn.record(
                ONNX_CPU, kind="onnx", precision="fp32", source=ONNX_FP32, source_sha256=entries[ONNX_FP32]["sha256"],
                **shapes, outputs=[o.name for o in cpu.graph.output], tail=cfg.cpu_tail, folded_concats=folded,
                ops=sorted(graph_op_types(cpu)),
            )
    if log is not None:
        for line in export_notes(txn.dropped, stale_parity_reports(Bundle.open(out, verify=False))):
            log(line)
    return entries


def export_notes(dropped: list[str], stale_reports: list[str]) -> list[str]:
    """What an export did besides writing its graphs, for the person who ran it."""
    notes = []
    if dropped:
        notes.append(f"removed {', '.join(dropped)}: made from the model this export replaced (or by another "
                     "--tail); make them again (`fornet-deploy export --precision fp16`, `calibrate`, `build-trt`)")
    if stale_reports:
        notes.append(f"stale parity reports (they checked artefacts the bundle no longer holds): "
                     f"{', '.join(stale_reports)}; re-run `fornet-deploy parity`")
    return notes


def _topk_section(model: FoRNet, mode: str) -> dict:
    c = model.config
    section = {"mode": mode, "focus": c.focus, "ratio": c.topk_ratio, "search_steps": c.topk_search_steps,
               "search_schedule": [list(bits) for bits in search_schedule(c.topk_search_steps)],
               "scores": "selector logits", "rule": SELECTION_RULE}
    if c.focus == "adaptive":
        section |= {"threshold": c.adaptive_threshold, "min_ratio": c.adaptive_min_ratio, "max_ratio": c.adaptive_max_ratio}
    return section
