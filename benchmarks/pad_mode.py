"""What FoR-Net's padding to the stride should hold: zeros (the mean colour) or the edge.

An input whose side is not a multiple of 32 is padded at the bottom and right inside the
network (model/fornet.py). This script crops SynthCity validation images (top-left, so the
crop's bottom and right edges lie inside the scene) to sizes that are not multiples of 32,
runs the shipped model on each crop with each pad mode, and scores against the labels:

* mIoU of the crop (all pixels), and of the *border band*: the last 32 rows and columns
  of the crop, the pixels closest to the padding;
* agreement with the *context* prediction: the model on the whole 32-aligned image,
  cropped, which saw the real scene where the padding is (an upper bound: no padding
  can do better than the true pixels).

    fornet-deploy synthcity --out /tmp/sc_pad --train 0 --val 16 --shape 256x512
    python benchmarks/pad_mode.py --data /tmp/sc_pad --json pad_mode.json

Without ``--data`` it generates those 16 images (seed 0) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fornet_deploy.contract import SHIPPED_WEIGHTS
from fornet_deploy.data.cityscapes import find_samples, load_sample
from fornet_deploy.data.transforms import Preprocessing, normalize
from fornet_deploy.evaluation.metrics import SegmentationMetrics
from fornet_deploy.model import fornet
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.model.padding import PAD_MODES

CROPS = ((250, 500), (240, 490), (225, 481), (200, 450), (161, 333))
BAND = 32


def border_band(hw: tuple[int, int]) -> np.ndarray:
    band = np.zeros(hw, bool)
    band[-BAND:, :] = True
    band[:, -BAND:] = True
    return band


@torch.no_grad()
def predict(model, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(normalize(image, Preprocessing()))[None]
    return model(x)[0].argmax(0).numpy().astype(np.uint8)


def measure(data: Path) -> dict:
    model, _ = load_checkpoint(SHIPPED_WEIGHTS)
    model.eval()
    samples = find_samples(data, "val")
    scores = {}
    for mode in (*PAD_MODES, "context"):
        full, band = SegmentationMetrics(), SegmentationMetrics()
        agree = agree_band = total_band = total = 0
        for sample in samples:
            image, labels = load_sample(sample)
            context = predict(model, image)
            for h, w in CROPS:
                crop, truth, ref = image[:h, :w], labels[:h, :w], context[:h, :w]
                if mode == "context":
                    pred = ref
                else:
                    fornet.PAD_MODE = mode
                    pred = predict(model, np.ascontiguousarray(crop))
                inside = border_band((h, w))
                full.update(pred, truth)
                band.update(np.where(inside, pred, 255), np.where(inside, truth, 255))
                agree += int((pred == ref).sum())
                total += pred.size
                agree_band += int((pred == ref)[inside].sum())
                total_band += int(inside.sum())
        scores[mode] = {"miou": full.result()["miou"], "band_miou": band.result()["miou"],
                        "agreement_with_context": agree / total, "band_agreement_with_context": agree_band / total_band}
    return {"images": len(samples), "crops": [list(c) for c in CROPS], "band_px": BAND, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from fornet_deploy.data.synthcity import SynthCityConfig, generate

            data = Path(tmp)
            generate(data, SynthCityConfig(train=0, val=16, height=256, width=512, seed=0))
        result = measure(data)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
