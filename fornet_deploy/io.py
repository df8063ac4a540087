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
import stat
import struct
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from .contract import MAX_SIDE
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


def read_bytes(path: str | Path, what: str, max_bytes: int | None = None, sha256: str | None = None,
               prefix: int | None = None) -> bytes:
    """A whole file (or its first ``prefix`` bytes, e.g. a header), read once; one line if it
    is missing, unreadable, larger than ``max_bytes`` (checked before reading) or not the file
    whose hash is ``sha256`` (e.g. replaced since a manifest that records it was read: what
    the caller loads is then exactly what was checked)."""
    path = Path(path)
    if not path.is_file():
        try:
            kind = _kind(os.stat(path).st_mode)  # there, and not a file: say what it is
        except OSError:
            raise FornetError(f"{what} {path} does not exist") from None
        raise FornetError(f"{what} {path} is {kind}, not a file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise FornetError(f"{what} {path} is {size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB "
                                  "this toolkit reads from such a file")
            data = f.read(prefix if prefix is not None else -1)
    except OSError as exc:
        raise FornetError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise FornetError(f"{what} {path} does not match the sha256 its bundle's manifest records (changed after "
                          "the manifest was read, e.g. by another command writing the bundle); run this again")
    return data


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- atomic writes ----------------------------------------------------------------------


def give_plain_file_mode(path: str | Path) -> None:
    """The permissions a plain ``open()`` gives a new file (0666 less the umask): mkstemp
    makes 0600 files, and a file written through one must not end up private."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def plain_folder_below(root: str | Path, folder: str | Path) -> bool:
    """Make ``folder`` (below ``root``) one level at a time, never through a symbolic link:
    whether every level below ``root`` is now a plain folder. A runtime's cache (OpenVINO's
    compiled blobs, ONNX Runtime's TensorRT engines) is written into such a folder or not at
    all: a level that is a link to a folder elsewhere would have the runtime write there, and
    ``mkdir(parents=True, exist_ok=True)`` follows it. False, not an error, for a link, a file,
    a folder outside ``root`` or one that cannot be made (a read-only bundle): the caller runs
    without the cache."""
    root, folder = Path(root), Path(folder)
    try:
        levels = folder.relative_to(root).parts
    except ValueError:
        return False
    current = root
    for level in levels:
        current = current / level
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        except OSError:
            return False
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
    return bool(levels)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_replaceable(path: str | Path, what: str = "output") -> None:
    """Refuse ``path`` as a file to write unless it is missing or a regular file: a write
    renames a new file over it, which would replace a symbolic link itself (not the file it
    points to), a device such as ``/dev/null``, a FIFO or a folder. One line."""
    try:
        found = os.lstat(path)
    except OSError:  # missing (or a parent that is not a folder: the write names that)
        return
    if not stat.S_ISREG(found.st_mode):
        raise FornetError(f"{what} {path} is {_kind(found.st_mode)}; writing it would replace it: "
                          "name a new or a regular file")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    ``path`` must be missing or a regular file (:func:`check_replaceable`). On any
    exception the temporary file is removed and ``path`` is left as it was; a folder that
    cannot be made or written (read-only, no permission, a file on the way), a full disk
    and the file-size limit are one line naming ``path``.
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FornetError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_plain_file_mode(tmp_path)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise FornetError(f"cannot write {path}: {exc.strerror}") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[None]:
    """Hold an exclusive lock on an existing ``folder`` while the block runs.

    The lock is ``flock`` on the folder itself (no lock file to leave behind) and is
    released by the kernel when the process dies, however it dies. Another holder makes
    this a one-line error at once rather than a wait.
    """
    import fcntl  # POSIX only, like the commands that take the lock

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FornetError(f"{what} {folder} is in use by another fornet-deploy command; "
                              "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


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

# Largest image any command decodes: the largest network input (contract.MAX_SIDE per side)
# as a pixel count. Sizes are read from the file header first, so a file that declares
# 30000x30000 pixels (2.7 GB decoded) is refused before anything is allocated.
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
_HEADER_BYTES = 1 << 16  # where an image's size is looked for first
# A JPEG's frame header may sit behind its metadata segments (EXIF, ICC profiles, XMP):
# they are searched up to this far, never further, for the size.
MAX_HEADER_BYTES = 16 << 20
# Bytes an image file may hold for the size its header declares: 8 per pixel (four 16-bit
# channels uncompressed, more than any PNG, JPEG or WebP of real pictures needs) plus the
# metadata allowance above. A small picture followed by gigabytes of anything is refused
# before it is read.
MAX_BYTES_PER_PIXEL = 8


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) declared by the header of a PNG, JPEG, BMP, WebP, PNM or TIFF image,
    read without decoding; None when the bytes start no such header (or it is cut short)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            return height, width
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack_from("<HH", data, 18)
            else:
                width, height = struct.unpack_from("<ii", data, 18)
            return abs(height), width  # negative height: rows stored top-down
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:1] == b"P" and data[1:2] in b"123456":
            return _pnm_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except struct.error:  # header cut short
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        # SOF0..SOF15 hold the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return height, width
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame start code
        width, height = struct.unpack_from("<HH", data, 26)
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":  # lossless: two 14-bit sizes minus one
        (bits,) = struct.unpack_from("<I", data, 21)
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    numbers: list[int] = []
    for line in data[2:_HEADER_BYTES].split(b"\n"):
        for token in line.split(b"#", 1)[0].split():
            if not token.isdigit():
                return None
            numbers.append(int(token))
            if len(numbers) == 2:
                return numbers[1], numbers[0]
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(f"{order}I", data, 4)
    (count,) = struct.unpack_from(f"{order}H", data, ifd)
    found = {}
    for index in range(count):
        tag, kind = struct.unpack_from(f"{order}HH", data, ifd + 2 + 12 * index)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            found[tag] = struct.unpack_from(f"{order}{'H' if kind == 3 else 'I'}", data, ifd + 10 + 12 * index)[0]
    return (found[257], found[256]) if len(found) == 2 else None


def check_image_size(size: tuple[int, int] | None, name: str, verb: str = "read") -> tuple[int, int]:
    """``size`` from :func:`image_size` if it is a real size within :data:`MAX_IMAGE_PIXELS`."""
    if size is None or min(size) < 1:
        raise FornetError(f"cannot {verb} image {name}: not a PNG, JPEG, BMP, WebP, PNM or TIFF file, or corrupt")
    height, width = size
    if height * width > MAX_IMAGE_PIXELS:
        raise FornetError(
            f"image {name} declares {width}x{height} pixels, more than the {MAX_SIDE}x{MAX_SIDE} "
            "this toolkit decodes; downscale it first"
        )
    return size


# FFmpeg's own log level inside OpenCV (AV_LOG_QUIET), read from the environment once, when
# OpenCV first uses FFmpeg: without it FFmpeg prints "[tcp @ 0x...] Connection refused" or
# "moov atom not found" before our one-line error. Set only if unset: a user's value is kept.
FFMPEG_LOG_LEVEL = ("OPENCV_FFMPEG_LOGLEVEL", "-8")


def check_frame_size(height: float, width: float, name: str) -> None:
    """A video's frames as its container declares them (``CAP_PROP_FRAME_HEIGHT`` /
    ``WIDTH``), within :data:`MAX_IMAGE_PIXELS`, checked before a frame is decoded (FFmpeg
    allocates what the container declares). A container that declares no size (0) passes."""
    if height * width > MAX_IMAGE_PIXELS:
        raise FornetError(f"video {name} declares {int(width)}x{int(height)} frames, more than the "
                          f"{MAX_SIDE}x{MAX_SIDE} pixels this toolkit decodes; downscale it first")


def _image_header(path: str | Path, what: str) -> tuple[int, int]:
    """(height, width) from the header of an image file, read without reading the whole file:
    the first 64 KB, then (a JPEG with large metadata) up to :data:`MAX_HEADER_BYTES`."""
    data = read_bytes(path, what, prefix=_HEADER_BYTES)
    size = image_size(data)
    if size is None and len(data) == _HEADER_BYTES:
        size = image_size(read_bytes(path, what, prefix=MAX_HEADER_BYTES))
    return check_image_size(size, str(path))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header (no decoding), within the pixel budget."""
    return _image_header(path, "image")


def read_image_bytes(path: str | Path, what: str = "image") -> bytes:
    """The bytes of an image file whose header declares a size within the pixel budget, read
    only when the file is no larger than that size can need (:data:`MAX_BYTES_PER_PIXEL`)."""
    height, width = _image_header(path, what)
    return read_bytes(path, what, max_bytes=height * width * MAX_BYTES_PER_PIXEL + MAX_HEADER_BYTES)


def _decode(data: bytes, name: str, flags: int, verb: str) -> np.ndarray:
    check_image_size(image_size(data), name, verb)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise FornetError(f"cannot {verb} image {name}: not an image file or corrupt")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3, or raise a one-line error.

    The bytes are read by Python and decoded from memory: OpenCV's own file functions
    crash on a file name that is not valid UTF-8. The size is checked against
    :data:`MAX_IMAGE_PIXELS`, and the file's length against that size, before reading.
    """
    bgr = _decode(read_image_bytes(path), str(path), cv2.IMREAD_COLOR, "read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label_image(path: str | Path) -> np.ndarray:
    """Read an image file as stored (a label map: one channel of ids), same checks as :func:`read_image`."""
    return _decode(read_image_bytes(path, "label image"), str(path), cv2.IMREAD_UNCHANGED, "read label")


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) -> RGB uint8 HxWx3, or a one-line error."""
    return cv2.cvtColor(_decode(data, name, cv2.IMREAD_COLOR, "decode"), cv2.COLOR_BGR2RGB)


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


# Names a folder search looks at before it gives up (about a minute of a slow disk): a path
# such as "/" or a home folder names a whole file system, not a set of inputs.
MAX_FOLDER_ENTRIES = 200_000


def find_files(folder: str | Path, extensions: tuple[str, ...], exclude: Path | None = None) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose suffix is in ``extensions``.

    Hidden files and folders are skipped (hidden folders are not entered), and so is
    everything under ``exclude`` (e.g. an output folder inside the input folder, so a re-run
    does not read its own pictures). Symbolic links to folders are not followed. A folder
    tree of more than :data:`MAX_FOLDER_ENTRIES` names is one line, before any file is read.
    """
    folder = Path(folder)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found, seen = [], 0
    for parent, dirs, files in os.walk(folder):
        seen += len(dirs) + len(files)
        if seen > MAX_FOLDER_ENTRIES:
            raise FornetError(f"folder {folder} holds more than {MAX_FOLDER_ENTRIES} files and folders; "
                              "name the folder of the inputs, not a whole disk")
        here = Path(parent)
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not (excluded is not None and (here / d).resolve() == excluded)]
        for name in files:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
                continue
            if excluded is not None and path.resolve().is_relative_to(excluded):
                continue
            found.append(path)
    return sorted(found)


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
