"""Frames of a video file as calibration images: ``num`` frames spread evenly over the video,
the same frames on every run.

The frames are counted by reading the video through once (``grab``, as OpenCV's FFmpeg
backend decodes them), not taken from the container's frame count, which is an estimate
for many files (duration x frame rate): so the chosen indices depend on the file alone.
A second pass decodes the chosen frames in order. Both passes read the whole file: a long
video costs one decode of every frame per pass (seconds per minute of 1080p video).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from ..errors import FornetError
from ..io import FFMPEG_LOG_LEVEL, check_frame_size


def evenly_spaced(total: int, num: int) -> list[int]:
    """``min(num, total)`` increasing frame indices: the frame on screen at the middle of each
    of ``num`` equal parts of a ``total``-frame video (every frame when ``num >= total``)."""
    if num >= total:
        return list(range(total))
    # consecutive values differ by total / num > 1 before flooring, so they are distinct
    return [((2 * i + 1) * total) // (2 * num) for i in range(num)]


@contextlib.contextmanager
def open_video(path: Path) -> Iterator[cv2.VideoCapture]:
    """An open ``cv2.VideoCapture`` of the file whose frames are of a size the toolkit decodes
    (:func:`~fornet_deploy.io.check_frame_size`), or one line saying why not.

    OpenCV's Python binding crashes on a file name that is not valid UTF-8, so such a file
    is opened through a plainly named symlink in a private temporary folder; OpenCV's own
    multi-line warnings for a file it cannot open are silenced (the error says it), and so
    are FFmpeg's own lines (``moov atom not found``; :data:`~fornet_deploy.io.FFMPEG_LOG_LEVEL`)."""
    os.environ.setdefault(*FFMPEG_LOG_LEVEL)
    with contextlib.ExitStack() as stack:
        name = str(path)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fornet-")))
            link = folder / f"video{path.suffix.encode('ascii', 'ignore').decode()}"
            link.symlink_to(path.resolve())
            name = str(link)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            capture = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        finally:
            cv2.utils.logging.setLogLevel(level)
        stack.callback(capture.release)
        if not capture.isOpened():
            raise FornetError(f"cannot open video {path}: not a video file, corrupt, or a codec OpenCV lacks")
        check_frame_size(capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH), str(path))
        yield capture


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """(frames OpenCV decodes from the file, (height, width) of its first frame)."""
    with open_video(path) as capture:
        ok, first = capture.read()
        if not ok or first is None:
            raise FornetError(f"video {path} has no frames OpenCV can decode (corrupt, or a codec OpenCV lacks)")
        total = 1
        while capture.grab():
            total += 1
    return total, (int(first.shape[0]), int(first.shape[1]))


def read_frames(path: Path, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """The frames at ``indices`` (increasing), RGB uint8, in one pass over the file."""
    wanted = iter(indices)
    target = next(wanted, None)
    with open_video(path) as capture:
        index = 0
        while target is not None:
            if not capture.grab():
                raise FornetError(f"video {path} ended before frame {target}: it changed since its frames were counted")
            if index == target:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    raise FornetError(f"cannot decode frame {index} of video {path}")
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                target = next(wanted, None)
            index += 1
