"""SynthCity writes the Cityscapes layout the real loader reads, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fornet_deploy.data.cityscapes import LABEL_ID_BY_NAME, LABELS
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.synthcity import MANIFEST_NAME, SynthCityConfig, generate, render_scene
from fornet_deploy.errors import FornetError

SMALL = dict(height=128, width=256)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("synthcity")
    calls = []
    config = SynthCityConfig(train=3, val=2, seed=7, **SMALL)
    summary = generate(out, config, progress=lambda *a: calls.append(a))
    return out, summary, calls


def test_layout_is_read_back_by_the_cityscapes_loader(dataset):
    out, _, _ = dataset
    for split, n in (("train", 3), ("val", 2)):
        samples = open_dataset(out).samples(split)
        assert len(samples) == n
        for sample in samples:
            assert sample.image.name.endswith("_000019_leftImg8bit.png")
            image, train_ids = open_dataset(out).load(sample)
            assert image.shape == (128, 256, 3) and image.dtype == np.uint8
            assert train_ids.shape == (128, 256) and train_ids.dtype == np.uint8
            assert (train_ids != 255).all()  # every pixel gets a class


def test_summary_manifest_and_progress(dataset):
    out, summary, calls = dataset
    assert calls == [(i, 5) for i in range(1, 6)]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest == summary
    assert manifest["complete"] and manifest["seed"] == 7 and manifest["train"] == 3
    assert sum(summary["class_fractions"].values()) == pytest.approx(1.0)
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_label_files_hold_valid_cityscapes_label_ids(dataset):
    out, _, _ = dataset
    valid = {label_id for label_id, _, _ in LABELS}
    for path in out.glob("gtFine/*/*/*_gtFine_labelIds.png"):
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 2 and raw.dtype == np.uint8
        assert set(np.unique(raw).tolist()) <= valid


def test_same_seed_is_byte_identical_and_another_seed_differs(dataset, tmp_path):
    out, _, _ = dataset
    generate(tmp_path / "again", SynthCityConfig(train=3, val=2, seed=7, **SMALL))
    assert _files(tmp_path / "again") == _files(out)
    generate(tmp_path / "other", SynthCityConfig(train=3, val=2, seed=8, **SMALL))
    first = "leftImg8bit/train/syntha/syntha_000000_000019_leftImg8bit.png"
    assert _files(tmp_path / "other")[first] != _files(out)[first]


def test_image_does_not_depend_on_how_many_are_generated(dataset, tmp_path):
    out, _, _ = dataset
    generate(tmp_path, SynthCityConfig(train=1, val=1, seed=7, **SMALL))
    produced = _files(tmp_path)
    reference = _files(out)
    images = [k for k in produced if k.endswith(".png")]
    assert len(images) == 4
    for name in images:
        assert produced[name] == reference[name]


def test_rerun_with_fewer_images_removes_the_extra_ones(tmp_path):
    generate(tmp_path, SynthCityConfig(train=3, val=1, **SMALL))
    generate(tmp_path, SynthCityConfig(train=1, val=1, **SMALL))
    assert len(open_dataset(tmp_path).samples("train")) == 1
    assert len(list(tmp_path.glob("gtFine/train/*/*.png"))) == 1


def test_thin_classes_are_present():
    fractions = []
    for index in range(8):
        _, label_ids = render_scene(np.random.default_rng([3, 0, index]), 128, 256)
        thin = ("pole", "traffic light", "traffic sign")
        fractions.append([np.mean(label_ids == LABEL_ID_BY_NAME[name]) for name in thin])
    fractions = np.array(fractions)
    assert (fractions[:, 0] > 0).all(), "an image without poles"
    assert (fractions[:, 2] > 0).all(), "an image without traffic signs"
    assert (fractions[:, 1] > 0).mean() >= 0.75
    assert fractions[:, 0].mean() >= 0.003
    assert fractions[:, 1].mean() >= 0.001 and fractions[:, 2].mean() >= 0.001


def test_render_scene_returns_image_and_label_ids_of_the_requested_size():
    image, label_ids = render_scene(np.random.default_rng(0), 96, 160)
    assert image.shape == (96, 160, 3) and image.dtype == np.uint8
    assert label_ids.shape == (96, 160) and label_ids.dtype == np.uint8
    assert label_ids[-1, 80] == LABEL_ID_BY_NAME["road"]  # the camera looks down the street


@pytest.mark.parametrize(
    "config",
    [
        SynthCityConfig(train=0, val=0, **SMALL),
        SynthCityConfig(train=-1, val=2, **SMALL),
        SynthCityConfig(train=1, height=63, width=256),  # any size from 64 px: 100x250 is fine
        SynthCityConfig(train=1, height=32, width=256),
        SynthCityConfig(train=1, height=128, width=9000),
        SynthCityConfig(train=1, layout="kitti", **SMALL),
        SynthCityConfig(train=1, test=-1, **SMALL),
        SynthCityConfig(train=1, seed=-1, **SMALL),
        SynthCityConfig(train=1.5, **SMALL),
    ],
)
def test_bad_arguments_raise_fornet_error(config, tmp_path):
    with pytest.raises(FornetError):
        generate(tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_or_a_foreign_dataset_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FornetError, match="is a file"):
        generate(a_file, SynthCityConfig(train=1, **SMALL))
    real = tmp_path / "cityscapes"
    (real / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FornetError, match="did not write"):
        generate(real, SynthCityConfig(train=1, **SMALL))


def test_an_interrupted_dataset_is_refused_until_the_named_command_finishes_it(tmp_path, dataset):
    import shlex

    from cli_helpers import run_cli

    out = tmp_path / "partial"

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(out, SynthCityConfig(train=3, val=2, seed=7, **SMALL), progress=interrupt)
    for split in ("train", "val"):  # what train, eval and calibrate read through
        with pytest.raises(FornetError, match="incomplete SynthCity dataset") as info:
            open_dataset(out).samples(split)
        assert "\n" not in str(info.value)
    command = shlex.split(str(info.value).split("`")[1])
    assert command[:2] == ["fornet-deploy", "synthcity"]
    result = run_cli(*command[1:])
    assert result.returncode == 0, result.stderr
    assert len(open_dataset(out).samples("train")) == 3
    assert _files(out) == _files(dataset[0])  # the command names the interrupted run's settings
