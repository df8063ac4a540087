"""SynthCity: a seeded procedural street-scene generator in the Cityscapes layout.

It lets the whole pipeline (train, export, calibrate, evaluate) run on a fresh machine
without a download, through the *real* Cityscapes loader: images and ``*_labelIds.png``
files are written exactly where :func:`fornet_deploy.data.cityscapes.find_samples` looks.

Scenes are drawn with a pinhole camera over a flat ground plane (metres: x right, y up,
z forward), so road, sidewalks and facades converge to a vanishing point and objects
shrink with distance. Everything is painted far to near into an RGB canvas and a label
canvas *with the same polygon*, which makes label boundaries match the image exactly
(blur and noise are applied to the image only, afterwards).

Each image has its own random generator seeded with ``(seed, split, index)``: image i is
the same whatever the number of images generated, and the same config always gives
byte-identical files.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..bundle import atomic_write_json
from ..errors import FornetError
from .cityscapes import (
    CLASS_NAMES,
    IMAGE_SUFFIX,
    LABEL_ID_BY_NAME,
    LABEL_SUFFIX,
    NUM_CLASSES,
    label_ids_to_train_ids,
    write_png,
)

# Bump when a change to the drawing code changes the generated pixels.
SYNTHCITY_VERSION = 1
MANIFEST_NAME = "synthcity.json"

# (split, code mixed into the seed, cities the images are spread over)
SPLITS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("train", 0, ("syntha", "synthb")),
    ("val", 1, ("synthv",)),
)
# Cityscapes names files {city}_{sequence}_{frame}; its annotated frame is always 19.
_FRAME = 19

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


@dataclass(frozen=True)
class SynthCityConfig:
    train: int = 64
    val: int = 16
    height: int = 256
    width: int = 512
    seed: int = 0


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


# --------------------------------------------------------------------------- static scene

_NEAR_Z, _FAR_Z = 1.0, 3000.0  # ground strips run from under the camera to the horizon

_FACADE_COLORS = (
    (150, 140, 125), (175, 160, 135), (130, 75, 60), (200, 195, 185),
    (110, 105, 100), (165, 120, 85), (185, 175, 140), (95, 90, 95),
)
_GREENS = ((60, 95, 40), (45, 80, 45), (80, 110, 45), (55, 85, 60))


def _draw_sky(canvas: _Canvas, rng: np.random.Generator, cam: _Camera) -> None:
    height, width = canvas.labels.shape
    if rng.random() < 0.6:  # blue sky
        top, bottom = _tone(rng, (70, 120, 190), 25), _tone(rng, (175, 200, 225), 20)
    else:  # overcast
        top, bottom = _tone(rng, (160, 165, 175), 25), _tone(rng, (210, 212, 215), 15)
    t = np.clip(np.arange(height, dtype=np.float32) / max(cam.horizon, 1.0), 0, 1)[:, None, None]
    canvas.image[:] = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    canvas.labels[:] = SKY
    for _ in range(int(rng.integers(0, 5))):
        cloud = _tone(rng, (235, 235, 240), 15)
        cx, cy = rng.uniform(0, width), rng.uniform(0, cam.horizon * 0.7)
        rx, ry = rng.uniform(20, 80) * width / 512, rng.uniform(5, 15) * width / 512
        canvas.fill([_ellipse(cx, cy, rx, ry)], cloud, SKY)


def _draw_ground(canvas: _Canvas, rng: np.random.Generator, cam: _Camera, street: _Street) -> None:
    # Grass everywhere below the horizon first: parks and gaps between buildings show it.
    canvas.fill(_ground_quads(cam, -500, 500, _NEAR_Z, _FAR_Z), _tone(rng, (95, 120, 60), 20), TERRAIN)
    road = _tone(rng, (90, 90, 95), 20)
    canvas.fill(_ground_quads(cam, -street.road_half, street.road_half, _NEAR_Z, _FAR_Z), road, ROAD)
    _draw_road_patches(canvas, rng, cam, street, road)
    _draw_lane_marks(canvas, rng, cam, street)
    for side in (-1, 1):
        _draw_sidewalk(canvas, rng, cam, street, side)


def _draw_road_patches(canvas, rng, cam, street, road: Color) -> None:
    # Repaired asphalt: the road is not one flat colour.
    n = int(rng.integers(0, 4))
    x0 = rng.uniform(-street.road_half, street.road_half - 1, n)
    z0 = rng.uniform(5, 40, n)
    quads = _ground_quads(cam, x0, x0 + rng.uniform(0.8, 3, n), z0, z0 + rng.uniform(2, 8, n))
    canvas.fill_each(quads, _tone(rng, np.array(road) * 0.85, 8), ROAD)


def _draw_lane_marks(canvas, rng, cam, street) -> None:
    white = _tone(rng, (215, 215, 205), 15)
    lane = 2 * street.road_half / street.lanes
    period, dash = rng.uniform(8, 12), rng.uniform(2.5, 4)
    starts = np.arange(rng.uniform(0, period), 150, period)
    for k in range(1, street.lanes):
        x = -street.road_half + k * lane
        canvas.fill(_ground_quads(cam, x - 0.07, x + 0.07, starts, starts + dash), white, ROAD)
    if rng.random() < 0.6:  # solid edge lines
        for x in (-street.road_half + 0.3, street.road_half - 0.45):
            canvas.fill(_ground_quads(cam, x, x + 0.15, _NEAR_Z, _FAR_Z), white, ROAD)
    if rng.random() < 0.3:  # zebra crossing
        z = rng.uniform(8, 25)
        xs = np.arange(-street.road_half + 0.3, street.road_half - 0.5, 1.0)
        canvas.fill(_ground_quads(cam, xs, xs + 0.5, z, z + rng.uniform(3, 4.5)), white, ROAD)


def _draw_sidewalk(canvas, rng, cam, street: _Street, side: int) -> None:
    i = 0 if side < 0 else 1
    curb = street.curb(side)
    inner = curb + side * street.verge[i]
    outer = street.facade(side)
    paving = _tone(rng, (160, 155, 150) if rng.random() < 0.7 else (175, 150, 130), 20)
    lo, hi = sorted((inner, outer))
    canvas.fill(_ground_quads(cam, lo, hi, _NEAR_Z, _FAR_Z), paving, SIDEWALK)
    # Paving joints across the sidewalk: a perspective texture the road does not have.
    zs = np.arange(_NEAR_Z + rng.uniform(0, 2), 60, rng.uniform(1.2, 2.5))
    joints = np.stack([cam.project(lo, 0, zs), cam.project(hi, 0, zs)], 1)
    canvas.lines(joints, _tone(rng, np.array(paving) * 0.8, 5), SIDEWALK)
    # Curb stones: a lighter strip along the road edge.
    c0, c1 = sorted((inner, inner + side * 0.2))
    canvas.fill(_ground_quads(cam, c0, c1, _NEAR_Z, _FAR_Z), _tone(rng, (190, 188, 180), 15), SIDEWALK)
    if street.verge[i]:
        g0, g1 = sorted((curb, inner))
        canvas.fill(_ground_quads(cam, g0, g1, _NEAR_Z, _FAR_Z), _tone(rng, (90, 125, 55), 20), TERRAIN)


def _draw_shadows(canvas, rng, cam, street) -> None:
    # Buildings cast shadows across part of the street; lighting must not decide the class.
    for side in (-1, 1):
        if rng.random() < 0.5:
            x = street.facade(side)
            reach = rng.uniform(2, 2 * street.road_half)
            z0 = rng.uniform(_NEAR_Z, 30)
            lo, hi = sorted((x, x - side * reach))
            canvas.shade(_ground_quads(cam, lo, hi, z0, z0 + rng.uniform(10, 60)), rng.uniform(0.5, 0.8))


def _draw_windows(canvas, rng, quads_of, length: float, height: float, facade: Color) -> None:
    """Windows on a wall; quads_of(u0, u1, y0, y1) maps wall coordinates to pixel quads."""
    floor = rng.uniform(2.8, 3.6)
    bay = rng.uniform(1.8, 3.5)
    ys = np.arange(rng.uniform(0.8, 1.5), height - floor * 0.8, floor)
    us = np.arange(rng.uniform(0.3, 1.0), length - bay * 0.6, bay)
    if len(ys) == 0 or len(us) == 0:
        return
    u, y = (a.ravel() for a in np.meshgrid(us, ys))
    quads = quads_of(u, u + bay * rng.uniform(0.45, 0.7), y, y + floor * rng.uniform(0.4, 0.65))
    glass = _tone(rng, (55, 65, 80) if rng.random() < 0.7 else (150, 170, 185), 20)
    bright = rng.random(len(quads)) < 0.25  # some panes reflect the sky
    canvas.fill(quads[~bright], glass, BUILDING)
    canvas.fill(quads[bright], _tone(rng, np.array(glass) * 0.5 + 100, 10), BUILDING)
    if rng.random() < 0.5:  # floor cornices
        canvas.fill(quads_of(np.zeros_like(ys), np.full_like(ys, length), ys - 0.35, ys - 0.15),
                    _tone(rng, np.array(facade) * 0.8, 5), BUILDING)


def _draw_building_along(canvas, rng, cam, street: _Street, side: int, z0: float, z1: float) -> None:
    """A building whose facade lines the street between depths z0 and z1."""
    x = street.facade(side)
    height = rng.uniform(8, 28)
    color = _tone(rng, _FACADE_COLORS[rng.integers(len(_FACADE_COLORS))], 18)
    # End wall facing the camera: visible where the nearer neighbour is lower or a park.
    depth_x = x + side * rng.uniform(10, 20)
    canvas.fill(_front_quads(cam, z0, min(x, depth_x), max(x, depth_x), 0, height),
                tuple(c * 0.8 for c in color), BUILDING)
    canvas.fill(_side_quads(cam, x, z0, z1, 0, height), color, BUILDING)
    _draw_windows(canvas, rng, lambda u0, u1, y0, y1: _side_quads(cam, x, z0 + u0, z0 + u1, y0, y1),
                  z1 - z0, height, color)
    canvas.fill(_side_quads(cam, x, z0, z1, height - 0.5, height), tuple(c * 0.7 for c in color), BUILDING)


def _draw_park(canvas, rng, cam, street: _Street, side: int, z0: float, z1: float) -> None:
    """A gap between buildings: trees on grass behind a fence."""
    x = street.facade(side)
    trees = [
        _tree(rng, cam, x + side * rng.uniform(2, 15), z)
        for z in np.sort(rng.uniform(z0, z1, int(rng.integers(1, 4))))[::-1]
    ]
    _, draw_fence = _fence_along(rng, cam, x, z0, z1)
    for _, draw_tree in trees:
        draw_tree(canvas)
    draw_fence(canvas)


def _draw_backdrop(canvas, rng, cam, street: _Street) -> None:
    """Buildings facing the camera where the street ends (sometimes across it)."""
    across = rng.random() < 0.25
    x = -80.0
    while x < 80.0:
        width = rng.uniform(8, 25)
        lo, hi = x, x + width
        x = hi
        if not across and hi > street.facade(-1) and lo < street.facade(1):
            continue
        z = street.end + rng.uniform(0, 15)
        height = rng.uniform(6, 35)
        color = _tone(rng, _FACADE_COLORS[rng.integers(len(_FACADE_COLORS))], 18)
        canvas.fill(_front_quads(cam, z, lo, hi, 0, height), color, BUILDING)
        _draw_windows(canvas, rng, lambda u0, u1, y0, y1: _front_quads(cam, z, lo + u0, lo + u1, y0, y1),
                      width, height, color)


def _draw_street_sides(canvas, rng, cam, street: _Street) -> None:
    for side in (-1, 1):
        # Blocks along the street, then painted far to near so nearer ones occlude.
        blocks, z = [], _NEAR_Z
        while z < street.end:
            length = rng.uniform(8, 30)
            blocks.append((z, min(z + length, street.end), rng.random() < 0.78))
            z += length
        for z0, z1, is_building in reversed(blocks):
            if is_building:
                _draw_building_along(canvas, rng, cam, street, side, z0, z1)
            else:
                _draw_park(canvas, rng, cam, street, side, z0, z1)


# --------------------------------------------------------------------------- objects
# Each factory draws its random parameters at once and returns (depth, draw(canvas)),
# so all objects can be painted far to near afterwards.

Item = tuple[float, Callable[[_Canvas], None]]


def _thin_px(cam: _Camera, metres: float, z: float, max_px: float) -> float:
    """Pixel width of a thin part: at least 1 px so it never vanishes, at most max_px."""
    return float(np.clip(cam.pixels(metres, z), 1.0, max_px))


def _vertical_bar(cam: _Camera, x: float, z: float, y0: float, y1: float, width_px: float) -> np.ndarray:
    (cx, top), (_, bottom) = cam.project([x, x], [y1, y0], z)
    half = width_px / 2
    return np.array([[cx - half, top], [cx + half, top], [cx + half, bottom], [cx - half, bottom]])


def _pole_color(rng) -> Color:
    return _tone(rng, (120, 120, 120) if rng.random() < 0.7 else (50, 60, 55), 25)


def _street_light(rng, cam, street: _Street, side: int, z: float) -> Item:
    x = street.curb(side) + side * rng.uniform(0.3, 0.6)
    height = rng.uniform(6, 9)
    width_px = _thin_px(cam, rng.uniform(0.1, 0.2), z, cam.width / 128)
    color = _pole_color(rng)
    reach = rng.uniform(0.8, 2.0)

    def draw(canvas: _Canvas) -> None:
        canvas.fill([_vertical_bar(cam, x, z, 0, height, width_px)], color, POLE)
        arm = cam.project([x, x - side * reach], [height, height + 0.3], z)
        canvas.lines([arm], color, POLE, max(1, int(round(width_px * 0.7))))
        lamp_x = x - side * reach
        canvas.fill(_front_quads(cam, z, lamp_x - 0.3, lamp_x + 0.3, height + 0.1, height + 0.35), color, POLE)

    return z, draw


def _lamp_box(cam, x: float, z: float, y: float) -> tuple[np.ndarray, list[np.ndarray], float]:
    """A traffic-light housing (x centre, bottom at y) and its three lamp discs."""
    w, h = 0.34, 0.95
    box = _front_quads(cam, z, x - w / 2, x + w / 2, y, y + h)[0]
    radius = cam.pixels(0.11, z)
    centres = cam.project(x, y + h * np.array([0.8, 0.5, 0.2]), z)
    return box, [_ellipse(cx, cy, radius, radius, 10) for cx, cy in centres], radius


def _traffic_light(rng, cam, street: _Street, side: int, z: float) -> Item:
    x = street.curb(side) + side * rng.uniform(0.3, 0.8)
    pole_h = rng.uniform(2.6, 3.6)
    width_px = _thin_px(cam, rng.uniform(0.1, 0.16), z, cam.width / 128)
    pole = _pole_color(rng)
    housing = _tone(rng, (35, 35, 30) if rng.random() < 0.7 else (160, 140, 40), 12)
    lit = int(rng.integers(3))
    lamp_on = ((235, 60, 40), (245, 180, 40), (60, 220, 120))[lit]
    # Mast arm over the road carrying a second light, as at larger junctions.
    arm_to = x - side * rng.uniform(2.5, street.road_half) if rng.random() < 0.5 else None
    arm_y = rng.uniform(5.0, 6.0)

    def draw_light(canvas: _Canvas, lx: float, y: float) -> None:
        box, lamps, radius = _lamp_box(cam, lx, z, y)
        canvas.fill([box], housing, TRAFFIC_LIGHT)
        if radius >= 1.0:  # lamps smaller than a pixel would only add noise
            for k, lamp in enumerate(lamps):
                canvas.fill([lamp], lamp_on if k == lit else (55, 50, 45), TRAFFIC_LIGHT)

    def draw(canvas: _Canvas) -> None:
        top = arm_y if arm_to is not None else pole_h
        canvas.fill([_vertical_bar(cam, x, z, 0, top, width_px)], pole, POLE)
        draw_light(canvas, x + side * 0.05, pole_h)
        if arm_to is not None:
            canvas.lines([cam.project([x, arm_to], arm_y, z)], pole, POLE, max(1, int(round(width_px * 0.7))))
            draw_light(canvas, arm_to, arm_y - 1.0)

    return z, draw


def _sign_shape(rng, centre: np.ndarray, radius: float) -> Callable[[float], np.ndarray]:
    """Outline of a sign scaled by a factor (1 = rim, < 1 = inner face)."""
    kind = int(rng.integers(4))
    cx, cy = centre

    def shape(scale: float) -> np.ndarray:
        r = radius * scale
        if kind == 0:
            return _ellipse(cx, cy, r, r, 14)
        if kind == 1:  # triangle, point up
            return np.array([[cx, cy - r], [cx + r * 0.95, cy + r * 0.7], [cx - r * 0.95, cy + r * 0.7]])
        if kind == 2:  # diamond
            return np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]])
        h = r * 0.7  # rectangular panel
        return np.array([[cx - r, cy - h], [cx + r, cy - h], [cx + r, cy + h], [cx - r, cy + h]])

    return shape


_SIGN_COLORS = (  # (rim, face)
    ((200, 30, 35), (235, 235, 230)), ((30, 70, 170), (40, 90, 200)), ((235, 235, 230), (30, 70, 170)),
    ((40, 40, 40), (235, 200, 40)), ((30, 120, 70), (230, 230, 225)),
)


def _traffic_sign(rng, cam, street: _Street, side: int, z: float) -> Item:
    x = street.curb(side) + side * rng.uniform(0.3, 0.8)
    height = rng.uniform(2.2, 3.2)
    size = rng.uniform(0.3, 0.45)
    width_px = _thin_px(cam, rng.uniform(0.06, 0.1), z, cam.width / 170)
    pole = _pole_color(rng)
    rim, face = (_tone(rng, c, 12) for c in _SIGN_COLORS[rng.integers(len(_SIGN_COLORS))])
    shape = _sign_shape(rng, cam.project(x, height + size, z), cam.pixels(size, z))
    second = None
    if rng.random() < 0.3:  # a smaller panel under the main sign
        second = _sign_shape(rng, cam.project(x, height - size * 0.6, z), cam.pixels(size * 0.55, z))

    def draw(canvas: _Canvas) -> None:
        canvas.fill([_vertical_bar(cam, x, z, 0, height + size, width_px)], pole, POLE)
        for outline in (shape, second):
            if outline is not None:
                canvas.fill([outline(1.0)], rim, TRAFFIC_SIGN)
                canvas.fill([outline(0.7)], face, TRAFFIC_SIGN)

    return z, draw


def _tree(rng, cam, x: float, z: float) -> Item:
    trunk_h = rng.uniform(1.8, 3.2)
    radius = rng.uniform(1.3, 2.8)
    trunk_px = max(1.0, cam.pixels(rng.uniform(0.2, 0.35), z))
    bark = _tone(rng, (80, 65, 50), 15)
    green = np.array(_GREENS[rng.integers(len(_GREENS))], float)
    (cx, cy), = cam.project([x], [trunk_h + radius * 0.8], z)
    r_px, ry_px = cam.pixels(radius, z), cam.pixels(radius * rng.uniform(0.8, 1.2), z)
    # Foliage: overlapping clumps of different greens give the crown its texture.
    n = int(rng.integers(14, 26))
    angle, dist = rng.uniform(0, 2 * np.pi, n), np.sqrt(rng.uniform(0, 1, n)) * 0.75
    clumps = [
        _ellipse(cx + d * r_px * np.cos(a), cy + d * ry_px * np.sin(a), s * r_px, s * r_px, 12)
        for a, d, s in zip(angle, dist, rng.uniform(0.2, 0.45, n))
    ]
    clump_colors = [_tone(rng, green * f, 10) for f in rng.uniform(0.6, 1.4, n)]
    base = _tone(rng, green * 0.8, 8)

    def draw(canvas: _Canvas) -> None:
        canvas.fill([_vertical_bar(cam, x, z, 0, trunk_h + radius * 0.5, trunk_px)], bark, VEGETATION)
        canvas.fill([_ellipse(cx, cy, r_px, ry_px, 20)], base, VEGETATION)
        for clump, color in zip(clumps, clump_colors):
            canvas.fill([clump], color, VEGETATION)

    return z, draw


def _fence_along(rng, cam, x: float, z0: float, z1: float) -> Item:
    """A lattice fence in the plane x = const between depths z0 and z1."""
    height = rng.uniform(0.9, 1.6)
    color = _tone(rng, (110, 105, 95) if rng.random() < 0.6 else (60, 75, 65), 20)
    step = rng.uniform(0.25, 0.6)
    zs = np.arange(z0, z1, step)
    if rng.random() < 0.5:  # vertical bars
        segments = [cam.project(x, [0, height], [z, z]) for z in zs]
    else:  # diagonal mesh
        segments = [cam.project(x, [0, height], [z, z + height]) for z in zs]
        segments += [cam.project(x, [height, 0], [z, z + height]) for z in zs]
    rails = [cam.project(x, [y, y], [z0, z1]) for y in (height, height * 0.5, 0.05)]
    posts = [cam.project(x, [0, height + 0.1], [z, z]) for z in np.arange(z0, z1, 2.5)]

    def draw(canvas: _Canvas) -> None:
        canvas.lines(segments + rails, color, FENCE)
        canvas.lines(posts, color, FENCE, 2 if cam.pixels(0.08, z0) > 1.5 else 1)

    return z0, draw


def _railing(rng, cam, street: _Street, side: int) -> Item:
    """A short fence on the sidewalk along the curb."""
    z0 = rng.uniform(cam.nearest_visible_z(street.curb(side)), 30)
    return _fence_along(rng, cam, street.curb(side) + side * 0.25, z0, z0 + rng.uniform(4, 15))


_CAR_COLORS = (
    (225, 225, 225), (30, 30, 35), (160, 162, 168), (100, 100, 105), (150, 30, 30),
    (40, 60, 130), (40, 70, 50), (220, 180, 40), (120, 90, 70),
)


def _wheel(cam, x: float, z: float, radius: float) -> np.ndarray:
    """A wheel on the car's side plane, as a projected disc."""
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    return cam.project(x, radius + radius * np.sin(t), z + radius * np.cos(t))


def _car(rng, cam, x: float, z: float) -> Item:
    width, length = rng.uniform(1.7, 2.0), rng.uniform(3.8, 5.0)
    height = rng.uniform(1.4, 1.9)
    belt = height * rng.uniform(0.5, 0.6)  # top of the body, bottom of the windows
    paint = _tone(rng, _CAR_COLORS[rng.integers(len(_CAR_COLORS))], 15)
    dark = tuple(c * 0.75 for c in paint)
    glass = _tone(rng, (40, 45, 55), 10)
    x0, x1 = x - width / 2, x + width / 2
    # The side facing the camera is visible when the car is off the camera's axis.
    side_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    plate = _tone(rng, (230, 230, 225) if rng.random() < 0.8 else (230, 200, 50), 10)

    def draw(canvas: _Canvas) -> None:
        canvas.shade(_ground_quads(cam, x0 - 0.15, x1 + 0.15, z - 0.2, z + length), 0.55)
        if side_x is not None:
            canvas.fill(_side_quads(cam, side_x, z, z + length, 0.25, belt), dark, CAR)
            cabin = cam.project(side_x, [belt, belt, height, height],
                                [z + 0.2 * length, z + 0.95 * length, z + 0.8 * length, z + 0.4 * length])
            canvas.fill([cabin], dark, CAR)
            window = cam.project(side_x, [belt + 0.05, belt + 0.05, height - 0.08, height - 0.08],
                                 [z + 0.3 * length, z + 0.88 * length, z + 0.76 * length, z + 0.45 * length])
            canvas.fill([window], glass, CAR)
            for wz in (z + 0.75, z + length - 0.8):
                canvas.fill([_wheel(cam, side_x, wz, 0.32)], (20, 20, 22), CAR)
        # Rear (or front) face, nearest to the camera: body, cabin, lights, plate, tyres.
        tyres = _front_quads(cam, z, [x0 + 0.05, x1 - 0.3], [x0 + 0.3, x1 - 0.05], 0, 0.3)
        canvas.fill(tyres, (20, 20, 22), CAR)
        canvas.fill(_front_quads(cam, z, x0, x1, 0.22, belt), paint, CAR)
        cabin = cam.project([x0 + 0.08, x1 - 0.08, x1 - 0.25, x0 + 0.25], [belt, belt, height, height], z)
        canvas.fill([cabin], paint, CAR)
        window = cam.project([x0 + 0.18, x1 - 0.18, x1 - 0.3, x0 + 0.3],
                             [belt + 0.05, belt + 0.05, height - 0.08, height - 0.08], z)
        canvas.fill([window], glass, CAR)
        lights = _front_quads(cam, z, [x0 + 0.05, x1 - 0.35], [x0 + 0.35, x1 - 0.05], belt - 0.25, belt - 0.08)
        canvas.fill(lights, (200, 30, 30), CAR)
        canvas.fill(_front_quads(cam, z, x - 0.26, x + 0.26, 0.35, 0.47), plate, CAR)
        canvas.fill(_front_quads(cam, z, x0, x1, 0.2, 0.3), dark, CAR)

    return z, draw


def _person_parts(rng, height: float, stride: float) -> dict[str, list[np.ndarray]]:
    """Body parts of a standing/walking person in local metres (u right, v up, feet at 0)."""
    hip, shoulder = 0.52 * height, 0.82 * height
    head_r = 0.11 * height / 1.75
    torso = np.array([[-0.2, shoulder], [0.2, shoulder], [0.16, hip], [-0.16, hip]])
    legs = [
        np.array([[-0.15, hip], [-0.01, hip], [-0.02 - stride, 0], [-0.14 - stride, 0]]),
        np.array([[0.01, hip], [0.15, hip], [0.14 + stride, 0], [0.02 + stride, 0]]),
    ]
    swing, hand = rng.uniform(-0.1, 0.1), hip - 0.05
    arms = [
        np.array([[-0.2, shoulder], [-0.12, shoulder], [-0.18 + swing, hand], [-0.26 + swing, hand]]),
        np.array([[0.12, shoulder], [0.2, shoulder], [0.26 - swing, hand], [0.18 - swing, hand]]),
    ]
    head = [_ellipse(0.0, height - head_r, head_r * 0.85, head_r, 12)]
    return {"legs": legs, "torso": [torso], "arms": arms, "head": head}


def _clothes(rng) -> dict[str, Color]:
    shirt = _tone(rng, rng.uniform(30, 220, 3), 10)
    return {
        "legs": _tone(rng, ((40, 45, 70), (30, 30, 30), (110, 95, 80))[rng.integers(3)], 15),
        "torso": shirt,
        "arms": shirt,
        "head": _tone(rng, ((225, 185, 155), (160, 110, 80), (95, 65, 45))[rng.integers(3)], 12),
    }


def _draw_figure(canvas, cam, parts, colors, x: float, z: float, label: int, base_y: float = 0.0) -> None:
    for name in ("legs", "torso", "arms", "head"):
        polygons = [cam.project(x + p[:, 0], base_y + p[:, 1], z) for p in parts[name]]
        canvas.fill_each(polygons, colors[name], label)


def _person(rng, cam, x: float, z: float) -> Item:
    parts = _person_parts(rng, rng.uniform(1.55, 1.95), rng.uniform(0.0, 0.18))
    colors = _clothes(rng)
    return z, lambda canvas: _draw_figure(canvas, cam, parts, colors, x, z, PERSON)


def _bicycle_lines(facing: int) -> list[np.ndarray]:
    """A side-view bicycle in local metres (u along the bike, v up), facing +u or -u."""
    r = 0.34
    rear, front = np.array([-0.55 * facing, r]), np.array([0.55 * facing, r])
    crank, seat = np.array([0.0, r]), np.array([-0.12 * facing, 0.95])
    head, bar = np.array([0.42 * facing, 0.9]), np.array([0.38 * facing, 1.05])
    t = np.linspace(0, 2 * np.pi, 17)
    wheels = [c + r * np.stack([np.cos(t), np.sin(t)], -1) for c in (rear, front)]
    frame = [np.array(s) for s in ((rear, crank), (crank, seat), (seat, rear), (crank, head), (seat, head),
                                   (head, front), (head, bar))]
    return wheels + frame


def _draw_bicycle(canvas, cam, x: float, z: float, facing: int) -> None:
    thickness = max(1, int(round(cam.pixels(0.05, z))))
    strokes = [cam.project(x + s[:, 0], s[:, 1], z) for s in _bicycle_lines(facing)]
    canvas.lines(strokes, (35, 35, 40), BICYCLE, thickness)


def _rider(rng, cam, x: float, z: float) -> Item:
    facing = 1 if rng.random() < 0.5 else -1
    height = rng.uniform(1.6, 1.9)
    parts = _person_parts(rng, height, 0.0)
    # Seated: drop the figure onto the saddle, legs reach down to the pedals.
    seat_v = 0.95 - 0.5 * height
    parts["legs"] = [np.array([[-0.12 * facing - 0.08, 0.5 * height], [-0.12 * facing + 0.08, 0.5 * height],
                               [0.06, 0.5 * height - 0.6], [-0.06, 0.5 * height - 0.6]])]
    colors = _clothes(rng)

    def draw(canvas: _Canvas) -> None:
        _draw_bicycle(canvas, cam, x, z, facing)
        _draw_figure(canvas, cam, parts, colors, x, z, RIDER, base_y=seat_v)

    return z, draw


def _parked_bicycle(rng, cam, x: float, z: float) -> Item:
    facing = 1 if rng.random() < 0.5 else -1
    return z, lambda canvas: _draw_bicycle(canvas, cam, x, z, facing)


def _visible_z(rng, cam, x: float, far: float, spread: float = 4.0) -> float:
    """A depth where lateral offset x is on screen, biased towards the near end."""
    near = cam.nearest_visible_z(x)
    return float(min(near * rng.uniform(1.0, spread), far))


def _scene_objects(rng, cam, street: _Street) -> list[Item]:
    far = street.end - 2.0
    items: list[Item] = []
    sides = (-1, 1)
    # Thin structures: every image gets poles, lights and signs.
    for factory, most, spread in ((_street_light, 3, 4.0), (_traffic_light, 2, 3.0), (_traffic_sign, 3, 3.0)):
        for _ in range(int(rng.integers(1, most + 1))):
            side = sides[rng.integers(2)]
            z = _visible_z(rng, cam, street.curb(side) + side * 0.6, far, spread)
            items.append(factory(rng, cam, street, side, z))
    if rng.random() < 0.5:
        items.append(_railing(rng, cam, street, sides[rng.integers(2)]))
    for _ in range(int(rng.integers(0, 7))):
        side = sides[rng.integers(2)]
        x = street.on_sidewalk(rng, side, 0.3, 0.7)
        items.append(_tree(rng, cam, x, _visible_z(rng, cam, x, far, 6.0)))
    items += _traffic(rng, cam, street, far)
    for _ in range(int(rng.integers(0, 6))):
        side = sides[rng.integers(2)]
        x = street.on_sidewalk(rng, side)
        items.append(_person(rng, cam, x, _visible_z(rng, cam, x, far, 5.0)))
    if rng.random() < 0.35:
        side = sides[rng.integers(2)]
        x = street.curb(side) - side * rng.uniform(0.6, 1.2)
        items.append(_rider(rng, cam, x, _visible_z(rng, cam, x, far, 4.0)))
    if rng.random() < 0.3:
        side = sides[rng.integers(2)]
        x = street.on_sidewalk(rng, side, 0.7, 0.9)
        items.append(_parked_bicycle(rng, cam, x, _visible_z(rng, cam, x, far, 4.0)))
    return items


def _traffic(rng, cam, street: _Street, far: float) -> list[Item]:
    """Cars driving in the lanes and parked along the curbs."""
    lane = 2 * street.road_half / street.lanes
    items = []
    for _ in range(int(rng.integers(1, 5))):
        x = -street.road_half + lane * (int(rng.integers(street.lanes)) + 0.5) + rng.uniform(-0.3, 0.3)
        items.append(_car(rng, cam, x, rng.uniform(7.0, min(far, 60.0))))
    for side in (-1, 1):
        if rng.random() < 0.4:
            x = street.curb(side) - side * 1.15
            z = cam.nearest_visible_z(x) * rng.uniform(1.0, 2.0)
            for _ in range(int(rng.integers(1, 4))):
                if z >= far:
                    break
                items.append(_car(rng, cam, x, z))
                z += rng.uniform(6.0, 15.0)
    return items


# --------------------------------------------------------------------------- camera effects


def _grain_lut() -> np.ndarray:
    # Per-class grain (std of luminance noise): rough surfaces look rough, sky is smooth.
    lut = np.zeros(256, np.float32)
    for label, std in ((ROAD, 7), (SIDEWALK, 5), (BUILDING, 5), (TERRAIN, 16), (VEGETATION, 14), (SKY, 1.5)):
        lut[label] = std
    return lut


_GRAIN = _grain_lut()


def _finish(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Lighting, colour cast, defocus and sensor noise; returns the RGB uint8 image."""
    height, width = canvas.labels.shape
    image = canvas.image
    image *= (rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    # Light falls off across the frame (sun from one side, vignetting).
    ramp = np.linspace(-1, 1, width, dtype=np.float32) * rng.uniform(-0.15, 0.15)
    image *= (1 + ramp)[None, :, None]
    if rng.random() < 0.7:
        image[:] = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.1))
    grain = rng.standard_normal((height, width), dtype=np.float32) * _GRAIN[canvas.labels]
    image += grain[:, :, None]
    image += rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(1.5, 5.0)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 HxWx3 image, uint8 HxW label-id map)."""
    cam = _random_camera(rng, height, width)
    street = _random_street(rng)
    canvas = _Canvas(height, width)
    _draw_sky(canvas, rng, cam)
    _draw_ground(canvas, rng, cam, street)
    _draw_shadows(canvas, rng, cam, street)
    _draw_backdrop(canvas, rng, cam, street)
    _draw_street_sides(canvas, rng, cam, street)
    for _, draw in sorted(_scene_objects(rng, cam, street), key=lambda item: -item[0]):
        draw(canvas)
    return _finish(canvas, rng), canvas.labels


# --------------------------------------------------------------------------- dataset writer


def _check_config(out: Path, config: SynthCityConfig) -> None:
    for name in ("train", "val", "height", "width", "seed"):
        value = getattr(config, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise FornetError(f"synthcity {name} must be an integer, got {value!r}")
    if config.train < 0 or config.val < 0 or config.train + config.val < 1:
        raise FornetError(
            "synthcity needs non-negative image counts and at least one image, "
            f"got train={config.train} val={config.val}"
        )
    for name in ("height", "width"):
        value = getattr(config, name)
        if value < 64 or value % 32:
            raise FornetError(f"synthcity {name} must be a multiple of 32 and at least 64, got {value}")
    if config.seed < 0:
        raise FornetError(f"synthcity seed must be non-negative, got {config.seed}")
    if out.exists() and not out.is_dir():
        raise FornetError(f"synthcity output {out} exists and is a file, not a folder")
    # Never mix generated images into a real dataset someone already has there.
    has_layout = (out / "leftImg8bit").exists() or (out / "gtFine").exists()
    if has_layout and not (out / MANIFEST_NAME).is_file():
        raise FornetError(
            f"{out} already holds a dataset that SynthCity did not write; choose another --out folder"
        )


def sample_name(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of image ``index`` of a split."""
    cities = next(c for s, _, c in SPLITS if s == split)
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def _remove_stale(out: Path, split: str, keep: set[str]) -> None:
    """Delete images of a previous, larger run so the folder matches the config."""
    pattern = re.compile(r"^synth[a-z]+_\d{6}_\d{6}$")
    for city in next(c for s, _, c in SPLITS if s == split):
        for folder, suffix in (("leftImg8bit", IMAGE_SUFFIX), ("gtFine", LABEL_SUFFIX)):
            for path in (out / folder / split / city).glob(f"*{suffix}"):
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
    total = config.train + config.val
    counts = np.zeros(NUM_CLASSES + 1, np.int64)  # last bin: ignore
    done = 0
    for split, code, _ in SPLITS:
        stems = set()
        for index in range(getattr(config, split)):
            rng = np.random.default_rng([config.seed, code, index])
            image, label_ids = render_scene(rng, config.height, config.width)
            city, stem = sample_name(split, index)
            stems.add(stem)
            write_png(out / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}", image)
            write_png(out / "gtFine" / split / city / f"{stem}{LABEL_SUFFIX}", label_ids)
            if split == "train":
                train_ids = label_ids_to_train_ids(label_ids)
                counts += np.bincount(np.minimum(train_ids, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
            done += 1
            if progress is not None:
                progress(done, total)
        _remove_stale(out, split, stems)
    pixels = counts.sum()
    manifest["complete"] = True
    manifest["class_fractions"] = (
        {name: float(counts[i] / pixels) for i, name in enumerate(CLASS_NAMES)} if pixels else {}
    )
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest
