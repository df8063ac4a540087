"""One SynthCity scene: static scene, objects far to near, then camera effects."""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import BUILDING, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION, _Canvas, _random_camera, _random_street
from .objects import _scene_objects
from .scene import _draw_backdrop, _draw_ground, _draw_shadows, _draw_sky, _draw_street_sides


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
