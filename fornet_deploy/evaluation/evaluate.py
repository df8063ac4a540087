"""``fornet-deploy eval``: any runner on a labelled dataset -> segmentation metrics.

Written once against :class:`~fornet_deploy.runtimes.base.Runner`, so PyTorch, ONNX
Runtime (FP32/FP16/INT8) and TensorRT are measured by the same code -- and training's
validation too (:func:`evaluate_runner` on a PyTorch runner over the model being trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..bundle import Bundle
from ..contract import TOPK_MASK
from ..data.transforms import Preprocessing
from ..errors import OptionError
from ..io import atomic_write_json
from ..runtimes.base import Runner
from ..runtimes.registry import load_runner
from .examples import Example, dataset_examples
from .metrics import SegmentationMetrics
from .postprocess import label_outputs, predicted_labels, upsampled_mask


def evaluate_runner(runner: Runner, examples: Iterable[Example], num_classes: int = 19, boundary_width: int = 3,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics (mIoU, per-class IoU, boundary IoU, thin IoU, Top-K coverage) of a runner
    on labelled examples; ``progress(done, total)`` after each image."""
    metrics = SegmentationMetrics(num_classes=num_classes, boundary_width=boundary_width)
    total = len(examples) if hasattr(examples, "__len__") else 0
    wanted = label_outputs(runner.output_names(), TOPK_MASK)
    for i, ex in enumerate(examples):
        outputs = runner(ex.batch, outputs=wanted)
        hw = ex.labels.shape
        metrics.update(predicted_labels(outputs, hw), ex.labels, topk_mask=upsampled_mask(outputs, hw))
        if progress:
            progress(i + 1, total)
    return metrics.result()


def check_boundary_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 64:
        raise OptionError(f"--boundary-width must be an integer from 1 to 64, got {width!r}")


def evaluate_bundle(bundle_dir: str | Path, data: str | Path, runtime: str = "ort", precision: str = "fp32",
                    device: str = "cpu", split: str = "val", limit: int | None = None, boundary_width: int = 3,
                    json_out: str | Path | None = None, progress=None, ort_provider: str | None = None) -> dict:
    """The library function behind ``fornet-deploy eval``; ``ort_provider`` (cpu, cuda,
    tensorrt): ONNX Runtime's execution provider (default: the device's)."""
    check_boundary_width(boundary_width)
    bundle = Bundle.open(bundle_dir)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    examples = dataset_examples(data, split, pre, limit)
    with load_runner(bundle, runtime, precision, device, ort_device=ort_provider) as runner:
        metrics = evaluate_runner(runner, examples, len(bundle.section("classes")), boundary_width, progress)
        info = runner.info().to_dict()
    result = {**metrics, "runner": info, "split": split, "data": str(data)}
    if json_out:
        atomic_write_json(json_out, result)
    return result
