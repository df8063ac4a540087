"""Frames for the end-to-end loop: encoded images decoded, preprocessed, run and turned
into label colours at the frame's size, as an application would."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundle import Bundle
from ..data.labels import LabelSet
from ..data.synthcity import render_scene
from ..data.transforms import Preprocessing, preprocess
from ..evaluation.postprocess import label_outputs, predicted_labels
from ..io import decode_image, encode_png, find_images
from ..runtimes.base import Runner

# Real images kept encoded in memory for the end-to-end loop (cycled through); enough to
# vary the content without holding a whole dataset in RAM.
MAX_FRAMES = 32


@dataclass(frozen=True)
class Frame:
    name: str
    data: bytes  # the encoded file (PNG, JPEG...): decoding is part of the end-to-end time


def decode(frame: Frame) -> np.ndarray:
    """Encoded bytes -> RGB uint8 (what :func:`~fornet_deploy.io.read_image` gives)."""
    return decode_image(frame.data, frame.name)


def synthetic_frame(height: int, width: int, seed: int = 0) -> Frame:
    """One SynthCity street scene, PNG-encoded in memory: it decodes and compresses like a
    camera frame would, unlike flat or white-noise images."""
    image, _ = render_scene(np.random.default_rng(seed), height, width)
    name = f"synthcity_{height}x{width}.png"
    return Frame(name, encode_png(image, name))


def load_frames(images: Path | None, shape: tuple[int, int]) -> tuple[list[Frame], str]:
    """Encoded frames for the end-to-end loop and a sentence saying where they came from."""
    if images is None:
        return [synthetic_frame(*shape)], f"one synthetic SynthCity scene {shape[0]}x{shape[1]}, PNG in memory"
    files = find_images(images)
    frames = [Frame(str(p), p.read_bytes()) for p in files[:MAX_FRAMES]]
    for frame in frames:
        decode(frame)  # a corrupt file fails here, not in the middle of the timed loop
    return frames, f"{len(frames)} of {len(files)} images from {images}"


def bench_preprocessing(bundle: Bundle, shape: tuple[int, int]) -> Preprocessing:
    """The bundle's preprocessing, resizing every frame to the benchmarked input size.

    A deployed pipeline feeds camera frames of any size to a network of one input size
    and maps the prediction back to the frame, so the end-to-end time includes both
    resizes (none when a frame already has the input size, as the synthetic one does).
    """
    pre = Preprocessing.from_dict(bundle.manifest.get("preprocessing", {}))
    return replace(pre, resize="fixed", height=shape[0], width=shape[1])


def run_end_to_end(runner: Runner, frames: Sequence[Frame], pre: Preprocessing, labels: LabelSet) -> list[np.ndarray]:
    """Decode, preprocess, infer and postprocess one batch of frames; returns the colour
    pictures (the label set's palette) of the predictions at each frame's size."""
    images = [decode(frame) for frame in frames]
    outputs = runner(preprocess(images, pre), outputs=label_outputs(runner.output_names()))
    runner.synchronize()
    return [labels.colorize(predicted_labels(outputs, image.shape[:2], i)) for i, image in enumerate(images)]
