"""Files: atomic writes, JSON, hashing, image read/write and image discovery.

Knows nothing about bundles, models or datasets; every stage writes through here, so a
file is either the old one or the complete new one, never half-written: it is written to
a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from .errors import WRITE_ERRNOS, FornetError

# Image files every command reads (cv2.imread decodes all of them), and the videos predict reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


# --- hashing and time -------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | Path, what: str, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
    """A whole file, read once; one line if it is missing, larger than ``max_bytes`` (checked
    before reading) or not the file whose hash is ``sha256`` (e.g. replaced since a manifest
    that records it was read: what the caller loads is then exactly what was checked)."""
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise FornetError(f"{what} {path} is {size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB "
                              "this toolkit reads from such a file")
        data = f.read()
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise FornetError(f"{what} {path} does not match the sha256 its bundle's manifest records (changed after "
                          "the manifest was read, e.g. by another command writing the bundle); run this again")
    return data


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- atomic writes ----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    On any exception the temporary file is removed and ``path`` is left as it was; a full
    disk or the file-size limit is one line naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the artefact the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise FornetError(f"cannot write {path}: {exc.strerror}") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FornetError(f"{what} {path} is not valid JSON ({exc})") from None


# --- images -----------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3, or raise a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"image {path} does not exist")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FornetError(f"cannot read image {path}: not an image file or corrupt")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) -> RGB uint8 HxWx3, or a one-line error."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FornetError(f"cannot decode image {name}: not an image file or corrupt")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray, name: str = "image") -> bytes:
    """PNG bytes of an RGB (HxWx3) or single-channel uint8 image (cv2 wants BGR)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise FornetError(f"OpenCV cannot encode {name} as PNG")
    return data.tobytes()


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB or single-channel image atomically (never a half-written PNG)."""
    atomic_write_bytes(path, encode_png(image, str(path)))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def find_files(folder: str | Path, extensions: tuple[str, ...], exclude: Path | None = None) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose suffix is in ``extensions``.

    Hidden files and folders are skipped, and so is everything under ``exclude`` (e.g. an
    output folder inside the input folder, so a re-run does not read its own pictures).
    """
    folder = Path(folder)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in extensions or _hidden(path.relative_to(folder)) or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        found.append(path)
    return found


def find_images(path: str | Path, option: str = "--images") -> list[Path]:
    """Images named by ``path``: the file itself, a Cityscapes root's ``leftImg8bit/val``
    (or all of ``leftImg8bit``), or every image in a folder tree, sorted."""
    path = Path(path)
    if not path.exists():
        raise FornetError(f"{option} {path} does not exist")
    if path.is_file():
        return [path]
    root = path / "leftImg8bit"
    if root.is_dir():  # never pick up the gtFine label PNGs beside the images
        root = root / "val" if (root / "val").is_dir() else root
    else:
        root = path
    files = find_files(root, IMAGE_EXTENSIONS)
    if not files:
        raise FornetError(f"{option} {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
