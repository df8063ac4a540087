"""The :class:`Segmenter`: a runner plus the bundle's preprocessing, an RGB image of any
size in, a :class:`Prediction` at that size out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

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
            prediction.labels                        # H x W train ids

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
    def from_bundle(cls, bundle: Bundle | str | Path, runtime: str = "ort", precision: str = "fp32",
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

    def __call__(self, image: np.ndarray, importance: bool = False, mask: bool = False) -> Prediction:
        hw = image.shape[:2]
        net_h, net_w = self.network_size(hw)
        pre = replace(self.preprocessing, resize="fixed", height=net_h, width=net_w)
        extra = (IMPORTANCE,) * importance + (TOPK_MASK,) * mask
        outputs = self.runner(preprocess(image, pre), outputs=label_outputs(self.runner.output_names(), *extra))
        missing = [name for name in extra if name not in outputs]
        if missing:
            raise FornetError(
                f"{self.runner.info().artifact} was exported without the {' and '.join(missing)} output; "
                f"re-export it with `fornet-deploy export ... {ALL_OUTPUTS_OPTION}`"
            )
        return Prediction(predicted_labels(outputs, hw), upsampled_importance(outputs, hw) if importance else None,
                          upsampled_mask(outputs, hw) if mask else None)
