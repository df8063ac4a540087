"""The :class:`Segmenter`: a runner plus the bundle's preprocessing, an RGB image of any
size in, a :class:`Prediction` at that size out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundle import Bundle
from ..contract import IMPORTANCE, TOPK_MASK, check_size
from ..data.labels import LabelSet, default_label_set, manifest_label_set
from ..data.transforms import Preprocessing, preprocess
from ..errors import FornetError
from ..evaluation.postprocess import label_outputs, predicted_labels, upsampled_importance, upsampled_mask
from ..runtimes.base import Runner, network_size
from ..runtimes.registry import load_runner

ALL_OUTPUTS_OPTION = "--outputs logits,labels,importance,topk_mask"


# ---------------------------------------------------------------------------- inference


@dataclass
class Prediction:
    """What a segmenter says about one image, everything at the image's size."""

    labels: np.ndarray  # H x W uint8 train ids
    importance: np.ndarray | None  # H x W float32, bilinear from 1/8 scale (when asked)
    mask: np.ndarray | None  # H x W bool, the Top-K regions, nearest from 1/8 scale (when asked)


class Segmenter:
    """A runner plus the bundle's preprocessing: an RGB image of any size in, a
    :class:`Prediction` at that size out. What ``fornet-deploy predict`` runs, and the
    Python API's entry point::

        with Segmenter.from_bundle("bundle", runtime="ort", precision="fp16") as segment:
            prediction = segment(rgb_image)          # H x W x 3 uint8
            prediction.labels                        # H x W class ids
            segment.classes[prediction.labels[0, 0]] # its name; segment.colorize(prediction) its colours
            predictions = segment([image_a, image_b])  # a batch: one Prediction per image

    Images: RGB ``H x W x 3`` uint8; a greyscale ``H x W`` or ``H x W x 1`` image is
    converted to RGB by repeating its channel (what reading a greyscale file does). A batch
    is a list of images (any sizes) or an ``N x H x W x 3`` array; it gives a list of
    predictions, each equal to that image run alone. Images that share a network size run
    as one batch, which needs an artefact with a dynamic batch (``export --dynamic``).

    ``shape`` fixes the network input (H, W); without it, an image runs at its own size on a
    dynamic artefact (the network pads to its stride and crops itself), else at the
    artefact's fixed size or the preprocessing's fixed resize; the prediction is always
    resized back to the image.
    """

    def __init__(self, runner: Runner, preprocessing: Preprocessing, shape: tuple[int, int] | None = None,
                 labels: LabelSet | None = None):
        self.runner = runner
        self.preprocessing = preprocessing
        self.shape = shape
        # what the class ids mean (names, colours); a runner without a bundle: the default set
        self.labels = labels or default_label_set(19)

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, runtime: str = "ort", precision: str | None = None,
                    device: str = "cpu", shape: tuple[int, int] | None = None, **runner_options) -> "Segmenter":
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle, verify=False)  # the runner checks the hash of its artefact
        labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
        runner = load_runner(bundle, runtime, precision, device, **runner_options)
        return cls(runner, Preprocessing.from_dict(bundle.manifest["preprocessing"]), shape, labels)

    def __enter__(self) -> "Segmenter":
        self.runner.activate()
        if self.shape is not None:
            check_size(*self.shape)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    # what the class ids mean ---------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by id (``classes[prediction.labels[y, x]]``), from the bundle's label set."""
        return self.labels.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour of each class id."""
        return self.labels.palette

    def colorize(self, labels: "Prediction | np.ndarray") -> np.ndarray:
        """H x W x 3 uint8 RGB picture of a prediction (or a class-id map) in the palette."""
        return self.labels.colorize(labels.labels if isinstance(labels, Prediction) else labels)

    # sizes ---------------------------------------------------------------------------
    def network_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The network input size for an image of size ``hw`` (the rule every stage uses)."""
        return network_size(self.runner.input_spec(), self.preprocessing, hw, self.shape)

    def check_size(self, hw: tuple[int, int], source: str = "image") -> tuple[int, int]:
        """The network size for ``hw``, checked against the artefact before any work."""
        net_hw = self.network_size(hw)
        try:
            self.runner.input_spec().check_shape((1, 3, *net_hw))
        except FornetError as exc:
            raise FornetError(f"{source}: {exc}") from None
        return net_hw

    # inference -----------------------------------------------------------------------
    def __call__(self, images: np.ndarray | Sequence[np.ndarray], importance: bool = False,
                 mask: bool = False) -> "Prediction | list[Prediction]":
        """One image -> a :class:`Prediction`; a batch (list, or ``N x H x W x 3``) -> a list."""
        batch = as_image_batch(images)
        extra = (IMPORTANCE,) * importance + (TOPK_MASK,) * mask
        missing = [name for name in extra if name not in self.runner.output_names()]
        if missing:
            raise FornetError(
                f"{self.runner.info().artifact} was exported without the {' and '.join(missing)} output; "
                f"re-export it with `fornet-deploy export ... {ALL_OUTPUTS_OPTION}`"
            )
        wanted = label_outputs(self.runner.output_names(), *extra)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(batch.images):
            groups.setdefault(self.network_size(image.shape[:2]), []).append(i)
        predictions: list[Prediction | None] = [None] * len(batch.images)
        for (net_h, net_w), members in groups.items():
            self._check_batch(len(members))
            pre = replace(self.preprocessing, resize="fixed", height=net_h, width=net_w)
            outputs = self.runner(preprocess([batch.images[i] for i in members], pre), outputs=wanted)
            for index, i in enumerate(members):
                hw = batch.images[i].shape[:2]
                predictions[i] = Prediction(
                    predicted_labels(outputs, hw, index),
                    upsampled_importance(outputs, hw, index) if importance else None,
                    upsampled_mask(outputs, hw, index) if mask else None)
        return predictions if batch.is_batch else predictions[0]

    def _check_batch(self, count: int) -> None:
        """A batch the artefact cannot take is one line with the fix, before any work."""
        spec = self.runner.input_spec()
        fixed = spec.shape[0]
        artifact = self.runner.info().artifact
        if fixed is not None and count != fixed:
            raise FornetError(
                f"{artifact} takes batches of exactly {fixed} image{'s' * (fixed != 1)} (a fixed batch), got "
                f"{count}: run the images one at a time, or re-export with `fornet-deploy export ... --dynamic`")
        if spec.max_shape is not None and count > spec.max_shape[0]:
            raise FornetError(
                f"{artifact} takes at most {spec.max_shape[0]} images a batch (its profile), got {count}: "
                f"run smaller batches, or rebuild with `fornet-deploy build-trt ... --max-batch {count}`")


@dataclass(frozen=True)
class ImageBatch:
    """RGB images to segment, and whether the caller gave a batch (a list comes back)."""

    images: list[np.ndarray]
    is_batch: bool


def as_image_batch(images: np.ndarray | Sequence[np.ndarray]) -> ImageBatch:
    """One image or a batch, as RGB ``H x W x 3`` uint8 arrays; greyscale ``H x W`` or
    ``H x W x 1`` images are repeated to three channels. Anything else is one line that
    says what was given and what is taken."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return ImageBatch([as_rgb(image, f"image {i}") for i, image in enumerate(images)], True)
        return ImageBatch([as_rgb(images, "image")], False)
    if isinstance(images, (list, tuple)):
        if not images:
            raise FornetError("an empty batch: give at least one image")
        return ImageBatch([as_rgb(image, f"image {i}") for i, image in enumerate(images)], True)
    raise FornetError(f"expected an image (H x W x 3 uint8 array), a list of images or an N x H x W x 3 array, "
                      f"got {type(images).__name__}")


def as_rgb(image: np.ndarray, source: str) -> np.ndarray:
    """An RGB ``H x W x 3`` uint8 image; greyscale (``H x W``, ``H x W x 1``) repeated to RGB."""
    if not isinstance(image, np.ndarray):
        raise FornetError(f"{source}: expected a numpy image array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise FornetError(f"{source}: expected uint8 pixels (0..255), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    shape = "x".join(str(s) for s in image.shape)
    raise FornetError(f"{source}: expected an H x W x 3 RGB image, an H x W greyscale image or an N x H x W x 3 "
                      f"batch, got shape {shape}"
                      + (" (RGBA: drop the alpha channel, image[..., :3])" if image.ndim == 3 and image.shape[2] == 4
                         else ""))
