"""``calibrate --max-drop POINTS``: an accuracy budget for the INT8 graph.

NVIDIA's and ONNX Runtime's quantization tools take a list of layers to keep in float; they
do not pick them. Here the budget picks them: the most sensitive convolutions of the target's
INT8 graph stay float (FP16 in the TensorRT graph, FP32 in the CPU graph) until the graph's
mIoU drop against ``model.onnx`` (FP32) on held-out labelled images is within the budget.

Held-out images (:func:`heldout_set`)
    The ``val`` split of ``--max-drop-data DIR`` (default: the calibration ``--data``, when it
    is a labelled dataset), less every image file that is also a calibration image (compared by
    resolved path: calibration reads the ``train`` split, so the two are disjoint unless a
    layout's splits share files, or the calibration data is the held-out folder itself), then
    ``--max-drop-images`` of them chosen as calibration chooses (:func:`.calibset.select_samples`:
    class-balanced cover, then seeded random, with calibrate's ``--seed``), so that rare classes
    take part in the mIoU. Each is fed at the calibration network size, and scored at its label
    map's own size by the evaluation loop (:func:`~..evaluation.evaluate.evaluate_runner`).
The drop
    ``100 * (mIoU(model.onnx) - mIoU(INT8 graph))`` on those images, in mIoU points
    (percentage points, 0..100); the budget is met when the drop is at most ``max_drop``.
Steps (:func:`search`; every graph is built from the ranges already collected or cached)
    1. The fully quantized graph. Within the budget: it is written as is (``drop_after`` =
       ``drop_before``, nothing measured beyond it).
    2. The floor: every candidate convolution left float (candidates: the convolutions the
       target's graph quantizes; the selector / Top-K are float already). Over the budget:
       refused (below).
    3. The sensitivity of each candidate (:func:`measure_sensitivity`).
    4. The k most sensitive left float, for the smallest k that meets the budget, by doubling
       then bisection over k (:func:`smallest_passing_prefix`): at most about 2 log2(candidates)
       graphs, each scored by its real mIoU drop on every held-out image.
A budget that cannot be met
    When the drop with every candidate float is still over the budget, nothing is written
    (the bundle keeps what it had) and ``calibrate`` exits 1 with one line giving both drops;
    the measured ranges stay cached, so a second try with a larger budget collects nothing.
    A graph that misses the budget it was asked for is not an artefact to deploy, and one with
    every convolution float is no INT8 graph at all.
Speed cost
    ``latency_ratio``: ONNX Runtime CPU latency of the written graph over the fully quantized
    one, both run in this process on one held-out image (:func:`measure_latency_ratio`); 1.0
    when nothing was left out. For the TensorRT graph it is only a hint: TensorRT fuses and
    times differently.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from ..contract import LOGITS, MAX_DROP_IMAGES
from ..data.formats import Dataset, open_dataset
from ..data.labels import LabelSet, check_compatible
from ..errors import FornetError, OptionError
from ..evaluation.evaluate import evaluate_runner
from ..evaluation.examples import Examples, sample_examples
from ..runtimes.ort_runner import OrtRunner
from .calibset import CalibrationSet, select_samples

HELDOUT_SPLIT = "val"
# Sensitivity only ranks the candidates, so it runs on the first few held-out images; the
# verdict (the drop of each graph of the search) is always measured on all of them.
SENSITIVITY_IMAGES = 8
# The full-resolution logits are a bilinear x4 upsampling of 1/4-scale ones: every 4th pixel
# per axis keeps about one value per 1/4-scale cell, in 1/16 of the memory the FP32 reference
# holds across the sensitivity graphs.
LOGIT_STRIDE = 4
LATENCY_ROUNDS, LATENCY_BLOCK = 4, 5  # timed runs per graph: rounds x block

Progress = Callable[..., None]


@dataclass(frozen=True)
class AccuracyBudget:
    """``calibrate --max-drop``: the mIoU points (0..100) the INT8 graph may lose against
    ``model.onnx``, measured on ``images`` held-out images of ``data`` (None: calibrate's data)."""

    max_drop: float
    data: str | Path | None = None
    images: int = MAX_DROP_IMAGES

    def __post_init__(self):
        value = self.max_drop
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
            raise OptionError(f"--max-drop must be a number of mIoU points from 0 to 100, got {value!r}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise OptionError(f"--max-drop-images must be an integer >= 1, got {self.images!r}")


# --- the maths: small pure functions ---------------------------------------------------------------


def miou_drop(reference: float, candidate: float) -> float:
    """The drop from ``reference`` to ``candidate`` (mIoU fractions in [0, 1]) in mIoU points."""
    return 100.0 * (reference - candidate)


def noise_to_signal(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Sum of squared differences over sum of squared reference values, over all arrays (the
    relative error power of the logits); the plain squared error where the reference is all zero.

    Why this proxy, with only the measured convolution quantized: each number is then that
    convolution's own rounding error, not entangled with the errors of the other forty (leaving
    one out of the fully quantized graph instead measures a small difference between two noisy
    graphs); and a logit error is continuous, where a single quantized convolution rarely flips
    enough labels on a few images to rank forty layers by mIoU (most would tie at zero). The
    labels flip where this error exceeds the logit margin, which is what the verdict measures.
    """
    error = signal = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        ref64 = ref.astype(np.float64)
        error += float(np.sum((cand.astype(np.float64) - ref64) ** 2))
        signal += float(np.sum(ref64 ** 2))
    return error / signal if signal > 0 else error


def sensitivity_order(sensitivity: Mapping[str, float]) -> list[str]:
    """Layer names, most sensitive first; equal values keep the mapping's (graph) order."""
    position = {name: index for index, name in enumerate(sensitivity)}
    return sorted(sensitivity, key=lambda name: (-sensitivity[name], position[name]))


def smallest_passing_prefix(passes: Callable[[int], bool], count: int) -> int:
    """The number k (1..count) of most sensitive layers to leave float, given that the caller
    knows ``passes(0)`` is False (the fully quantized graph misses the budget) and
    ``passes(count)`` is True (the floor meets it): doubling (1, 2, 4, ...) to the first k that
    passes, then bisection below it. Calls ``passes`` at most ``2 * ceil(log2(count))`` times,
    never twice for one k. The smallest passing k when ``passes`` is monotone (more layers
    float never scores worse); in any case a k that passes with k - 1 failing."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    low, high = 0, count  # passes(low) is False, passes(high) is True
    step = 1
    while step < high:
        if passes(step):
            high = step
            break
        low, step = step, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high


def latency_ratio(budgeted_s: Sequence[float], full_s: Sequence[float]) -> float:
    """Median latency of the budgeted graph over the fully quantized graph's."""
    return statistics.median(budgeted_s) / statistics.median(full_s)


# --- the held-out images --------------------------------------------------------------------------


def open_heldout(budget: AccuracyBudget, calibration_data: str | Path) -> Dataset:
    """The labelled dataset the budget scores on; one line, before anything is written, when
    there is none (a video or unlabelled images, no ``val`` split, a missing label)."""
    option = "--max-drop-data" if budget.data is not None else "--data"
    path = Path(budget.data if budget.data is not None else calibration_data)
    advice = "give labelled held-out images with --max-drop-data DIR"
    if path.is_file():
        raise FornetError(f"--max-drop needs labelled images: {option} {path} is a file, not a labelled dataset; "
                          f"{advice}")
    dataset = open_dataset(path)
    if dataset.labels is None:
        raise FornetError(f"--max-drop needs labelled images: {option} {path} is a folder of images without "
                          f"labels; {advice}")
    try:
        dataset.samples(HELDOUT_SPLIT, require_labels=True)
    except FornetError as exc:
        raise FornetError(f"--max-drop scores the labelled {HELDOUT_SPLIT} split of {option} {path}: {exc}") from None
    return dataset


@dataclass
class HeldOut:
    examples: Examples  # every held-out image: the drops
    probe: Examples  # the first SENSITIVITY_IMAGES of them: the sensitivities
    labels: LabelSet
    record: dict  # what the manifest says about them


def heldout_set(dataset: Dataset, model_labels: LabelSet, budget: AccuracyBudget, calib: CalibrationSet,
                seed: int) -> HeldOut:
    """The held-out images of ``dataset`` (module docstring), none of them a calibration image."""
    check_compatible(model_labels, dataset.labels, f"--max-drop data {dataset.root}")
    calibration_files = {sample.image.resolve() for sample in calib.samples}
    samples = [s for s in dataset.samples(HELDOUT_SPLIT) if s.image.resolve() not in calibration_files]
    if not samples:
        raise FornetError(f"--max-drop has no held-out image: every {HELDOUT_SPLIT} image of {dataset.root} is a "
                          "calibration image; give other labelled images with --max-drop-data DIR")
    chosen, balanced = select_samples(dataset, samples, budget.images, seed)
    size = tuple(calib.size)

    def sized(image_hw: tuple[int, int]) -> tuple[int, int]:
        return size  # as calibration feeds its images: the graph's input size

    what = f"{len(chosen)} held-out {HELDOUT_SPLIT} images"
    record = {"path": str(dataset.root), "format": dataset.format.name, "split": HELDOUT_SPLIT, "seed": seed,
              "selection": "class-balanced, then seeded random" if balanced else "seeded random",
              "excluded_calibration_images": len(dataset.samples(HELDOUT_SPLIT)) - len(samples),
              "names": [s.name for s in chosen]}
    return HeldOut(sample_examples(dataset, chosen, calib.preprocessing, sized, what),
                   sample_examples(dataset, chosen[:SENSITIVITY_IMAGES], calib.preprocessing, sized),
                   dataset.labels, record)


# --- measuring graphs -----------------------------------------------------------------------------


class TrialGraphs(Protocol):
    """What the budget needs of a calibration target (:class:`.qdq.GraphMaker`)."""

    @property
    def candidates(self) -> tuple[str, ...]:
        """The convolutions the target's graph quantizes, in graph order."""

    def write(self, path: Path, excluded: Sequence[str] = ()) -> object:
        """The target's graph, as ``calibrate`` writes it, with ``excluded`` convolutions float."""

    def write_single(self, path: Path, conv: str) -> None:
        """A graph in which only ``conv`` is quantized, with full-resolution ``logits``."""


def _runner(path: Path, precision: str = "int8") -> OrtRunner:
    return OrtRunner(path, device="cpu", precision=precision)


def graph_miou(path: Path, heldout: HeldOut, precision: str = "int8") -> float:
    """The mIoU (fraction) of the graph at ``path`` on the held-out images, on ONNX Runtime's CPU."""
    with _runner(path, precision) as runner:
        miou = evaluate_runner(runner, heldout.examples, heldout.labels)["miou"]
    if miou is None:
        raise FornetError(f"the held-out images of {heldout.record['path']} hold no labelled pixel: no mIoU")
    return miou


def sampled_logits(path: Path, examples: Examples, precision: str = "int8") -> list[np.ndarray]:
    """The graph's full-resolution logits on ``examples``, every :data:`LOGIT_STRIDE`-th pixel."""
    with _runner(path, precision) as runner:
        return [runner(ex.batch, outputs=[LOGITS])[LOGITS][..., ::LOGIT_STRIDE, ::LOGIT_STRIDE].astype(np.float32)
                for ex in examples]


def measure_sensitivity(graphs: TrialGraphs, reference: list[np.ndarray], probe: Examples, scratch: Path,
                        tick: Callable[[str], None]) -> dict[str, float]:
    """``{conv: noise_to_signal}`` with only that convolution quantized, in graph order
    (:func:`noise_to_signal` says why this measure)."""
    sensitivity = {}
    for conv in graphs.candidates:
        tick(f"sensitivity of {conv}")
        path = scratch / "single.onnx"
        graphs.write_single(path, conv)
        sensitivity[conv] = noise_to_signal(reference, sampled_logits(path, probe))
    return sensitivity


@dataclass
class Verdict:
    """What :func:`search` found."""

    met: bool
    excluded: list[str]  # convolutions left float (not met: every candidate)
    candidates: int
    fp32_miou: float
    drop_before: float
    drop_after: float  # of the graph with ``excluded`` float
    full_graph: Path  # the fully quantized graph (the latency reference)
    sensitivity: dict[str, float] = field(default_factory=dict)  # most sensitive first; {} when not needed
    trials: list[dict] = field(default_factory=list)  # every graph scored: convolutions float, drop

    def record(self, budget: AccuracyBudget, heldout: HeldOut, ratio: float) -> dict:
        """The manifest's ``accuracy_budget``."""
        return {"max_drop": float(budget.max_drop), "metric": "miou", "units": "mIoU points (0..100)",
                "reference": "model.onnx", "images": len(heldout.examples), "heldout": heldout.record,
                "fp32_miou": self.fp32_miou, "drop_before": self.drop_before, "drop_after": self.drop_after,
                "candidates": self.candidates, "excluded_layers": list(self.excluded),
                "sensitivity": dict(self.sensitivity),
                "sensitivity_measure": (f"logit noise-to-signal ratio with only that convolution quantized, on the "
                                        f"first {len(heldout.probe)} held-out images"),
                "trials": list(self.trials), "latency_ratio": ratio,
                "latency": "ONNX Runtime CPU, this graph over the fully quantized one"}


def search(graphs: TrialGraphs, fp32: Path, heldout: HeldOut, max_drop: float, scratch: Path,
           progress: Progress | None = None) -> Verdict:
    """Steps 1-4 of the module docstring on the graphs ``graphs`` writes into ``scratch``;
    ``progress(done, total, note)`` counts the graphs measured (``total`` grows when a step
    turns out to be needed)."""
    state = {"done": 0, "total": 2}

    def tick(note: str) -> None:
        if progress:
            progress(state["done"], state["total"], f"accuracy budget: {note}")
        state["done"] += 1

    tick("FP32 reference")
    fp32_miou = graph_miou(fp32, heldout, "fp32")
    trials: list[dict] = []

    def drop_of(excluded: Sequence[str], path: Path | None = None) -> float:
        tick(f"{len(excluded)} convs float")
        path = path or scratch / f"trial_{len(trials)}.onnx"
        graphs.write(path, excluded)
        drop = miou_drop(fp32_miou, graph_miou(path, heldout))
        trials.append({"float_convs": len(excluded), "drop": drop})
        return drop

    candidates = list(graphs.candidates)
    full = scratch / "full.onnx"
    drop_before = drop_of((), full)
    verdict = Verdict(True, [], len(candidates), fp32_miou, drop_before, drop_before, full, trials=trials)
    if drop_before <= max_drop:
        return verdict
    state["total"] += 1
    floor = drop_of(candidates) if candidates else drop_before
    if floor > max_drop:
        verdict.met, verdict.excluded, verdict.drop_after = False, candidates, floor
        return verdict
    # the FP32 logits, a graph per candidate, and the search's bound
    state["total"] += 1 + len(candidates) + 2 * math.ceil(math.log2(len(candidates)))
    tick("FP32 logits")
    reference = sampled_logits(fp32, heldout.probe, "fp32")
    sensitivity = measure_sensitivity(graphs, reference, heldout.probe, scratch, tick)
    order = sensitivity_order(sensitivity)
    drops = {0: drop_before, len(order): floor}

    def passes(k: int) -> bool:
        if k not in drops:
            drops[k] = drop_of(order[:k])
        return drops[k] <= max_drop

    k = smallest_passing_prefix(passes, len(order))
    verdict.excluded, verdict.drop_after = order[:k], drops[k]
    verdict.sensitivity = {name: sensitivity[name] for name in order}
    return verdict


def measure_latency_ratio(budgeted: Path, full: Path, batch: np.ndarray) -> float:
    """ONNX Runtime CPU latency of ``budgeted`` over ``full``, both in this process on ``batch``:
    blocks of runs alternate between the two graphs (and which goes first alternates by round),
    so a change of load on a shared machine falls on both; each block starts with an untimed
    run (the other session ran last). The ratio of the median run times."""
    times: dict[Path, list[float]] = {budgeted: [], full: []}
    with _runner(budgeted) as first, _runner(full) as second:
        pairs = [(budgeted, first), (full, second)]
        for round_ in range(LATENCY_ROUNDS):
            for path, runner in (pairs if round_ % 2 == 0 else pairs[::-1]):
                runner(batch)
                for _ in range(LATENCY_BLOCK):
                    runner(batch)
                    times[path].append(runner.last_inference_time)
    return latency_ratio(times[budgeted], times[full])
