"""The label set: one type, checked where it is made, carried by checkpoints and manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fornet_deploy.data.camvid import CAMVID
from fornet_deploy.data.cityscapes import CITYSCAPES
from fornet_deploy.data.labels import (
    LabelSet,
    check_compatible,
    default_label_set,
    generated_palette,
    label_set_for,
    manifest_label_set,
    read_classes_file,
)
from fornet_deploy.errors import FornetError


def test_the_shipped_label_sets():
    assert CITYSCAPES.num_classes == 19 and CITYSCAPES.ignore_index == 255
    assert CITYSCAPES.thin_names == ("fence", "pole", "traffic light", "traffic sign", "person", "rider",
                                     "motorcycle", "bicycle")
    assert CAMVID.classes[0] == "Sky" and CAMVID.num_classes == 11 and CAMVID.ignore_index == 11
    assert CAMVID.thin_names == ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")
    assert CAMVID.palette[3] == (128, 64, 128)  # Road, as SegNet colours it


def test_defaults_for_a_model_without_a_label_set():
    assert default_label_set(19) is CITYSCAPES
    generic = default_label_set(11)
    assert generic.classes[:2] == ("class_0", "class_1") and generic.name == "generic"
    assert len(set(generic.palette)) == 11 and generic.thin == ()


@given(st.integers(1, 255))
def test_generated_palettes_are_distinct_valid_colours(count):
    palette = generated_palette(count)
    assert len(palette) == count and all(0 <= v <= 255 for c in palette for v in c)
    assert len(set(palette)) == count


def test_dict_round_trip_and_thin_by_name():
    labels = LabelSet.from_dict({"classes": ["bg", "wire", "tower"], "thin": ["wire"], "name": "lines"})
    assert labels.thin == (1,) and labels.palette == generated_palette(3)
    assert LabelSet.from_dict(json.loads(json.dumps(labels.to_dict()))) == labels


@pytest.mark.parametrize("data, fragment", [
    ({"classes": ["a", "b\nc"]}, "control character"),
    ({"classes": ["a", "b,c"]}, "comma"),
    ({"classes": ["a", " b"]}, "outer spaces"),
    ({"classes": ["a", ""]}, "non-empty"),
    ({"classes": ["car", "Car"]}, "appears twice"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, "need 2 colours"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0], [0, 0, 256]]}, "0..255"),
    ({"classes": ["a", "b"], "ignore_index": 1}, "ignore index"),
    ({"classes": ["a", "b"], "thin": [2]}, "thin classes"),
    ({"classes": ["a", "b"], "thin": ["c"]}, "not one of the classes"),
    ({"classes": "ab"}, "list of names"),
    ({"classes": ["a"], "colour": []}, "unknown fields"),
    ([], "must be an object"),
])
def test_bad_label_sets_are_one_line(data, fragment):
    with pytest.raises(FornetError, match=fragment) as info:
        LabelSet.from_dict(data)
    assert "\n" not in str(info.value)


def test_mask_values_are_checked_with_the_file_named():
    CAMVID.check_labels(np.array([[0, 10, 11]]), "m.png")
    with pytest.raises(FornetError, match=r"m.png: mask value 12 is neither a class id \(0..10\) nor the ignore index"):
        CAMVID.check_labels(np.array([[0, 12, 11]]), "m.png")


def test_classes_files(tmp_path):
    text = tmp_path / "classes.txt"
    text.write_text("# my classes\nbackground,0,0,0\nlane marking, 255, 255, 0\n\n")
    labels = read_classes_file(text)
    assert labels.classes == ("background", "lane marking") and labels.palette[1] == (255, 255, 0)
    text.write_text("background\nlane\n")
    assert read_classes_file(text).palette == generated_palette(2)
    text.write_text("background,0,0,0\nlane\n")
    with pytest.raises(FornetError, match="every class or for none"):
        read_classes_file(text)
    js = tmp_path / "classes.json"
    js.write_text(json.dumps(["a", "b", "c"]))
    assert read_classes_file(js).classes == ("a", "b", "c")
    js.write_text("{nope")
    with pytest.raises(FornetError, match="not valid JSON"):
        read_classes_file(js)
    js.write_bytes(b"\xff\xfe")
    with pytest.raises(FornetError, match="not UTF-8"):
        read_classes_file(js)


def test_label_set_for_a_model_checks_the_class_count():
    assert label_set_for(11, CAMVID.to_dict(), "ckpt") == CAMVID
    with pytest.raises(FornetError, match="names 11 classes, the model has 19"):
        label_set_for(19, CAMVID.to_dict(), "ckpt")


def test_manifest_label_set_reads_new_and_old_bundles():
    assert manifest_label_set({"labels": CAMVID.to_dict(), "model": {"num_classes": 11}}) == CAMVID
    old = {"classes": list(CITYSCAPES.classes), "palette": [list(c) for c in CITYSCAPES.palette],
           "model": {"num_classes": 19}}
    assert manifest_label_set(old) is CITYSCAPES  # thin classes recovered
    assert manifest_label_set({"model": {"num_classes": 4}}).classes[3] == "class_3"
    with pytest.raises(FornetError, match="names 11 classes, the model has 19"):
        manifest_label_set({"labels": CAMVID.to_dict(), "model": {"num_classes": 19}})


def test_datasets_must_have_the_models_classes():
    check_compatible(CAMVID, CAMVID, "d")
    check_compatible(default_label_set(11), CAMVID, "d")  # generic names: counts decide
    with pytest.raises(FornetError, match="camvid labels .11 classes.*cityscapes .19 classes"):
        check_compatible(CITYSCAPES, CAMVID, "dataset d")
    renamed = LabelSet(tuple(f"x{i}" for i in range(11)), CAMVID.palette, name="mine")
    with pytest.raises(FornetError, match="mine labels"):
        check_compatible(CAMVID, renamed, "d")


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    picture = CAMVID.colorize(np.array([[0, 3, 255]], np.uint8))
    assert picture.tolist() == [[[128, 128, 128], [128, 64, 128], [0, 0, 0]]]
