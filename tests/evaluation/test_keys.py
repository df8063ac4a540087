"""Pictures with their key (issue 25, item 5): the parity diff's heat map on one scale per run,
written on it, titled panels, a legend of the classes shown, colour bars, a note when the
network saw an image stretched."""

from __future__ import annotations

import numpy as np
import pytest

from fornet_deploy.data.labels import default_label_set
from fornet_deploy.evaluation.keys import STRIP, aspect_note, aspect_text, colour_bar, legend, text_strip
from fornet_deploy.evaluation.parity import THRESHOLDS, picture_scale
from fornet_deploy.evaluation.postprocess import HEATMAP, DiffInputs, diff_picture

LABELS = default_label_set(19)
H, W = 64, 128


def inputs(diff_max: float, network_hw=(H, W), classes=(0, 2)) -> DiffInputs:
    rng = np.random.default_rng(0)
    reference = np.full((H, W), classes[0], np.uint8)
    reference[:, W // 2:] = classes[1]
    candidate = reference.copy()
    candidate[:4, :4] = classes[1]  # a few pixels disagree
    diff = rng.uniform(0, diff_max, (H // 4, W // 4)).astype(np.float32)
    diff[0, 0] = diff_max
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return DiffInputs("x", image, reference, candidate, diff, network_hw)


def heat_panel(picture: np.ndarray) -> np.ndarray:
    title = text_strip(W, ["t"]).shape[0]
    return picture[title:title + H, 3 * W:4 * W]


def test_one_scale_per_run_a_tiny_difference_stays_dark():
    """An FP32 difference of 1e-5 next to an INT8 one of 1.5, on the run's scale 1.5: the
    first is the colour map's bottom, the second reaches its top (per-image scaling, the old
    way, made both look equally hot)."""
    scale = 1.5
    tiny, large = (heat_panel(diff_picture(inputs(d), LABELS, scale)) for d in (1e-5, 1.5))
    bottom, top = (colour_bar(256, HEATMAP, "0", "1", "")[0, i] for i in (0, 255))
    assert (np.abs(tiny.astype(int) - bottom).max(-1) <= 2).mean() > 0.99
    assert (np.abs(large.astype(int) - top).max(-1) <= 8).any()
    assert not (np.abs(tiny.astype(int) - top).max(-1) <= 8).any()


def test_the_scale_is_the_threshold_or_the_largest_difference_of_the_run():
    reports = [{"summary": {"max_abs_logit": v}} for v in (0.2, 1.7, None)]
    assert picture_scale(reports, THRESHOLDS["fp32"]) == 1e-3  # FP32 checks logits: its threshold
    assert picture_scale(reports, THRESHOLDS["int8"]) == 1.7  # else the run's largest
    assert picture_scale([{"summary": {"max_abs_logit": None}}], THRESHOLDS["fp16"]) is None


def test_panels_are_titled_and_the_legend_shows_only_the_classes_present():
    picture = diff_picture(inputs(0.5, classes=(0, 13)), LABELS, 0.5)
    title = text_strip(W, ["t"]).shape[0]
    strip = picture[:title]
    assert (strip == STRIP).all(-1).mean() > 0.7 and (strip == 255).all(-1).any()  # white text on the strip
    below = picture[title + H:, :3 * W]  # the legend under the three label panels

    def shown(colour) -> bool:
        return bool((below == np.array(colour, np.uint8)).all(-1).sum() >= 16)  # a swatch, not a stray pixel

    assert shown(LABELS.palette[0]) and shown(LABELS.palette[13])  # road, car
    assert not any(shown(LABELS.palette[i]) for i in range(19) if i not in (0, 13))
    assert picture.shape[1] == 4 * W  # the heat panel, with its colour bar below it
    bar = picture[title + H:, 3 * W:]
    assert any((np.abs(bar[row].astype(int) - colour_bar(W, HEATMAP, "0", "1", "")[0]).max() <= 2)
               for row in range(bar.shape[0]))


def test_no_heat_panel_without_logits_to_compare():
    plain = inputs(1.0)
    picture = diff_picture(DiffInputs(plain.name, plain.image, plain.reference, plain.candidate, None, (H, W)),
                           LABELS, None)
    assert picture.shape[1] == 3 * W


@pytest.mark.parametrize("image_hw, network_hw, note", [
    ((720, 1280), (512, 1024), "720x1280 (16:9) ran at 512x1024 (2:1): the network saw it stretched"),
    ((1024, 2048), (512, 1024), None), ((100, 200), (96, 192), None),
    ((100, 150), (96, 160), "100x150 (3:2) ran at 96x160 (5:3)"),
])
def test_an_aspect_change_is_noted(image_hw, network_hw, note):
    found = aspect_note(image_hw, network_hw)
    assert (found is None) if note is None else note in found


def test_a_stretched_input_gets_its_note_on_the_picture():
    assert diff_picture(inputs(0.5, network_hw=(64, 96)), LABELS, 0.5).shape[0] > \
        diff_picture(inputs(0.5), LABELS, 0.5).shape[0]
    assert aspect_text(1080, 1920) == "16:9" and aspect_text(700, 1000) == "10:7"
    assert aspect_text(701, 1000) == "1.43:1"  # no small ratio fits


def test_a_legend_wraps_to_its_width():
    one_row, narrow = legend(LABELS, [0, 1], 512), legend(LABELS, range(19), 128)
    assert one_row.shape[1] == 512 and narrow.shape[1] == 128 and narrow.shape[0] > 4 * one_row.shape[0]
    assert legend(LABELS, [], 128).shape[0] == 0


def test_the_docs_show_a_parity_picture_with_its_scale():
    from pathlib import Path

    import cv2

    root = Path(__file__).resolve().parents[2]
    picture = root / "docs" / "images" / "parity_int8_synthcity.png"
    assert "(docs/images/parity_int8_synthcity.png)" in (root / "README.md").read_text()
    assert picture.stat().st_size < 300_000
    assert cv2.imread(str(picture)).shape[1] == 4 * 256  # four 128x256 panels
