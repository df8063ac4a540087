"""predict: images, folders and videos in; label maps and pictures out; all or nothing."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.bundle import Bundle
from fornet_deploy.data.cityscapes import LABELS
from fornet_deploy.data.formats import open_dataset
from fornet_deploy.errors import FornetError
from fornet_deploy.io import folder_lock
from fornet_deploy.predict import PredictConfig, collect_inputs, predict
from fornet_deploy.predict.outputs import OutputStaging as _Staging

VALID_LABEL_IDS = {label_id for label_id, _, train_id in LABELS if train_id != 255}
ALL = PredictConfig(importance=True, mask=True, label_ids=True)


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def val_images(tiny_data: Path) -> list[Path]:
    return [s.image for s in open_dataset(tiny_data).samples("val")]


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
        for suffix in ("color", "topk"):
            assert read(out / f"{name}_{suffix}.png").shape == (*hw, 3)
        for suffix in ("overlay", "importance"):  # over their key: a legend, a colour bar
            keyed = read(out / f"{name}_{suffix}.png")
            assert keyed.shape[1:] == (hw[1], 3) and keyed.shape[0] > hw[0]
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
    assert (odd["size"], odd["network_size"]) == ([100, 200], [100, 200])  # the network pads and crops itself
    assert report["resized"] == 0 and not report["notes"]  # a dynamic bundle runs every image at its size


def test_max_frames_bounds_a_video(tiny_bundle, inputs, tmp_path):
    summary = predict(tiny_bundle, [inputs["video"]], tmp_path / "out", PredictConfig(max_frames=2))
    (item,) = summary["items"]
    assert (item["frames"], item["ended"]) == (2, "max_frames")
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 2
    cap.release()


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
    "shape beyond the largest side": ("good", PredictConfig(shape=(9000, 200)), "larger than the supported"),
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


# ---------------------------------------------------------------------------- runs over runs, hostile inputs

def _without_report(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in listing(folder).items() if k != "predictions.json"}


NEW_RUN = PredictConfig(shape=(64, 128))  # fewer files than ALL, and different pixels for the same image


@pytest.fixture
def earlier_run(tiny_bundle, inputs, tmp_path) -> Path:
    """An output folder holding a complete earlier run (image + odd, all outputs) and a user's file."""
    out = tmp_path / "out"
    predict(tiny_bundle, [inputs["image"], inputs["odd"]], out, ALL)
    (out / "keep.txt").write_text("mine")
    return out


@pytest.fixture
def new_run_reference(tiny_bundle, inputs, tmp_path) -> dict[str, bytes]:
    """What the folder must hold after the new run: its files, the user's file, nothing else."""
    ref = tmp_path / "reference"
    predict(tiny_bundle, [inputs["image"]], ref, NEW_RUN)
    (ref / "keep.txt").write_text("mine")
    return _without_report(ref)


def test_a_run_over_an_earlier_run_replaces_it_entirely(tiny_bundle, inputs, earlier_run, new_run_reference):
    summary = predict(tiny_bundle, [inputs["image"]], earlier_run, NEW_RUN)
    assert _without_report(earlier_run) == new_run_reference  # the earlier run's other files are gone
    assert json.loads((earlier_run / "predictions.json").read_text())["files"] == summary["files"]


# Runs predict with os.replace wrapped: after the 2nd output moved out of the commit folder
# it prints PAUSED and waits for the go file (the test signals it meanwhile).
COMMIT_CHILD = r"""
import os, sys, time
from fornet_deploy.errors import FornetError
from fornet_deploy.predict import PredictConfig, predict

bundle, image, out, go = sys.argv[1:5]
real_replace, moved = os.replace, []

def replace(src, dst):
    real_replace(src, dst)
    if ".predict-commit-" in str(src) and not str(dst).endswith("predictions.json"):
        moved.append(dst)
        if len(moved) == 2:
            print("PAUSED", flush=True)
            while not os.path.exists(go):
                time.sleep(0.01)

os.replace = replace
try:
    predict(bundle, [image], out, PredictConfig(shape=(64, 128)))
except FornetError as exc:
    print(exc, file=sys.stderr)
    sys.exit(int(exc.exit_code))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_the_commit(sig, tiny_bundle, inputs, earlier_run, new_run_reference, tmp_path):
    """kill -9 mid-commit: no report (the folder claims no run) until the next predict
    completes the commit; SIGTERM / Ctrl-C mid-commit: honoured after it, the run is complete."""
    go = tmp_path / "go"
    child = subprocess.Popen([sys.executable, "-c", COMMIT_CHILD, str(tiny_bundle), str(inputs["image"]),
                              str(earlier_run), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith("PAUSED"), child.communicate()
    os.kill(child.pid, sig)
    go.touch()
    _, stderr = child.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL
        assert not (earlier_run / "predictions.json").exists()  # neither the old run nor the new one is claimed
        assert (earlier_run / "keep.txt").read_text() == "mine"
        with _Staging(earlier_run):  # what the next predict does first
            pass
    else:
        assert child.returncode == 0, stderr
    assert _without_report(earlier_run) == new_run_reference
    report = json.loads((earlier_run / "predictions.json").read_text())
    assert set(report["files"]) == set(new_run_reference) - {"keep.txt"}


def test_a_second_predict_into_the_same_folder_is_refused(tiny_bundle, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):  # as a running predict holds it
        with pytest.raises(FornetError, match="in use by another fornet-deploy command"):
            predict(tiny_bundle, [inputs["image"]], out, PredictConfig())
    assert listing(out) == {}


def test_a_video_write_that_fails_is_an_error(tiny_bundle, inputs, tmp_path):
    """`ulimit -f` (a file-size limit, what a full disk also does to a write): exit 3, nothing kept."""
    out = tmp_path / "out"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    result = subprocess.run(
        [sys.executable, "-c", "from fornet_deploy.cli import main; main()", "predict", str(inputs["video"]),
         "--bundle", str(tiny_bundle), "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
    )
    assert_one_line_error(result, "cannot write video", "clip_overlay.mp4")
    assert result.returncode == 3 and not out.exists()


def test_a_parent_folder_as_input_writes_only_inside_out(tiny_bundle, inputs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(inputs["folder"], work / "scenes")
    (work / "run").mkdir()
    monkeypatch.chdir(work / "run")
    before = {p for p in tmp_path.rglob("*")}
    summary = predict(tiny_bundle, [".."], "out", PredictConfig())  # `predict .. --out out`
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.resolve().is_relative_to((work / "run" / "out").resolve()) for p in created)
    assert {f.rsplit("_", 1)[0] for f in summary["files"]} == {"work/scenes/a/frame", "work/scenes/b/frame"}


def test_file_names_that_are_not_utf8(tiny_bundle, inputs, tmp_path):
    """OpenCV's Python binding crashes (SIGSEGV) on such names; they are read by Python instead."""
    folder = tmp_path / "in"
    folder.mkdir()
    image = folder / os.fsdecode(b"caf\xe9.png")
    video = folder / os.fsdecode(b"clip\xff.mp4")
    shutil.copy(inputs["image"], image)
    shutil.copy(inputs["video"], video)
    out = tmp_path / "out"
    result = run_cli("predict", str(folder), "--bundle", str(tiny_bundle), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "predictions.json").read_text())  # JSON keeps the bytes as \udcxx escapes
    assert report["images"] == 1 and report["videos"] == 1 and report["video_frames"] == 6
    assert set(report["files"]) == set(listing(out)) - {"predictions.json"}
    written = (out / ("in/" + os.fsdecode(b"caf\xe9_trainIds.png"))).read_bytes()  # not cv2.imread: it would crash
    assert cv2.imdecode(np.frombuffer(written, np.uint8), cv2.IMREAD_UNCHANGED).shape == (128, 256)


def test_an_image_that_declares_too_many_pixels(tiny_bundle, inputs, tmp_path):
    from test_io import _png_header

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))
    result = run_cli("predict", str(inputs["image"]), str(bomb), "--bundle", str(tiny_bundle),
                     "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "declares 30000x30000 pixels")
    assert result.returncode == 3 and not (tmp_path / "out").exists()


@pytest.fixture
def archived_run(tiny_bundle, inputs, tmp_path) -> tuple[Path, Path]:
    """Issue 26: an earlier run of the folder input, whose output folder ``scenes`` the user
    moved to an archive and linked back; returns (output folder, archive)."""
    out, archive = tmp_path / "out", tmp_path / "archive"
    predict(tiny_bundle, [inputs["folder"]], out, PredictConfig())
    archive.mkdir()
    os.replace(out / "scenes", archive / "scenes")
    (out / "scenes").symlink_to(archive / "scenes")
    return out, archive


def test_a_new_run_deletes_nothing_through_a_symlink(tiny_bundle, inputs, archived_run, tmp_path):
    """Issue 26 (both deleted the files behind the link): the earlier run's files now behind a
    link, and a predictions.json listing ``sub/f`` with ``sub`` a link to ``../victim``."""
    out, archive = archived_run
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("precious")
    (out / "sub").symlink_to(Path("..") / "victim")
    report = json.loads((out / "predictions.json").read_text())
    (out / "predictions.json").write_text(json.dumps({**report, "files": [*report["files"], "sub/f"]}))
    archived = listing(archive)
    assert len(archived) == 6
    summary = predict(tiny_bundle, [inputs["image"]], out, PredictConfig())
    assert listing(archive) == archived and (victim / "f").read_text() == "precious"
    assert (out / "scenes").is_symlink() and (out / "sub").is_symlink()  # links are not what a run wrote
    assert json.loads((out / "predictions.json").read_text())["files"] == summary["files"]


def test_a_run_that_would_write_through_a_symlink_is_refused(tiny_bundle, inputs, archived_run):
    """The folder input again: its outputs would land behind the link, outside --out."""
    out, archive = archived_run
    archived, report = listing(archive), (out / "predictions.json").read_bytes()
    result = run_cli("predict", str(inputs["folder"]), "--bundle", str(tiny_bundle), "--out", str(out))
    assert_one_line_error(result, f"{out / 'scenes'} is a symbolic link", "as it was")
    assert result.returncode == 3
    assert listing(archive) == archived and (out / "predictions.json").read_bytes() == report
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "scenes"]  # no staging left


def test_pictures_carry_their_key_and_a_stretched_input_its_note(tiny_bundle, inputs, tmp_path):
    """The overlay over the legend of the classes it shows (the bundle's names and colours),
    the importance map over its colour bar; an input the network saw stretched is noted
    (issue 25, item 5). Video frames keep their size."""
    from fornet_deploy.data.labels import manifest_label_set
    from fornet_deploy.evaluation.keys import STRIP

    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), cv2.resize(read(inputs["image"]), (160, 90)))  # 16:9, runs at 64x128 (2:1)
    summary = predict(tiny_bundle, [inputs["image"], wide], tmp_path / "out",
                      PredictConfig(importance=True, shape=(64, 128)))
    labels = manifest_label_set(Bundle.open(tiny_bundle).manifest)
    stem = inputs["image"].name[: -len(".png")]
    train_ids = read(tmp_path / "out" / f"{stem}_trainIds.png")
    overlay = read(tmp_path / "out" / f"{stem}_overlay.png")[..., ::-1]  # RGB
    key = overlay[train_ids.shape[0]:]
    assert (key == STRIP).all(-1).mean() > 0.5

    def swatch(class_id: int) -> bool:
        return bool((key == np.array(labels.palette[class_id], np.uint8)).all(-1).sum() >= 16)

    present = set(np.unique(train_ids).tolist())
    assert present and all(swatch(i) for i in present)
    assert not any(swatch(i) for i in range(labels.num_classes) if i not in present)
    importance = read(tmp_path / "out" / f"{stem}_importance.png")
    assert importance.shape[0] > train_ids.shape[0]
    stretched = [note for note in summary["notes"] if "stretched" in note]
    assert len(stretched) == 1 and stretched[0].startswith(f"{wide}: 90x160 (16:9) ran at 64x128 (2:1)")


def test_the_output_folder_is_never_an_input_folder(tiny_bundle, inputs, tmp_path):
    """Issue 26 (7): `predict --bundle B inB --out inB` said "holds no images"; out = ., holding
    the input folder, did too (its images were taken for outputs of an earlier run)."""
    folder = tmp_path / "inB"
    shutil.copytree(inputs["folder"], folder)
    before = listing(tmp_path)
    for args, fragment in ((["inB", "--out", "inB"], "--out inB is an input of this command"),
                           (["inB", "--out", "."], "--out . holds inB"),
                           ([str(inputs["image"]), "--out", str(tiny_bundle)], "is an input of this command"),
                           ([str(inputs["image"]), "--out", str(tiny_bundle.parent)], "holds")):
        result = run_cli("predict", *args, "--bundle", str(tiny_bundle), cwd=tmp_path)
        assert_one_line_error(result, fragment)
        assert result.returncode == 3
    assert listing(tmp_path) == before
    predict(tiny_bundle, [folder], folder / "out", PredictConfig())  # inside the input folder: left out of it


def test_no_output_replaces_an_input_file(tiny_bundle, inputs, tmp_path):
    """An input named like another input's output (`x.png` and `x_overlay.png`, out = their folder)."""
    shutil.copyfile(inputs["image"], tmp_path / "x.png")
    shutil.copyfile(inputs["image"], tmp_path / "x_overlay.png")
    before = listing(tmp_path)
    result = run_cli("predict", "x.png", "x_overlay.png", "--bundle", str(tiny_bundle), "--out", ".", cwd=tmp_path)
    assert_one_line_error(result, "x_overlay.png would replace an input of this run")
    assert listing(tmp_path) == before
    # an earlier report that lists an input: the input is not deleted as that run's output
    (tmp_path / "predictions.json").write_text(json.dumps({"files": ["x_overlay.png"]}))
    predict(tiny_bundle, [tmp_path / "x_overlay.png"], tmp_path, PredictConfig())
    assert (tmp_path / "x_overlay.png").read_bytes() == before["x_overlay.png"]


def test_one_input_given_as_a_string_is_one_input(tiny_bundle, inputs, tmp_path):
    """Issue 26 (6): `fd.predict_files(B, "img.png", out)` iterated the string character by character."""
    import fornet_deploy as fd

    summary = fd.predict_files(tiny_bundle, str(inputs["image"]), tmp_path / "out")
    assert summary["images"] == 1 and summary["items"][0]["source"] == str(inputs["image"])
    assert fd.predict_files(tiny_bundle, inputs["odd"], tmp_path / "out2")["images"] == 1  # a Path too


def test_the_file_system_root_is_not_walked(tiny_bundle, tmp_path):
    """Issue 26 (6): an input `/` walked the whole file system before anything else."""
    started = time.monotonic()
    result = run_cli("predict", "/", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "folder / holds more than 200000 files and folders")
    assert time.monotonic() - started < 120 and not (tmp_path / "out").exists()


def test_a_video_of_frames_beyond_the_pixel_budget_is_refused_before_decoding(tiny_bundle, inputs, tmp_path,
                                                                             monkeypatch):
    """The frame size the container declares is checked when the video opens, before a frame is
    decoded; the budget lowered to just under the clip's 128 x 256 stands in for a huge file."""
    import fornet_deploy.io as io_module

    monkeypatch.setattr(io_module, "MAX_IMAGE_PIXELS", 128 * 256 - 1)
    with pytest.raises(FornetError, match=f"video {inputs['video']} declares 256x128 frames"):
        predict(tiny_bundle, [inputs["video"]], tmp_path / "out", PredictConfig())
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(io_module, "MAX_IMAGE_PIXELS", 128 * 256)  # at the budget: segmented
    assert predict(tiny_bundle, [inputs["video"]], tmp_path / "out", PredictConfig(max_frames=1))["video_frames"] == 1
