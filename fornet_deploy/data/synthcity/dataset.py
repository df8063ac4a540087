"""The SynthCity dataset writer: the Cityscapes or the CamVid layout, a manifest, seeded per image.

The scenes are drawn in Cityscapes label ids; the CamVid layout maps them to CamVid's 11
classes (:data:`CAMVID_OF_CITYSCAPES`), so tests get a CamVid-shaped dataset without
shipping anyone's images.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...contract import MAX_SIDE
from ...errors import FornetError, OptionError
from ...io import atomic_write_json, read_json, write_png
from .. import camvid
from ..cityscapes import CITYSCAPES, IMAGE_SUFFIX, LABEL_ID_BY_NAME, LABEL_SUFFIX, label_ids_to_train_ids
from .render import render_scene

# Bump when a change to the drawing code changes the generated pixels.
SYNTHCITY_VERSION = 1
MANIFEST_NAME = "synthcity.json"

# (split, code mixed into the seed, cities the images are spread over)
SPLITS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("train", 0, ("syntha", "synthb")),
    ("val", 1, ("synthv",)),
    ("test", 2, ("syntht",)),
)
LAYOUTS = ("cityscapes", "camvid")
MIN_SIDE = 64  # smaller scenes have no room for the objects that make them a street

# CamVid class of each Cityscapes name SynthCity draws; every other label id is void.
_CAMVID_NAMES = {
    "sky": "Sky", "building": "Building", "pole": "Pole", "road": "Road", "sidewalk": "Pavement",
    "vegetation": "Tree", "terrain": "Tree", "traffic sign": "SignSymbol", "traffic light": "SignSymbol",
    "fence": "Fence", "car": "Car", "person": "Pedestrian", "rider": "Bicyclist", "bicycle": "Bicyclist",
}
CAMVID_OF_CITYSCAPES = np.full(256, camvid.VOID, np.uint8)
for _name, _camvid_name in _CAMVID_NAMES.items():
    CAMVID_OF_CITYSCAPES[LABEL_ID_BY_NAME[_name]] = camvid.CLASS_NAMES.index(_camvid_name)
# Cityscapes names files {city}_{sequence}_{frame}; its annotated frame is always 19.
_FRAME = 19


@dataclass(frozen=True)
class SynthCityConfig:
    train: int = 64
    val: int = 16
    height: int = 256
    width: int = 512
    seed: int = 0
    test: int = 0
    layout: str = "cityscapes"  # or "camvid" (SegNet's folders, CamVid's 11 classes)


def check_complete(root: Path) -> None:
    """Refuse (one line naming the command to re-run) a folder whose SynthCity generation
    did not finish; folders without a SynthCity manifest pass.

    :func:`generate` writes the manifest with ``complete: false`` first and sets it true
    only after the last image, so an interrupted run leaves a partial dataset that
    ``train`` and ``calibrate`` would otherwise use without a word.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = read_json(path, "SynthCity manifest")
    if isinstance(manifest, dict) and manifest.get("complete") is True:
        return
    config = manifest if isinstance(manifest, dict) else {}
    command = f"fornet-deploy synthcity --out {shlex.quote(str(root))}"
    for option, key in (("--train", "train"), ("--val", "val"), ("--test", "test"), ("--seed", "seed"),
                        ("--layout", "layout")):
        if key in config:
            command += f" {option} {config[key]}"
    if "height" in config and "width" in config:
        command += f" --shape {config['height']}x{config['width']}"
    raise FornetError(f"{root} holds an incomplete SynthCity dataset (its generation was interrupted); "
                      f"finish it with `{command}`")


def _check_config(out: Path, config: SynthCityConfig) -> None:
    if config.layout not in LAYOUTS:
        raise FornetError(f"unknown synthcity layout {config.layout!r} (use {', '.join(LAYOUTS)})")
    for name in ("train", "val", "test", "height", "width", "seed"):
        value = getattr(config, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise FornetError(f"synthcity {name} must be an integer, got {value!r}")
    if min(config.train, config.val, config.test) < 0 or config.train + config.val + config.test < 1:
        raise FornetError(
            "synthcity needs non-negative image counts and at least one image, "
            f"got train={config.train} val={config.val} test={config.test}"
        )
    for name in ("height", "width"):
        value = getattr(config, name)
        if not MIN_SIDE <= value <= MAX_SIDE:  # any size: every stage resizes or pads to the network's needs
            raise OptionError(f"synthcity {name} must be from {MIN_SIDE} to {MAX_SIDE} pixels, got {value}")
    if config.seed < 0:
        raise FornetError(f"synthcity seed must be non-negative, got {config.seed}")
    if out.exists() and not out.is_dir():
        raise FornetError(f"synthcity output {out} exists and is a file, not a folder")
    # Never mix generated images into a real dataset someone already has there.
    has_layout = any((out / d).exists() for d in ("leftImg8bit", "gtFine", *(f"{s}annot" for s, _, _ in SPLITS)))
    if has_layout and not (out / MANIFEST_NAME).is_file():
        raise FornetError(
            f"{out} already holds a dataset that SynthCity did not write; choose another --out folder"
        )


def sample_name(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of image ``index`` of a split."""
    cities = next(c for s, _, c in SPLITS if s == split)
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def _paths(out: Path, layout: str, split: str, city: str, stem: str) -> tuple[Path, Path]:
    """(image, label) files of one sample in ``layout``."""
    if layout == "camvid":
        return out / split / f"{stem}.png", out / f"{split}annot" / f"{stem}.png"
    return (out / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}",
            out / "gtFine" / split / city / f"{stem}{LABEL_SUFFIX}")


def _remove_stale(out: Path, layout: str, split: str, keep: set[str]) -> None:
    """Delete images of a previous, larger run so the folder matches the config."""
    pattern = re.compile(r"^synth[a-z]+_\d{6}_\d{6}$")
    for city in next(c for s, _, c in SPLITS if s == split):
        image, label = _paths(out, layout, split, city, "*")
        for folder, suffix in ((image.parent, image.name[1:]), (label.parent, label.name[1:])):
            for path in folder.glob(f"{city}_*{suffix}"):
                stem = path.name[: -len(suffix)]
                if pattern.match(stem) and stem not in keep:
                    path.unlink()


def generate(
    out: str | Path, config: SynthCityConfig, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Write the dataset; returns a summary dict (counts, per-class pixel fractions of the train split).

    progress(done, total) is called after each image.
    """
    out = Path(out)
    _check_config(out, config)
    manifest = {
        "generator": "synthcity",
        "version": SYNTHCITY_VERSION,
        **asdict(config),
        "cities": {split: list(cities) for split, _, cities in SPLITS},
        "complete": False,
    }
    # Written first, so the folder is known to be ours even if this run is interrupted
    # (a rerun may then overwrite it); "complete" turns true only at the end.
    atomic_write_json(out / MANIFEST_NAME, manifest)
    total = config.train + config.val + config.test
    labels = camvid.CAMVID if config.layout == "camvid" else CITYSCAPES
    counts = np.zeros(labels.num_classes + 1, np.int64)  # last bin: ignore
    done = 0
    for split, code, _ in SPLITS:
        stems = set()
        for index in range(getattr(config, split)):
            rng = np.random.default_rng([config.seed, code, index])
            image, label_ids = render_scene(rng, config.height, config.width)
            city, stem = sample_name(split, index)
            stems.add(stem)
            image_path, label_path = _paths(out, config.layout, split, city, stem)
            stored = CAMVID_OF_CITYSCAPES[label_ids] if config.layout == "camvid" else label_ids
            write_png(image_path, image)
            write_png(label_path, stored)
            if split == "train":
                class_ids = stored if config.layout == "camvid" else label_ids_to_train_ids(label_ids)
                counts += np.bincount(np.minimum(class_ids, labels.num_classes).ravel(),
                                      minlength=labels.num_classes + 1)
            done += 1
            if progress is not None:
                progress(done, total)
        _remove_stale(out, config.layout, split, stems)
    pixels = counts.sum()
    manifest["complete"] = True
    manifest["class_fractions"] = (
        {name: float(counts[i] / pixels) for i, name in enumerate(labels.classes)} if pixels else {}
    )
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest
