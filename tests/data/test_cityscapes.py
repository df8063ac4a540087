import cv2
import numpy as np
import pytest

from fornet_deploy.data.cityscapes import (
    CLASS_NAMES,
    LABEL_ID_BY_NAME,
    PALETTE,
    CityscapesDataset,
    find_samples,
    label_ids_to_train_ids,
    load_sample,
    train_ids_to_label_ids,
)
from fornet_deploy.errors import FornetError


def test_label_mapping_matches_the_official_table():
    ids = np.array([[7, 8, 11, 17], [19, 20, 26, 33], [0, 1, 4, 29]], dtype=np.uint8)
    assert label_ids_to_train_ids(ids).tolist() == [[0, 1, 2, 5], [6, 7, 13, 18], [255, 255, 255, 255]]
    assert train_ids_to_label_ids(np.arange(19, dtype=np.uint8)).tolist() == [
        7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert len(CLASS_NAMES) == len(PALETTE) == 19
    assert LABEL_ID_BY_NAME["traffic light"] == 19


def test_unknown_label_ids_are_rejected():
    with pytest.raises(FornetError, match=r"unknown Cityscapes label ids \[34, 200\]"):
        label_ids_to_train_ids(np.array([[7, 34], [200, 8]], dtype=np.uint8), "x.png")


def test_missing_and_empty_dataset_folders(tmp_path):
    with pytest.raises(FornetError, match="does not exist"):
        find_samples(tmp_path / "nope", "train")
    with pytest.raises(FornetError, match="no leftImg8bit/train/ folder"):
        find_samples(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    with pytest.raises(FornetError, match="holds no"):
        find_samples(tmp_path, "train")


def _write_pair(root, image_hw, label_hw, label_value=7):
    img_dir = root / "leftImg8bit" / "val" / "c"
    lab_dir = root / "gtFine" / "val" / "c"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "c_000000_000019_leftImg8bit.png"), np.zeros((*image_hw, 3), np.uint8))
    cv2.imwrite(str(lab_dir / "c_000000_000019_gtFine_labelIds.png"), np.full(label_hw, label_value, np.uint8))


def test_label_of_the_wrong_size(tmp_path):
    _write_pair(tmp_path, (64, 128), (32, 128))
    sample = find_samples(tmp_path, "val")[0]
    with pytest.raises(FornetError, match="is 128x32, its image is 128x64"):
        load_sample(sample)


def test_missing_label_and_corrupt_image(tmp_path):
    _write_pair(tmp_path, (64, 64), (64, 64))
    next((tmp_path / "gtFine").rglob("*.png")).unlink()
    with pytest.raises(FornetError, match="missing label"):
        find_samples(tmp_path, "val")
    assert find_samples(tmp_path, "val", require_labels=False)[0].label is None
    next((tmp_path / "leftImg8bit").rglob("*.png")).write_bytes(b"\x89PNG broken")
    with pytest.raises(FornetError, match="cannot read image"):
        load_sample(find_samples(tmp_path, "val", require_labels=False)[0])


def test_dataset_returns_preprocessed_tensors(tiny_data):
    ds = CityscapesDataset(tiny_data, "val")
    image, labels = ds[0]
    assert image.shape == (3, 128, 256) and image.dtype.is_floating_point
    assert labels.shape == (128, 256) and int(labels.max()) <= 255
