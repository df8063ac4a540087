"""Images the verification stages run on: a dataset split, or synthetic scenes.

:class:`Examples` is a sized iterable (its length is known before the first image is
read, for progress bars), decoding and preprocessing one image at a time. Images of any
size are resized to the network input by the one rule every stage uses
(:func:`fornet_deploy.runtimes.base.network_size`); labels stay at their own size, where
predictions are scored (resized back, nearest neighbour, as mmsegmentation evaluates), and
:attr:`Examples.resized` records what was resized.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from ..data.formats import Dataset, Sample, open_dataset
from ..data.transforms import Preprocessing, preprocess
from ..errors import OptionError

NetworkSize = Callable[[tuple[int, int]], tuple[int, int]]


@dataclass
class Example:
    name: str
    image: np.ndarray  # RGB uint8, original size
    labels: np.ndarray | None  # class ids (255 = ignore), original size
    batch: np.ndarray  # 1x3xHxW float32, preprocessed at the network size


class Examples:
    """A sized, re-iterable sequence of :class:`Example` built lazily from ``make(i)``.

    ``resized`` counts the images fed at another size than their own, as
    ``{"HxW->hxw": images}`` (filled as the images are made).
    """

    def __init__(self, names: Sequence[str], make: Callable[[int], Example], source: str):
        self.names = list(names)
        self._make = make
        self.source = source
        self.resized: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Example]:
        for index in range(len(self.names)):
            example = self._make(index)
            image_hw, net_hw = example.image.shape[:2], example.batch.shape[2:]
            if tuple(image_hw) != tuple(net_hw):
                self.resized[f"{image_hw[0]}x{image_hw[1]}->{net_hw[0]}x{net_hw[1]}"] += 1
            yield example

    def resize_record(self) -> dict:
        """What was resized, for result JSON: ``{"images": n, "sizes": {"HxW->hxw": n}}``."""
        return {"images": sum(self.resized.values()), "sizes": dict(self.resized)}


def check_limit(limit: int | None, option: str = "--num-images") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"{option} must be an integer >= 1, got {limit!r}")


def _prepare(image: np.ndarray, preprocessing: Preprocessing, network_size: NetworkSize | None) -> np.ndarray:
    if network_size is None:
        return preprocess(image, preprocessing)
    net_h, net_w = network_size(image.shape[:2])
    return preprocess(image, replace(preprocessing, resize="fixed", height=net_h, width=net_w))


def dataset_examples(data: str | Path | Dataset, split: str = "val", preprocessing: Preprocessing = Preprocessing(),
                     limit: int | None = None, require_labels: bool = True,
                     network_size: NetworkSize | None = None) -> Examples:
    """The first ``limit`` images (by name) of a split of a dataset in any known layout;
    ``network_size(image_hw)`` gives the size each image is fed at (default: the
    preprocessing's own policy)."""
    check_limit(limit)
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    samples = dataset.samples(split, require_labels=require_labels)[:limit]
    return sample_examples(dataset, samples, preprocessing, network_size, f"{len(samples)} {split} images")


def sample_examples(dataset: Dataset, samples: Sequence[Sample], preprocessing: Preprocessing = Preprocessing(),
                    network_size: NetworkSize | None = None, what: str | None = None) -> Examples:
    """Given samples of a dataset (e.g. a selection), as :class:`Examples`; ``what`` names them
    in the source line (default: their count)."""
    samples = list(samples)

    def make(index: int) -> Example:
        sample = samples[index]
        image, labels = dataset.load(sample)
        return Example(sample.name, image, labels, _prepare(image, preprocessing, network_size))

    return Examples([s.name for s in samples], make, f"{what or f'{len(samples)} images'} of {dataset.root}")


def synthetic_examples(count: int, height: int, width: int, preprocessing: Preprocessing, seed: int = 0,
                       network_size: NetworkSize | None = None) -> Examples:
    """Smooth random images (no labels), for checks without a dataset."""
    check_limit(count)

    def make(index: int) -> Example:
        rng = np.random.default_rng([seed, index])
        small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        return Example(f"synthetic_{index:03d}", image, None, _prepare(image, preprocessing, network_size))

    return Examples([f"synthetic_{i:03d}" for i in range(count)], make,
                    f"{count} synthetic images {height}x{width}")


def scene_examples(count: int, height: int, width: int, preprocessing: Preprocessing, seed: int = 1000,
                   network_size: NetworkSize | None = None) -> Examples:
    """SynthCity street scenes rendered in memory (no labels kept), for checks without a dataset."""
    from ..data.synthcity import render_scene

    check_limit(count)

    def make(index: int) -> Example:
        image, _ = render_scene(np.random.default_rng(seed + index), height, width)
        return Example(f"synthcity_{index:03d}", image, None, _prepare(image, preprocessing, network_size))

    return Examples([f"synthcity_{i:03d}" for i in range(count)], make,
                    f"{count} synthetic SynthCity scenes {height}x{width} (no labels: no mIoU)")
