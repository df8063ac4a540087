"""predict: images, folders and videos in; label maps and pictures out; all or nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from fornet_deploy.bundle import Bundle
from fornet_deploy.data.cityscapes import LABELS, find_samples
from fornet_deploy.errors import FornetError
from fornet_deploy.predict import PredictConfig, collect_inputs, predict

VALID_LABEL_IDS = {label_id for label_id, _, train_id in LABELS if train_id != 255}
ALL = PredictConfig(importance=True, mask=True, label_ids=True)


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def val_images(tiny_data: Path) -> list[Path]:
    return [s.image for s in find_samples(tiny_data, "val")]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """One image file, a folder with two same-named images, an odd-sized image, a 6-frame video."""
    root = tmp_path_factory.mktemp("inputs")
    first, second, third = val_images(tiny_data)
    folder = root / "scenes"
    for sub, src in (("a", second), ("b", third)):
        (folder / sub).mkdir(parents=True)
        shutil.copy(src, folder / sub / "frame.png")
    (folder / "notes.txt").write_text("not an image: skipped in folders")
    odd = root / "odd.jpg"
    cv2.imwrite(str(odd), cv2.resize(read(first), (200, 100)))  # 100x200: not a multiple of 32
    frames = [read(p) for p in (first, second, third) * 2]
    video = write_video(root / "clip.mp4", frames)
    return {"image": first, "folder": folder, "odd": odd, "video": video}


def test_images_folder_and_video(tiny_bundle, inputs, tmp_path):
    out = tmp_path / "out"
    cfg = PredictConfig(importance=True, mask=True, label_ids=True, video_every=2)
    summary = predict(tiny_bundle, [inputs["image"], inputs["folder"], inputs["odd"], inputs["video"]], out, cfg)

    stem = inputs["image"].name[: -len(".png")]
    images = {stem: (128, 256), "scenes/a/frame": (128, 256), "scenes/b/frame": (128, 256), "odd": (100, 200)}
    for name, hw in images.items():
        train_ids = read(out / f"{name}_trainIds.png")
        assert train_ids.shape == hw and train_ids.max() <= 18
        label_ids = read(out / f"{name}_labelIds.png")
        assert label_ids.shape == hw and set(np.unique(label_ids)) <= VALID_LABEL_IDS
        for suffix in ("color", "overlay", "importance", "topk"):
            assert read(out / f"{name}_{suffix}.png").shape == (*hw, 3)
    # Two frame.png files in different folders did not overwrite each other.
    assert (out / "scenes/a/frame_overlay.png").read_bytes() != (out / "scenes/b/frame_overlay.png").read_bytes()

    for kind in ("overlay", "importance", "topk"):
        cap = cv2.VideoCapture(str(out / f"clip_{kind}.mp4"))
        assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 3  # frames 0, 2, 4 of 6
        assert (cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == (128, 256)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)  # 10 fps / every 2nd frame
        cap.release()
    for index in (0, 2, 4):
        assert read(out / f"clip_frames/clip_{index:06d}_trainIds.png").max() <= 18
    assert not (out / "clip_frames/clip_000001_trainIds.png").exists()

    report = json.loads((out / "predictions.json").read_text())
    assert report["files"] == summary["files"]
    assert set(report["files"]) == set(listing(out)) - {"predictions.json"}  # nothing else, no staging left
    assert (report["images"], report["videos"], report["video_frames"]) == (4, 1, 3)
    odd = next(item for item in report["items"] if item["source"] == str(inputs["odd"]))
    assert (odd["size"], odd["network_size"]) == ([100, 200], [96, 192])
    assert report["resized"] == 1 and "resized" in report["notes"][0]


def test_given_shape_resizes_and_restores(tiny_bundle, inputs, tmp_path):
    summary = predict(tiny_bundle, [inputs["image"]], tmp_path / "out", PredictConfig(shape=(64, 128)))
    assert summary["items"][0]["network_size"] == [64, 128]
    assert read(tmp_path / "out" / summary["files"][0]).shape == (128, 256)
    assert [f.rsplit("_", 1)[1] for f in summary["files"]] == ["trainIds.png", "color.png", "overlay.png"]


@pytest.fixture(scope="module")
def labels_only_bundle(tmp_path_factory, tiny_bundle) -> Path:
    """The tiny bundle re-exported without importance and topk_mask outputs."""
    root = tmp_path_factory.mktemp("labels_only") / "bundle"
    shutil.copytree(tiny_bundle, root)
    model = onnx.load(str(root / "model.onnx"))
    kept = [o for o in model.graph.output if o.name in ("logits", "labels")]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(root / "model.onnx"))
    Bundle.open(root, verify=False).record("model.onnx", kind="onnx", precision="fp32")
    return root


BAD_CASES = {
    "corrupt image": ("corrupt", PredictConfig(), "cannot read image"),
    "video that does not open": ("bad_video", PredictConfig(), "cannot open video"),
    "video without frames": ("empty_video", PredictConfig(), "has no frames"),
    "shape not a multiple of 32": ("good", PredictConfig(shape=(100, 200)), "multiple of the network stride"),
    "no artefact": ("good", PredictConfig(precision="int8"), "no ort int8 artefact"),
    "missing input": ("missing", PredictConfig(), "does not exist"),
    "unknown extension": ("text", PredictConfig(), "unknown file type"),
    "outputs not exported": ("good", PredictConfig(mask=True), "--outputs logits,labels,importance,topk_mask"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_writes_nothing(case, tiny_bundle, labels_only_bundle, inputs, tmp_path):
    kind, cfg, message = BAD_CASES[case]
    bad = {
        "corrupt": tmp_path / "corrupt.png",
        "bad_video": tmp_path / "bad.mp4",
        "empty_video": tmp_path / "empty.avi",
        "missing": tmp_path / "missing.png",
        "text": tmp_path / "notes.txt",
        "good": inputs["image"],
    }[kind]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (256, 128)).release()
    (tmp_path / "notes.txt").write_text("hello")
    bundle = labels_only_bundle if case == "outputs not exported" else tiny_bundle

    out = tmp_path / "out"
    with pytest.raises(FornetError, match=message) as info:
        predict(bundle, [inputs["image"], inputs["video"], bad], out, cfg)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_out_dir_that_is_a_file(tiny_bundle, inputs, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(FornetError, match="not a folder"):
        predict(tiny_bundle, [inputs["image"]], out, PredictConfig())
    assert out.read_text() == "a file"


def test_failure_mid_run_leaves_out_dir_as_it_was(tiny_bundle, inputs, tmp_path):
    """Interrupted after the first image: earlier files (even those it would replace) survive."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "odd_trainIds.png").write_bytes(b"from an earlier run")
    (out / "keep.txt").write_text("mine")
    before = listing(out)

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(tiny_bundle, [inputs["odd"], inputs["folder"]], out, ALL, progress=interrupt)
    assert listing(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "odd_trainIds.png"]  # no staging folder


def test_collect_inputs(inputs, tmp_path):
    folder = tmp_path / "data"
    for rel in ("b/x.PNG", "a/y.jpg", "a/z.mp4", ".hidden/h.png", "a/skip.json", "out/old_overlay.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"")
    items = collect_inputs([folder, folder / "a" / "y.jpg"], exclude=folder / "out")
    assert [(i.name, i.kind) for i in items] == [("data/a/y", "image"), ("data/a/z", "video"), ("data/b/x", "image")]

    (folder / "a" / "x.png").write_bytes(b"")
    with pytest.raises(FornetError, match="would both write"):
        collect_inputs([folder / "a" / "x.png", folder / "b" / "x.PNG"])
    (folder / "empty").mkdir()
    with pytest.raises(FornetError, match="holds no images or videos"):
        collect_inputs([folder / "empty"])
