import cv2
import numpy as np
import pytest

from fornet_deploy.data.cityscapes import (
    CLASS_NAMES,
    LABEL_ID_BY_NAME,
    PALETTE,
    label_ids_to_train_ids,
    train_ids_to_label_ids,
)
from fornet_deploy.data.formats import TrainingSet, open_dataset
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
        open_dataset(tmp_path / "nope").samples("train")
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(FornetError, match="no leftImg8bit/train/ folder"):
        open_dataset(tmp_path).samples("train")
    (tmp_path / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    with pytest.raises(FornetError, match="holds no"):
        open_dataset(tmp_path).samples("train")


def _write_pair(root, image_hw, label_hw, label_value=7):
    img_dir = root / "leftImg8bit" / "val" / "c"
    lab_dir = root / "gtFine" / "val" / "c"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "c_000000_000019_leftImg8bit.png"), np.zeros((*image_hw, 3), np.uint8))
    cv2.imwrite(str(lab_dir / "c_000000_000019_gtFine_labelIds.png"), np.full(label_hw, label_value, np.uint8))


def test_label_of_the_wrong_size(tmp_path):
    _write_pair(tmp_path, (64, 128), (32, 128))
    dataset = open_dataset(tmp_path)
    with pytest.raises(FornetError, match="is 128x32, its image is 128x64"):
        dataset.load(dataset.samples("val")[0])


def test_missing_label_and_corrupt_image(tmp_path):
    _write_pair(tmp_path, (64, 64), (64, 64))
    next((tmp_path / "gtFine").rglob("*.png")).unlink()
    with pytest.raises(FornetError, match="missing label"):
        open_dataset(tmp_path).samples("val")
    assert open_dataset(tmp_path).samples("val", require_labels=False)[0].label is None
    next((tmp_path / "leftImg8bit").rglob("*.png")).write_bytes(b"\x89PNG broken")
    with pytest.raises(FornetError, match="cannot read image"):
        dataset = open_dataset(tmp_path)
        dataset.load(dataset.samples("val", require_labels=False)[0])


def test_dataset_returns_preprocessed_tensors(tiny_data):
    ds = TrainingSet(open_dataset(tiny_data), "val")
    image, labels = ds[0]
    assert image.shape == (3, 128, 256) and image.dtype.is_floating_point
    assert labels.shape == (128, 256) and int(labels.max()) <= 255


# ----------------------------------------------------------------------------- formats


def test_synthcity_writes_a_camvid_layout_read_as_camvid(camvid_data):
    from fornet_deploy.data.camvid import CAMVID

    dataset = open_dataset(camvid_data)
    assert dataset.format.name == "camvid" and dataset.labels == CAMVID
    assert {p.name for p in camvid_data.iterdir()} >= {"train", "trainannot", "val", "valannot", "test", "testannot"}
    train = dataset.samples("train")
    assert len(train) == 4 and len(dataset.samples("train+val")) == 6 and len(dataset.samples("test")) == 2
    image, labels = dataset.load(train[0])
    assert image.shape == (96, 128, 3) and labels.shape == (96, 128)
    raw = cv2.imread(str(train[0].label), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) <= set(range(12))  # 0..10 and void 11 in the file
    assert set(np.unique(labels)) <= set(range(11)) | {255} and (labels[raw == 11] == 255).all()
    assert (labels[raw < 11] == raw[raw < 11]).all()


def test_camvid_mask_value_out_of_range_names_file_and_value(camvid_data, tmp_path):
    import shutil

    root = tmp_path / "cv"
    shutil.copytree(camvid_data, root)
    dataset = open_dataset(root)
    sample = dataset.samples("val")[0]
    bad = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
    bad[0, 0] = 40
    cv2.imwrite(str(sample.label), bad)
    with pytest.raises(FornetError, match=r"valannot/.*\.png: mask value 40 is neither a class id"):
        dataset.load(sample)
    with pytest.raises(FornetError, match="mask value 40"):
        dataset.check(dataset.samples("train+val"))


def _write_generic(root, classes_file: str, content: str, mask_value: int = 1):
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / "a.jpg"), np.full((40, 60, 3), 90, np.uint8))
        cv2.imwrite(str(root / "masks" / split / "a.png"), np.full((40, 60), mask_value, np.uint8))
    (root / classes_file).write_text(content)


def test_generic_layout_with_a_classes_file(tmp_path):
    _write_generic(tmp_path, "classes.json", '{"classes": ["bg", "wire"], "thin": ["wire"], "ignore_index": 255}')
    dataset = open_dataset(tmp_path)
    assert dataset.format.name == "generic" and dataset.labels.classes == ("bg", "wire")
    _, labels = dataset.load(dataset.samples("train")[0])
    assert labels.shape == (40, 60) and (labels == 1).all()


def test_generic_layout_needs_its_classes_file(tmp_path):
    _write_generic(tmp_path, "notes.txt", "")
    with pytest.raises(FornetError, match="no classes.json or classes.txt"):
        open_dataset(tmp_path)


def test_cityscapes_train_ids_masks(tmp_path):
    img_dir, lab_dir = tmp_path / "leftImg8bit" / "val" / "c", tmp_path / "gtFine" / "val" / "c"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "c_000000_000019_leftImg8bit.png"), np.zeros((32, 64, 3), np.uint8))
    train_ids = np.full((32, 64), 5, np.uint8)
    train_ids[0] = 255
    cv2.imwrite(str(lab_dir / "c_000000_000019_gtFine_labelTrainIds.png"), train_ids)
    dataset = open_dataset(tmp_path)
    _, labels = dataset.load(dataset.samples("val")[0])
    assert (labels == train_ids).all()
    train_ids[1, 1] = 19
    cv2.imwrite(str(lab_dir / "c_000000_000019_gtFine_labelTrainIds.png"), train_ids)
    with pytest.raises(FornetError, match="mask value 19 is neither a class id"):
        dataset.load(dataset.samples("val")[0])


def test_unknown_layout_lists_the_known_ones(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FornetError, match="not a dataset in a known layout.*cityscapes.*camvid.*generic.*images"):
        open_dataset(tmp_path)
    with pytest.raises(FornetError, match="unknown dataset format 'kitti'"):
        open_dataset(tmp_path, "kitti")


def test_a_plain_image_folder_is_unlabelled(tmp_path):
    (tmp_path / "cam" / "day").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "cam" / "day" / "f1.jpg"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "cam" / "f0.png"), np.zeros((20, 30, 3), np.uint8))
    dataset = open_dataset(tmp_path / "cam")
    assert dataset.format.name == "images" and dataset.labels is None
    assert [s.name for s in dataset.samples("train", require_labels=False)] == ["day_f1", "f0"]
    with pytest.raises(FornetError, match="without labels; this step needs a labelled dataset"):
        dataset.samples("val")


def test_forcing_a_format(camvid_data):
    with pytest.raises(FornetError, match="no leftImg8bit/val/ folder"):
        open_dataset(camvid_data, "cityscapes").samples("val")
    assert open_dataset(camvid_data, "images").format.name == "images"
