"""Outputs of ``predict``: the staging folder a run writes into, its all-or-nothing commit
(see :mod:`fornet_deploy.predict`), and checked mp4 videos."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..errors import FornetError
from ..io import encode_png, folder_lock
from .sources import opencv_path, quiet_opencv

REPORT_NAME = "predictions.json"
_STAGING, _COMMIT = ".predict-", ".predict-commit-"  # hidden folders inside the output folder


def _confined(rel: str) -> bool:
    """Whether an output name stays inside the output folder: relative, no ``..``."""
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts


class OutputStaging:
    """Outputs are written into a hidden folder inside the output folder (same file system,
    so the final moves are renames) and moved into place by :meth:`commit` (see the package
    docstring for its guarantee).

    Entering takes the output folder's lock and completes or removes what an earlier,
    killed run left. Leaving the ``with`` block on an exception removes the staged files
    and the folders this run created, so the output folder is left as it was.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: list[str] = []  # relative "/"-separated paths, in writing order

    def __enter__(self) -> "OutputStaging":
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

    def video(self, rel: str, fps: float, hw: tuple[int, int]) -> "VideoOut":
        return VideoOut(self, rel, fps, hw)

    def commit(self, report: dict) -> None:
        """Write the report and move the run into place (the package docstring's guarantee)."""
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
        fd, tmp = tempfile.mkstemp(prefix=".video-", suffix=".mp4", dir=staging.root)
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
