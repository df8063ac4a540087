"""``fornet-deploy predict``: segment images, folders and videos with any artefact of a bundle.

For every image ``NAME`` it writes, into the output folder:

- ``NAME_trainIds.png``: the prediction, uint8 train ids 0..18 at the image's size;
- ``NAME_labelIds.png`` (``label_ids``): the same as Cityscapes label ids (benchmark submission);
- ``NAME_color.png``: the train ids in the Cityscapes palette;
- ``NAME_overlay.png``: the image blended with that colour map;
- ``NAME_importance.png`` (``importance``): the 1/8-scale importance map, upsampled
  bilinearly, as a heat map over the image;
- ``NAME_topk.png`` (``mask``): the image dimmed outside the Top-K mask, selected regions
  tinted and outlined: what FoR-Net chose to focus on.

A video ``NAME`` gives ``NAME_overlay.mp4`` (plus ``NAME_importance.mp4`` / ``NAME_topk.mp4``),
at the source frame rate divided by ``video_every``. Per-frame label maps
(``NAME_frames/NAME_000123_trainIds.png`` and ``_labelIds.png``, numbered by source frame)
are written only with ``label_ids``: a minute of video is ~1800 PNG files, and on a GPU
their encoding would cost more than the inference. A finished video is opened again and
its frames counted: a write that failed (disk full, a file-size limit) is an error, never
an unplayable file reported as success.

Live sources: an input that is not an existing path and is a number (a camera index,
``0``), a URL (``rtsp://``, ``http://``...) or a GStreamer pipeline (it holds ``!``) is
read with OpenCV like a video without an end, into ``camera0_*``, ``HOST_PORT_PATH_*`` or
``pipeline_*``. It runs until ``max_frames`` frames were processed, the source ends, or
Ctrl-C / SIGTERM: the frame in progress is finished, the videos are finalised and the run
goes on to its next input and completes normally (exit code 0) -- stopping is the normal
way to end a live source. A second Ctrl-C abandons the whole run (exit code 130, nothing
written), as Ctrl-C does at any other moment of a run.

``NAME`` is the file's stem; files found in a folder keep their path below the folder's
parent (``predict data/`` writes ``data/a/x_*`` and ``data/b/x_*``; ``predict ..`` names
the folder ``..`` is), so same-named files in different folders do not collide and nothing
is written outside the output folder. ``predictions.json`` lists every file written.

A run writes all or nothing. Every input is decoded (images) or opened (videos, live
sources) before anything is written; outputs go to a hidden staging folder inside the
output folder and are moved into place only once the whole run has succeeded, by a commit
whose guarantee is: **whenever ``predictions.json`` is present, the files it lists are
exactly those of the run it describes, all in place with that run's content, and the files
an earlier run listed that this one does not are gone.** The commit renames the staging
folder to ``.predict-commit-*`` (the decision), moves the old report into it, moves the
new files into place, deletes the earlier run's files that the new run does not rewrite,
and renames the new report into place last. A run that fails or is interrupted (Ctrl-C,
SIGTERM, an error) before the commit leaves the folder as it was; Ctrl-C or SIGTERM
during the commit waits for it (the run completes); a ``kill -9`` during the commit
leaves the folder without ``predictions.json`` -- it then claims no complete run -- and
the next ``predict`` into it completes that commit first. One ``predict`` at a time
writes into a folder (a lock; a second one is a one-line error). Files that the new run
does not write and no earlier report lists (the user's own) are never touched.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from .bundle import Bundle
from .contract import IMPORTANCE, TOPK_MASK, check_stride, nearest_valid
from .data.formats import submission_label_ids
from .data.labels import LabelSet, default_label_set, manifest_label_set
from .data.transforms import Preprocessing, preprocess
from .errors import FornetError, OptionError
from .evaluation.postprocess import (
    importance_heatmap,
    label_outputs,
    label_overlay,
    predicted_labels,
    topk_picture,
    upsampled_importance,
    upsampled_mask,
)
from .interrupts import StopSignals, stop_signals
from .io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, encode_png, find_files, folder_lock, read_image
from .runtimes.base import Runner
from .runtimes.registry import load_runner

_KINDS = {**dict.fromkeys(IMAGE_EXTENSIONS, "image"), **dict.fromkeys(VIDEO_EXTENSIONS, "video")}
REPORT_NAME = "predictions.json"
ALL_OUTPUTS_OPTION = "--outputs logits,labels,importance,topk_mask"
DEFAULT_FPS = 25.0  # for containers and streams that do not state their frame rate
STREAM_TIMEOUT_MS = 10_000  # opening a live source, and waiting for one of its frames
_STAGING, _COMMIT = ".predict-", ".predict-commit-"  # hidden folders inside the output folder
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class InputItem:
    path: Path | None  # the file; None for a live source
    kind: str  # "image" | "video" | "stream"
    name: str  # output stem relative to the output folder, "/"-separated
    stream: str | None = None  # a live source: camera index, URL or GStreamer pipeline

    @property
    def source(self) -> str:
        """How the report names the input (a URL without its password)."""
        return _redacted(self.stream) if self.stream is not None else str(self.path)


@dataclass
class PredictConfig:
    runtime: str = "ort"
    precision: str = "fp32"
    device: str = "cpu"
    # Network input (H, W). None: the image's own size when it is a multiple of the network
    # stride, else the nearest multiple (or the artefact's size when its shape is fixed);
    # the prediction is always resized back to the image's size.
    shape: tuple[int, int] | None = None
    overlay_alpha: float = 0.5
    importance: bool = False
    mask: bool = False
    label_ids: bool = False
    video_every: int = 1  # process every n-th video frame
    max_frames: int | None = None  # at most this many processed frames per video or live source
    ort_provider: str | None = None  # ONNX Runtime execution provider (cpu | cuda | tensorrt); None follows device

    def validate(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise OptionError(f"overlay alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.video_every < 1:
            raise OptionError(f"--video-every must be at least 1, got {self.video_every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise OptionError(f"--max-frames must be at least 1, got {self.max_frames}")


# ---------------------------------------------------------------------------- inputs


def is_live_source(text: str) -> bool:
    """Whether an input that is not an existing path names a live source: a camera index,
    a URL or a GStreamer pipeline."""
    return text.isdigit() or bool(_URL.match(text)) or "!" in text


def collect_inputs(paths: Sequence[str | Path], exclude: Path | None = None) -> list[InputItem]:
    """Images, videos and live sources named by ``paths`` (files, folders searched
    recursively, or -- when no such path exists -- a camera index, URL or GStreamer pipeline).

    In folders, files of other types and hidden files/folders are skipped and files under
    ``exclude`` (the output folder, so a re-run does not segment its own pictures) are
    left out; a file named directly must be an image or a video.
    """
    items: list[InputItem] = []
    seen: set[Path | str] = set()
    for given in paths:
        text = given if isinstance(given, str) else str(given)
        path = Path(given)  # a Path for a file; a URL keeps its "//" only as a string
        if path.is_dir():
            found = _folder_items(path, exclude)
            if not found:
                raise FornetError(f"folder {path} holds no images or videos")
        elif path.is_file():
            found = [InputItem(path, _kind(path), path.stem)]
        elif is_live_source(text):
            found = [InputItem(None, "stream", _stream_name(text), stream=text)]
        else:
            raise FornetError(f"input {path} does not exist (nor is it a camera index, URL or GStreamer pipeline)")
        for item in found:
            key = item.stream if item.stream is not None else item.path.resolve()
            if key not in seen:  # the same file named twice is segmented once
                seen.add(key)
                items.append(item)
    _check_names(items)
    return items


def _kind(path: Path) -> str:
    kind = _KINDS.get(path.suffix.lower())
    if kind is None:
        raise FornetError(
            f"input {path}: unknown file type {path.suffix or '(none)'} "
            f"(images: {' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})"
        )
    return kind


def _folder_items(folder: Path, excluded: Path | None) -> list[InputItem]:
    # The folder's own name prefixes the outputs: for "." and ".." that is the name of the
    # folder they stand for (abspath resolves them without following symlinks), so no
    # output name climbs out of the output folder.
    prefix = Path(os.path.abspath(folder)).name
    items = []
    for path in find_files(folder, tuple(_KINDS), exclude=excluded):
        rel = path.relative_to(folder).with_suffix("").as_posix()
        items.append(InputItem(path, _KINDS[path.suffix.lower()], "/".join(filter(None, (prefix, rel)))))
    return items


def _stream_name(text: str) -> str:
    """Output stem of a live source: ``camera0``, ``HOST_PORT_PATH`` of a URL, ``pipeline``."""
    if text.isdigit():
        return f"camera{int(text)}"
    if _URL.match(text):
        url = urllib.parse.urlsplit(text)
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{url.hostname or ''}_{url.port or ''}_{url.path}").strip("_.")
        return name or "stream"
    return "pipeline"


def _redacted(text: str) -> str:
    """A URL without the password it may carry (reports and messages are shared)."""
    if not _URL.match(text):
        return text
    url = urllib.parse.urlsplit(text)
    if url.password is None:
        return text
    return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1)).geturl()


def _check_names(items: list[InputItem]) -> None:
    owners: dict[str, str] = {}
    for item in items:
        other = owners.setdefault(item.name, item.source)
        if other != item.source:
            raise FornetError(
                f"inputs {other} and {item.source} would both write {item.name}_*; "
                "rename one or put them in different folders"
            )


@dataclass
class _Source:
    """An input checked before the run: its size, the network size, video timing; a live
    source stays open from the check to the run, with the frame read by the check."""

    item: InputItem
    hw: tuple[int, int]
    net_hw: tuple[int, int]
    fps: float | None = None
    frames: int | None = 1  # frames in the input (videos: the container's estimate; live: None)
    capture: cv2.VideoCapture | None = None
    first_frame: np.ndarray | None = None


def _probe(item: InputItem, segment: "Segmenter", stack: contextlib.ExitStack) -> _Source:
    """An input checked before the run: readable, and a size the artefact accepts.

    Images are decoded fully (a header check does not catch truncated data); videos must
    open and yield a first frame; a live source is opened (and kept open in ``stack``).
    """
    capture = first = None
    if item.kind == "image":
        hw, fps, frames = read_image(item.path).shape[:2], None, 1
    elif item.kind == "stream":
        capture = stack.enter_context(_open_stream(item.stream))
        ok, first = capture.read()
        if not ok:
            raise FornetError(f"live source {item.source} opened but gave no frame within {STREAM_TIMEOUT_MS // 1000} s")
        fps = capture.get(cv2.CAP_PROP_FPS)
        hw, fps, frames = first.shape[:2], fps if 0 < fps < 1000 else None, None
    else:
        with _open_video(item.path) as cap:
            ok, frame = cap.read()
            if not ok:
                raise FornetError(f"video {item.path} has no frames")
            fps = cap.get(cv2.CAP_PROP_FPS)
            hw, fps, frames = frame.shape[:2], fps if fps > 0 else None, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    return _Source(item, hw, segment.check_size(hw, item.source), fps, frames, capture, first)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    # OpenCV logs multi-line warnings of its own for a source it cannot open; our errors
    # say it in one line.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


@contextlib.contextmanager
def _opencv_path(path: Path) -> Iterator[str]:
    """A name OpenCV can open (or create) for the existing ``path``: OpenCV's Python binding
    crashes (SIGSEGV) on a file name that is not valid UTF-8, so such a file is reached
    through a symlink with a plain name in a private temporary folder."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="fornet-") as folder:
            link = Path(folder) / f"input{path.suffix.encode('ascii', 'ignore').decode()}"
            link.symlink_to(path.resolve())
            yield str(link)
        return
    yield name


@contextlib.contextmanager
def _open_video(path: Path) -> Iterator[cv2.VideoCapture]:
    with _opencv_path(path) as name:
        with _quiet_opencv():
            cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        try:
            if not cap.isOpened():
                raise FornetError(f"cannot open video {path}: not a video file, corrupt, or a codec OpenCV lacks")
            yield cap
        finally:
            cap.release()


def _has_gstreamer() -> bool:
    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


@contextlib.contextmanager
def _open_stream(text: str) -> Iterator[cv2.VideoCapture]:
    """A camera (index), a URL (OpenCV's FFmpeg backend, with timeouts) or a GStreamer
    pipeline (OpenCV's GStreamer backend), open, or a one-line error."""
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    with _quiet_opencv():
        if text.isdigit():
            cap, what = cv2.VideoCapture(int(text), cv2.CAP_ANY), f"camera {int(text)}"
        elif _URL.match(text):
            cap, what = cv2.VideoCapture(text, cv2.CAP_FFMPEG, timeouts), f"stream {_redacted(text)}"
        else:
            cap, what = cv2.VideoCapture(text, cv2.CAP_GSTREAMER), f"GStreamer pipeline {text!r}"
    try:
        if not cap.isOpened():
            if not text.isdigit() and not _URL.match(text) and not _has_gstreamer():
                raise FornetError(f"cannot open {what}: this OpenCV is built without GStreamer "
                                  "(see cv2.getBuildInformation()); is it meant to be a file? it does not exist")
            raise FornetError(f"cannot open {what}: not reachable, no such device, or a format OpenCV cannot read")
        yield cap
    finally:
        cap.release()


# ---------------------------------------------------------------------------- inference


@dataclass
class Prediction:
    """What a segmenter says about one image, everything at the image's size."""

    labels: np.ndarray  # H x W uint8 train ids
    importance: np.ndarray | None  # H x W float32, bilinear from 1/8 scale (when asked)
    mask: np.ndarray | None  # H x W bool, the Top-K regions, nearest from 1/8 scale (when asked)


class Segmenter:
    """A runner plus the bundle's preprocessing: an RGB image of any size in, a
    :class:`Prediction` at that size out. What ``fornet-deploy predict`` runs, and the
    Python API's entry point::

        with Segmenter.from_bundle("bundle", runtime="ort", precision="fp16") as segment:
            prediction = segment(rgb_image)          # H x W x 3 uint8
            prediction.labels                        # H x W train ids

    ``shape`` fixes the network input (H, W); without it, an image runs at its own size when
    that is a multiple of the network stride, else at the nearest multiple (or at the
    artefact's fixed size, or the preprocessing's fixed resize); the prediction is always
    resized back to the image.
    """

    def __init__(self, runner: Runner, preprocessing: Preprocessing, shape: tuple[int, int] | None = None,
                 labels: LabelSet | None = None):
        self.runner = runner
        self.preprocessing = preprocessing
        self.shape = shape
        # what the class ids mean (names, colours); a runner without a bundle: the default set
        self.labels = labels or default_label_set(19)

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, runtime: str = "ort", precision: str = "fp32",
                    device: str = "cpu", shape: tuple[int, int] | None = None, **runner_options) -> "Segmenter":
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle, verify=False)  # the runner checks the hash of its artefact
        labels = manifest_label_set(bundle.manifest, f"bundle {bundle.root}")
        runner = load_runner(bundle, runtime, precision, device, **runner_options)
        return cls(runner, Preprocessing.from_dict(bundle.manifest["preprocessing"]), shape, labels)

    def __enter__(self) -> "Segmenter":
        self.runner.activate()
        if self.shape is not None:
            check_stride(*self.shape, self.runner.input_spec().stride)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def network_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The network input size for an image of size ``hw``."""
        if self.shape is not None:
            return tuple(self.shape)
        if self.preprocessing.resize == "fixed":
            return self.preprocessing.target_size(hw)
        spec = self.runner.input_spec()
        fixed_h, fixed_w = spec.shape[2:]
        if fixed_h is not None and fixed_w is not None:
            return fixed_h, fixed_w
        return nearest_valid(hw[0], spec.stride), nearest_valid(hw[1], spec.stride)

    def check_size(self, hw: tuple[int, int], source: str = "image") -> tuple[int, int]:
        """The network size for ``hw``, checked against the artefact before any work."""
        net_hw = self.network_size(hw)
        try:
            self.runner.input_spec().check_shape((1, 3, *net_hw))
        except FornetError as exc:
            raise FornetError(f"{source}: {exc}") from None
        return net_hw

    def __call__(self, image: np.ndarray, importance: bool = False, mask: bool = False) -> Prediction:
        hw = image.shape[:2]
        net_h, net_w = self.network_size(hw)
        pre = replace(self.preprocessing, resize="fixed", height=net_h, width=net_w)
        extra = (IMPORTANCE,) * importance + (TOPK_MASK,) * mask
        outputs = self.runner(preprocess(image, pre), outputs=label_outputs(self.runner.output_names(), *extra))
        missing = [name for name in extra if name not in outputs]
        if missing:
            raise FornetError(
                f"{self.runner.info().artifact} was exported without the {' and '.join(missing)} output; "
                f"re-export it with `fornet-deploy export ... {ALL_OUTPUTS_OPTION}`"
            )
        return Prediction(predicted_labels(outputs, hw), upsampled_importance(outputs, hw) if importance else None,
                          upsampled_mask(outputs, hw) if mask else None)


# ---------------------------------------------------------------------------- pictures


def _pictures(image: np.ndarray, pred: Prediction, cfg: PredictConfig, labels: LabelSet) -> dict[str, np.ndarray]:
    """The RGB pictures of one prediction, by output suffix."""
    pictures = {"overlay": label_overlay(image, pred.labels, labels, cfg.overlay_alpha)}
    if pred.importance is not None:
        pictures["importance"] = importance_heatmap(image, pred.importance, cfg.overlay_alpha)
    if pred.mask is not None:
        pictures["topk"] = topk_picture(image, pred.mask)
    return pictures


def _label_maps(pred: Prediction, label_ids: bool, labels: LabelSet) -> dict[str, np.ndarray]:
    maps = {"trainIds": pred.labels}
    if label_ids:
        maps["labelIds"] = submission_label_ids(labels, pred.labels)
    return maps


# ---------------------------------------------------------------------------- writing


def _confined(rel: str) -> bool:
    """Whether an output name stays inside the output folder: relative, no ``..``."""
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts


class _Staging:
    """Outputs are written into a hidden folder inside the output folder (same file system,
    so the final moves are renames) and moved into place by :meth:`commit` (see the module
    docstring for its guarantee).

    Entering takes the output folder's lock and completes or removes what an earlier,
    killed run left. Leaving the ``with`` block on an exception removes the staged files
    and the folders this run created, so the output folder is left as it was.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: list[str] = []  # relative "/"-separated paths, in writing order

    def __enter__(self) -> "_Staging":
        self._created = _missing_dirs(self.out_dir)
        self._lock = contextlib.ExitStack()
        try:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self._lock.enter_context(folder_lock(self.out_dir, "output folder"))
            except OSError as exc:
                raise FornetError(f"cannot create output folder {self.out_dir}: {exc.strerror or exc}") from None
            try:
                _recover(self.out_dir)
                self.root = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.out_dir))
            except OSError as exc:
                raise FornetError(f"cannot prepare output folder {self.out_dir} (completing an earlier, "
                                  f"interrupted run's commit): {exc.strerror or exc}") from None
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, exc_type, *_) -> None:
        shutil.rmtree(self.root, ignore_errors=True)  # gone already after a commit
        if exc_type is not None:
            self._undo()
        self._lock.close()

    def _undo(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # not empty: it held files before this run
                folder.rmdir()
        self._lock.close()

    def path(self, rel: str) -> Path:
        """A staged path for the output ``rel``, recorded as written."""
        if not _confined(rel):  # names come from inputs: never let one climb out of --out
            raise FornetError(f"output name {rel!r} would leave the output folder {self.out_dir}")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(rel)
        return path

    def write_png(self, rel: str, image: np.ndarray) -> None:
        """Write an RGB or single-channel uint8 image."""
        self.write_bytes(rel, encode_png(image, rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            self.path(rel).write_bytes(data)
        except OSError as exc:
            raise FornetError(f"cannot write {self.out_dir / rel}: {exc.strerror or exc}") from None

    def video(self, rel: str, fps: float, hw: tuple[int, int]) -> "_VideoOut":
        return _VideoOut(self, rel, fps, hw)

    def commit(self, report: dict) -> None:
        """Write the report and move the run into place (the module docstring's guarantee)."""
        try:
            (self.root / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
            commit = self.root.with_name(_COMMIT + self.root.name[len(_STAGING):])
            os.replace(self.root, commit)  # the decision: from here on the run completes
            _finish_commit(self.out_dir, commit)
        except OSError as exc:
            raise FornetError(f"cannot move outputs into {self.out_dir}: {exc.strerror or exc}") from None


def _listed(report: Path) -> list[str]:
    """The files a report lists (names that stay inside the folder); none if unreadable."""
    try:
        files = json.loads(report.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and _confined(f)] if isinstance(files, list) else []


def _finish_commit(out_dir: Path, commit: Path) -> None:
    """Roll a committed run forward into ``out_dir``; every step can be repeated, so a
    commit cut short by a kill is completed by running this again."""
    new_report, previous = commit / REPORT_NAME, commit / ".previous.json"
    if not new_report.exists():  # the last step was done
        shutil.rmtree(commit, ignore_errors=True)
        return
    if (out_dir / REPORT_NAME).exists() and not previous.exists():
        os.replace(out_dir / REPORT_NAME, previous)  # the folder no longer claims the old run
    new_files = _listed(new_report)
    for rel in new_files:
        if (commit / rel).exists():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(commit / rel, out_dir / rel)
    for rel in sorted(set(_listed(previous)) - set(new_files)):
        target = out_dir / rel
        if target.is_file() or target.is_symlink():
            target.unlink()
            for folder in target.parents:  # folders only the old run's files were in
                if folder == out_dir:
                    break
                try:
                    folder.rmdir()
                except OSError:
                    break
    os.replace(new_report, out_dir / REPORT_NAME)
    shutil.rmtree(commit, ignore_errors=True)


def _recover(out_dir: Path) -> None:
    """Complete the commit of a run killed while committing; remove a killed run's staging."""
    for entry in sorted(out_dir.iterdir()):
        if entry.is_dir() and entry.name.startswith(_COMMIT):
            _finish_commit(out_dir, entry)
        elif entry.is_dir() and entry.name.startswith(_STAGING):
            shutil.rmtree(entry, ignore_errors=True)


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


class _VideoOut:
    """One mp4 output, written under a plain temporary name in the staging folder and
    checked when finished: OpenCV reports a failed write (disk full, a file-size limit)
    only through ``write``'s result (OpenCV 5) or not at all, and leaves a file that does
    not play; so the file is opened again and its frames counted before it is kept."""

    def __init__(self, staging: _Staging, rel: str, fps: float, hw: tuple[int, int]):
        self.target = staging.out_dir / rel
        self.final = staging.path(rel)
        self.frames = 0
        self._stack = contextlib.ExitStack()
        fd, tmp = tempfile.mkstemp(prefix=".video-", suffix=".mp4", dir=staging.root)
        os.close(fd)
        self.tmp = Path(tmp)
        self.name = self._stack.enter_context(_opencv_path(self.tmp))
        self.writer = cv2.VideoWriter(self.name, cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"mp4v"), fps, (hw[1], hw[0]))
        if not self.writer.isOpened():
            self.close()
            raise FornetError(f"OpenCV here cannot write mp4v video {self.target} (is it built with FFmpeg?)")

    def write(self, rgb: np.ndarray) -> None:
        if self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)) is False:
            raise FornetError(f"cannot write video {self.target}: OpenCV failed to write frame {self.frames + 1} "
                              "(disk full or a file-size limit?)")
        self.frames += 1

    def finish(self) -> None:
        self.writer.release()  # writes the mp4 index
        found = 0
        if _mp4_boxes_complete(self.tmp):  # else FFmpeg would print its own complaint on reopening
            with _quiet_opencv():
                cap = cv2.VideoCapture(self.name, cv2.CAP_FFMPEG)
            try:
                found = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            finally:
                cap.release()
        self.close()
        if found != self.frames:
            raise FornetError(f"cannot write video {self.target}: the finished file plays {max(found, 0)} of "
                              f"{self.frames} frames (disk full or a file-size limit?)")
        os.replace(self.tmp, self.final)

    def close(self) -> None:
        self.writer.release()
        self._stack.close()


def _mp4_boxes_complete(path: Path) -> bool:
    """Whether an mp4 file's top-level boxes tile it exactly and include the index
    (``moov``): a write cut short by a full disk or a size limit leaves neither true."""
    size = path.stat().st_size
    boxes = set()
    with open(path, "rb") as f:
        position = 0
        while position < size:
            f.seek(position)
            header = f.read(16)
            if len(header) < 8:
                return False
            length, kind = struct.unpack(">I4s", header[:8])
            if length == 1 and len(header) == 16:  # a 64-bit size follows the type
                (length,) = struct.unpack(">Q", header[8:])
            elif length == 0:  # the box runs to the end of the file
                length = size - position
            if length < 8 or position + length > size:
                return False
            boxes.add(kind)
            position += length
    return b"moov" in boxes


def _run_image(source: _Source, segment: Segmenter, cfg: PredictConfig, staging: _Staging) -> list[str]:
    image = read_image(source.item.path)
    pred = segment(image, importance=cfg.importance, mask=cfg.mask)
    written = []
    outputs = {**_label_maps(pred, cfg.label_ids, segment.labels), "color": segment.labels.colorize(pred.labels),
               **_pictures(image, pred, cfg, segment.labels)}
    for suffix, picture in outputs.items():
        rel = f"{source.item.name}_{suffix}.png"
        staging.write_png(rel, picture)
        written.append(rel)
    return written


def _frames(cap: cv2.VideoCapture, every: int, first: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    """(source frame index, BGR frame) of every ``every``-th frame; ``first`` is frame 0
    when it was read already (a live source, by the check before the run)."""
    index = 0
    if first is not None:
        yield 0, first
        index = 1
    while cap.grab():  # grab() skips the colour conversion of frames not processed
        if index % every == 0:
            ok, frame = cap.retrieve()
            if not ok:
                return
            yield index, frame
        index += 1


def _run_frames(source: _Source, segment: Segmenter, cfg: PredictConfig, staging: _Staging,
                tick: Callable[[], None], stop: StopSignals) -> dict:
    """A video file or a live source; returns its record's outputs, frames, fps and why it ended
    (``end``, ``max_frames``, or for a live source the signal that stopped it)."""
    name = source.item.name
    stem = name.rsplit("/", 1)[-1]
    kinds = ["overlay"] + (["importance"] if cfg.importance else []) + (["topk"] if cfg.mask else [])
    fps = (source.fps or DEFAULT_FPS) / cfg.video_every  # keeps the playback speed
    live = source.item.kind == "stream"
    written: list[str] = []
    processed, ended = 0, "end"
    with contextlib.ExitStack() as stack:
        cap = source.capture if live else stack.enter_context(_open_video(source.item.path))
        videos = {}
        for kind in kinds:
            videos[kind] = staging.video(f"{name}_{kind}.mp4", fps, source.hw)
            stack.callback(videos[kind].close)
            written.append(f"{name}_{kind}.mp4")
        for index, frame in _frames(cap, cfg.video_every, source.first_frame):
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            pred = segment(image, importance=cfg.importance, mask=cfg.mask)
            for kind, picture in _pictures(image, pred, cfg, segment.labels).items():
                videos[kind].write(picture)
            if cfg.label_ids:
                for suffix, labels in _label_maps(pred, True, segment.labels).items():
                    rel = f"{name}_frames/{stem}_{index:06d}_{suffix}.png"
                    staging.write_png(rel, labels)
                    written.append(rel)
            processed += 1
            tick()
            if cfg.max_frames is not None and processed >= cfg.max_frames:
                ended = "max_frames"
                break
            if live and stop.requested:
                ended = stop.name
                break
        for video in videos.values():
            video.finish()
    return {"outputs": written, "frames": processed, "fps": source.fps, "ended": ended}


# ---------------------------------------------------------------------------- entry point


Progress = Callable[..., None]


def _progress_reporter(progress: Progress | None) -> Progress | None:
    """``progress(done, total, note)``; a callback written for ``progress(done, total)``
    (this function's signature before live sources) is called with two arguments."""
    if progress is None:
        return None
    try:
        inspect.signature(progress).bind(0, 0, "")
    except TypeError:
        return lambda done, total, note: progress(done, total)
    except ValueError:  # no signature to inspect (a builtin): call it with three
        pass
    return progress


class _Meter:
    """Counts processed images and frames, sums the runner's compute time and reports
    progress with the recent frame rate as its note."""

    def __init__(self, runner: Runner, progress: Progress | None, total: int | None):
        self.runner, self.progress, self.total = runner, progress, total
        self.done = 0
        self.inference_seconds = 0.0
        self._times: collections.deque[float] = collections.deque(maxlen=30)

    def fps(self) -> float | None:
        """Images or frames per second over the last 30 (end to end: read, infer, write)."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return None
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def tick(self) -> None:
        self.done += 1
        self.inference_seconds += self.runner.last_inference_time or 0.0
        self._times.append(time.perf_counter())
        if self.progress:
            fps = self.fps()
            total = None if self.total is None else max(self.total, self.done)  # container counts can be low
            self.progress(self.done, total, f"{fps:.1f} fps" if fps else "")


def _total(sources: list[_Source], cfg: PredictConfig) -> int | None:
    """Images and frames the run will process; None when a live source has no bound."""
    total = 0
    for source in sources:
        if source.item.kind == "image":
            total += 1
            continue
        bound = math.ceil(source.frames / cfg.video_every) if source.frames is not None else None
        if cfg.max_frames is not None:
            bound = cfg.max_frames if bound is None else min(bound, cfg.max_frames)
        if bound is None:
            return None
        total += bound
    return total


def predict(bundle_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
            cfg: PredictConfig = PredictConfig(), progress: Progress | None = None) -> dict:
    """The library function behind ``fornet-deploy predict``; returns the summary that is
    also written to ``OUT_DIR/predictions.json``.

    ``inputs``: image and video files, folders, and live sources (camera index, URL,
    GStreamer pipeline; pass them as strings: a ``Path`` folds a URL's ``//``).
    ``progress(done, total, note)`` is called after each image or frame; ``total`` is None
    while a live source without ``max_frames`` is read, ``note`` is the frame rate.
    """
    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FornetError(f"output path {out_dir} exists and is not a folder")
    items = collect_inputs(inputs, exclude=out_dir)
    bundle = Bundle.open(bundle_dir, verify=False)  # the runner checks the hash of the artefact it runs

    runner_options = {"ort_device": cfg.ort_provider}
    if cfg.runtime == "trt" and cfg.shape is not None:
        runner_options["shape"] = (1, 3, *cfg.shape)  # the engine whose profile takes it
    with stop_signals() as stop, contextlib.ExitStack() as live_sources, \
            Segmenter.from_bundle(bundle, cfg.runtime, cfg.precision, cfg.device, cfg.shape,
                                  **runner_options) as segment:
        runner = segment.runner
        sources = [_probe(item, segment, live_sources) for item in items]
        load_seconds = time.perf_counter() - start
        meter = _Meter(runner, _progress_reporter(progress), _total(sources, cfg))

        records = []
        with _Staging(out_dir) as staging:
            for source in sources:
                record = {"source": source.item.source, "kind": source.item.kind,
                          "size": list(source.hw), "network_size": list(source.net_hw)}
                if source.item.kind == "image":
                    record["outputs"] = _run_image(source, segment, cfg, staging)
                    meter.tick()
                elif source.item.kind == "video":
                    record.update(_run_frames(source, segment, cfg, staging, meter.tick, stop))
                else:
                    with stop.deferred():  # Ctrl-C / SIGTERM ends a live source after its current frame
                        record.update(_run_frames(source, segment, cfg, staging, meter.tick, stop))
                    stop.clear()
                records.append(record)
            with stop.deferred():  # a signal during the commit is honoured after it: the run is complete
                summary = _summary(bundle, runner, out_dir, cfg, records, meter, load_seconds, start)
                staging.commit(summary)
    return summary


def _summary(bundle: Bundle, runner: Runner, out_dir: Path, cfg: PredictConfig, records: list[dict],
             meter: _Meter, load_seconds: float, start: float) -> dict:
    resized = [r for r in records if r["size"] != r["network_size"]]
    notes = []
    if resized:
        notes.append(
            f"{len(resized)} of {len(records)} inputs were resized for the network "
            f"({', '.join(sorted({'x'.join(map(str, r['network_size'])) for r in resized}))}) "
            "and their predictions resized back to the input size"
        )
    seconds = time.perf_counter() - start
    return {
        "bundle": str(bundle.root),
        "out_dir": str(out_dir),
        "runner": runner.info().to_dict(),
        "report": str(out_dir / REPORT_NAME),
        "config": asdict(cfg),
        "images": sum(r["kind"] == "image" for r in records),
        "videos": sum(r["kind"] == "video" for r in records),
        "streams": sum(r["kind"] == "stream" for r in records),
        "video_frames": sum(r.get("frames", 0) for r in records),
        "resized": len(resized),
        "notes": notes,
        "items": records,
        "files": [f for r in records for f in r["outputs"]],
        "timing": {
            "seconds": seconds,
            "load_seconds": load_seconds,  # runner start-up and input checks
            "inference_seconds": meter.inference_seconds,  # compute only, as the runner measures it
            "inference_ms_mean": 1000.0 * meter.inference_seconds / meter.done if meter.done else None,
            # images and frames per second, end to end (read, infer, write), after the start-up
            "frames_per_second": meter.done / (seconds - load_seconds) if seconds > load_seconds else None,
        },
    }
