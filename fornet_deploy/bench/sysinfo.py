"""What machine a benchmark ran on, as one JSON-ready dict.

A latency number means little without the CPU, the GPU and its driver, the library
versions and the thread settings behind it, so every benchmark result carries
:func:`describe_machine`. Nothing here may fail a benchmark: a file that cannot be read,
a tool that is missing (``nvidia-smi``) or a package that is not installed (``tensorrt``)
leaves its entry ``None`` and, where it is worth knowing why, a line in ``notes``.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

from ..errors import FornetError, HardwareError
from ..runtimes.ort_runner import import_onnxruntime
from .jetson import MODEL_PATH, ToolRunner, collect_jetson_info, detect_board

# Environment variables that change CPU timings: OpenMP / BLAS thread pools, and
# OPENBLAS_CORETYPE, which Jetson users set to pick OpenBLAS kernels (numpy on aarch64).
TIMING_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MODULE_LOADING",
)

# (key in the report, module to import). Versions come from the module itself rather than
# the distribution metadata: onnxruntime-gpu, opencv-python-headless and JetPack's apt
# builds of TensorRT all install under other distribution names (or none).
PACKAGES = (
    ("torch", "torch"),
    ("onnxruntime", "onnxruntime"),
    ("onnx", "onnx"),
    ("numpy", "numpy"),
    ("opencv", "cv2"),
    ("tensorrt", "tensorrt"),
    ("cuda-python", "cuda.bindings"),
    ("openvino", "openvino"),
)

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]


def describe_machine(jetson_root: Path = Path("/"), run: ToolRunner = subprocess.run) -> dict:
    """CPU, memory, OS, Python, package versions, GPUs, Jetson board and timing env vars.

    ``jetson_root`` and ``run`` are where board files are read and how tools are run, so
    tests can point them at fixtures.
    """
    notes: list[str] = []
    return {
        "cpu": cpu_info(),
        "memory_total_mb": memory_total_mb(),
        "os": os_info(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "packages": package_versions(),
        "onnxruntime_providers": _onnxruntime_providers(),
        "torch_threads": _torch_threads(),
        # Other work on the machine skews timings (thread pools that spin-wait suffer most);
        # the 1/5/15-minute load average at the time of the run lets a reader tell.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": gpu_info(run, notes),
        "jetson": _jetson_info(jetson_root, run),
        "env": {name: os.environ.get(name) for name in TIMING_ENV_VARS},
        "notes": notes,
    }


# --------------------------------------------------------------------------------------
# CPU, memory, OS
# --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def parse_cpuinfo_model(text: str) -> str | None:
    """The CPU name from ``/proc/cpuinfo``: ``model name`` (x86), else ``Model``/``Hardware``
    (some aarch64 kernels print no ``model name``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu model"):
        if key in fields:
            return fields[key]
    return None


def cpu_info() -> dict:
    cpuinfo = _read_text(Path("/proc/cpuinfo"))
    model = (parse_cpuinfo_model(cpuinfo) if cpuinfo else None) or platform.processor() or None
    info = {
        "model": model,
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        # The cores this process may run on (taskset, cgroups, containers): what thread
        # pools actually get, often fewer than the machine has.
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "frequency_governor": _strip(_read_text(Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"))),
    }
    if platform.machine() in ("aarch64", "arm64"):
        # ARM boards name themselves in the device tree, not in /proc/cpuinfo.
        model_file = Path("/") / MODEL_PATH
        try:
            info["board_model"] = model_file.read_bytes().decode("utf-8", "replace").strip("\0").strip() or None
        except OSError:
            info["board_model"] = None
    return info


def _strip(text: str | None) -> str | None:
    if text is None:
        return None
    return text.strip() or None


def parse_meminfo_total_mb(text: str) -> float | None:
    """``MemTotal:  16318480 kB`` -> MiB."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) / 1024
    return None


def memory_total_mb() -> float | None:
    meminfo = _read_text(Path("/proc/meminfo"))
    if meminfo and (total := parse_meminfo_total_mb(meminfo)) is not None:
        return total
    try:  # other POSIX systems
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (AttributeError, ValueError, OSError):
        return None


def os_info() -> dict:
    pretty = None
    if text := _read_text(Path("/etc/os-release")):
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.partition("=")[2].strip().strip('"')
    return {"system": platform.system(), "release": platform.release(), "platform": platform.platform(),
            "distribution": pretty}


# --------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------


def _module_version(module: str) -> str | None:
    try:
        imported = importlib.import_module(module)
    except Exception:  # absent, or present but broken (a CUDA build without its libraries)
        return None
    return str(getattr(imported, "__version__", None) or getattr(imported, "VERSION", "") or "unknown")


def package_versions() -> dict[str, str | None]:
    return {key: _module_version(module) for key, module in PACKAGES}


def _onnxruntime_providers() -> list[str] | None:
    try:
        return list(import_onnxruntime("describing the machine").get_available_providers())
    except FornetError:  # not installed, or both wheels (which bench itself refuses)
        return None


def _torch_threads() -> int | None:
    try:
        import torch
    except Exception:
        return None
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of ``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits``.

    Fields a GPU does not report (``[N/A]``, Jetson's integrated GPU) become ``None``.
    """
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # The name comes first and may itself hold a comma; the last two fields never do.
        name, driver, memory = ([p.strip() for p in line.rsplit(",", 2)] + [None, None])[:3]
        gpus.append({
            "name": _available(name),
            "driver_version": _available(driver),
            "memory_total_mb": float(memory) if memory and memory.replace(".", "", 1).isdigit() else None,
        })
    return gpus


def _available(value: str | None) -> str | None:
    return None if value in (None, "", "[N/A]", "N/A", "[Not Supported]") else value


def _nvidia_smi(run: ToolRunner, notes: list[str]) -> list[dict] | None:
    try:
        done = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=15, check=False)
    except FileNotFoundError:
        return None  # no NVIDIA driver: the usual case on a CPU machine, not worth a note
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"nvidia-smi could not run: {exc}")
        return None
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip().splitlines()
        notes.append(f"nvidia-smi exited with {done.returncode}" + (f": {said[0]}" if said else ""))
        return None
    return parse_nvidia_smi(done.stdout)


def _torch_gpus() -> tuple[list[dict], dict]:
    try:
        import torch
    except Exception:
        return [], {}
    if not torch.cuda.is_available():
        return [], {}
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                     "memory_total_mb": props.total_memory / 2**20})
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return gpus, {"cuda": torch.version.cuda, "cudnn": cudnn}


def gpu_info(run: ToolRunner = subprocess.run, notes: list[str] | None = None) -> dict:
    """GPUs seen by PyTorch (name, compute capability, memory, CUDA/cuDNN it was built
    with) merged with the driver version from ``nvidia-smi``; empty list when there is none."""
    notes = notes if notes is not None else []
    devices, versions = _torch_gpus()
    smi = _nvidia_smi(run, notes)
    if smi:
        if devices and len(devices) == len(smi):
            # Same enumeration order unless CUDA_VISIBLE_DEVICES reorders; the name check guards.
            for device, row in zip(devices, smi):
                if row["name"] == device["name"]:
                    device["driver_version"] = row["driver_version"]
        elif not devices:
            devices = smi
    return {"devices": devices, "driver_version": smi[0]["driver_version"] if smi else None, **versions}


# --------------------------------------------------------------------------------------
# Jetson
# --------------------------------------------------------------------------------------


def _jetson_info(root: Path, run: ToolRunner) -> dict | None:
    try:
        detect_board(root)
    except HardwareError:
        return None
    return collect_jetson_info(run=run, root=root)
