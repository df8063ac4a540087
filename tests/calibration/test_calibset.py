"""The calibration set: seeded class-balanced selection, unlabelled folders and videos, the
network size (any image size), the content key, and no images kept in the bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fornet_deploy.build import trt as trt_build
from fornet_deploy.bundle import Bundle
from fornet_deploy.calibration import calibset
from fornet_deploy.calibration.calibset import (
    CalibrationSet,
    bundle_calibration_set,
    network_input_size,
    select_calibration_images,
    tidy_cache,
)
from fornet_deploy.calibration.video import evenly_spaced
from fornet_deploy.contract import CALIBRATION_DIR
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.data.transforms import Preprocessing, preprocess
from fornet_deploy.errors import FornetError
from fornet_deploy.runtimes.base import InputSpec, network_size

MODEL_A, MODEL_B = "a" * 64, "b" * 64
SIZE = (128, 256)  # the tiny SynthCity images' own size


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


def _fixed(size: tuple[int, int]) -> Preprocessing:
    return Preprocessing(resize="fixed", height=size[0], width=size[1])


def test_every_image_is_resized_to_the_network_size(tiny_data):
    calib = CalibrationSet.select(tiny_data, Preprocessing(), (64, 128), num=3)
    batches = list(calib.batches(batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 64, 128), (1, 3, 64, 128)] and batches[0].dtype == np.float32
    image = open_dataset(tiny_data).load(calib.samples[2])[0]
    np.testing.assert_array_equal(batches[1][0], preprocess(image, _fixed((64, 128)))[0])  # predict's resize
    assert calib.shape == (3, 3, 64, 128) and [x.shape for x in calib] == [(3, 64, 128)] * 3
    assert calib.resized() == {"images": 3, "sizes": {"128x256->64x128": 3}}
    assert CalibrationSet.select(tiny_data, Preprocessing(), SIZE, num=3).resized() == {"images": 0, "sizes": {}}


@pytest.mark.parametrize("image_hw", [(96, 128), (128, 256), (1024, 2048), (375, 500)])
def test_the_network_size_is_the_rule_of_every_stage(image_hw):
    """What predict / eval / parity feed an image of any size, calibration feeds too; a dynamic
    graph calibrates at its export shape (predict would round the image's own size)."""
    pre, export = Preprocessing(), (256, 512)
    static = [1, 3, 256, 512]
    assert network_input_size(static, pre, export) == network_size(InputSpec(shape=tuple(static)), pre, image_hw)
    assert network_input_size(static, pre, export) == (256, 512)
    assert network_input_size([None, 3, None, None], pre, export) == export
    resize = _fixed((128, 256))  # a fixed resize in the preprocessing is obeyed, as everywhere
    assert network_input_size(static, resize, export) == network_size(InputSpec(shape=tuple(static)), resize,
                                                                      image_hw) == (128, 256)


def test_key_follows_model_images_size_and_preprocessing(data):
    calib = CalibrationSet.select(data, Preprocessing(), SIZE, num=2)
    key = calib.key(MODEL_A)
    assert key == CalibrationSet.select(data, Preprocessing(), SIZE, num=2).key(MODEL_A)
    assert calib.key(MODEL_B) != key
    assert CalibrationSet.select(data, Preprocessing(std=(0.5, 0.5, 0.5)), SIZE, num=2).key(MODEL_A) != key
    assert CalibrationSet.select(data, Preprocessing(), (64, 128), num=2).key(MODEL_A) != key
    image = cv2.imread(str(calib.samples[0].image))
    image[0, 0] ^= 1  # one pixel, one bit
    cv2.imwrite(str(calib.samples[0].image), image)
    assert calib.key(MODEL_A) != key


def test_images_of_different_sizes_are_resized_alike(data):
    first = CalibrationSet.select(data, Preprocessing(), SIZE, num=2).samples[0].image
    cv2.imwrite(str(first), cv2.resize(cv2.imread(str(first)), (128, 64)))
    calib = CalibrationSet.select(data, Preprocessing(), SIZE, num=2)
    assert [x.shape for x in calib] == [(3, *SIZE)] * 2
    assert calib.resized() == {"images": 1, "sizes": {"64x128->128x256": 1}}


def test_an_unlabelled_folder_is_a_seeded_random_choice(tiny_data, tmp_path):
    folder = tmp_path / "frames"
    (folder / "cam2").mkdir(parents=True)
    for index, image in enumerate(sorted((tiny_data / "leftImg8bit" / "train").rglob("*.png"))):
        shutil.copyfile(image, folder / ("cam2" if index % 2 else "") / f"{index:02d}.png")
    samples = open_dataset(folder).samples("train", require_labels=False)
    for seed in (0, 1):
        calib = CalibrationSet.select(folder, Preprocessing(), SIZE, num=3, seed=seed)
        order = np.random.default_rng(seed).permutation(len(samples))[:3]
        assert calib.names == sorted(samples[i].name for i in order)  # step 4 alone: nothing to balance
        assert calib.source == {"kind": "images", "path": str(folder), "format": "images",
                                "selection": "seeded random (no labels)"}
    labelled = CalibrationSet.select(tiny_data, Preprocessing(), SIZE, num=3)
    assert labelled.source["kind"] == "dataset" and labelled.source["selection"].startswith("class-balanced")
    assert labelled.source["format"] == "cityscapes" and labelled.source["split"] == "train"


def _all_frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def test_video_frames_are_spread_evenly_and_read_exactly(video, tmp_path):
    calib = CalibrationSet.select(video, Preprocessing(), SIZE, num=4)
    frames = _all_frames(video)
    assert len(frames) == 20 and calib.images.frames == (2, 7, 12, 17)
    for index, x in zip(calib.images.frames, calib):
        np.testing.assert_array_equal(x, preprocess(frames[index], _fixed(SIZE))[0])
    assert calib.names == ["clip_000002", "clip_000007", "clip_000012", "clip_000017"]
    assert calib.source == {"kind": "video", "path": str(video), "frames": 20,
                            "selection": "4 frames spread evenly"}
    assert calib.resized() == {"images": 4, "sizes": {"96x128->128x256": 4}}
    key = calib.key(MODEL_A)
    assert CalibrationSet.select(video, Preprocessing(), SIZE, num=4, seed=9).key(MODEL_A) == key  # no seed
    assert CalibrationSet.select(video, Preprocessing(), SIZE, num=5).key(MODEL_A) != key  # other frames
    copy = tmp_path / "clip.mp4"
    copy.write_bytes(video.read_bytes() + b"\0")  # another file, the same frames
    assert CalibrationSet.select(copy, Preprocessing(), SIZE, num=4).key(MODEL_A) != key
    assert len(CalibrationSet.select(video, Preprocessing(), SIZE, num=50)) == 20  # every frame, once


@given(st.integers(1, 10_000), st.integers(1, 300))
def test_evenly_spaced_frames_take_one_from_each_part(total, num):
    frames = evenly_spaced(total, num)
    assert len(frames) == min(total, num) and frames == sorted(set(frames))
    if num < total:
        # frame i is the one on screen at the middle of the i-th of num equal parts ...
        assert all(f * 2 * num <= (2 * i + 1) * total < (f + 1) * 2 * num for i, f in enumerate(frames))
        # ... so the gaps between chosen frames differ by at most one frame
        assert {b - a for a, b in zip(frames, frames[1:])} <= {total // num, -(-total // num)}
    else:
        assert frames == list(range(total))


def test_bad_data_is_one_line(tmp_path, video):
    garbage, text, empty = tmp_path / "bad.mp4", tmp_path / "notes.txt", tmp_path / "empty.avi"
    garbage.write_bytes(b"not a video" * 100)
    text.write_text("hello")
    cv2.VideoWriter(str(empty), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (128, 96)).release()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    for path, message in ((garbage, "cannot open video"), (text, "is a file but not a video"),
                          (empty, "cannot open video|has no frames"), (truncated, "cannot open video|has no frames")):
        with pytest.raises(FornetError, match=message) as info:
            CalibrationSet.select(path, Preprocessing(), SIZE, num=2)
        assert "\n" not in str(info.value)
    with pytest.raises(FornetError, match="at least 1"):
        CalibrationSet.select(video, Preprocessing(), SIZE, num=0)


def test_a_video_of_frames_beyond_the_pixel_budget_is_refused_when_it_opens(video, monkeypatch):
    """The size the container declares is checked before a frame is decoded (FFmpeg allocates
    it per frame; issue 26's bounds). The budget lowered to just under the clip's 96 x 128
    stands in for a file declaring 30000x30000."""
    import fornet_deploy.io as io_module

    h, w = 96, 128  # the clip's frames (conftest.VIDEO_HW)
    monkeypatch.setattr(io_module, "MAX_IMAGE_PIXELS", h * w - 1)
    with pytest.raises(FornetError, match=f"video {video} declares {w}x{h} frames, more than the"):
        CalibrationSet.select(video, Preprocessing(), SIZE, num=2)
    monkeypatch.setattr(io_module, "MAX_IMAGE_PIXELS", h * w)  # at the budget: read
    assert len(CalibrationSet.select(video, Preprocessing(), SIZE, num=2)) == 2


def test_the_cache_keeps_only_this_keys_ranges(tmp_path):
    folder = tmp_path / CALIBRATION_DIR
    folder.mkdir()
    key, old = "1" * 64, "2" * 64
    keep = [f"calib_{key[:16]}.entropy.ranges.json", f"calib_{key[:16]}.percentile-99.9.ranges.json"]
    gone = [f"calib_{old[:16]}.npy", f"calib_{old[:16]}.json", f"calib_{old[:16]}.minmax.ranges.json",
            f"calib_{key[:16]}.npy", f"calib_{key[:16]}.json"]  # float32 images of earlier versions
    for name in keep + gone:
        (folder / name).write_text("{}")
    (folder / "notes.txt").write_text("not ours")
    tidy_cache(tmp_path, key)
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep + ["notes.txt"])
    tidy_cache(tmp_path / "elsewhere", key)  # no calibration folder: nothing to do


def test_the_legacy_tensorrt_calibrator_reads_the_same_images(small_bundle, tiny_data, monkeypatch):
    """build-trt --legacy-calibrator --int8 feeds TensorRT what `calibrate` measures: images of
    any size at the network input (TensorRT itself cannot run here: its build is stubbed)."""
    built = {}
    monkeypatch.setattr(trt_build, "build_engine", lambda bundle, config, progress=None: built.setdefault("c", config))
    config = trt_build.BuildConfig(precision="int8", legacy_calibrator=True)
    trt_build.build_with_calibration_data(small_bundle, config, tiny_data, num_images=2)
    batches = list(built["c"].calibration_batches)
    expected = bundle_calibration_set(Bundle.open(small_bundle), [1, 3, 64, 128], tiny_data, num=2)
    assert [b.shape for b in batches] == [(1, 3, 64, 128)] * 2  # 128x256 images, a 64x128 export
    np.testing.assert_array_equal(np.concatenate(batches), np.stack(list(expected)))
    assert built["c"].calibration_set_hash == expected.key(Bundle.open(small_bundle).sha256("model.onnx"))
    assert expected.describe()["network_size"] == [64, 128]
