"""Dataset formats, detected from a folder's layout: one table, one reader per format.

=============  ==========================================================================
format         layout
=============  ==========================================================================
cityscapes     ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` +
               ``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (Cityscapes label ids) or
               ``*_gtFine_labelTrainIds.png`` (class ids, 255 = ignore); a ``classes.json``
               / ``classes.txt`` at the root gives trainIds another label set
camvid         SegNet's CamVid: ``{split}/*.png`` + ``{split}annot/*.png`` (index PNGs,
               0..10 = Sky ... Bicyclist, 11 = void), splits train / val / test
generic        ``images/{split}/*`` + ``masks/{split}/*.png`` (same stem) + a classes file
               (``classes.json`` or ``classes.txt`` at the root, see
               :func:`~fornet_deploy.data.labels.read_classes_file`)
images         any folder of images, no labels (calibration, prediction)
=============  ==========================================================================

Every reader gives the same thing: :class:`Sample` lists per split (``"train+val"``
joins splits) and label maps of class ids with :data:`~fornet_deploy.data.labels.IGNORE_INDEX`
(255) for pixels that count in no metric, whatever value the files use for them. A mask
value that is neither a class nor the file's ignore value is one line naming the file
and the value.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FornetError, OptionError
from ..io import IMAGE_EXTENSIONS, find_files, read_image, read_image_size, read_label_image
from . import cityscapes
from .labels import IGNORE_INDEX, LabelSet, read_classes_file

CLASSES_FILES = ("classes.json", "classes.txt")


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    name: str


class DatasetFormat:
    """One dataset layout: how to recognise it, list its samples and decode its masks."""

    name: str = ""
    layout: str = ""  # one line, for the error that lists the known layouts

    def matches(self, root: Path) -> bool:
        raise NotImplementedError

    def label_set(self, root: Path) -> LabelSet | None:
        """The classes of the dataset (None for unlabelled images)."""
        raise NotImplementedError

    def split_samples(self, root: Path, split: str, require_labels: bool) -> list[Sample]:
        raise NotImplementedError

    def read_labels(self, path: Path, labels: LabelSet) -> np.ndarray:
        """A mask file as class ids (uint8), ignore = 255; checked values."""
        raw = read_label_image(path)
        if raw.ndim != 2:
            raise FornetError(f"mask {path} has {raw.shape[2]} channels, expected 1 (class ids)")
        return to_class_ids(raw, labels, str(path))


def to_class_ids(mask: np.ndarray, labels: LabelSet, source: str) -> np.ndarray:
    """Class-id mask with the label set's ignore value -> uint8 with ignore = 255."""
    labels.check_labels(mask, source)
    out = mask.astype(np.uint8)
    if labels.ignore_index != IGNORE_INDEX:
        out[mask == labels.ignore_index] = IGNORE_INDEX
    return out


def _classes_file(root: Path) -> Path | None:
    return next((root / n for n in CLASSES_FILES if (root / n).is_file()), None)


def _no_images(folder: Path, what: str) -> FornetError:
    return FornetError(f"{folder} holds no {what}")


def _mirrored_samples(image_dir: Path, label_dir: Path, require_labels: bool, what: str) -> list[Sample]:
    """Every image under ``image_dir`` with the PNG of the same relative path and stem under
    ``label_dir`` (CamVid's ``test/`` + ``testannot/``, generic ``images/`` + ``masks/``);
    the sample's name is that path with ``_`` for ``/``."""
    images = find_files(image_dir, IMAGE_EXTENSIONS)
    if not images:
        raise _no_images(image_dir, "images")
    samples = []
    for image in images:
        rel = image.relative_to(image_dir)
        label = label_dir / rel.with_suffix(".png")
        if not label.is_file():
            if require_labels:
                raise FornetError(f"missing {what} {label} for image {image}")
            label = None
        samples.append(Sample(image, label, rel.with_suffix("").as_posix().replace("/", "_")))
    return samples


class CityscapesFormat(DatasetFormat):
    name = "cityscapes"
    layout = ("cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png + "
              "gtFine/<split>/<city>/*_gtFine_labelIds.png (or _labelTrainIds.png)")

    def matches(self, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir()

    def label_set(self, root: Path) -> LabelSet:
        own = _classes_file(root)
        return read_classes_file(own) if own else cityscapes.CITYSCAPES

    def split_samples(self, root: Path, split: str, require_labels: bool) -> list[Sample]:
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FornetError(f"{root} has no leftImg8bit/{split}/ folder: expected the Cityscapes layout "
                              f"leftImg8bit/{split}/<city>/*{cityscapes.IMAGE_SUFFIX}")
        images = sorted(image_dir.glob(f"*/*{cityscapes.IMAGE_SUFFIX}"))
        if not images:
            raise _no_images(image_dir, f"*{cityscapes.IMAGE_SUFFIX} images")
        samples = []
        for image in images:
            stem = image.name[: -len(cityscapes.IMAGE_SUFFIX)]
            folder = root / "gtFine" / split / image.parent.name
            label = next((folder / f"{stem}{s}" for s in cityscapes.LABEL_SUFFIXES
                          if (folder / f"{stem}{s}").is_file()), None)
            if label is None and require_labels:
                raise FornetError(f"missing label {folder / (stem + cityscapes.LABEL_SUFFIX)} for image {image}")
            samples.append(Sample(image, label, stem))
        return samples

    def read_labels(self, path: Path, labels: LabelSet) -> np.ndarray:
        if path.name.endswith(cityscapes.LABEL_SUFFIX):
            if labels is not cityscapes.CITYSCAPES and labels != cityscapes.CITYSCAPES:
                raise FornetError(f"{path}: Cityscapes label ids need the Cityscapes classes; with your own "
                                  "classes file, give *_gtFine_labelTrainIds.png masks")
            return cityscapes.read_train_ids(path)
        return super().read_labels(path, labels)


CAMVID_SPLITS = ("train", "val", "test")


class CamVidFormat(DatasetFormat):
    name = "camvid"
    layout = "camvid: train/ trainannot/ val/ valannot/ test/ testannot/ (SegNet layout, index PNGs 0..10, 11 = void)"

    def matches(self, root: Path) -> bool:
        return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in CAMVID_SPLITS)

    def label_set(self, root: Path) -> LabelSet:
        from .camvid import CAMVID

        own = _classes_file(root)
        return read_classes_file(own) if own else CAMVID

    def split_samples(self, root: Path, split: str, require_labels: bool) -> list[Sample]:
        image_dir, annot_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir():
            raise FornetError(f"{root} has no {split}/ folder: expected the CamVid layout {split}/ + {split}annot/")
        return _mirrored_samples(image_dir, annot_dir, require_labels, "annotation")


class GenericFormat(DatasetFormat):
    name = "generic"
    layout = "generic: images/<split>/* + masks/<split>/*.png (class ids) + classes.json or classes.txt"

    def matches(self, root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    def label_set(self, root: Path) -> LabelSet:
        own = _classes_file(root)
        if own is None:
            raise FornetError(f"{root} has images/ and masks/ but no {' or '.join(CLASSES_FILES)} naming the classes")
        return read_classes_file(own)

    def split_samples(self, root: Path, split: str, require_labels: bool) -> list[Sample]:
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        if not image_dir.is_dir():
            raise FornetError(f"{root} has no images/{split}/ folder")
        return _mirrored_samples(image_dir, mask_dir, require_labels, "mask")


class ImageFolderFormat(DatasetFormat):
    """Unlabelled images (any folder, searched recursively): for calibration and prediction."""

    name = "images"
    layout = "images: any folder of images (no labels: calibration only)"

    def matches(self, root: Path) -> bool:
        return bool(find_files(root, IMAGE_EXTENSIONS))

    def label_set(self, root: Path) -> None:
        return None

    def split_samples(self, root: Path, split: str, require_labels: bool) -> list[Sample]:
        if require_labels:
            raise FornetError(f"{root} is a folder of images without labels; this step needs a labelled dataset "
                              f"({'; '.join(f.layout for f in DATASET_FORMATS if f.name != self.name)})")
        images = find_files(root, IMAGE_EXTENSIONS)
        if not images:
            raise _no_images(root, "images")
        return [Sample(p, None, p.relative_to(root).with_suffix("").as_posix().replace("/", "_")) for p in images]


DATASET_FORMATS: tuple[DatasetFormat, ...] = (CityscapesFormat(), CamVidFormat(), GenericFormat(), ImageFolderFormat())
FORMAT_NAMES = tuple(f.name for f in DATASET_FORMATS)


@dataclass(frozen=True)
class Dataset:
    """A dataset folder read through its format: samples per split and decoded labels."""

    root: Path
    format: DatasetFormat
    labels: LabelSet | None

    def samples(self, split: str = "val", require_labels: bool = True) -> list[Sample]:
        """The samples of ``split`` (``"train+val"`` joins splits), sorted by name within a split."""
        if self.format.name == "images":
            return self.format.split_samples(self.root, split, require_labels)
        out: list[Sample] = []
        for part in split.split("+"):
            out += self.format.split_samples(self.root, part.strip(), require_labels)
        return out

    def read_labels(self, sample: Sample, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
        if sample.label is None or self.labels is None:
            raise FornetError(f"{sample.image} has no label")
        labels = self.format.read_labels(sample.label, self.labels)
        if expected_hw is not None and labels.shape != tuple(expected_hw):
            raise FornetError(f"label image {sample.label} is {labels.shape[1]}x{labels.shape[0]}, "
                              f"its image is {expected_hw[1]}x{expected_hw[0]}")
        return labels

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB image and its class ids (None when the sample has no label)."""
        image = read_image(sample.image)
        if sample.label is None:
            return image, None
        return image, self.read_labels(sample, image.shape[:2])

    def check(self, samples: Sequence[Sample], workers: int | None = None) -> None:
        """Raise the first problem of ``samples`` as one line: every label decodes, holds only
        classes and the ignore value, and matches its image's size (read from the header).

        What ``train`` runs before it writes anything, so a bad label is found before the
        run folder exists. The cost is PNG decoding, done in threads (OpenCV releases the
        GIL): about a minute for Cityscapes' 3475 train + val labels on a busy 2-core machine.
        """

        def check_one(sample: Sample) -> None:
            hw = read_image_size(sample.image)
            if sample.label is not None:
                self.read_labels(sample, hw)

        pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))
        try:
            for _ in pool.map(check_one, samples):  # re-raises the first error in sample order
                pass
        finally:
            pool.shutdown(cancel_futures=True)


def open_dataset(root: str | Path, format: str | None = None) -> Dataset:
    """The dataset at ``root``, its format detected from the layout (or forced by
    ``format``); one line listing the known layouts when none fits."""
    from .synthcity.dataset import check_complete

    root = Path(root)
    if not root.exists():
        raise FornetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise FornetError(f"dataset path {root} is not a folder")
    check_complete(root)
    if format is not None:
        if format not in FORMAT_NAMES:
            raise OptionError(f"unknown dataset format {format!r} (use {', '.join(FORMAT_NAMES)})")
        chosen = next(f for f in DATASET_FORMATS if f.name == format)
    else:
        chosen = next((f for f in DATASET_FORMATS if f.matches(root)), None)
        if chosen is None:
            raise FornetError(f"{root} is not a dataset in a known layout ("
                              + "; ".join(f.layout for f in DATASET_FORMATS) + ")")
    return Dataset(root, chosen, chosen.label_set(root))


class TrainingSet:
    """Map-style training dataset over any labelled format.

    ``dataset[i]`` -> (CHW float32 image, HW int64 class ids) preprocessed for the network.
    ``dataset[(i, seed)]`` applies the training augmentation with ``default_rng(seed)``, so
    a sample's augmentation depends only on its seed (exact resume, any worker count).
    """

    def __init__(self, dataset: Dataset, split: str, preprocessing=None, augmentation=None):
        from .transforms import Preprocessing

        self.dataset = dataset
        self.samples = dataset.samples(split)
        self.split = split
        self.preprocessing = preprocessing or Preprocessing()
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        import cv2
        import torch

        from .transforms import normalize, resize_labels

        index, seed = item if isinstance(item, tuple) else (item, None)
        image, labels = self.dataset.load(self.samples[index])
        if self.augmentation is not None and seed is not None:
            image, labels = self.augmentation(image, labels, np.random.default_rng(seed))
        else:
            h, w = self.preprocessing.target_size(image.shape[:2])
            if (h, w) != image.shape[:2]:
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
                labels = resize_labels(labels, (h, w))
        return torch.from_numpy(normalize(image, self.preprocessing)), torch.from_numpy(labels.astype(np.int64))


def submission_label_ids(labels: LabelSet, class_ids: np.ndarray) -> np.ndarray:
    """Class ids as Cityscapes label ids (``predict --label-ids``, for the benchmark
    server); only a Cityscapes label set has them."""
    if labels != cityscapes.CITYSCAPES:
        raise OptionError(f"--label-ids writes Cityscapes label ids; this model predicts {labels.name} classes")
    return cityscapes.train_ids_to_label_ids(class_ids)

