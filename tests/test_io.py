"""Image reading: sizes from headers (no decoding), a pixel budget, any file name."""

from __future__ import annotations

import os
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fornet_deploy.errors import FornetError
from fornet_deploy.io import MAX_IMAGE_PIXELS, folder_lock, image_size, read_image, read_image_size

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
