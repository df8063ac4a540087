"""Images the verification stages run on: a dataset split, or synthetic scenes.

:class:`Examples` is a sized iterable (its length is known before the first image is
read, for progress bars), decoding and preprocessing one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from ..data.cityscapes import Sample, find_samples, load_sample
from ..data.transforms import Preprocessing, preprocess
from ..errors import OptionError


@dataclass
class Example:
    name: str
    image: np.ndarray  # RGB uint8, original size
    labels: np.ndarray | None  # train ids, original size
    batch: np.ndarray  # 1x3xHxW float32, preprocessed


class Examples:
    """A sized, re-iterable sequence of :class:`Example` built lazily from ``make(i)``."""

    def __init__(self, names: Sequence[str], make: Callable[[int], Example], source: str):
        self.names = list(names)
        self._make = make
        self.source = source

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Example]:
        for index in range(len(self.names)):
            yield self._make(index)


def check_limit(limit: int | None, option: str = "--num-images") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise OptionError(f"{option} must be an integer >= 1, got {limit!r}")


def dataset_examples(data: str | Path, split: str = "val", preprocessing: Preprocessing = Preprocessing(),
                     limit: int | None = None, require_labels: bool = True) -> Examples:
    """The first ``limit`` images (by name) of a split in the Cityscapes layout."""
    check_limit(limit)
    samples: list[Sample] = find_samples(data, split, require_labels=require_labels)[:limit]

    def make(index: int) -> Example:
        sample = samples[index]
        image, labels = load_sample(sample)
        return Example(sample.name, image, labels, preprocess(image, preprocessing))

    return Examples([s.name for s in samples], make, f"{len(samples)} {split} images of {data}")


def synthetic_examples(count: int, height: int, width: int, preprocessing: Preprocessing, seed: int = 0) -> Examples:
    """Smooth random images (no labels), for checks without a dataset."""
    check_limit(count)

    def make(index: int) -> Example:
        rng = np.random.default_rng([seed, index])
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        return Example(f"synthetic_{index:03d}", image, None, preprocess(image, preprocessing))

    return Examples([f"synthetic_{i:03d}" for i in range(count)], make,
                    f"{count} synthetic images {height}x{width}")


def scene_examples(count: int, height: int, width: int, preprocessing: Preprocessing, seed: int = 1000) -> Examples:
    """SynthCity street scenes rendered in memory (no labels kept), for checks without a dataset."""
    from ..data.synthcity import render_scene

    check_limit(count)

    def make(index: int) -> Example:
        image, _ = render_scene(np.random.default_rng(seed + index), height, width)
        return Example(f"synthcity_{index:03d}", image, None, preprocess(image, preprocessing))

    return Examples([f"synthcity_{i:03d}" for i in range(count)], make,
                    f"{count} synthetic SynthCity scenes {height}x{width} (no labels: no mIoU)")
