"""Inputs of ``predict``: files and folders collected into named items, live sources
(camera index, URL, GStreamer pipeline), and each input opened and checked before the run."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from ..errors import FornetError
from ..io import (
    FFMPEG_LOG_LEVEL,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    check_frame_size,
    find_files,
    read_image,
    read_image_size,
)
from .segmenter import Segmenter

_KINDS = {**dict.fromkeys(IMAGE_EXTENSIONS, "image"), **dict.fromkeys(VIDEO_EXTENSIONS, "video")}
STREAM_TIMEOUT_MS = 10_000  # opening a live source, and waiting for one of its frames
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A camera index is ASCII digits (not "²", which str.isdigit() accepts) that fit the C int
# OpenCV takes; a longer number is not a camera.
_CAMERA = re.compile(r"^[0-9]{1,9}$")


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


def _is_camera(text: str) -> bool:
    return bool(_CAMERA.match(text))


def is_live_source(text: str) -> bool:
    """Whether an input that is not an existing path names a live source: a camera index,
    a URL or a GStreamer pipeline."""
    return _is_camera(text) or bool(_URL.match(text)) or "!" in text


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
    if _is_camera(text):
        return f"camera{int(text)}"
    if _URL.match(text):
        url = urllib.parse.urlsplit(text)
        try:
            port = url.port or ""
        except ValueError:  # not a number, or beyond 65535
            raise FornetError(f"input {_redacted(text)}: the URL's port is not a port number (1 to 65535)") from None
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{url.hostname or ''}_{port}_{url.path}").strip("_.")
        return name or "stream"
    return "pipeline"


def _redacted(text: str) -> str:
    """A URL without the password it may carry (reports and messages are shared)."""
    if not _URL.match(text):
        return text
    try:
        url = urllib.parse.urlsplit(text)
        password = url.password
    except ValueError:  # a URL urllib cannot split (a bad IPv6 host): shown as given
        return text
    if password is None:
        return text
    return url._replace(netloc=url.netloc.replace(f":{password}@", ":***@", 1)).geturl()


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
class Source:
    """An input checked before the run: its size, the network size, video timing; a live
    source stays open from the check to the run, with the frame read by the check."""

    item: InputItem
    hw: tuple[int, int]
    net_hw: tuple[int, int]
    fps: float | None = None
    frames: int | None = 1  # frames in the input (videos: the container's estimate; live: None)
    capture: cv2.VideoCapture | None = None
    first_frame: np.ndarray | None = None


def probe(item: InputItem, segment: Segmenter, stack: contextlib.ExitStack) -> Source:
    """An input checked before the run: readable, and a size the artefact accepts.

    Images are checked by their header's size, then decoded fully (a header check does not
    catch truncated data); videos must open and yield a first frame; a live source is opened
    (and kept open in ``stack``).
    """
    capture = first = None
    if item.kind == "image":
        # the size from the header first: an image the artefact cannot take is refused before
        # it is decoded (an 8000x8000 picture is 192 MB decoded, its network input far more)
        segment.check_size(read_image_size(item.path), item.source)
        hw, fps, frames = read_image(item.path).shape[:2], None, 1
    elif item.kind == "stream":
        capture = stack.enter_context(_open_stream(item.stream))
        ok, first = capture.read()
        if not ok:
            raise FornetError(f"live source {item.source} opened but gave no frame "
                              f"within {STREAM_TIMEOUT_MS // 1000} s")
        fps = capture.get(cv2.CAP_PROP_FPS)
        hw, fps, frames = first.shape[:2], fps if 0 < fps < 1000 else None, None
    else:
        with open_video(item.path) as cap:
            ok, frame = cap.read()
            if not ok:
                raise FornetError(f"video {item.path} has no frames")
            fps = cap.get(cv2.CAP_PROP_FPS)
            hw, fps, frames = frame.shape[:2], fps if fps > 0 else None, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    return Source(item, hw, segment.check_size(hw, item.source), fps, frames, capture, first)


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    # OpenCV logs multi-line warnings of its own for a source it cannot open, and FFmpeg
    # its own errors; our errors say it in one line.
    os.environ.setdefault(*FFMPEG_LOG_LEVEL)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


@contextlib.contextmanager
def opencv_path(path: Path) -> Iterator[str]:
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
def open_video(path: Path) -> Iterator[cv2.VideoCapture]:
    with opencv_path(path) as name:
        with quiet_opencv():
            cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        try:
            if not cap.isOpened():
                raise FornetError(f"cannot open video {path}: not a video file, corrupt, or a codec OpenCV lacks")
            check_frame_size(cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FRAME_WIDTH), str(path))
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
    with quiet_opencv():
        if _is_camera(text):
            cap, what = cv2.VideoCapture(int(text), cv2.CAP_ANY), f"camera {int(text)}"
        elif _URL.match(text):
            cap, what = cv2.VideoCapture(text, cv2.CAP_FFMPEG, timeouts), f"stream {_redacted(text)}"
        else:
            cap, what = cv2.VideoCapture(text, cv2.CAP_GSTREAMER), f"GStreamer pipeline {text!r}"
    try:
        if not cap.isOpened():
            if not _is_camera(text) and not _URL.match(text) and not _has_gstreamer():
                raise FornetError(f"cannot open {what}: this OpenCV is built without GStreamer "
                                  "(see cv2.getBuildInformation()); is it meant to be a file? it does not exist")
            raise FornetError(f"cannot open {what}: not reachable, no such device, or a format OpenCV cannot read")
        yield cap
    finally:
        cap.release()


def read_frames(cap: cv2.VideoCapture, every: int, first: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
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
