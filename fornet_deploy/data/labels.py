"""The label set: what a model's class ids mean, in one type with one home.

A :class:`LabelSet` holds the class names, their colours, the ignore index and the
hard-region ("thin") classes. It travels as data: the dataset format gives it to
``train``, the checkpoint stores it (safetensors metadata), ``export`` copies it into the
bundle's manifest, and every later stage (metrics, parity, eval, predict's colours and
legends, bench frames, Triton and DeepStream label files, the demo) reads it from there.
Nothing outside the data layer knows Cityscapes' or CamVid's classes.

A checkpoint without a label set (the shipped weights, or one saved by other code) is
Cityscapes when it has 19 classes, else ``class_0`` ... with a generated palette
(:func:`default_label_set`).

Class names are validated where a label set is made (no empty names, no duplicates, no
control characters, no commas: names end up one per line in ``labels.txt`` files and
comma-joined in Triton's config), so every file written from them has one line a class.
"""

from __future__ import annotations

import colorsys
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import FornetError

IGNORE_INDEX = 255
MAX_CLASSES = 255  # class ids and the ignore index fit a uint8 label map
MAX_NAME_CHARS = 64

Colour = tuple[int, int, int]


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise FornetError(f"{where}: class names must be non-empty strings, got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise FornetError(f"{where}: class name {name[:20]!r}... is longer than {MAX_NAME_CHARS} characters")
    bad = [c for c in name if c == "," or unicodedata.category(c)[0] in ("C", "Z") and c != " "]
    if bad or name != name.strip():
        raise FornetError(f"{where}: class name {name!r} holds a comma, a control character or outer spaces "
                          "(names are written one per line and comma-joined)")
    return name


def _check_colour(colour: Any, where: str) -> Colour:
    if (not isinstance(colour, (list, tuple)) or len(colour) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
        raise FornetError(f"{where}: a colour must be 3 integers 0..255 (R, G, B), got {colour!r}")
    return (colour[0], colour[1], colour[2])


def generated_palette(count: int) -> tuple[Colour, ...]:
    """``count`` distinct, well-spread colours (golden-ratio hues, alternating lightness)."""
    colours = []
    for i in range(count):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * ((i // 2) % 2))
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


@dataclass(frozen=True)
class LabelSet:
    """What the class ids of a model's output mean.

    ``classes[i]`` is the name of class id ``i``, ``palette[i]`` its RGB colour;
    ``ignore_index`` marks label pixels that count in no metric (never a class id);
    ``thin`` lists the class ids of thin structures and small objects, where the
    thin-structure IoU is measured. ``name`` says where the set comes from
    (``cityscapes``, ``camvid``, ``custom``...), for people and reports.
    """

    classes: tuple[str, ...]
    palette: tuple[Colour, ...]
    ignore_index: int = IGNORE_INDEX
    thin: tuple[int, ...] = ()
    name: str = "custom"

    def __post_init__(self):
        where = f"label set {self.name!r}"
        if not isinstance(self.classes, tuple) or not 1 <= len(self.classes) <= MAX_CLASSES:
            raise FornetError(f"{where}: needs 1 to {MAX_CLASSES} class names")
        for name in self.classes:
            _check_name(name, where)
        folded = [c.casefold() for c in self.classes]
        if len(set(folded)) != len(folded):
            dup = next(c for c in self.classes if folded.count(c.casefold()) > 1)
            raise FornetError(f"{where}: class name {dup!r} appears twice")
        if not isinstance(self.palette, tuple) or len(self.palette) != len(self.classes):
            raise FornetError(f"{where}: {len(self.classes)} classes need {len(self.classes)} colours, "
                              f"got {len(self.palette) if isinstance(self.palette, tuple) else self.palette!r}")
        for colour in self.palette:
            _check_colour(colour, where)
        if (isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int)
                or not len(self.classes) <= self.ignore_index <= 255):
            raise FornetError(f"{where}: the ignore index must be an integer from {len(self.classes)} "
                              f"(past the last class id) to 255, got {self.ignore_index!r}")
        if not isinstance(self.thin, tuple) or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(self.classes) for c in self.thin):
            raise FornetError(f"{where}: thin classes must be class ids 0..{len(self.classes) - 1}, "
                              f"got {self.thin!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thin_names(self) -> tuple[str, ...]:
        return tuple(self.classes[i] for i in self.thin)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index, "thin": list(self.thin)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "label set") -> "LabelSet":
        """A label set from its dict form (manifest, checkpoint metadata, a classes file):
        untrusted input, checked field by field."""
        if not isinstance(data, dict):
            raise FornetError(f"{where} must be an object, got a {type(data).__name__}")
        unknown = set(data) - {"name", "classes", "palette", "ignore_index", "thin"}
        if unknown:
            raise FornetError(f"{where}: unknown fields {sorted(unknown)}")
        classes = data.get("classes")
        if not isinstance(classes, list):
            raise FornetError(f"{where}: 'classes' must be a list of names")
        palette = data.get("palette")
        if palette is None:
            palette = generated_palette(len(classes))
        if not isinstance(palette, (list, tuple)):
            raise FornetError(f"{where}: 'palette' must be a list of [R, G, B]")
        thin = data.get("thin", [])
        if not isinstance(thin, list):
            raise FornetError(f"{where}: 'thin' must be a list of class ids or names")
        names = {c: i for i, c in enumerate(classes) if isinstance(c, str)}
        thin_ids = []
        for t in thin:
            if isinstance(t, str):
                if t not in names:
                    raise FornetError(f"{where}: thin class {t!r} is not one of the classes")
                t = names[t]
            thin_ids.append(t)
        name = data.get("name", "custom")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise FornetError(f"{where}: 'name' must be a short string, got {name!r}")
        return cls(classes=tuple(classes), palette=tuple(tuple(c) if isinstance(c, list) else c for c in palette),
                   ignore_index=data.get("ignore_index", IGNORE_INDEX), thin=tuple(thin_ids), name=name)

    def colorize(self, labels):
        """RGB picture (H x W x 3 uint8) of a class-id map; ignore and unknown ids black."""
        import numpy as np

        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.array(self.palette, dtype=np.uint8)
        return lut[np.asarray(labels).astype(np.uint8)]

    def check_labels(self, labels, source: str) -> None:
        """Every value of a label map is a class id or the ignore index; else one line naming
        ``source`` and the first bad values."""
        import numpy as np

        values = np.unique(labels)
        bad = [int(v) for v in values if not (0 <= v < self.num_classes or v == self.ignore_index)]
        if bad:
            raise FornetError(f"{source}: mask value {bad[0]} is neither a class id (0..{self.num_classes - 1}) "
                              f"nor the ignore index {self.ignore_index}"
                              + (f" (also {bad[1:6]})" if len(bad) > 1 else ""))


def generic_label_set(num_classes: int) -> LabelSet:
    """``class_0`` ... ``class_{n-1}`` with a generated palette, no thin classes."""
    return LabelSet(tuple(f"class_{i}" for i in range(num_classes)), generated_palette(num_classes), name="generic")


def default_label_set(num_classes: int) -> LabelSet:
    """The label set of a model that carries none: Cityscapes' 19 classes, else generic."""
    from .cityscapes import CITYSCAPES

    return CITYSCAPES if num_classes == CITYSCAPES.num_classes else generic_label_set(num_classes)


def read_classes_file(path: str | Path) -> LabelSet:
    """A label set from a classes file (``export --labels FILE``, a generic dataset's
    ``classes.json`` / ``classes.txt``):

    * JSON: ``{"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255,
      "thin": ["pole", ...], "name": "mine"}`` (only ``classes`` is required), or a plain
      list of names;
    * text: one class a line, ``name`` or ``name,R,G,B`` (or ``name R G B``); blank lines
      and ``#`` comments skipped; colours for all classes or none.
    """
    from ..io import read_bytes

    path = Path(path)
    data = read_bytes(path, "classes file", 1 << 20)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FornetError(f"classes file {path} is not UTF-8 text") from None
    where = f"classes file {path}"
    if path.suffix.lower() == ".json":
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise FornetError(f"{where} is not valid JSON ({exc})") from None
        if isinstance(parsed, list):
            parsed = {"classes": parsed}
        return LabelSet.from_dict(parsed, where)
    return LabelSet.from_dict(_parse_classes_text(text, where), where)


def _parse_classes_text(text: str, where: str) -> dict:
    names, colours = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in (line.split(",") if "," in line else line.rsplit(None, 3))]
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            names.append(parts[0])
            colours.append([int(p) for p in parts[1:]])
        elif "," in line:
            raise FornetError(f"{where}, line {number}: expected 'name' or 'name,R,G,B', got {raw.strip()!r}")
        else:
            names.append(line)
    if colours and len(colours) != len(names):
        raise FornetError(f"{where}: give a colour for every class or for none")
    return {"classes": names, **({"palette": colours} if colours else {})}


def label_set_for(num_classes: int, stored: Any, where: str) -> LabelSet:
    """The label set of a model with ``num_classes`` outputs: ``stored`` (a dict from a
    checkpoint or manifest) when there is one, checked against the class count; else the
    default."""
    if stored is None:
        return default_label_set(num_classes)
    labels = LabelSet.from_dict(stored, where)
    if labels.num_classes != num_classes:
        raise FornetError(f"{where}: the label set names {labels.num_classes} classes, the model has {num_classes}")
    return labels


def legend_entries(labels: LabelSet, present: Sequence[int] | None = None) -> list[tuple[str, Colour]]:
    """(name, colour) of the classes to show in a legend: ``present`` ids, or all."""
    ids = range(labels.num_classes) if present is None else [i for i in present if 0 <= i < labels.num_classes]
    return [(labels.classes[i], labels.palette[i]) for i in ids]


def manifest_label_set(manifest: dict, where: str = "bundle manifest") -> LabelSet:
    """The label set of a bundle: its manifest's ``labels`` section (written by ``export``);
    a bundle exported before label sets travelled has ``classes`` / ``palette`` (read as
    the default set when they name its classes, which recovers its thin classes), else the
    default for its model's class count."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    count = model.get("num_classes")
    if "labels" in manifest:
        labels = LabelSet.from_dict(manifest["labels"], f"{where}: labels")
    elif isinstance(manifest.get("classes"), list):
        classes = manifest["classes"]
        default = default_label_set(len(classes)) if classes else None
        if default is not None and list(default.classes) == classes:
            labels = default
        else:
            labels = LabelSet.from_dict({"classes": classes, "palette": manifest.get("palette")}, where)
    else:
        return default_label_set(count if isinstance(count, int) and not isinstance(count, bool) else 19)
    if isinstance(count, int) and labels.num_classes != count:
        raise FornetError(f"{where}: the label set names {labels.num_classes} classes, the model has {count}")
    return labels


def check_compatible(model: LabelSet, data: LabelSet | None, where: str) -> None:
    """A dataset can score a model when it has the model's classes (names compared unless
    one side only has generic ``class_i`` names); else one line naming both sets."""
    if data is None:
        return
    generic = model.name == "generic" or data.name == "generic"
    if model.num_classes != data.num_classes or (not generic and model.classes != data.classes):
        raise FornetError(f"{where} holds {data.name} labels ({data.num_classes} classes: "
                          f"{', '.join(data.classes[:4])}...), the model predicts {model.name} "
                          f"({model.num_classes} classes: {', '.join(model.classes[:4])}...)")
