"""The Segmenter on batches, greyscale images and its label set; a runner asked for an output
its artefact does not have (issue 25, item 1: no silent wrong answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fornet_deploy as fd
from fornet_deploy.contract import SHIPPED_WEIGHTS
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.errors import FornetError
from fornet_deploy.export.onnx import ExportConfig, export_bundle
from fornet_deploy.io import read_image


@pytest.fixture(scope="module")
def images(tiny_data) -> list[np.ndarray]:
    return [read_image(s.image) for s in open_dataset(tiny_data).samples("val")]


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory) -> Path:
    """The shipped weights (a trained model: its labels vary across a scene, so a batch
    mixed up with another image would show)."""
    out = tmp_path_factory.mktemp("dynamic") / "bundle"
    export_bundle(SHIPPED_WEIGHTS, out, ExportConfig(height=128, width=256, dynamic=True))
    return out


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("static") / "bundle"
    export_bundle(tiny_checkpoint, out, ExportConfig(height=128, width=256, dynamic=False))
    return out


def alone(segment, images, **pictures) -> list:
    return [segment(image, **pictures) for image in images]


def same(a, b) -> bool:
    return (np.array_equal(a.labels, b.labels) and np.array_equal(a.mask, b.mask)
            and np.array_equal(a.importance, b.importance))


@pytest.mark.parametrize("artifact", ["model.cpu.onnx", "model.onnx"])
def test_every_image_of_a_batch_equals_the_same_image_run_alone(dynamic_bundle, images, artifact):
    """On a --dynamic bundle: a list (sizes mixed) and an N x H x W x 3 array give one
    prediction per image, each identical to that image run alone."""
    odd = np.ascontiguousarray(images[0][:96, :160])  # another network size: a batch of its own
    mixed = [images[0], odd, images[1], images[2]]
    with fd.load_segmenter(dynamic_bundle, artifact=artifact) as segment:
        singles = alone(segment, mixed, importance=True, mask=True)
        from_list = segment(mixed, importance=True, mask=True)
        from_array = segment(np.stack(images), importance=True, mask=True)
    assert isinstance(from_list, list) and len(from_list) == 4
    assert [p.labels.shape for p in from_list] == [(128, 256), (96, 160), (128, 256), (128, 256)]
    assert all(same(b, s) for b, s in zip(from_list, singles))
    assert len(from_array) == 3 and all(same(b, s) for b, s in zip(from_array, [singles[0], *singles[2:]]))
    # the check above can fail: the images' labels differ, and each image has several classes
    assert not np.array_equal(from_array[0].labels, from_array[1].labels)
    assert all(len(np.unique(p.labels)) > 3 for p in from_array)


def test_a_static_bundle_takes_one_image_and_names_export_dynamic_for_more(static_bundle, images):
    with fd.load_segmenter(static_bundle) as segment:
        one = segment([images[0]])
        assert len(one) == 1 and np.array_equal(one[0].labels, segment(images[0]).labels)
        with pytest.raises(FornetError, match=r"exactly 1 image .*export \.\.\. --dynamic"):
            segment(np.stack(images[:2]))
        with pytest.raises(FornetError, match="--dynamic"):
            segment(images[:2])


def test_a_greyscale_image_is_segmented_as_rgb_and_other_shapes_are_one_line(tiny_bundle, images):
    grey = images[0][..., 1].copy()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    with fd.load_segmenter(tiny_bundle) as segment:
        expected = segment(rgb).labels
        assert np.array_equal(segment(grey).labels, expected)
        assert np.array_equal(segment(grey[..., None]).labels, expected)
        with pytest.raises(FornetError, match=r"got shape 128x256x4 \(RGBA"):
            segment(np.zeros((128, 256, 4), np.uint8))
        with pytest.raises(FornetError, match="uint8"):
            segment(images[0].astype(np.float32))
        with pytest.raises(FornetError, match="empty batch"):
            segment([])


def test_the_segmenter_says_what_its_class_ids_mean(tiny_bundle, images):
    with fd.load_segmenter(tiny_bundle) as segment:
        prediction = segment(images[0])
        assert segment.classes[0] == "road" and len(segment.classes) == len(segment.palette) == 19
        picture = segment.colorize(prediction)
        assert picture.shape == (128, 256, 3) and picture.dtype == np.uint8
        y, x = 10, 20
        assert tuple(picture[y, x]) == segment.palette[prediction.labels[y, x]]
        assert np.array_equal(segment.colorize(prediction.labels), picture)


def test_a_runner_refuses_an_output_name_its_artefact_does_not_have(tiny_bundle):
    batch = np.zeros((1, 3, 128, 256), np.float32)
    with fd.load_runner(tiny_bundle) as cpu_graph:  # model.cpu.onnx: coarse_logits, no logits
        assert set(cpu_graph(batch, outputs=["labels"])) == {"labels"}
        with pytest.raises(FornetError, match=r"model.cpu.onnx has no output 'logits': it is a CPU graph.*"
                                              r"'coarse_logits'.*model.onnx"):
            cpu_graph(batch, outputs=["logits"])
        with pytest.raises(FornetError, match=r"no output 'labelz' \(its outputs: .*labels.*topk_mask"):
            cpu_graph(batch, outputs=["labels", "labelz"])
        with pytest.raises(FornetError, match=r"outputs=\['labels'\]"):
            cpu_graph(batch, outputs="labels")
    with fd.load_runner(tiny_bundle, artifact="model.onnx") as full:
        assert full(batch, outputs=["logits"])["logits"].shape[2:] == (128, 256)
    with fd.load_runner(tiny_bundle, "torch") as reference:
        with pytest.raises(FornetError, match="no output 'labelz'"):
            reference(batch, outputs=("labelz",))
