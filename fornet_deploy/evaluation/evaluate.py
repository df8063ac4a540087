"""``fornet-deploy eval``: any runner on a labelled dataset -> segmentation metrics.

Written once against :class:`~fornet_deploy.runtimes.base.Runner`, so PyTorch, ONNX
Runtime (FP32/FP16/INT8) and TensorRT are measured by the same code -- and training's
validation too (:func:`evaluate_runner` on a PyTorch runner over the model being trained).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from ..bundle import Bundle
from ..contract import TOPK_MASK
from ..data.formats import open_dataset
from ..data.labels import LabelSet, check_compatible, manifest_label_set
from ..data.transforms import Preprocessing
from ..errors import OptionError
from ..io import atomic_write_json
from ..model.topk import selection_counts, summarize_selection, topk_count
from ..runtimes.base import Runner, network_size
from ..runtimes.registry import load_runner
from .examples import Example, dataset_examples
from .metrics import SegmentationMetrics
from .postprocess import label_outputs, predicted_labels, upsampled_mask


def evaluate_runner(runner: Runner, examples: Iterable[Example], labels: LabelSet, boundary_width: int = 3,
                    progress: Callable[[int, int], None] | None = None, topk_ratio: float | None = None) -> dict:
    """Metrics (mIoU, per-class IoU, boundary IoU, thin IoU, Top-K coverage) of a runner
    on labelled examples, named and grouped by ``labels``; ``progress(done, total)`` after
    each image. Predictions are scored at each label map's own size.

    With a Top-K mask, ``topk_selection`` lists per image the selected cells and, for a
    fixed ``topk_ratio``, k = ceil(ratio * cells) and the cells beyond it.
    """
    metrics = SegmentationMetrics.for_labels(labels, boundary_width)
    total = len(examples) if hasattr(examples, "__len__") else 0
    wanted = label_outputs(runner.output_names(), TOPK_MASK)
    selection = []
    for i, ex in enumerate(examples):
        outputs = runner(ex.batch, outputs=wanted)
        hw = ex.labels.shape
        metrics.update(predicted_labels(outputs, hw), ex.labels, topk_mask=upsampled_mask(outputs, hw))
        if TOPK_MASK in outputs:
            cells = outputs[TOPK_MASK][0].size
            k = topk_count(topk_ratio, cells) if topk_ratio else 0
            selection.append((ex.name, selection_counts(outputs[TOPK_MASK], k)[0]))
        if progress:
            progress(i + 1, total)
    result = metrics.result()
    if selection:
        per_image = [{"name": name, "selected": c.selected, **({"k": c.k, "extra": c.extra} if topk_ratio else {})}
                     for name, c in selection]
        summary = summarize_selection([c for _, c in selection]) if topk_ratio else {"images": len(selection)}
        result["topk_selection"] = {"ratio": topk_ratio, **summary, "per_image": per_image}
    return result


def fixed_topk_ratio(topk: dict) -> float | None:
    """The bundle's fixed Top-K ratio, None for adaptive K or no selector (manifest ``topk``)."""
    return float(topk["ratio"]) if topk.get("focus") == "topk" else None


def check_boundary_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 64:
        raise OptionError(f"--boundary-width must be an integer from 1 to 64, got {width!r}")


def evaluate_bundle(bundle_dir: str | Path, data: str | Path, runtime: str = "ort", precision: str | None = None,
                    device: str = "cpu", split: str = "val", limit: int | None = None, boundary_width: int = 3,
                    json_out: str | Path | None = None, progress=None, ort_provider: str | None = None, *,
                    artifact: str | None = None) -> dict:
    """The library function behind ``fornet-deploy eval``; ``ort_provider`` (cpu, cuda,
    tensorrt): ONNX Runtime's execution provider (default: the device's); ``artifact``: a
    specific file of the bundle (``precision``: default fp32, or the artefact's own)."""
    check_boundary_width(boundary_width)
    bundle = Bundle.open(bundle_dir)
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
    dataset = open_dataset(data)
    check_compatible(labels, dataset.labels, f"dataset {data}")
    with load_runner(bundle, runtime, precision, device, ort_device=ort_provider, artifact=artifact) as runner:
        sized = partial(network_size, runner.input_spec(), pre)
        examples = dataset_examples(dataset, split, pre, limit, network_size=sized)
        metrics = evaluate_runner(runner, examples, labels, boundary_width, progress,
                                  fixed_topk_ratio(bundle.section("topk")))
        info = runner.info().to_dict()
    result = {**metrics, "runner": info, "split": split, "data": str(data), "format": dataset.format.name,
              "labels": labels.name, "resized": examples.resize_record()}
    if json_out:
        atomic_write_json(json_out, result)
    return result
