"""Preprocessing (the one place every runtime takes it from) and training augmentation.

The preprocessing parameters are written to a bundle's manifest, so PyTorch, ONNX
Runtime, TensorRT and the Jetson side reproduce the same input tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..contract import MAX_SIDE, check_pixels
from ..errors import FornetError


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value))


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the network input (NCHW float32)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"  # order of the network's input channels
    scale: float = 1.0 / 255.0  # applied before mean/std
    # Resize policy: "none" keeps the image size (any size: the network pads to its stride);
    # "fixed" resizes bilinearly to (height, width) and the prediction back afterwards.
    resize: str = "none"
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        """Values a manifest may carry are checked here: it is untrusted input."""
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or len(value) != 3 or not all(_finite(v) for v in value):
                raise FornetError(f"preprocessing {key} must be 3 finite numbers, got {value!r}")
        if 0.0 in self.std:
            raise FornetError("preprocessing std must not be 0")
        if not _finite(self.scale) or self.scale <= 0:
            raise FornetError(f"preprocessing scale must be a positive number, got {self.scale!r}")
        if self.channel_order not in ("RGB", "BGR", "rgb", "bgr"):
            raise FornetError(f"unknown channel order {self.channel_order!r} (use RGB or BGR)")
        if self.resize not in ("none", "fixed"):
            raise FornetError(f"unknown resize policy {self.resize!r} (use 'none' or 'fixed')")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SIDE):
                raise FornetError(f"preprocessing {key} must be an integer from 1 to {MAX_SIDE}, got {value!r}")
        if self.height is not None and self.width is not None:
            check_pixels(1, self.height, self.width, "preprocessing resize", FornetError)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        if not isinstance(data, dict):
            raise FornetError(f"preprocessing must be an object of fields, got a {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise FornetError(f"unknown preprocessing fields {sorted(unknown)}")
        values = dict(data)
        for key in ("mean", "std"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def target_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        if self.resize == "fixed":
            if not self.height or not self.width:
                raise FornetError("preprocessing resize='fixed' needs height and width")
            return int(self.height), int(self.width)
        if self.resize == "none":
            return image_hw
        raise FornetError(f"unknown resize policy {self.resize!r} (use 'none' or 'fixed')")


def check_image(image: np.ndarray, source: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise FornetError(f"{source}: expected a uint8 image array")
    if image.ndim != 3 or image.shape[2] != 3:
        shape = "x".join(str(s) for s in image.shape)
        raise FornetError(f"{source}: expected an HxWx3 colour image, got shape {shape}")


def normalize(image_rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """HxWx3 RGB uint8 -> 3xHxW float32, no resizing."""
    x = image_rgb.astype(np.float32) * np.float32(pre.scale)
    if pre.channel_order.upper() == "BGR":
        x = x[..., ::-1]
    elif pre.channel_order.upper() != "RGB":
        raise FornetError(f"unknown channel order {pre.channel_order!r} (use RGB or BGR)")
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images: np.ndarray | list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """RGB uint8 image(s) -> NCHW float32 batch, resized as the policy says.

    All images of a batch must end up with the same size.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    batch = []
    for i, image in enumerate(images):
        check_image(image, f"image {i}")
        h, w = pre.target_size(image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        batch.append(normalize(image, pre))
    shapes = {b.shape for b in batch}
    if len(shapes) > 1:
        raise FornetError(f"images of one batch have different sizes {sorted(shapes)}")
    return np.stack(batch)


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a label map (nearest neighbour, so no invented classes)."""
    if labels.shape[:2] == tuple(hw):
        return labels
    return cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: random scale, crop, horizontal flip, photometric jitter."""

    crop_height: int = 256
    crop_width: int = 512
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    ignore_index: int = 255

    def __call__(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one RGB uint8 image and its train-id labels with the given generator."""
        scale = rng.uniform(*self.scale_range)
        h, w = labels.shape
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)

        # Pad (image with 0, labels with ignore) up to the crop, then crop at random.
        ph, pw = max(self.crop_height - nh, 0), max(self.crop_width - nw, 0)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            labels = cv2.copyMakeBorder(
                labels, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_index
            )
        y = int(rng.integers(0, labels.shape[0] - self.crop_height + 1))
        x = int(rng.integers(0, labels.shape[1] - self.crop_width + 1))
        image = image[y : y + self.crop_height, x : x + self.crop_width]
        labels = labels[y : y + self.crop_height, x : x + self.crop_width]

        if self.flip and rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]

        image = self._photometric(image, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)

    def _photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = image.astype(np.float32)
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        s = 1.0 + rng.uniform(-self.saturation, self.saturation)
        x = x * b
        x = (x - x.mean()) * c + x.mean()
        gray = x.mean(axis=2, keepdims=True)
        x = (x - gray) * s + gray
        return np.clip(x, 0, 255).astype(np.uint8)
