"""The calibration set: a deterministic, documented choice of training images,
preprocessed exactly as at inference, cached inside the bundle under a content hash.

Selection (:func:`select_calibration_images`)
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

Identity (:meth:`CalibrationSet.key`)
    sha256 over the model's sha256, every selected image file's sha256, the preprocessing
    parameters and the selection parameters. The INT8 artefacts record it, and the cached
    tensors ``calibration/calib_<key[:16]>.npy`` are found by it, so changing the model, an
    image or the preprocessing makes a new key and the tensors are computed again (the range
    caches of :mod:`.qdq`, ``calib_<key[:16]>.<method>.ranges.json``, go with them).

Memory (:meth:`CalibrationSet.arrays`)
    The tensors are written image by image into the ``.npy`` file and read back memory-mapped,
    so RAM holds a few images, not the set: 128 images at 1024x2048 are 3.2 GB of float32.
"""

from __future__ import annotations

import collections
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..contract import CALIBRATION_DIR
from ..data.formats import Dataset, Sample, open_dataset
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError
from ..io import atomic_path, atomic_write_json, read_image, read_json, sha256_file

SELECTION_VERSION = 1  # bump when the selection algorithm changes: the key changes with it
MIN_CLASS_PIXELS = 16  # fewer pixels than this is label noise at a class edge, not presence
DECODE_THREADS = 4  # images decoded ahead of the one being written


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


def select_calibration_images(data: str | Path | Dataset, split: str = "train", num: int = 64,
                              seed: int = 0) -> list[Sample]:
    """``num`` images of a split, class-balanced then seeded-random (see the module docstring)."""
    if num < 1:
        raise FornetError(f"the calibration set needs at least 1 image, got num={num}")
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    samples = dataset.samples(split, require_labels=False)
    with ThreadPoolExecutor() as pool:  # cv2 decodes outside the GIL
        presence = list(pool.map(lambda s: _classes_present(dataset, s), samples))
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(samples))]
    chosen = _greedy_cover(presence, order, num)
    chosen += [i for i in order if i not in chosen][: num - len(chosen)]
    return sorted((samples[i] for i in chosen), key=lambda s: s.name)


@dataclass(frozen=True)
class CalibrationSet:
    """Selected images + how they become network inputs; see :meth:`arrays` for the cache."""

    samples: tuple[Sample, ...]
    preprocessing: Preprocessing
    split: str = "train"
    num: int = 64
    seed: int = 0

    @classmethod
    def select(cls, data_dir: str | Path, preprocessing: Preprocessing, split: str = "train", num: int = 64,
               seed: int = 0) -> "CalibrationSet":
        samples = tuple(select_calibration_images(data_dir, split, num, seed))
        return cls(samples, preprocessing, split, num, seed)

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """NCHW float32 batches through :func:`~fornet_deploy.data.transforms.preprocess`;
        a few images are decoded ahead in threads (cv2 decodes outside the GIL)."""
        def load(sample: Sample) -> np.ndarray:
            return preprocess([read_image(sample.image)], self.preprocessing)

        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            ahead = collections.deque(pool.submit(load, s) for s in self.samples[:DECODE_THREADS])
            following = len(ahead)
            batch: list[np.ndarray] = []
            while ahead:
                batch.append(ahead.popleft().result())
                if following < len(self.samples):
                    ahead.append(pool.submit(load, self.samples[following]))
                    following += 1
                if len(batch) == batch_size or not ahead:
                    yield np.concatenate(batch)
                    batch = []

    def _write(self, path: Path) -> tuple[int, ...]:
        """Preprocess every image into the ``.npy`` file at ``path``, one at a time."""
        out = None
        for index, image in enumerate(self.batches()):
            if out is None:
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                shape=(len(self.samples), *image.shape[1:]))
            elif image.shape[1:] != out.shape[1:]:
                raise FornetError(
                    f"calibration images preprocess to different sizes {sorted({out.shape[1:], image.shape[1:]})}: "
                    "use a preprocessing with resize='fixed' for this dataset"
                )
            out[index] = image[0]
        out.flush()
        shape = out.shape
        del out  # unmap before the file is renamed and hashed
        return shape

    def describe(self) -> dict:
        """What the key is made of (also the cache's JSON sidecar)."""
        return {
            "images": [[s.name, sha256_file(s.image)] for s in self.samples],
            "preprocessing": self.preprocessing.to_dict(),
            "selection": {"split": self.split, "num": self.num, "seed": self.seed, "version": SELECTION_VERSION},
        }

    def key(self, model_sha256: str, description: dict | None = None) -> str:
        content = {"model": model_sha256, **(description or self.describe())}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def arrays(self, bundle_dir: str | Path, model_sha256: str) -> tuple[np.ndarray, str]:
        """All images as one N x 3 x H x W float32 array (memory-mapped, read-only) and the
        key, cached in the bundle.

        A cache file is used only when its sidecar holds the same key and the file's sha256;
        otherwise the tensors are computed again and stale ``calib_*`` files are removed.
        """
        description = self.describe()
        key = self.key(model_sha256, description)
        folder = Path(bundle_dir) / CALIBRATION_DIR
        npy, sidecar = folder / f"calib_{key[:16]}.npy", folder / f"calib_{key[:16]}.json"
        cached = _load_cache(npy, sidecar, key)
        if cached is not None:
            return cached, key
        _remove_stale(folder)
        with atomic_path(npy) as tmp:
            shape = self._write(tmp)
        atomic_write_json(sidecar, {"key": key, "model_sha256": model_sha256, "npy_sha256": sha256_file(npy),
                                    "shape": list(shape), **description})
        return np.load(npy, mmap_mode="r", allow_pickle=False), key


def _load_cache(npy: Path, sidecar: Path, key: str) -> np.ndarray | None:
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = read_json(sidecar, "calibration cache sidecar")
    except FornetError:  # a sidecar cut short by a crash: recompute
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("npy_sha256") != sha256_file(npy):
        return None  # stale or truncated: recompute
    return np.load(npy, mmap_mode="r", allow_pickle=False)


def _remove_stale(folder: Path) -> None:
    for path in folder.glob("calib_*"):
        path.unlink()
