"""A Triton Inference Server model repository for a bundle.

Two models, each ``<name>/config.pbtxt`` + ``<name>/1/<file>`` + ``<name>/labels.txt``:

* ``fornet_ort_<precision>`` (``onnxruntime_onnx``): the bundle's ONNX graph of that
  precision, the artefact ``fornet-deploy parity`` verified, byte for byte. On a GPU it runs
  with ONNX Runtime's TensorRT execution provider (CUDA for what TensorRT does not take).
* ``fornet_trt_<precision>`` (``tensorrt_plan``): the bundle's TensorRT engine of that
  precision, when it has one. An engine runs only with the TensorRT release that built it
  (its ``<engine>.json`` says which): the Triton container must ship that release.

Pre-processing is spelled out, not served: the client sends the normalized NCHW float32
tensor (the README's snippet does it with the manifest's mean / std / scale / channel
order). Why not an ensemble with a Python-backend pre-processing step: the served model
stays the verified artefact for both backends alike; a Python-backend step is one more
process per instance that holds the GIL, copies every image through shared memory and needs
numpy / OpenCV in the serving container; and the normalization is three arithmetic
operations per pixel that the client pays anyway while decoding. What it costs: float32 on
the wire is 4x the bytes of the uint8 image (6 MB instead of 1.5 MB per 512x1024 request).
Where the network is the bottleneck, fold the normalization into the graph (a uint8 input)
rather than adding a Python step.

``config.pbtxt`` is built as Triton's own protobuf message (``tritonclient``'s
``model_config_pb2``: an unknown field cannot be written), read back from the file, and its
tensors compared with the ONNX graph's (names, data types, dims, batch dimension) before
the repository is moved into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..bundle import Bundle
from ..contract import LABELS, LOGITS, NVIDIA_DEVICES, PRECISIONS, check_choice, onnx_graph
from ..data.labels import manifest_label_set
from ..data.transforms import Preprocessing
from ..errors import FornetError, OptionError, require
from ..export.onnx import load_onnx
from ..runtimes.registry import select_engine
from ..runtimes.trt.metadata import engine_metadata_path, read_engine_metadata
from .graph import GraphIO, Tensor, graph_io, graph_io_at

# numpy dtype name -> Triton DataType (model_config.proto).
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
# The ONNX Runtime backend's TensorRT accelerator takes these parameter keys and fails to
# load a model with any other (onnxruntime_backend, src/onnxruntime.cc: "unknown parameter").
ORT_TENSORRT_KEYS = frozenset({
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
    "trt_ep_context_file_path", "trt_ep_context_embed_mode",
})
# precision_mode values the backend accepts; the precision itself lives in the graph (FP16
# tensors, Q/DQ nodes), the flag lets ONNX Runtime's TensorRT EP build those kernels.
PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
LABELS_FILE = "labels.txt"
VERSION = "1"
# Triton release the README's commands name (server 2.51.0, the one the nvidia-pytriton
# wheel ships and the tests ran); any later one serves the ONNX model.
TRITON_RELEASE = "24.10"


@dataclass(frozen=True)
class TritonOptions:
    precision: str = "fp32"
    device: str = "cuda"  # cuda / jetson: KIND_GPU (+ TensorRT EP); cpu: KIND_CPU
    instances: int = 1  # model instances per GPU (or on the CPU)
    max_batch: int = 8  # for graphs and engines with a dynamic batch dimension
    queue_delay_us: int = 100  # how long the dynamic batcher waits to fill a batch
    workspace_mb: int = 1024  # TensorRT EP workspace

    def validate(self) -> None:
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.device, ("cpu", *NVIDIA_DEVICES), "device")  # Triton serves ONNX Runtime and TensorRT models
        for name, least in (("instances", 1), ("max_batch", 1), ("queue_delay_us", 0), ("workspace_mb", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")


def model_config_pb2():
    return require("tritonclient.grpc.model_config_pb2", "serve", "fornet-deploy package --target triton")


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself."""
    sizes = [b for b in (2, 4, 8, 16, 32, 64, 128) if b < max_batch]
    return sizes + [max_batch]


def _tensor_dims(tensor: Tensor, batched: bool) -> list[int]:
    dims = tensor.dims[1:] if batched else tensor.dims
    return [-1 if d is None else d for d in dims]


def build_config(name: str, io: GraphIO, *, platform: str, max_batch_size: int, options: TritonOptions,
                 classes: list[str], gpu: bool, accelerator: dict[str, str] | None = None):
    """The ``ModelConfig`` message of one model (fields checked by protobuf as they are set)."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    batched = max_batch_size > 0
    for kind, tensors in (("input", io.inputs), ("output", io.outputs)):
        for tensor in tensors:
            if tensor.dtype not in TRITON_TYPES:
                raise FornetError(f"{name}: tensor {tensor.name} has type {tensor.dtype}, which Triton does not serve")
            getattr(config, kind).add(name=tensor.name, data_type=TRITON_TYPES[tensor.dtype],
                                      dims=_tensor_dims(tensor, batched))
    if max_batch_size > 1:
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(max_batch_size))
        config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU,
                              count=options.instances)
    if accelerator:
        unknown = sorted(set(accelerator) - ORT_TENSORRT_KEYS)
        if unknown:  # a bug here: the backend would refuse to load the model
            raise FornetError(f"{name}: TensorRT accelerator keys {unknown} are not ONNX Runtime backend parameters")
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters.update(accelerator)
    # Clients read the class names from GET /v2/models/<name>/config; label_filename is not
    # used: Triton's classification extension ranks the elements of one output tensor, which
    # for C x H x W logits would rank pixels and classes together.
    config.parameters["classes"].string_value = ",".join(classes)
    return config


def write_config(path: Path, config, header: str) -> None:
    from google.protobuf import text_format

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text_format.MessageToString(config))


def read_config(path: Path):
    """Parse a ``config.pbtxt`` with Triton's schema; an unknown field or bad value is an error."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    try:
        return text_format.Parse(Path(path).read_text(), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise FornetError(f"{path} is not a valid Triton model config: {exc}") from None


def check_config(config, io: GraphIO, name: str) -> None:
    """The config's tensors are the graph's: names, data types, dims, and a batch dimension
    that is dynamic in the graph exactly when ``max_batch_size`` > 0."""
    pb = model_config_pb2()
    problems = []
    if config.name != name:
        problems.append(f"name {config.name!r} is not the folder name {name!r}")
    batched = config.max_batch_size > 0
    for kind, tensors in (("input", io.inputs), ("output", io.outputs)):
        entries = {t.name: t for t in getattr(config, kind)}
        if set(entries) != {t.name for t in tensors}:
            problems.append(f"{kind}s {sorted(entries)} are not the graph's {sorted(t.name for t in tensors)}")
            continue
        for tensor in tensors:
            entry = entries[tensor.name]
            if pb.DataType.Name(entry.data_type) != TRITON_TYPES.get(tensor.dtype):
                problems.append(f"{tensor.name}: {pb.DataType.Name(entry.data_type)} but the graph has {tensor.dtype}")
            if batched and not tensor.batch_dynamic:
                problems.append(f"{tensor.name}: max_batch_size {config.max_batch_size} but the graph's batch "
                                f"dimension is fixed at {tensor.dims[0]}")
            if list(entry.dims) != _tensor_dims(tensor, batched):
                problems.append(f"{tensor.name}: dims {list(entry.dims)} but the graph has {list(tensor.dims)}")
    if config.HasField("dynamic_batching") and config.max_batch_size < 2:
        problems.append("dynamic batching with max_batch_size < 2")
    if problems:
        raise FornetError(f"Triton config of {name} does not match its graph: {'; '.join(problems)}")


# --- the two models ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """One model of the repository, decided before anything is written."""

    name: str
    platform: str
    source: Path  # file copied to <name>/1/<model_file>
    model_file: str
    io: GraphIO  # what the config must describe
    max_batch_size: int
    accelerator: dict[str, str] | None
    gpu: bool
    note: str


def _batch_limit(io: GraphIO, max_batch: int) -> int:
    """``max_batch`` when every tensor's batch dimension is dynamic, else 0 (explicit batch dim)."""
    return max_batch if all(t.batch_dynamic for t in io.inputs + io.outputs) else 0


def ort_model(bundle: Bundle, options: TritonOptions) -> ModelPlan:
    fmt = onnx_graph(options.precision)
    source = bundle.path(fmt.artifact)  # checks its sha256
    io = graph_io(source)
    name = f"fornet_ort_{options.precision}"
    gpu = options.device != "cpu"
    accelerator = None
    if gpu:
        accelerator = {
            "precision_mode": PRECISION_MODES[options.precision],
            "max_workspace_size_bytes": str(options.workspace_mb << 20),
            # Without a cache every model load rebuilds the TensorRT engines (minutes).
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"/tmp/fornet_ort_trt_cache/{name}",
        }
    return ModelPlan(name, "onnxruntime_onnx", source, "model.onnx", io, _batch_limit(io, options.max_batch),
                     accelerator, gpu, f"{fmt.artifact} (ONNX Runtime, {options.precision})")


def trt_model(bundle: Bundle, options: TritonOptions) -> ModelPlan | None:
    """The plan model of the bundle's engine of this precision (picked by its metadata:
    a GPU engine, its optimum at the export shape first), or None when the bundle has none
    or the repository is for the CPU."""
    name = select_engine(bundle, options.precision) if options.device != "cpu" else None
    if name is None:
        return None
    engine = bundle.path(name)
    meta = read_engine_metadata(engine)
    profile = meta["profile"]
    if not meta.get("source_onnx"):
        raise FornetError(f"{name}: its metadata names no source ONNX graph; rebuild with `fornet-deploy build-trt`")
    source = load_onnx(bundle.path(meta["source_onnx"], verify=False))
    declared = graph_io(source)
    if profile["input"] != declared.image.name:
        raise FornetError(f"{name}: profile input {profile['input']!r} is not the graph's "
                          f"{declared.image.name!r}")
    # The engine fixes what its profile fixes: its tensors are the graph's at the profile
    # bounds. It batches when its batch dimension is dynamic and starts at 1 (Triton sends
    # any batch from 1 to max_batch_size); otherwise the config spells out the batch dim.
    dynamic = None in declared.image.dims
    io = graph_io_at(source, [profile["min"], profile["max"]]) if dynamic else declared
    max_batch_size = profile["max"][0] if io.image.batch_dynamic and profile["min"][0] == 1 else 0
    return ModelPlan(f"fornet_trt_{options.precision}", "tensorrt_plan", engine, "model.plan", io, max_batch_size,
                     None, True, f"{name} (TensorRT {meta['tensorrt_version']}, built on {meta['gpu_name']})")


# --- the repository ---------------------------------------------------------------------


def write_repository(bundle: Bundle, folder: Path, options: TritonOptions) -> dict:
    """Write the model repository into ``folder``; returns what it holds (for the marker)."""
    model_config_pb2()  # the extra is needed before anything is written
    classes = list(manifest_label_set(bundle.manifest, f"bundle {bundle.root}").classes)
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    plans = [p for p in (ort_model(bundle, options), trt_model(bundle, options)) if p is not None]
    notes = []
    if len(plans) == 1:
        notes.append(f"no tensorrt_plan model: the bundle has no {options.precision} TensorRT engine"
                     if options.device != "cpu" else "no tensorrt_plan model: --device cpu")
    engines = {}
    for plan in plans:
        model_dir = folder / plan.name
        (model_dir / VERSION).mkdir(parents=True)
        shutil.copyfile(plan.source, model_dir / VERSION / plan.model_file)
        if plan.platform == "tensorrt_plan":
            shutil.copyfile(engine_metadata_path(plan.source), model_dir / "engine.json")
            engines[plan.name] = read_engine_metadata(plan.source)
        (model_dir / LABELS_FILE).write_text("".join(f"{c}\n" for c in classes))
        config = build_config(plan.name, plan.io, platform=plan.platform, max_batch_size=plan.max_batch_size,
                              options=options, classes=classes, gpu=plan.gpu, accelerator=plan.accelerator)
        write_config(model_dir / "config.pbtxt", config,
                     f"FoR-Net, {plan.note}; written by fornet-deploy package from {bundle.root.name}/manifest.json")
        # Read back what was written and hold it against the graph.
        check_config(read_config(model_dir / "config.pbtxt"), plan.io, plan.name)
    (folder / "README.md").write_text(readme(plans, engines, pre, classes))
    return {"bundle": str(bundle.root.resolve()), "precision": options.precision, "device": options.device,
            "models": {p.name: {"platform": p.platform, "source": p.note, "max_batch_size": p.max_batch_size}
                       for p in plans}, "notes": notes}


# --- README -----------------------------------------------------------------------------


def client_snippet(model: str, io: GraphIO, pre: Preprocessing) -> str:
    """Python that sends one image to ``model`` preprocessed exactly as the bundle says
    (the same float32 operations as ``data.transforms.normalize``) and reads the labels."""
    to_network = "" if pre.channel_order.upper() == "RGB" else "image = image[..., ::-1]  # the network takes BGR\n"
    resize = ""
    if pre.resize == "fixed":
        resize = (f"image = cv2.resize(image, ({pre.width}, {pre.height}), interpolation=cv2.INTER_LINEAR)"
                  "  # labels come back at this size\n")
    if io.output(LABELS) is not None:
        read = f'result = client.infer(MODEL, [request], outputs=[httpclient.InferRequestedOutput("{LABELS}")])\n' \
               f'labels = result.as_numpy("{LABELS}")[0]  # H x W train ids\n'
    else:
        read = f'result = client.infer(MODEL, [request], outputs=[httpclient.InferRequestedOutput("{LOGITS}")])\n' \
               f'labels = result.as_numpy("{LOGITS}")[0].argmax(axis=0)  # H x W train ids\n'
    return (
        "import cv2\n"
        "import numpy as np\n"
        "import tritonclient.http as httpclient\n\n"
        f'URL, MODEL, IMAGE = "localhost:8000", "{model}", "frame.png"\n'
        "# The bundle's preprocessing (manifest.json), in the network's channel order:\n"
        f"MEAN = np.array({list(pre.mean)}, np.float32)\n"
        f"STD = np.array({list(pre.std)}, np.float32)\n"
        f"SCALE = np.float32({pre.scale!r})\n\n"
        "image = cv2.cvtColor(cv2.imread(IMAGE, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)\n"
        f"{resize}{to_network}"
        "x = (image.astype(np.float32) * SCALE - MEAN) / STD\n"
        "batch = np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # 1 x 3 x H x W float32 (NCHW)\n\n"
        "client = httpclient.InferenceServerClient(URL)\n"
        f'request = httpclient.InferInput("{io.image.name}", list(batch.shape), "FP32")\n'
        "request.set_data_from_numpy(batch)\n"
        f"{read}"
        'classes = client.get_model_config(MODEL)["parameters"]["classes"]["string_value"].split(",")\n'
        "print({classes[c]: int((labels == c).sum()) for c in np.unique(labels)})\n"
    )


def readme(plans: list[ModelPlan], engines: dict[str, dict], pre: Preprocessing, classes: list[str]) -> str:
    first = plans[0]
    def batching(plan: ModelPlan) -> str:
        if plan.max_batch_size > 1:
            return f"dynamic batching, preferred {preferred_batch_sizes(plan.max_batch_size)}"
        return "no batching: the graph fixes the batch"

    rows = "\n".join(f"| `{p.name}` | `{p.platform}` | {p.note} | {p.max_batch_size} | {batching(p)} |"
                     for p in plans)
    engine_lines = "".join(
        f"- `{name}` was built with **TensorRT {meta['tensorrt_version']}** on {meta['gpu_name']} (compute capability "
        f"{meta['compute_capability']}): serve it only from a container whose TensorRT is exactly "
        f"{meta['tensorrt_version']} (NVIDIA's Frameworks Support Matrix lists each release's TensorRT), on the same GPU "
        "model; otherwise Triton refuses to load it. Rebuild with `fornet-deploy build-trt` inside that container if "
        "they differ.\n" for name, meta in engines.items())
    gpu = first.gpu
    docker = ("docker run --rm --gpus all" if gpu else "docker run --rm") + \
        f" -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD\":/models nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3 \\\n" \
        "    tritonserver --model-repository=/models"
    accelerator = (
        "The ONNX Runtime model runs through ONNX Runtime's TensorRT execution provider (engines cached in "
        "`/tmp/fornet_ort_trt_cache/` inside the container: mount a volume there to keep them across restarts); "
        "delete its `optimization` block to run on plain CUDA." if gpu else "")
    return f"""# FoR-Net on Triton Inference Server

Written by `fornet-deploy package --target triton`. Models:

| model | platform | from | max_batch_size | batching |
|---|---|---|---|---|
{rows}

Each model folder holds `config.pbtxt`, the version folder `1/` with the model file and
`labels.txt` (the {len(classes)} class names, one per line, line *i* = train id *i*); the
same names are in the config's `parameters["classes"]`, which clients read from
`GET /v2/models/<model>/config`. `config.pbtxt` was parsed with Triton's own schema
(`tritonclient`'s `model_config_pb2`) and its tensors compared with the ONNX graph when
this folder was written. Instances: {'`KIND_GPU`' if gpu else '`KIND_CPU`'}.

## Serve

```bash
{docker}
curl -s localhost:8000/v2/health/ready && echo ready
```

The command names release `{TRITON_RELEASE}` (Triton server 2.51). {accelerator}
{engine_lines}
## Query (Python, `pip install 'tritonclient[http]' opencv-python-headless`)

Pre-processing is spelled out here rather than served: the model is the verified artefact
itself, for the ONNX Runtime and the TensorRT model alike, and no Python-backend process
sits on the serving path. The client sends the normalized NCHW float32 tensor; this is
exactly the bundle's preprocessing (mean {list(pre.mean)}, std {list(pre.std)}, scale
{pre.scale!r}, channel order {pre.channel_order}, resize {pre.resize!r}):

```python
{client_snippet(first.name, first.io, pre)}```

The cost of this choice: float32 on the wire is four times the bytes of the uint8 image.
"""
