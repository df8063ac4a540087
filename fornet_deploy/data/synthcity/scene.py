"""SynthCity's static scene: sky, ground, road, sidewalks, shadows, buildings, parks."""

from __future__ import annotations

import numpy as np

from .canvas import (
    BUILDING,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    Color,
    _Camera,
    _Canvas,
    _ellipse,
    _front_quads,
    _ground_quads,
    _side_quads,
    _Street,
    _tone,
)
from .objects import _fence_along, _tree

_NEAR_Z, _FAR_Z = 1.0, 3000.0  # ground strips run from under the camera to the horizon

_FACADE_COLORS = (
    (150, 140, 125), (175, 160, 135), (130, 75, 60), (200, 195, 185),
    (110, 105, 100), (165, 120, 85), (185, 175, 140), (95, 90, 95),
)


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
