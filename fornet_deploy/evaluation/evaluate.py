"""``fornet-deploy eval``: any runner on a labelled dataset -> segmentation metrics.

Written once against :class:`~fornet_deploy.runtimes.base.Runner`, so PyTorch, ONNX
Runtime (FP32/FP16/INT8) and TensorRT are measured by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..bundle import Bundle, atomic_write_json
from ..data.cityscapes import find_samples, load_sample
from ..data.transforms import Preprocessing, preprocess
from ..runtimes.base import LABELS, LOGITS, TOPK_MASK, Runner
from .metrics import SegmentationMetrics


@dataclass
class Example:
    name: str
    image: np.ndarray  # RGB uint8, original size
    labels: np.ndarray | None  # train ids, original size
    batch: np.ndarray  # 1x3xHxW float32, preprocessed


def iterate_examples(data: str | Path, split: str = "val", preprocessing: Preprocessing = Preprocessing(),
                     limit: int | None = None, require_labels: bool = True) -> Iterator[Example]:
    samples = find_samples(data, split, require_labels=require_labels)
    for sample in samples[: limit if limit else None]:
        image, labels = load_sample(sample)
        yield Example(sample.name, image, labels, preprocess(image, preprocessing))


def predicted_labels(outputs: dict[str, np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """Train-id prediction (H x W) of one image at the original size."""
    labels = outputs[LABELS][0] if LABELS in outputs else outputs[LOGITS][0].argmax(0)
    labels = labels.astype(np.uint8)
    if labels.shape != tuple(hw):
        labels = cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return labels


def upsampled_mask(outputs: dict[str, np.ndarray], hw: tuple[int, int]) -> np.ndarray | None:
    """The 1/8-scale Top-K mask of one image, nearest-upsampled to H x W (bool)."""
    if TOPK_MASK not in outputs:
        return None
    mask = (outputs[TOPK_MASK][0, 0] > 0.5).astype(np.uint8)
    return cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def evaluate_runner(runner: Runner, data: str | Path, split: str = "val", preprocessing: Preprocessing = Preprocessing(),
                    limit: int | None = None, boundary_width: int = 3, num_classes: int = 19,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics (mIoU, per-class IoU, boundary IoU, thin IoU, Top-K coverage) of a runner."""
    metrics = SegmentationMetrics(num_classes=num_classes, boundary_width=boundary_width)
    total = len(find_samples(data, split))
    total = min(total, limit) if limit else total
    for i, ex in enumerate(iterate_examples(data, split, preprocessing, limit)):
        outputs = runner(ex.batch)
        hw = ex.labels.shape
        metrics.update(predicted_labels(outputs, hw), ex.labels, topk_mask=upsampled_mask(outputs, hw))
        if progress:
            progress(i + 1, total)
    return {**metrics.result(), "runner": runner.info().to_dict(), "split": split, "data": str(data)}


def evaluate_bundle(bundle_dir: str | Path, data: str | Path, runtime: str = "ort", precision: str = "fp32",
                    device: str = "cpu", split: str = "val", limit: int | None = None, boundary_width: int = 3,
                    json_out: str | Path | None = None, progress=None) -> dict:
    """The library function behind ``fornet-deploy eval``."""
    from ..runtimes.formats import make_runner

    bundle = Bundle.open(bundle_dir)
    pre = Preprocessing.from_dict(bundle.manifest["preprocessing"])
    with make_runner(bundle, runtime, precision, device) as runner:
        result = evaluate_runner(runner, data, split, pre, limit, boundary_width, len(bundle.manifest["classes"]), progress)
    if json_out:
        atomic_write_json(json_out, result)
    return result
