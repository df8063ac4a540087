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

from .dataset import MANIFEST_NAME, SYNTHCITY_VERSION, SynthCityConfig, generate, sample_name
from .render import render_scene

__all__ = ["MANIFEST_NAME", "SYNTHCITY_VERSION", "SynthCityConfig", "generate", "render_scene", "sample_name"]
