"""Outputs of ``predict``: the staging folder a run writes into, its all-or-nothing commit
(see :mod:`fornet_deploy.predict`), and checked mp4 videos."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..errors import FornetError
from ..interrupts import StopSignals
from ..io import encode_png, folder_lock, give_plain_file_mode
from ..staging import Layout, confined, staged
from .sources import opencv_path, quiet_opencv

REPORT_NAME = "predictions.json"
# The staged writer as predict uses it (fornet_deploy/staging.py): hidden staging folders in
# the output folder; the decision renames one to ".predict-commit-*"; the old report goes
# first, so a folder holding predictions.json never holds a half-moved run; no fsync (a
# video's label maps are thousands of files, and a run can be repeated).
LAYOUT = Layout(what="output folder", prefix=".predict-", claim=REPORT_NAME, committed_prefix=".predict-commit-",
                withdraw_claim=True)


class OutputStaging:
    """Outputs are written into a hidden folder inside the output folder and moved into
    place by :meth:`commit` (see the package docstring for its guarantee), through the
    staged writer of :mod:`fornet_deploy.staging`.

    Entering takes the output folder's lock and completes or removes what an earlier,
    killed run left. Leaving the ``with`` block on an exception removes the staged files
    and the folders this run created, so the output folder is left as it was. ``stop``:
    the run's signal routing (a live source ends at a frame on Ctrl-C), which the commit
    defers.
    """

    def __init__(self, out_dir: Path, stop: StopSignals | None = None, protect: Iterable[Path] = ()):
        self.out_dir = out_dir
        self.files: list[str] = []  # relative "/"-separated paths, in writing order
        self._stop = stop
        # the run's input files: never written over, never deleted as an earlier run's output
        self._protected = {os.path.realpath(p) for p in protect}

    def _protected_name(self, rel: str) -> bool:
        return os.path.realpath(self.out_dir / rel) in self._protected

    def __enter__(self) -> "OutputStaging":
        self._scope = contextlib.ExitStack()
        lock = lambda: folder_lock(self.out_dir, "output folder")
        self.staging = self._scope.enter_context(staged(self.out_dir, LAYOUT, lock, self._stop))
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._scope.__exit__(*exc)

    @property
    def folder(self) -> Path:
        """The staging folder."""
        return self.staging.folder

    def path(self, rel: str) -> Path:
        """A staged path for the output ``rel``, recorded as written."""
        if self._protected_name(rel):
            raise FornetError(f"output {self.out_dir / rel} would replace an input of this run; "
                              "choose another --out")
        path = self.staging.path(rel)
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

    def video(self, rel: str, fps: float, hw: tuple[int, int]) -> "VideoOut":
        return VideoOut(self, rel, fps, hw)

    def commit(self, report: dict) -> None:
        """Write the report and move the run into place, deleting the files the earlier
        report lists that this run does not write (the package docstring's guarantee)."""
        try:
            earlier = [name for name in _listed(self.out_dir / REPORT_NAME) if not self._protected_name(name)]
            self.staging.commit(report, self.files, sorted(earlier))
        except OSError as exc:
            raise FornetError(f"cannot move outputs into {self.out_dir}: {exc.strerror or exc}") from None


def _listed(report: Path) -> list[str]:
    """The files a report lists (names that stay inside the folder); none if unreadable."""
    try:
        files = json.loads(report.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and confined(f)] if isinstance(files, list) else []


class VideoOut:
    """One mp4 output, written under a plain temporary name in the staging folder and
    checked when finished: OpenCV reports a failed write (disk full, a file-size limit)
    only through ``write``'s result (OpenCV 5) or not at all, and leaves a file that does
    not play; so the file is opened again and its frames counted before it is kept."""

    def __init__(self, staging: OutputStaging, rel: str, fps: float, hw: tuple[int, int]):
        self.target = staging.out_dir / rel
        self.final = staging.path(rel)
        self.frames = 0
        self._stack = contextlib.ExitStack()
        fd, tmp = tempfile.mkstemp(prefix=".video-", suffix=".mp4", dir=staging.folder)
        os.close(fd)
        self.tmp = Path(tmp)
        self.name = self._stack.enter_context(opencv_path(self.tmp))
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
            with quiet_opencv():
                cap = cv2.VideoCapture(self.name, cv2.CAP_FFMPEG)
            try:
                found = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            finally:
                cap.release()
        self.close()
        if found != self.frames:
            raise FornetError(f"cannot write video {self.target}: the finished file plays {max(found, 0)} of "
                              f"{self.frames} frames (disk full or a file-size limit?)")
        give_plain_file_mode(self.tmp)  # as the PNGs beside it, not mkstemp's 0600
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
