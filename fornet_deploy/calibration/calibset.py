"""The calibration set: a deterministic, documented choice of images, fed to the network
exactly as at inference.

Sources (``calibrate --data``)
    * a dataset folder in any known layout (:mod:`fornet_deploy.data.formats`): the images of
      its ``train`` split, selected as below;
    * a plain folder of images (format ``images``, no labels): the class-balanced cover has
      no labels to read, so the selection is step 4's seeded random fill alone;
    * a video file (:data:`fornet_deploy.io.VIDEO_EXTENSIONS`): ``num`` frames spread evenly
      over it (:func:`.video.evenly_spaced`; no seed: the frames depend on the file alone).

Selection from a folder (:func:`select_calibration_images`)
    1. List the split (sorted by name) and read every label map; a class counts as
       present in an image from :data:`MIN_CLASS_PIXELS` pixels on.
    2. Shuffle the image order with ``numpy.random.default_rng(seed)``.
    3. Greedy cover: while some class present in the split is not yet in the set, take the
       class found in the fewest images (thin classes such as pole, traffic light and sign
       come first) and add, among the images holding it, the one that holds the most
       still-missing classes (ties: earliest in the shuffled order).
    4. Fill up to ``num`` images in the shuffled order; return the set sorted by name.
    Images without a label file take part in step 4 only. With ``num`` smaller than the
    number of classes to cover, the rarest classes win.

Size (:func:`network_input_size`)
    Every image is resized to the network input by the rule every stage follows
    (:func:`fornet_deploy.runtimes.base.network_size` with the FP32 graph's input spec, then
    :func:`~fornet_deploy.data.transforms.preprocess` with a fixed resize), so images of any
    size calibrate an export of any size. A dynamic graph (``export --dynamic``) is
    calibrated at the export shape its manifest records (``export.height`` / ``width``).
    :meth:`CalibrationSet.resized` says what was resized.

Identity (:meth:`CalibrationSet.key`)
    sha256 over the model's sha256, the network input size, every selected image file's
    sha256 (a video: the file's sha256 and the frame indices), the preprocessing parameters
    and the selection parameters. The INT8 artefacts record it, and the range caches of
    :mod:`.qdq` (``calibration/calib_<key[:16]>.<method>.ranges.json``, a few KB) are found
    by it, so changing the model, an image, the size or the preprocessing collects again.

No image cache
    The images are decoded, resized and normalised again for each collection of ranges, one
    at a time, a few ahead in threads; RAM holds a few images, not the set, and the bundle
    holds no images. Decoding and normalising is a small share of a collection
    (docs/benchmarks.md section 9), and the range cache already makes the second target,
    and any re-run with the same method, free. Earlier versions stored the normalised
    float32 tensors in the bundle (``calibration/calib_<key[:16]>.npy``: 201 MB for 32 images
    at 512x1024, 3.2 GB for 128 at 1024x2048); :func:`tidy_cache` removes them.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ..bundle import Bundle
from ..contract import CALIBRATION_DIR
from ..data.formats import Dataset, Sample, open_dataset
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError
from ..io import VIDEO_EXTENSIONS, read_image, read_image_size, sha256_file
from ..runtimes.base import InputSpec, network_size
from .video import count_frames, evenly_spaced, open_video, read_frames

SELECTION_VERSION = 1  # bump when the selection algorithm changes: the key changes with it
MIN_CLASS_PIXELS = 16  # fewer pixels than this is label noise at a class edge, not presence
DECODE_THREADS = 4  # images decoded and normalised ahead of the one being measured

T = TypeVar("T")
R = TypeVar("R")


def _classes_present(dataset: Dataset, sample: Sample) -> frozenset[int]:
    if sample.label is None or dataset.labels is None:
        return frozenset()
    counts = np.bincount(dataset.read_labels(sample).ravel(), minlength=256)
    return frozenset(int(c) for c in np.flatnonzero(counts[:255] >= MIN_CLASS_PIXELS))


def _greedy_cover(presence: list[frozenset[int]], order: list[int], num: int) -> list[int]:
    """Indices (into ``presence``) that cover every class present, rarest class first."""
    frequency: dict[int, int] = {}
    for classes in presence:
        for c in classes:
            frequency[c] = frequency.get(c, 0) + 1
    missing, chosen = set(frequency), []
    rank = {index: position for position, index in enumerate(order)}
    while missing and len(chosen) < num:
        rarest = min(missing, key=lambda c: (frequency[c], c))
        holders = [i for i in order if rarest in presence[i] and i not in chosen]
        best = max(holders, key=lambda i: (len(presence[i] & missing), -rank[i]))
        chosen.append(best)
        missing -= presence[best]
    return chosen


def _check_num(num: int) -> None:
    if num < 1:
        raise FornetError(f"the calibration set needs at least 1 image, got num={num}")


def _select(dataset: Dataset, split: str, num: int, seed: int) -> tuple[list[Sample], bool]:
    """The selected samples and whether any class was there to balance (labels read)."""
    _check_num(num)
    return select_samples(dataset, dataset.samples(split, require_labels=False), num, seed)


def select_samples(dataset: Dataset, samples: Sequence[Sample], num: int, seed: int) -> tuple[list[Sample], bool]:
    """``num`` of ``samples`` by steps 2-4 of the module docstring (class-balanced, then seeded
    random; sorted by name), and whether any class was there to balance."""
    samples = list(samples)
    with ThreadPoolExecutor() as pool:  # cv2 decodes outside the GIL
        presence = list(pool.map(lambda s: _classes_present(dataset, s), samples))
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(samples))]
    chosen = _greedy_cover(presence, order, num)
    chosen += [i for i in order if i not in chosen][: num - len(chosen)]
    return sorted((samples[i] for i in chosen), key=lambda s: s.name), any(presence)


def select_calibration_images(data: str | Path | Dataset, split: str = "train", num: int = 64,
                              seed: int = 0) -> list[Sample]:
    """``num`` images of a split, class-balanced then seeded-random (see the module docstring)."""
    return _select(data if isinstance(data, Dataset) else open_dataset(data), split, num, seed)[0]


def network_input_size(input_dims: Sequence[int | None], preprocessing: Preprocessing,
                       export_hw: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) every calibration image is resized to: :func:`~..runtimes.base.network_size`
    for the graph's input ``input_dims`` (NCHW, ``None`` for dynamic), at the export shape
    ``export_hw`` when H or W is dynamic. The rule gives one size for every image here (a
    static graph's, the preprocessing's fixed resize, or the export shape), so it is asked once."""
    spec = InputSpec(shape=tuple(input_dims))
    dynamic = spec.shape[2] is None or spec.shape[3] is None
    return network_size(spec, preprocessing, export_hw, shape=export_hw if dynamic else None)


def _in_order(items: Iterable[T], work: Callable[[T], R], depth: int) -> Iterator[R]:
    """``work(item)`` for each item, in order, up to ``depth`` running ahead in threads
    (cv2 decodes and numpy normalises outside the GIL)."""
    with ThreadPoolExecutor(depth) as pool:
        ahead: collections.deque = collections.deque()
        for item in items:
            ahead.append(pool.submit(work, item))
            if len(ahead) > depth:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


@dataclass(frozen=True)
class ImageFiles:
    """Image files selected from a dataset split or a plain image folder."""

    samples: tuple[Sample, ...]
    sizes: tuple[tuple[int, int], ...]  # (H, W) of each, from the file headers

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> "ImageFiles":
        return cls(tuple(samples), tuple(read_image_size(s.image) for s in samples))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def identity(self) -> dict:
        return {"images": [[s.name, sha256_file(s.image)] for s in self.samples]}

    def items(self) -> Iterator[Path]:
        return (s.image for s in self.samples)

    @staticmethod
    def load(path: Path) -> np.ndarray:
        return read_image(path)


@dataclass(frozen=True)
class VideoFrames:
    """Frames of one video file, by index."""

    path: Path
    frames: tuple[int, ...]
    total: int  # frames in the video
    hw: tuple[int, int]

    @classmethod
    def of(cls, path: Path, num: int) -> "VideoFrames":
        _check_num(num)
        total, hw = count_frames(path)
        return cls(path, tuple(evenly_spaced(total, num)), total, hw)

    @property
    def samples(self) -> tuple[()]:
        return ()

    @property
    def names(self) -> list[str]:
        return [f"{self.path.stem}_{index:06d}" for index in self.frames]

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return (self.hw,) * len(self.frames)

    def identity(self) -> dict:
        return {"video": {"name": self.path.name, "sha256": sha256_file(self.path), "frames": list(self.frames)}}

    def items(self) -> Iterator[np.ndarray]:
        return read_frames(self.path, self.frames)  # decoded in order, in the reading thread

    @staticmethod
    def load(frame: np.ndarray) -> np.ndarray:
        return frame


def _open_source(data: Path) -> Path | Dataset:
    """A video file as is, a folder as a dataset; one line for anything else."""
    if data.is_file():
        if data.suffix.lower() not in VIDEO_EXTENSIONS:
            raise FornetError(f"--data {data} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}); "
                              "give a dataset folder, a folder of images or a video")
        return data
    return open_dataset(data)


def check_source(data: str | Path, split: str = "train") -> None:
    """Fail early, with one line, on a ``data`` that cannot give calibration images (a
    dataset without the split, an empty folder, a video OpenCV cannot open); decodes nothing."""
    opened = _open_source(Path(data))
    if isinstance(opened, Path):
        with open_video(opened):
            pass
    else:
        opened.samples(split, require_labels=False)


@dataclass(frozen=True)
class CalibrationSet:
    """Selected images, the network size they are fed at, and how they are normalised.

    A sized, re-iterable stream of network inputs: ``shape`` is ``(N, 3, H, W)`` and
    iterating yields each image as a 3 x H x W float32 array, decoded on the way.
    ``source`` says what the images came from (recorded in the INT8 artefact's entry).
    """

    images: ImageFiles | VideoFrames
    preprocessing: Preprocessing
    size: tuple[int, int]
    source: dict
    split: str = "train"
    num: int = 64
    seed: int = 0

    @classmethod
    def select(cls, data: str | Path, preprocessing: Preprocessing, size: tuple[int, int], split: str = "train",
               num: int = 64, seed: int = 0) -> "CalibrationSet":
        """The set from ``data``: a dataset or image folder (``split``, ``num``, ``seed``), or
        a video file (``num`` frames spread evenly); see the module docstring."""
        data = Path(data)
        opened = _open_source(data)
        if isinstance(opened, Path):
            images = VideoFrames.of(data, num)
            source = {"kind": "video", "path": str(data), "frames": images.total,
                      "selection": f"{len(images.frames)} frames spread evenly"}
            return cls(images, preprocessing, tuple(size), source, split, num, seed)
        dataset = opened
        samples, balanced = _select(dataset, split, num, seed)
        kind = "images" if dataset.format.name == "images" else "dataset"
        source = {"kind": kind, "path": str(data), "format": dataset.format.name,
                  **({"split": split} if kind == "dataset" else {}),
                  "selection": "class-balanced, then seeded random" if balanced else "seeded random (no labels)"}
        return cls(ImageFiles.of(samples), preprocessing, tuple(size), source, split, num, seed)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The selected files (none for a video)."""
        return self.images.samples

    @property
    def names(self) -> list[str]:
        return self.images.names

    def __len__(self) -> int:
        return len(self.images.sizes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, *self.size)

    def _network_input(self, item) -> np.ndarray:
        h, w = self.size
        return preprocess(self.images.load(item), replace(self.preprocessing, resize="fixed", height=h, width=w))

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """NCHW float32 batches, each image decoded, resized to :attr:`size` and normalised
        by :func:`~fornet_deploy.data.transforms.preprocess`; a few run ahead in threads."""
        batch: list[np.ndarray] = []
        for image in _in_order(self.images.items(), self._network_input, DECODE_THREADS):
            batch.append(image)
            if len(batch) == batch_size:
                yield np.concatenate(batch)
                batch = []
        if batch:
            yield np.concatenate(batch)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (batch[0] for batch in self.batches(1))

    def resized(self) -> dict:
        """What was resized, as the verification stages record it:
        ``{"images": n, "sizes": {"HxW->hxw": n}}``."""
        h, w = self.size
        counts = Counter(f"{ih}x{iw}->{h}x{w}" for ih, iw in self.images.sizes if (ih, iw) != (h, w))
        return {"images": sum(counts.values()), "sizes": dict(counts)}

    def describe(self) -> dict:
        """What the key is made of (also stored in the range caches)."""
        selection = ({"num": self.num, "version": SELECTION_VERSION} if isinstance(self.images, VideoFrames)
                     else {"split": self.split, "num": self.num, "seed": self.seed, "version": SELECTION_VERSION})
        return {**self.images.identity(), "network_size": list(self.size),
                "preprocessing": self.preprocessing.to_dict(), "selection": selection}

    def key(self, model_sha256: str, description: dict | None = None) -> str:
        content = {"model": model_sha256, **(description or self.describe())}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def graph_input_dims(proto) -> list[int | None]:
    """NCHW dims of an ONNX graph's (first) input, ``None`` where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]


def bundle_calibration_set(bundle: Bundle, input_dims: Sequence[int | None], data: str | Path, num: int = 64,
                           seed: int = 0) -> CalibrationSet:
    """The calibration set of ``data`` for a bundle whose FP32 graph takes ``input_dims``:
    the manifest's preprocessing, at :func:`network_input_size`."""
    pre = Preprocessing.from_dict(bundle.section("preprocessing"))
    export = bundle.section("export")
    if not all(isinstance(export.get(k), int) and export[k] > 0 for k in ("height", "width")):
        raise FornetError(f"bundle {bundle.root} records no export height/width (re-run `fornet-deploy export`)")
    size = network_input_size(input_dims, pre, (export["height"], export["width"]))
    return CalibrationSet.select(data, pre, size, num=num, seed=seed)


def tidy_cache(bundle_dir: str | Path, key: str) -> None:
    """Remove from the bundle's calibration folder everything but the range caches of
    ``key``: other keys' ranges, and the image caches of earlier versions (``.npy`` + sidecar)."""
    keep = f"calib_{key[:16]}."
    for path in (Path(bundle_dir) / CALIBRATION_DIR).glob("calib_*"):
        if not (path.name.startswith(keep) and path.name.endswith(".ranges.json")):
            path.unlink()
