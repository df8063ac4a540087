"""Image reading: sizes from headers (no decoding), a pixel budget, any file name."""

from __future__ import annotations

import os
import re
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from cli_helpers import private_char_device
from hypothesis import given, settings
from hypothesis import strategies as st

import fornet_deploy.io as io_module
from fornet_deploy.errors import FornetError
from fornet_deploy.io import (
    IMAGE_EXTENSIONS,
    MAX_HEADER_BYTES,
    MAX_IMAGE_PIXELS,
    atomic_write_bytes,
    find_files,
    folder_lock,
    image_size,
    plain_folder_below,
    read_bytes,
    read_image,
    read_image_size,
)

FORMATS = [".png", ".jpg", ".bmp", ".webp", ".ppm", ".pgm", ".tiff"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FORMATS), st.integers(1, 300), st.integers(1, 300), st.booleans())
def test_header_size_is_what_opencv_decodes(ext, height, width, variant):
    image = np.random.default_rng([height, width]).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if ext == ".pgm":
        image = image[..., 0]
    # WebP: lossless (VP8L) or lossy (VP8); JPEG: progressive (SOF2) or baseline (SOF0)
    params = {".webp": [cv2.IMWRITE_WEBP_QUALITY, 101 if variant else 80],
              ".jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, int(variant)]}.get(ext, [])
    ok, data = cv2.imencode(ext, image, params)
    assert ok
    assert image_size(data.tobytes()) == (height, width)
    assert cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2] == (height, width)


def test_header_size_of_odd_and_cut_files(tmp_path):
    assert image_size(b"") is None and image_size(b"not an image at all") is None
    ok, jpeg = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))
    app = b"\xff\xe1" + struct.pack(">H", 40002) + b"\0" * 40000
    exif = app + app  # 80 KB of metadata before the frame header
    big = jpeg.tobytes()[:2] + exif + jpeg.tobytes()[2:]
    assert image_size(big) == (40, 60)
    assert image_size(big[:1000]) is None  # cut short: unknown, not a guess
    (tmp_path / "exif.jpg").write_bytes(big)
    assert read_image_size(tmp_path / "exif.jpg") == (40, 60)  # beyond the first 64 KB read
    assert image_size(b"P6\n# a comment\n 320 240\n255\n") == (240, 320)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat
            + struct.pack(">I", zlib.crc32(b"IDAT" + idat)) + b"\0\0\0\0IEND\xaeB`\x82")


def test_an_image_beyond_the_pixel_budget_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))  # 2.7 GB once decoded
    started = time.perf_counter()
    with pytest.raises(FornetError, match="declares 30000x30000 pixels, more than the 8192x8192") as info:
        read_image(bomb)
    assert time.perf_counter() - started < 0.5 and "\n" not in str(info.value)
    with pytest.raises(FornetError, match="30000x30000"):
        read_image_size(bomb)
    assert MAX_IMAGE_PIXELS == 8192 * 8192


def test_a_file_name_that_is_not_utf8(tmp_path):
    name = tmp_path / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    ok, data = cv2.imencode(".png", np.full((16, 32, 3), (0, 0, 255), np.uint8))
    name.write_bytes(data.tobytes())
    image = read_image(name)  # cv2.imread(str(name)) crashes the process with SIGSEGV
    assert image.shape == (16, 32, 3) and (image[0, 0] == (255, 0, 0)).all()
    assert read_image_size(name) == (16, 32)


def test_folder_lock_is_exclusive(tmp_path):
    with folder_lock(tmp_path, "output folder"):
        with pytest.raises(FornetError, match="in use by another"):
            with folder_lock(tmp_path, "output folder"):
                pass
    with folder_lock(tmp_path):  # released
        pass


def test_an_image_file_is_read_only_as_far_as_its_size_needs(tmp_path, monkeypatch):
    """Issue 26 (4): a 64x128 PNG followed by 3 GB of zeros was read whole."""
    ok, png = cv2.imencode(".png", np.full((64, 128, 3), 7, np.uint8))
    image = tmp_path / "tail.png"
    with open(image, "wb") as f:
        f.write(png.tobytes())
        f.truncate(len(png) + (3 << 30))  # sparse: no disk space
    reads = []
    real_read = io_module.read_bytes
    monkeypatch.setattr(io_module, "read_bytes", lambda *a, **k: reads.append(k) or real_read(*a, **k))
    with pytest.raises(FornetError, match=r"tail.png is 3221 MB, more than the 17 MB"):
        read_image(image)
    assert all(k.get("prefix") or k.get("max_bytes") for k in reads)  # never an unbounded read
    image.write_bytes(png.tobytes() + b"\0" * 1000)  # a little trailing data is fine
    assert read_image(image).shape == (64, 128, 3)
    # a JPEG whose frame header sits behind more metadata than is ever searched
    ok, jpeg = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))
    app = b"\xff\xe1" + struct.pack(">H", 65535) + b"\0" * 65533
    (tmp_path / "exif.jpg").write_bytes(jpeg.tobytes()[:2] + app * (MAX_HEADER_BYTES // len(app) + 1)
                                        + jpeg.tobytes()[2:])
    with pytest.raises(FornetError, match="not a PNG, JPEG"):
        read_image_size(tmp_path / "exif.jpg")


def test_a_folder_search_is_bounded_and_skips_hidden_folders(tmp_path, monkeypatch):
    """Issue 26 (6): a path such as `/` walked the whole file system before anything else."""
    for name in ("a.png", "b/c.png", ".hidden/d.png", "e.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)  # not followed
    assert find_files(tmp_path, IMAGE_EXTENSIONS) == [tmp_path / "a.png", tmp_path / "b" / "c.png"]
    monkeypatch.setattr(io_module, "MAX_FOLDER_ENTRIES", 4)
    with pytest.raises(FornetError, match="holds more than 4 files and folders"):
        find_files(tmp_path, IMAGE_EXTENSIONS)


@pytest.mark.parametrize("kind", ["symlink", "device", "fifo", "folder"])
def test_an_atomic_write_never_replaces_anything_but_a_regular_file(tmp_path, kind):
    """Issue 26 (1): a write renamed over a link, a device or a FIFO replaced it."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path = private_char_device(tmp_path) if kind == "device" else tmp_path / "target"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    before = os.lstat(path)
    with pytest.raises(FornetError, match="writing it would replace it"):
        atomic_write_bytes(path, b"new")
    assert os.lstat(path).st_ino == before.st_ino and victim.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_that_cannot_hold_the_write_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FornetError, match="cannot write .*afile/out.json: File exists"):
        atomic_write_bytes(tmp_path / "afile" / "out.json", b"{}")


def test_read_bytes_says_what_is_there_instead_of_a_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # a read would block until a writer came: refused before opening
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "folder")
    cases = {"missing": "does not exist", "fifo": "is a FIFO, not a file", "folder": "is a folder, not a file",
             "link": "is a folder, not a file", "dangling": "does not exist"}
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name, message in cases.items():
        with pytest.raises(FornetError, match=f"^checkpoint {re.escape(str(tmp_path / name))} {message}$"):
            read_bytes(tmp_path / name, "checkpoint")
    with pytest.raises(FornetError, match="is a character device, not a file"):
        read_bytes(private_char_device(tmp_path), "checkpoint")
    (tmp_path / "file").write_bytes(b"weights")
    assert read_bytes(tmp_path / "link" / ".." / "file", "checkpoint") == b"weights"


def test_plain_folder_below_makes_each_level_and_never_goes_through_a_link(tmp_path):
    root, elsewhere = tmp_path / "bundle", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    assert plain_folder_below(root, root / "cache" / "graph") and (root / "cache" / "graph").is_dir()
    assert plain_folder_below(root, root / "cache" / "graph")  # again: already there
    for link_at in ("linked", "leaf"):  # a link at the first level, then at the last
        target = root / "cache" / "leaf" if link_at == "leaf" else root / "linked"
        target.symlink_to(elsewhere, target_is_directory=True)
        assert not plain_folder_below(root, target / "graph" if link_at == "linked" else target)
        assert list(elsewhere.iterdir()) == [], link_at
    (root / "file").write_text("x")
    assert not plain_folder_below(root, root / "file") and not plain_folder_below(root, root / "file" / "below")
    assert not plain_folder_below(root, tmp_path / "outside") and not (tmp_path / "outside").exists()
    assert not plain_folder_below(root, root)  # no level below the root
    assert not plain_folder_below(tmp_path / "missing", tmp_path / "missing" / "cache")
