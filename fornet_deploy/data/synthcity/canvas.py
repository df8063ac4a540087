"""SynthCity drawing primitives: label ids, the paired image/label canvas, the pinhole
camera over a flat ground plane and the street layout."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..cityscapes import LABEL_ID_BY_NAME

ROAD = LABEL_ID_BY_NAME["road"]
SIDEWALK = LABEL_ID_BY_NAME["sidewalk"]
BUILDING = LABEL_ID_BY_NAME["building"]
FENCE = LABEL_ID_BY_NAME["fence"]
POLE = LABEL_ID_BY_NAME["pole"]
TRAFFIC_LIGHT = LABEL_ID_BY_NAME["traffic light"]
TRAFFIC_SIGN = LABEL_ID_BY_NAME["traffic sign"]
VEGETATION = LABEL_ID_BY_NAME["vegetation"]
TERRAIN = LABEL_ID_BY_NAME["terrain"]
SKY = LABEL_ID_BY_NAME["sky"]
PERSON = LABEL_ID_BY_NAME["person"]
RIDER = LABEL_ID_BY_NAME["rider"]
CAR = LABEL_ID_BY_NAME["car"]
BICYCLE = LABEL_ID_BY_NAME["bicycle"]


# --------------------------------------------------------------------------- canvas

_SHIFT = 3  # cv2 fixed-point bits: sub-pixel vertices keep thin, distant shapes in place
_ONE = 1 << _SHIFT

Color = tuple[float, float, float]


def _fixed(points) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


class _Canvas:
    """An RGB float image and a label-id map, always painted with the same shapes."""

    def __init__(self, height: int, width: int):
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)

    def fill(self, polygons, color: Color, label: int) -> None:
        """Fill polygons ((N, 2) pixel arrays). They must not overlap: cv2 XORs overlaps."""
        pts = [_fixed(p) for p in polygons]
        if pts:
            cv2.fillPoly(self.image, pts, color, cv2.LINE_8, _SHIFT)
            cv2.fillPoly(self.labels, pts, label, cv2.LINE_8, _SHIFT)

    def fill_each(self, polygons, color: Color, label: int) -> None:
        """Fill possibly overlapping polygons one at a time."""
        for polygon in polygons:
            self.fill([polygon], color, label)

    def lines(self, segments, color: Color, label: int, thickness: int = 1) -> None:
        """Draw (2, 2) pixel segments; thickness is in whole pixels."""
        pts = [_fixed(s) for s in segments]
        if pts:
            cv2.polylines(self.image, pts, False, color, thickness, cv2.LINE_8, _SHIFT)
            cv2.polylines(self.labels, pts, False, label, thickness, cv2.LINE_8, _SHIFT)

    def shade(self, polygons, factor: float) -> None:
        """Darken the image inside polygons (shadows) without touching the labels."""
        mask = np.zeros(self.labels.shape, np.uint8)
        cv2.fillPoly(mask, [_fixed(p) for p in polygons], 1, cv2.LINE_8, _SHIFT)
        self.image[mask.astype(bool)] *= factor


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Camera:
    focal: float  # pixels
    center_x: float  # vanishing point, pixels
    horizon: float
    height_m: float  # camera height above the road
    width: int

    def project(self, x, y, z) -> np.ndarray:
        """Pixel coordinates (..., 2) of points in metres."""
        x, y, z = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float))
        return np.stack(
            [self.center_x + self.focal * x / z, self.horizon + self.focal * (self.height_m - y) / z], -1
        )

    def pixels(self, metres: float, z: float) -> float:
        return self.focal * metres / z

    def nearest_visible_z(self, x: float, margin_px: float = 8.0) -> float:
        """Smallest depth at which a point at lateral offset x is inside the image."""
        room = (self.center_x if x < 0 else self.width - self.center_x) - margin_px
        return max(self.focal * abs(x) / room, 4.0)


def _ground_quads(cam: _Camera, x0, x1, z0, z1) -> np.ndarray:
    """Quads (n, 4, 2) on the ground between lateral x0..x1 and depth z0..z1."""
    x0, x1, z0, z1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in (x0, x1, z0, z1)))
    xs = np.stack([x0, x1, x1, x0], -1)
    zs = np.stack([z0, z0, z1, z1], -1)
    return cam.project(xs, 0.0, zs)


def _side_quads(cam: _Camera, x: float, z0, z1, y0, y1) -> np.ndarray:
    """Quads on a wall that runs along the street (constant x), e.g. a facade."""
    z0, z1, y0, y1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in (z0, z1, y0, y1)))
    zs = np.stack([z0, z1, z1, z0], -1)
    ys = np.stack([y0, y0, y1, y1], -1)
    return cam.project(x, ys, zs)


def _front_quads(cam: _Camera, z: float, x0, x1, y0, y1) -> np.ndarray:
    """Quads on a plane facing the camera (constant z)."""
    x0, x1, y0, y1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in (x0, x1, y0, y1)))
    xs = np.stack([x0, x1, x1, x0], -1)
    ys = np.stack([y0, y0, y1, y1], -1)
    return cam.project(xs, ys, z)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], -1)


def _tone(rng: np.random.Generator, base, spread: float) -> Color:
    """A colour near base, each channel jittered by up to +-spread (correlated mostly)."""
    base = np.asarray(base, float)
    value = base + rng.uniform(-spread, spread) + rng.uniform(-spread / 3, spread / 3, 3)
    return tuple(float(v) for v in np.clip(value, 0, 255))


@dataclass(frozen=True)
class _Street:
    road_half: float  # metres from the centre line to the curb
    lanes: int
    sidewalk: tuple[float, float]  # widths, left and right
    verge: tuple[float, float]  # grass strip between road and sidewalk (0 = none)
    end: float  # depth where the street ends in a backdrop of buildings

    def curb(self, side: int) -> float:
        return side * self.road_half

    def facade(self, side: int) -> float:
        i = 0 if side < 0 else 1
        return side * (self.road_half + self.verge[i] + self.sidewalk[i])

    def on_sidewalk(self, rng: np.random.Generator, side: int, lo: float = 0.2, hi: float = 0.8) -> float:
        i = 0 if side < 0 else 1
        return side * (self.road_half + self.verge[i] + self.sidewalk[i] * rng.uniform(lo, hi))


def _random_camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    return _Camera(
        focal=width * rng.uniform(0.55, 0.75),
        center_x=width * rng.uniform(0.42, 0.58),
        horizon=height * rng.uniform(0.36, 0.48),
        height_m=rng.uniform(1.3, 1.8),
        width=width,
    )


def _random_street(rng: np.random.Generator) -> _Street:
    lanes = int(rng.integers(2, 5))
    return _Street(
        road_half=lanes * rng.uniform(1.6, 1.9),
        lanes=lanes,
        sidewalk=(rng.uniform(2.5, 5.0), rng.uniform(2.5, 5.0)),
        verge=tuple(rng.uniform(0.8, 1.6) if rng.random() < 0.35 else 0.0 for _ in range(2)),
        end=rng.uniform(60.0, 140.0),
    )


_GREENS = ((60, 95, 40), (45, 80, 45), (80, 110, 45), (55, 85, 60))
