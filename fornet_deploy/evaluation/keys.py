"""The key of a picture, drawn on it: panel titles, a class legend, a colour bar with its scale
and notes (cv2.putText), so a picture read alone (in a report, a chat, a CI artefact) says
what its colours mean. Text is white on a dark strip beside the picture, never over it."""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import cv2
import numpy as np

from ..data.labels import LabelSet, legend_entries

FONT = cv2.FONT_HERSHEY_SIMPLEX
STRIP = (32, 32, 32)  # RGB of the strips the text is written on
TEXT = (255, 255, 255)
ASPECT_TOLERANCE = 0.02  # a resize that changes width/height by more than this stretches the image


def font_scale(width: int) -> float:
    """Text size for a picture ``width`` pixels wide: readable at 128 px, not huge at 2048."""
    return float(np.clip(width / 700, 0.3, 0.9))


def _line_height(scale: float) -> int:
    (_, height), baseline = cv2.getTextSize("Ag", FONT, scale, 1)
    return height + baseline + max(4, round(8 * scale))


def text_strip(width: int, lines: Sequence[str], scale: float | None = None) -> np.ndarray:
    """A dark strip ``width`` wide with one line of text per entry (cut at the strip's edge)."""
    scale = font_scale(width) if scale is None else scale
    step = _line_height(scale)
    strip = np.full((step * len(lines), width, 3), STRIP, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, (i + 1) * step - step // 3), FONT, scale, TEXT, 1, cv2.LINE_AA)
    return strip


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` under a strip holding its title."""
    return np.concatenate([text_strip(panel.shape[1], [title]), panel], axis=0)


def legend(labels: LabelSet, class_ids: Sequence[int], width: int, scale: float | None = None) -> np.ndarray:
    """A strip ``width`` wide: a colour swatch and the name of each class of ``class_ids``
    (the label set's colours), packed in rows; ``scale``: the text size (default: the width's)."""
    scale = font_scale(width) if scale is None else scale
    step = _line_height(scale)
    swatch = step - max(4, round(6 * scale))
    items, rows, x = [], 0, 4
    for name, colour in legend_entries(labels, sorted(set(int(i) for i in class_ids))):
        (text_w, _), _ = cv2.getTextSize(name, FONT, scale, 1)
        item_w = swatch + 4 + text_w + 12
        if x + item_w > width and x > 4:
            rows, x = rows + 1, 4
        items.append((rows, x, name, colour))
        x += item_w
    strip = np.full((step * (rows + 1) if items else 0, width, 3), STRIP, np.uint8)
    for row, x, name, colour in items:
        top = row * step + (step - swatch) // 2
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), tuple(int(c) for c in colour), -1)
        cv2.putText(strip, name, (x + swatch + 4, (row + 1) * step - step // 3), FONT, scale, TEXT, 1, cv2.LINE_AA)
    return strip


def with_legend(picture: np.ndarray, class_ids: np.ndarray, labels: LabelSet) -> np.ndarray:
    """A class-coloured picture over the legend of the classes it shows."""
    return np.concatenate([picture, legend(labels, np.unique(class_ids), picture.shape[1])], axis=0)


def colour_bar(width: int, colormap: int, low: str, high: str, caption: str) -> np.ndarray:
    """The colour map as a horizontal bar ``width`` wide, ``low`` under its left end, ``high``
    under its right end and ``caption`` between them."""
    scale = font_scale(width)
    ramp = np.linspace(0, 255, width).astype(np.uint8)[None, :].repeat(max(6, _line_height(scale) // 2), axis=0)
    bar = cv2.applyColorMap(ramp, colormap)[..., ::-1]
    text = text_strip(width, [""], scale)
    baseline = text.shape[0] - text.shape[0] // 3
    (high_w, _), _ = cv2.getTextSize(high, FONT, scale, 1)
    (caption_w, _), _ = cv2.getTextSize(caption, FONT, scale, 1)
    cv2.putText(text, low, (2, baseline), FONT, scale, TEXT, 1, cv2.LINE_AA)
    cv2.putText(text, high, (max(0, width - high_w - 2), baseline), FONT, scale, TEXT, 1, cv2.LINE_AA)
    cv2.putText(text, caption, (max(0, (width - caption_w) // 2), baseline), FONT, scale, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([bar, text], axis=0)


def side_by_side(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Parts of one row, padded at the bottom to the tallest with the strip colour."""
    height = max(p.shape[0] for p in parts)
    padded = [np.concatenate([p, np.full((height - p.shape[0], p.shape[1], 3), STRIP, np.uint8)], axis=0)
              for p in parts]
    return np.concatenate(padded, axis=1)


def aspect_text(h: int, w: int) -> str:
    """``16:9`` for 720x1280, ``2:1`` for 512x1024; ``1.43:1`` where no small ratio fits."""
    ratio = Fraction(w, h).limit_denominator(32)
    return f"{ratio.numerator}:{ratio.denominator}" if ratio == Fraction(w, h) else f"{w / h:.2f}:1"


def aspect_note(image_hw: Sequence[int], network_hw: Sequence[int]) -> str | None:
    """A sentence when feeding an image at the network size stretches it (the resize changes
    its width/height ratio by more than :data:`ASPECT_TOLERANCE`); None when it does not."""
    (h, w), (net_h, net_w) = image_hw, network_hw
    if abs((net_w / net_h) / (w / h) - 1.0) <= ASPECT_TOLERANCE:
        return None
    return (f"{h}x{w} ({aspect_text(h, w)}) ran at {net_h}x{net_w} ({aspect_text(net_h, net_w)}): "
            "the network saw it stretched")
