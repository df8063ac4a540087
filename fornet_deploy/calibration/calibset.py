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
    tensors ``calibration/calib_<key[:16]>.npz`` are found by it, so changing the model, an
    image or the preprocessing makes a new key and the tensors are computed again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..contract import CALIBRATION_DIR
from ..data.cityscapes import Sample, find_samples, label_ids_to_train_ids
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError
from ..io import atomic_path, atomic_write_json, read_image, read_json, sha256_file

SELECTION_VERSION = 1  # bump when the selection algorithm changes: the key changes with it
MIN_CLASS_PIXELS = 16  # fewer pixels than this is label noise at a class edge, not presence
_ARRAY = "images"


def _classes_present(sample: Sample) -> frozenset[int]:
    if sample.label is None:
        return frozenset()
    label_ids = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2:
        raise FornetError(f"cannot read label image {sample.label}: not a single-channel image file")
    counts = np.bincount(label_ids_to_train_ids(label_ids, str(sample.label)).ravel(), minlength=256)
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


def select_calibration_images(data_dir: str | Path, split: str = "train", num: int = 64, seed: int = 0) -> list[Sample]:
    """``num`` images of a split, class-balanced then seeded-random (see the module docstring)."""
    if num < 1:
        raise FornetError(f"the calibration set needs at least 1 image, got num={num}")
    samples = find_samples(data_dir, split, require_labels=False)
    with ThreadPoolExecutor() as pool:  # cv2 decodes outside the GIL
        presence = list(pool.map(_classes_present, samples))
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
        """NCHW float32 batches through :func:`~fornet_deploy.data.transforms.preprocess`."""
        for start in range(0, len(self.samples), batch_size):
            images = [read_image(s.image) for s in self.samples[start : start + batch_size]]
            yield preprocess(images, self.preprocessing)

    def _stack(self) -> np.ndarray:
        batches = list(self.batches())
        shapes = sorted({b.shape[1:] for b in batches})
        if len(shapes) > 1:
            raise FornetError(
                f"calibration images preprocess to different sizes {shapes}: "
                "use a preprocessing with resize='fixed' for this dataset"
            )
        return np.concatenate(batches)

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
        """All images as one N x 3 x H x W float32 array and the key, cached in the bundle.

        A cache file is used only when its sidecar holds the same key and the npz's sha256;
        otherwise the tensors are computed again and stale ``calib_*`` files are removed.
        """
        description = self.describe()
        key = self.key(model_sha256, description)
        folder = Path(bundle_dir) / CALIBRATION_DIR
        npz, sidecar = folder / f"calib_{key[:16]}.npz", folder / f"calib_{key[:16]}.json"
        cached = _load_cache(npz, sidecar, key)
        if cached is not None:
            return cached, key
        images = self._stack()
        _remove_stale(folder)
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{_ARRAY: images})  # a file object: savez would append ".npz" to a name
        atomic_write_json(sidecar, {"key": key, "model_sha256": model_sha256, "npz_sha256": sha256_file(npz),
                                    "shape": list(images.shape), **description})
        return images, key


def _load_cache(npz: Path, sidecar: Path, key: str) -> np.ndarray | None:
    if not (npz.is_file() and sidecar.is_file()):
        return None
    try:
        meta = read_json(sidecar, "calibration cache sidecar")
    except FornetError:  # a sidecar cut short by a crash: recompute
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("npz_sha256") != sha256_file(npz):
        return None  # stale or truncated: recompute
    with np.load(npz, allow_pickle=False) as data:
        return data[_ARRAY]


def _remove_stale(folder: Path) -> None:
    for path in folder.glob("calib_*"):
        path.unlink()
