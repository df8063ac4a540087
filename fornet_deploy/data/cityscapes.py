"""Cityscapes: its label set, label ids and the decoding of its label images.

The folder layout is read by :mod:`fornet_deploy.data.formats` (format ``cityscapes``).

Layout (as downloaded from cityscapes-dataset.com, no preprocessing step)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Label images hold Cityscapes *label ids* (0..33); training uses the 19 *train ids*,
everything else maps to :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FornetError
from ..io import read_label_image
from .labels import IGNORE_INDEX, LabelSet

NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

# Official colours (RGB) of the 19 train ids, from cityscapesscripts/helpers/labels.py.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# (label id, name, train id) for every Cityscapes label id stored in *_labelIds.png.
LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255),
    (3, "out of roi", 255), (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", 255), (10, "rail track", 255),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", 255),
    (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8),
    (22, "terrain", 9), (23, "sky", 10), (24, "person", 11), (25, "rider", 12),
    (26, "car", 13), (27, "truck", 14), (28, "bus", 15), (29, "caravan", 255),
    (30, "trailer", 255), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
)

LABEL_ID_BY_NAME = {name: label_id for label_id, name, _ in LABELS}
TRAIN_ID_BY_NAME = {name: i for i, name in enumerate(CLASS_NAMES)}

# Classes made of thin structures or small articulated objects: where FoR-Net's
# hard-region focus is supposed to help (used by the thin-structure IoU).
THIN_CLASS_NAMES: tuple[str, ...] = (
    "fence", "pole", "traffic light", "traffic sign", "person", "rider", "motorcycle", "bicycle",
)
THIN_TRAIN_IDS: tuple[int, ...] = tuple(TRAIN_ID_BY_NAME[n] for n in THIN_CLASS_NAMES)

_MAX_LABEL_ID = max(label_id for label_id, _, _ in LABELS)


def _build_lut() -> np.ndarray:
    # 256 entries so any uint8 indexes it; entries past 33 are marked invalid (-1).
    lut = np.full(256, -1, dtype=np.int16)
    for label_id, _, train_id in LABELS:
        lut[label_id] = train_id
    return lut


_LABEL_TO_TRAIN_LUT = _build_lut()
TRAIN_TO_LABEL_ID = np.array(
    [next(lid for lid, _, tid in LABELS if tid == t) for t in range(NUM_CLASSES)], dtype=np.uint8
)


def label_ids_to_train_ids(label_ids: np.ndarray, source: str = "label image") -> np.ndarray:
    """Map a Cityscapes labelIds image to train ids (uint8, ignore = 255).

    Raises :class:`FornetError` when the image holds ids that Cityscapes does not define.
    """
    if label_ids.dtype != np.uint8:
        if label_ids.min() < 0 or label_ids.max() > 255:
            raise FornetError(f"{source}: label ids outside 0..255")
        label_ids = label_ids.astype(np.uint8)
    train_ids = _LABEL_TO_TRAIN_LUT[label_ids]
    if (train_ids < 0).any():
        unknown = sorted(int(v) for v in np.unique(label_ids[train_ids < 0]))
        raise FornetError(
            f"{source}: unknown Cityscapes label ids {unknown[:8]} (valid: 0..{_MAX_LABEL_ID}); "
            "is this a *_gtFine_labelIds.png file?"
        )
    return train_ids.astype(np.uint8)


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map predicted train ids (0..18) back to label ids, e.g. for a benchmark submission."""
    out = np.zeros(train_ids.shape, dtype=np.uint8)
    valid = train_ids < NUM_CLASSES
    out[valid] = TRAIN_TO_LABEL_ID[train_ids[valid]]
    return out


IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"  # Cityscapes label ids (0..33)
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"  # class ids, 255 = ignore (cityscapesscripts' createTrainIdLabelImgs)
LABEL_SUFFIXES = (LABEL_SUFFIX, TRAIN_ID_SUFFIX)  # label ids first: the official annotation

CITYSCAPES = LabelSet(CLASS_NAMES, PALETTE, IGNORE_INDEX, THIN_TRAIN_IDS, name="cityscapes")


def read_label_ids(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a *_labelIds.png as stored, checked: one channel, the image's size, and only
    ids Cityscapes defines (0..33: one comparison, not the full mapping)."""
    path = Path(path)
    label_ids = read_label_image(path)
    if label_ids.ndim != 2:
        raise FornetError(f"label image {path} has {label_ids.shape[2]} channels, expected 1 (label ids)")
    if expected_hw is not None and label_ids.shape != tuple(expected_hw):
        raise FornetError(
            f"label image {path} is {label_ids.shape[1]}x{label_ids.shape[0]}, "
            f"its image is {expected_hw[1]}x{expected_hw[0]}"
        )
    if label_ids.dtype != np.uint8 or label_ids.max() > _MAX_LABEL_ID:
        label_ids_to_train_ids(label_ids, source=str(path))  # raises, naming the unknown ids
    return label_ids


def read_train_ids(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a *_labelIds.png as train ids; check its size against the image."""
    return label_ids_to_train_ids(read_label_ids(path, expected_hw), source=str(path))
