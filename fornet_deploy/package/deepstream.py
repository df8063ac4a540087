"""A DeepStream ``nvinfer`` package for a bundle: semantic segmentation on a video.

Files: ``config_infer_fornet.txt`` (the ``[property]`` group of ``Gst-nvinfer``),
``labels.txt``, ``model.onnx``, ``deepstream_app_config.txt`` (``deepstream-app -c``) and a
README that explains the pre-processing arithmetic and what it costs.

Two facts from NVIDIA's sources shape it:

* ``nvinfer`` pre-processes every pixel as ``y = net-scale-factor * (x - offsets[c])``
  (DeepStream developer guide, Gst-nvinfer): one scale for all channels. The bundle's
  ``y = (x * scale - mean[c]) / std[c]`` is reproduced exactly when every ``std[c]`` is
  equal (``net-scale-factor = scale / std``, ``offsets[c] = mean[c] / scale``); with
  ImageNet's per-channel std it is approximated with their mean, and :func:`single_scale_cost`
  measures what that changes.
* Semantic segmentation in ``nvinfer`` (``network-type=2``) takes the *first* output layer
  as a C x H x W probability map and gives a pixel class ``c`` only when its value is above
  both -1 and ``segmentation-threshold`` (``SegmentPostprocessor::fillSegmentationOutput``
  starts its maximum at -1). FoR-Net's first output is logits, which can be below -1 at
  the winning class, so the packaged ``model.onnx`` is the bundle's graph with a Softmax
  appended as its only output, ``probabilities``; its argmax is checked against the bundle
  graph's labels (ONNX Runtime, a SynthCity scene) before the package is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import onnx

from ..build.trt import export_shape
from ..bundle import Bundle
from ..contract import LABELS, LOGITS, PRECISIONS, TRT_CALIBRATION_CACHE, check_choice, onnx_graph
from ..data.labels import manifest_label_set
from ..data.transforms import Preprocessing, preprocess, resize_labels
from ..errors import CheckFailed, FornetError, OptionError
from ..evaluation.examples import Example, dataset_examples, scene_examples
from ..evaluation.metrics import SegmentationMetrics, agreement
from ..export.onnx import load_onnx
from ..runtimes.ort_runner import import_onnxruntime
from .graph import graph_io

PROBABILITIES = "probabilities"
MODEL_FILE = "model.onnx"
NVINFER_CONFIG = "config_infer_fornet.txt"
APP_CONFIG = "deepstream_app_config.txt"
LABELS_FILE = "labels.txt"
# A sample clip of every DeepStream installation (samples/streams), replaced by --video.
DEFAULT_VIDEO = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_1080p_h264.mp4"

# Keys of nvinfer's [property] group: the CONFIG_GROUP_INFER_* keys of
# gstnvinfer_property_parser.h (DeepStream 6.x-7.x sources; the DeepStream 8.0 / 9.x SDK API
# reference pages of the same header), which the Gst-nvinfer page of the DeepStream
# developer guide documents in its "Gst-nvinfer config file properties" table. A key outside
# this table is a bug of the writer, not something nvinfer would read.
NVINFER_PROPERTIES = frozenset({
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "is-classifier",
    "network-type", "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision",
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order", "input-tensor-from-meta",
    "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name", "engine-create-func-name",
    "parse-classifier-func-name", "custom-network-config", "model-file", "proto-file", "uff-file",
    "uff-input-order", "input-dims", "uff-input-dims", "uff-input-blob-name", "tlt-encoded-model",
    "tlt-model-key", "onnx-file", "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type",
    "classifier-threshold", "classifier-async-mode", "segmentation-threshold", "segmentation-output-order",
    "output-instance-mask", "input-object-min-width", "input-object-min-height", "input-object-max-width",
    "input-object-max-height", "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
    "disable-output-host-copy", "auto-inc-mem", "max-gpu-mem-per", "dump-input-tensor", "dump-output-tensor",
})
# Enumerated values (same guide): network-type 2 = segmentation; network-mode 0 FP32,
# 1 INT8, 2 FP16; model-color-format 0 RGB, 1 BGR, 2 GRAY; segmentation-output-order 0 NCHW.
NVINFER_VALUES = {"network-type": {0, 1, 2, 3, 100}, "network-mode": {0, 1, 2}, "model-color-format": {0, 1, 2},
                  "segmentation-output-order": {0, 1}, "process-mode": {1, 2}, "maintain-aspect-ratio": {0, 1}}
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMATS = {"RGB": 0, "BGR": 1}
# deepstream-app groups and keys this package writes, from deepstream_config_file_parser.c/.h
# (DeepStream 6.x-7.x) and the deepstream-app configuration groups of the developer guide.
DEEPSTREAM_APP_KEYS = {
    "application": {"enable-perf-measurement", "perf-measurement-interval-sec"},
    "source": {"enable", "type", "uri", "num-sources", "gpu-id", "cudadec-memtype", "file-loop"},
    "streammux": {"gpu-id", "live-source", "batch-size", "batched-push-timeout", "width", "height",
                  "enable-padding"},
    "primary-gie": {"enable", "gpu-id", "batch-size", "gie-unique-id", "config-file", "model-engine-file",
                    "labelfile-path", "interval"},
    "segvisual": {"enable", "gpu-id", "width", "height"},
    "osd": {"enable", "gpu-id"},
    "sink": {"enable", "type", "sync", "container", "codec", "enc-type", "bitrate", "output-file", "gpu-id",
             "source-id"},
}


@dataclass(frozen=True)
class DeepStreamOptions:
    precision: str = "fp32"
    batch: int = 1  # nvinfer batch-size (and streammux's)
    gpu_id: int = 0
    shape: tuple[int, int] | None = None  # infer-dims HxW for graphs with dynamic H/W (default: export shape)
    video: str | None = None  # deepstream-app source URI (default: DeepStream's sample clip)
    data: str | Path | None = None  # dataset (Cityscapes layout) to measure the single-scale cost on
    num_images: int = 16

    def validate(self) -> None:
        check_choice(self.precision, PRECISIONS, "precision")
        for name, least in (("batch", 1), ("gpu_id", 0), ("num_images", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")


# --- the pre-processing arithmetic ------------------------------------------------------


@dataclass(frozen=True)
class NvinferScaling:
    """nvinfer's ``y = net_scale_factor * (x - offsets[c])`` for a bundle's preprocessing."""

    net_scale_factor: float
    offsets: tuple[float, float, float]  # in the network's channel order, in pixel units
    color_format: int  # model-color-format
    exact: bool  # False: one std stands for differing per-channel stds
    std: float  # the std the scale factor uses


def nvinfer_scaling(pre: Preprocessing) -> NvinferScaling:
    """``(x * scale - m_c) / s_c = (scale / s_c) * (x - m_c / scale)``: exact when every s_c
    is one s; otherwise s is the mean of the s_c (nvinfer has one scale factor)."""
    order = pre.channel_order.upper()
    if order not in COLOR_FORMATS:
        raise FornetError(f"DeepStream takes RGB or BGR networks, this bundle's channel order is {pre.channel_order!r}")
    stds = [float(s) for s in pre.std]
    exact = len(set(stds)) == 1
    std = stds[0] if exact else float(np.mean(stds))
    return NvinferScaling(pre.scale / std, tuple(m / pre.scale for m in pre.mean), COLOR_FORMATS[order], exact, std)


def nvinfer_input(image_rgb: np.ndarray, scaling: NvinferScaling) -> np.ndarray:
    """What nvinfer feeds the network for an RGB uint8 image at network size: 1x3xHxW float32,
    computed in float32 as nvinfer's CUDA kernel does."""
    x = image_rgb if scaling.color_format == 0 else image_rgb[..., ::-1]
    y = np.float32(scaling.net_scale_factor) * (x.astype(np.float32) - np.asarray(scaling.offsets, np.float32))
    return np.ascontiguousarray(y.transpose(2, 0, 1)[None])


# --- the graph nvinfer runs -------------------------------------------------------------


def with_probabilities(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with ``Softmax(logits, axis=1)`` as its only output (see the module docstring)."""
    if not any(o.name == LOGITS for o in model.graph.output):
        raise FornetError(f"DeepStream needs the graph's {LOGITS!r} output; export the bundle with it")
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    logits = next(o for o in proto.graph.output if o.name == LOGITS)
    proto.graph.node.append(onnx.helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1,
                                                  name="/deepstream/Softmax"))
    probabilities = onnx.ValueInfoProto()
    probabilities.CopyFrom(logits)
    probabilities.name = PROBABILITIES
    del proto.graph.output[:]
    proto.graph.output.append(probabilities)
    onnx.checker.check_model(proto)
    return proto


class Labeller:
    """Labels (argmax over classes) of an ONNX graph with ONNX Runtime on the CPU."""

    def __init__(self, path: Path):
        ort = import_onnxruntime("checking the DeepStream graph")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        self.output = LABELS if LABELS in names else names[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output], {self.session.get_inputs()[0].name: batch})
        return out[0] if out.ndim == 3 else out[0].argmax(axis=0)


def check_probabilities(source: Path, packaged: Path, pre: Preprocessing, hw: tuple[int, int]) -> None:
    """The packaged graph's argmax equals the bundle graph's labels on a SynthCity scene."""
    (example,) = list(scene_examples(1, hw[0], hw[1], pre))
    expected, got = Labeller(source)(example.batch), Labeller(packaged)(example.batch)
    if not np.array_equal(expected, got):
        raise CheckFailed(f"the DeepStream graph's labels differ from the bundle's on "
                          f"{float(np.mean(expected != got)):.2%} of the pixels of a test scene")


# --- what the single scale costs --------------------------------------------------------


def single_scale_cost(model: Path, pre: Preprocessing, examples: Iterable[Example], hw: tuple[int, int],
                      num_classes: int) -> dict:
    """Run ``model`` on each image preprocessed exactly and as nvinfer does; labels agreement
    between the two and, where images have ground truth, the mIoU of each."""
    scaling = nvinfer_scaling(pre)
    exact_pre = Preprocessing(pre.mean, pre.std, pre.channel_order, pre.scale, "fixed", hw[0], hw[1])
    label = Labeller(model)
    exact_miou, ds_miou = SegmentationMetrics(num_classes=num_classes), SegmentationMetrics(num_classes=num_classes)
    agreements, labelled = [], 0
    for example in examples:
        # nvinfer scales the frame to the network size before the arithmetic (bilinear here)
        resized = example.image if example.image.shape[:2] == tuple(hw) else \
            cv2.resize(example.image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        exact = label(preprocess(resized, exact_pre))
        approx = label(nvinfer_input(resized, scaling))
        agreements.append(agreement(exact, approx))
        if example.labels is not None:
            truth = resize_labels(example.labels, hw)
            exact_miou.update(exact, truth)
            ds_miou.update(approx, truth)
            labelled += 1
    if not agreements:
        raise FornetError("no images to measure the DeepStream pre-processing on")
    result = {"images": len(agreements), "exact": scaling.exact, "std_used": scaling.std,
              "labels_agreement": float(np.mean(agreements)), "labels_agreement_min": float(np.min(agreements))}
    if labelled:
        result |= {"miou_exact": exact_miou.result()["miou"], "miou_deepstream": ds_miou.result()["miou"]}
        result["miou_difference"] = result["miou_deepstream"] - result["miou_exact"]
    return result


# --- the config files -------------------------------------------------------------------


def render_ini(groups: dict[str, dict[str, object]]) -> str:
    lines = []
    for group, keys in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{key}={value}" for key, value in keys.items()]
        lines.append("")
    return "\n".join(lines)


def check_nvinfer(groups: dict[str, dict[str, object]]) -> None:
    """Every key is a documented nvinfer property and every enumerated value a documented one."""
    if set(groups) != {"property"}:
        raise FornetError(f"nvinfer config groups {sorted(groups)}: this package writes [property] only")
    unknown = sorted(set(groups["property"]) - NVINFER_PROPERTIES)
    if unknown:
        raise FornetError(f"nvinfer config keys {unknown} are not documented Gst-nvinfer properties")
    for key, allowed in NVINFER_VALUES.items():
        if key in groups["property"] and groups["property"][key] not in allowed:
            raise FornetError(f"nvinfer {key}={groups['property'][key]} is not one of {sorted(allowed)}")


def check_app(groups: dict[str, dict[str, object]]) -> None:
    for group, keys in groups.items():
        kind = group.rstrip("0123456789")
        unknown = sorted(set(keys) - DEEPSTREAM_APP_KEYS.get(kind, set()))
        if kind not in DEEPSTREAM_APP_KEYS or unknown:
            raise FornetError(f"deepstream-app group [{group}] key(s) {unknown or sorted(keys)} are not documented")


def _fmt(value: float) -> str:
    return f"{float(value):.9g}"  # nine significant digits: the float32 nvinfer parses, exactly


def nvinfer_config(*, scaling: NvinferScaling, hw: tuple[int, int], precision: str, batch: int, gpu_id: int,
                   num_classes: int, calib_file: str | None) -> dict[str, dict[str, object]]:
    network_mode = NETWORK_MODES[precision]
    engine = f"{MODEL_FILE}_b{batch}_gpu{gpu_id}_{precision}.engine"  # the name nvinfer serializes to
    prop: dict[str, object] = {
        "gpu-id": gpu_id,
        "net-scale-factor": _fmt(scaling.net_scale_factor),
        "offsets": ";".join(_fmt(o) for o in scaling.offsets),
        "model-color-format": scaling.color_format,
        "onnx-file": MODEL_FILE,
        "model-engine-file": engine,
        "labelfile-path": LABELS_FILE,
        "infer-dims": f"3;{hw[0]};{hw[1]}",
        "batch-size": batch,
        "network-mode": network_mode,
        "network-type": 2,
        "num-detected-classes": num_classes,
        "output-blob-names": PROBABILITIES,
        "segmentation-threshold": 0.0,
        "segmentation-output-order": 0,
        "maintain-aspect-ratio": 0,
        "scaling-filter": 1,  # bilinear, as the bundle's resize
        "process-mode": 1,
        "gie-unique-id": 1,
        "interval": 0,
    }
    if calib_file:
        prop["int8-calib-file"] = calib_file
    return {"property": prop}


def app_config(*, video: str, hw: tuple[int, int], batch: int, gpu_id: int) -> dict[str, dict[str, object]]:
    return {
        "application": {"enable-perf-measurement": 1, "perf-measurement-interval-sec": 5},
        "source0": {"enable": 1, "type": 3, "uri": video, "num-sources": 1, "gpu-id": gpu_id},
        "streammux": {"gpu-id": gpu_id, "live-source": 0, "batch-size": batch, "batched-push-timeout": 40000,
                      "width": hw[1], "height": hw[0], "enable-padding": 0},
        "primary-gie": {"enable": 1, "gpu-id": gpu_id, "batch-size": batch, "gie-unique-id": 1,
                        "config-file": NVINFER_CONFIG},
        "segvisual": {"enable": 1, "gpu-id": gpu_id, "width": hw[1], "height": hw[0]},
        "osd": {"enable": 0},
        "sink0": {"enable": 1, "type": 3, "container": 1, "codec": 1, "enc-type": 1, "bitrate": 4000000,
                  "output-file": "fornet_segmentation.mp4", "sync": 0, "source-id": 0, "gpu-id": gpu_id},
    }


def network_size(graph_dims: tuple, pre: Preprocessing, export_shape, shape) -> tuple[int, int]:
    """infer-dims: the graph's H and W where fixed, else ``--shape``, the preprocessing's
    fixed size, or the export shape."""
    h, w = graph_dims[2], graph_dims[3]
    if h is not None and w is not None:
        if shape is not None and tuple(shape) != (h, w):
            raise OptionError(f"--shape {shape[0]}x{shape[1]}: the graph is fixed at {h}x{w}")
        return h, w
    if shape is not None:
        return tuple(shape)
    if pre.resize == "fixed":
        return pre.height, pre.width
    if export_shape:
        return export_shape[2], export_shape[3]
    raise OptionError("the graph has dynamic H and W: give the network input size with --shape HxW")


def write_deepstream(bundle: Bundle, folder: Path, options: DeepStreamOptions) -> dict:
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    classes = list(manifest_label_set(bundle.manifest, f"bundle {bundle.root}").classes)
    scaling = nvinfer_scaling(pre)
    # INT8 through nvinfer is implicit quantization: the FP32 graph plus the entropy cache of
    # `build-trt --legacy-calibrator` (trtexec format). Without a calibration file nvinfer
    # silently builds FP16 instead (nvdsinfer model builder: "Trying FP16 mode").
    calib_file = None
    if options.precision == "int8":
        if not bundle.has(TRT_CALIBRATION_CACHE):
            raise FornetError(f"DeepStream INT8 needs the TensorRT calibration cache {TRT_CALIBRATION_CACHE}: run "
                              "`fornet-deploy build-trt --int8 --legacy-calibrator --data DIR` (TensorRT 10.x) first")
        source_name = onnx_graph("fp32").artifact
        calib_file = TRT_CALIBRATION_CACHE
        shutil.copyfile(bundle.path(TRT_CALIBRATION_CACHE), folder / TRT_CALIBRATION_CACHE)
    else:
        source_name = onnx_graph(options.precision).artifact
    source = bundle.path(source_name)
    io = graph_io(source)
    hw = network_size(io.image.dims, pre, export_shape(bundle), options.shape)
    onnx.save(with_probabilities(load_onnx(source)), str(folder / MODEL_FILE))
    check_probabilities(source, folder / MODEL_FILE, pre, hw)
    (folder / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes))

    infer = nvinfer_config(scaling=scaling, hw=hw, precision=options.precision, batch=options.batch,
                           gpu_id=options.gpu_id, num_classes=len(classes), calib_file=calib_file)
    check_nvinfer(infer)
    app = app_config(video=options.video or DEFAULT_VIDEO, hw=hw, batch=options.batch, gpu_id=options.gpu_id)
    check_app(app)
    (folder / NVINFER_CONFIG).write_text(f"# FoR-Net semantic segmentation ({source_name} + Softmax), "
                                         "written by fornet-deploy package\n" + render_ini(infer))
    (folder / APP_CONFIG).write_text("# deepstream-app -c deepstream_app_config.txt\n" + render_ini(app))

    cost = None
    if not scaling.exact:
        if options.data is not None:
            # fed at the network size below: no preprocessing at the image's own size here
            examples = dataset_examples(options.data, "val", pre, limit=options.num_images, network_size=lambda _: hw)
        else:
            examples = scene_examples(options.num_images, hw[0], hw[1], pre)
        cost = single_scale_cost(source, pre, examples, hw, len(classes))
        cost["images_from"] = examples.source
    (folder / "README.md").write_text(readme(pre, scaling, infer["property"], hw, source_name, cost))
    return {"bundle": str(bundle.root.resolve()), "precision": options.precision, "source": source_name,
            "network_size": list(hw), "nvinfer": {k: v for k, v in infer["property"].items()},
            "single_scale_cost": cost}


def readme(pre: Preprocessing, scaling: NvinferScaling, prop: dict, hw: tuple[int, int], source: str,
           cost: dict | None) -> str:
    m, s = list(pre.mean), list(pre.std)
    if scaling.exact:
        limit = ("All channels share one std here, so nvinfer reproduces the bundle's pre-processing exactly (to "
                 "float32 rounding).")
    else:
        measured = "not measured"
        if cost:
            measured = (f"measured on {cost['images_from']}: labels agree with the exact pre-processing on "
                        f"{cost['labels_agreement']:.4%} of the pixels (worst image {cost['labels_agreement_min']:.4%})")
            if "miou_difference" in cost:
                measured += (f"; mIoU {cost['miou_exact']:.4f} exact vs {cost['miou_deepstream']:.4f} with the single "
                             f"scale ({cost['miou_difference']:+.4f})")
        limit = (f"The bundle's std differs per channel ({s}) and nvinfer has one scale factor, so it uses their mean "
                 f"s = {scaling.std!r}: channel c reaches the network s_c/s times its exact value (up to "
                 f"{max(abs(v / scaling.std - 1) for v in s):.2%} off). What that costs, {measured}. Re-train or fine-tune "
                 "with one std for all channels to make it exact.")
    return f"""# FoR-Net on DeepStream (Gst-nvinfer, semantic segmentation)

Written by `fornet-deploy package --target deepstream` from the bundle's `{source}`.

```bash
deepstream-app -c {APP_CONFIG}     # writes fornet_segmentation.mp4 (segvisual colours)
```

- `{NVINFER_CONFIG}`: the nvinfer `[property]` group (`network-type=2` semantic
  segmentation, `network-mode={prop['network-mode']}`, `infer-dims={prop['infer-dims']}`,
  `batch-size={prop['batch-size']}`). Every key was checked against the documented Gst-nvinfer
  properties when this folder was written.
- `{MODEL_FILE}`: the bundle's graph with a Softmax over the classes as its only output,
  `{PROBABILITIES}` (nvinfer reads the first output as a probability map and assigns no class
  where the best value is not above -1 and `segmentation-threshold`; raw logits can be). On the
  first run nvinfer builds a TensorRT engine from it and saves it as `{prop['model-engine-file']}`;
  later runs load that file. Delete it after changing the model, precision or batch size.
- `{LABELS_FILE}`: the class names, one per line (line *i* = train id *i*).
- `{APP_CONFIG}`: `deepstream-app` on one video (`[source0] uri=`, a sample clip of the
  DeepStream installation unless `--video` was given), streammux at the network size,
  `[segvisual]` colouring the class map, an MP4 file sink.

## Pre-processing: from mean / std to net-scale-factor / offsets

The bundle computes, per pixel and channel c (network channel order {pre.channel_order}, x in 0..255):

    y = (x * scale - mean[c]) / std[c]      scale = {pre.scale!r}, mean = {m}, std = {s}
      = (scale / std[c]) * (x - mean[c] / scale)

nvinfer computes `y = net-scale-factor * (x - offsets[c])` with one `net-scale-factor`, so

    offsets[c]       = mean[c] / scale  = {prop['offsets']}
    net-scale-factor = scale / std      = {prop['net-scale-factor']}
    model-color-format = {prop['model-color-format']} ({pre.channel_order})

{limit}

nvinfer scales every frame to the network size {hw[1]}x{hw[0]} first (`scaling-filter=1`,
bilinear; `maintain-aspect-ratio=0`). The bundle's resize policy is {pre.resize!r}; frames
already at that size are not resampled, others go through nvinfer's GPU scaler, which is not
OpenCV's: expect small differences at object edges there.
"""
