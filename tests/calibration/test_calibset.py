"""The calibration set: seeded class-balanced selection, content key, cache in the bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fornet_deploy.calibration import calibset
from fornet_deploy.calibration.calibset import CalibrationSet, select_calibration_images
from fornet_deploy.contract import CALIBRATION_DIR
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.transforms import Preprocessing, preprocess
from fornet_deploy.errors import FornetError

MODEL_A, MODEL_B = "a" * 64, "b" * 64


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny dataset, free to edit."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def _classes(samples) -> set[int]:
    return {int(c) for s in samples for c in np.unique(open_dataset(s.image.parents[3]).load(s)[1]) if c != 255}


def test_greedy_cover_takes_the_rarest_class_first():
    presence = [frozenset({0, 1}), frozenset({0, 2}), frozenset({0, 1}), frozenset({0, 5}), frozenset({0, 1, 2})]
    order = [0, 1, 2, 3, 4]
    assert calibset._greedy_cover(presence, order, num=1) == [3]  # class 5 is in one image only
    chosen = calibset._greedy_cover(presence, order, num=5)
    assert set().union(*(presence[i] for i in chosen)) == {0, 1, 2, 5} and len(chosen) == 2


def test_selection_is_seeded_and_covers_every_class(tiny_data):
    everything = open_dataset(tiny_data).samples("train")
    picked = select_calibration_images(tiny_data, num=4, seed=0)
    assert picked == select_calibration_images(tiny_data, num=4, seed=0)
    assert picked == sorted(picked, key=lambda s: s.name) and len(set(picked)) == 4
    assert _classes(picked) == _classes(everything)
    assert len(select_calibration_images(tiny_data, num=100)) == len(everything)  # capped at the split


def test_selection_errors_are_one_line(tmp_path, tiny_data):
    with pytest.raises(FornetError, match="does not exist"):
        select_calibration_images(tmp_path / "missing")
    (tmp_path / "empty" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FornetError, match="no"):
        select_calibration_images(tmp_path / "empty")
    with pytest.raises(FornetError, match="at least 1"):
        select_calibration_images(tiny_data, num=0)


def test_batches_use_the_one_preprocessing(tiny_data):
    pre = Preprocessing(resize="fixed", height=64, width=128)
    calib = CalibrationSet.select(tiny_data, pre, num=3)
    batches = list(calib.batches(batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 64, 128), (1, 3, 64, 128)]
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[1][0], preprocess(open_dataset(tiny_data).load(calib.samples[2])[0], pre)[0])


def test_key_follows_model_images_and_preprocessing(data):
    calib = CalibrationSet.select(data, Preprocessing(), num=2)
    key = calib.key(MODEL_A)
    assert key == CalibrationSet.select(data, Preprocessing(), num=2).key(MODEL_A)
    assert calib.key(MODEL_B) != key
    assert CalibrationSet.select(data, Preprocessing(std=(0.5, 0.5, 0.5)), num=2).key(MODEL_A) != key
    image = cv2.imread(str(calib.samples[0].image))
    image[0, 0] ^= 1  # one pixel, one bit
    cv2.imwrite(str(calib.samples[0].image), image)
    assert calib.key(MODEL_A) != key


def test_arrays_are_cached_in_the_bundle_and_recomputed_when_stale(data, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    calib = CalibrationSet.select(data, Preprocessing(), num=2)
    images, key = calib.arrays(bundle, MODEL_A)
    npy = bundle / CALIBRATION_DIR / f"calib_{key[:16]}.npy"
    assert npy.is_file() and npy.with_suffix(".json").is_file()
    assert images.shape == (2, 3, 128, 256) and images.dtype == np.float32
    assert isinstance(images, np.memmap) and not images.flags.writeable  # RAM holds no copy of the set
    np.testing.assert_array_equal(images, np.concatenate(list(calib.batches())))

    def no_recompute(*_):
        raise AssertionError("cache not used")

    with monkeypatch.context() as patch:
        patch.setattr(CalibrationSet, "batches", no_recompute)
        cached, same_key = calib.arrays(bundle, MODEL_A)
    assert same_key == key
    np.testing.assert_array_equal(cached, images)

    _, new_key = calib.arrays(bundle, MODEL_B)  # another model: new key, the old file goes
    assert new_key != key and not npy.exists()
    new_npy = bundle / CALIBRATION_DIR / f"calib_{new_key[:16]}.npy"
    new_npy.write_bytes(new_npy.read_bytes()[:100])  # truncated behind our back
    again, _ = calib.arrays(bundle, MODEL_B)
    np.testing.assert_array_equal(again, images)


def test_images_of_different_sizes_are_one_line_and_leave_no_cache(data, tmp_path):
    calib = CalibrationSet.select(data, Preprocessing(), num=2)
    first = calib.samples[0].image
    cv2.imwrite(str(first), cv2.resize(cv2.imread(str(first)), (128, 64)))
    with pytest.raises(FornetError, match="preprocess to different sizes"):
        calib.arrays(tmp_path / "bundle", MODEL_A)
    assert not list((tmp_path / "bundle" / CALIBRATION_DIR).glob("calib_*"))
