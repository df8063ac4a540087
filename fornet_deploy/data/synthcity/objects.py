"""SynthCity's objects: poles, street lights, traffic lights and signs, trees, fences,
cars, persons, riders and bicycles (the thin structures FoR-Net should focus on)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .canvas import (
    _GREENS,
    BICYCLE,
    CAR,
    FENCE,
    PERSON,
    POLE,
    RIDER,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
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
