"""Every size that drives an allocation has a bound checked before allocating (issue 26 (4)):
export, predict, parity and bench run with hostile sizes under an address-space limit
(RLIMIT_AS, what `prlimit --as` sets) and stop with one line, not a MemoryError or a kill."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error

from fornet_deploy.errors import ExitCode

CLI = "from fornet_deploy.cli import main; main()"
# What a command may map: the runtimes' own start-up (torch, ONNX Runtime, OpenCV: ~2 GiB of
# address space, most of it never touched) and a tiny model, far below any hostile size here
# (8192x8192 export: > 24 GB; a 100000x100000 manifest: 30 GB of images).
ADDRESS_SPACE = 4 << 30
# Resident memory of a refusal (measured: 0.5-0.7 GB, the imports): nothing sized by the input.
REFUSAL_RSS = 1 << 30


def run_bounded(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """The CLI under RLIMIT_AS = ADDRESS_SPACE; returns its result and its peak RSS in bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc reserves 64 MB of address space per thread arena
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=out, stderr=err, text=True,
                                preexec_fn=limit, env=env)
        deadline = time.monotonic() + 300
        while True:  # this child's own rusage (ru_maxrss in KiB on Linux), and a time bound
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    return result, usage.ru_maxrss * 1024


def png_header_only(path: Path, height: int, width: int, tail_bytes: int = 0) -> Path:
    """A PNG whose IHDR declares ``height`` x ``width`` (and one empty IDAT), plus ``tail_bytes``
    of zeros after it (a sparse file: no disk space)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(len(data) + tail_bytes)
    return path


def small_png_with_a_tail(path: Path, tail_bytes: int) -> Path:
    """A real 64x128 PNG followed by ``tail_bytes`` of zeros (sparse)."""
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".png", np.zeros((64, 128, 3), np.uint8))
    assert ok
    with open(path, "wb") as f:
        f.write(data.tobytes())
        f.truncate(len(data) + tail_bytes)
    return path


@pytest.fixture
def hostile_manifest(tiny_bundle, tmp_path) -> Path:
    """The tiny dynamic bundle with a manifest that claims a 100000x100000 export."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["export"].update(height=100000, width=100000)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_export_beyond_the_pixel_bound(tiny_checkpoint, tmp_path):
    """`export --shape 8192x8192` was accepted and grew past 24 GB."""
    result, rss = run_bounded("export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "E"),
                              "--shape", "8192x8192")
    assert_one_line_error(result, "export 8192x8192 is 64.0 M pixels, more than the 8 M (2048x4096)")
    assert result.returncode == ExitCode.USAGE and not (tmp_path / "E").exists()
    assert rss < REFUSAL_RSS


def test_predict_on_an_image_too_large_for_a_dynamic_bundle(tiny_bundle, tmp_path):
    """An 8000x8000 image into a --dynamic bundle: its network input would be 64 M pixels. The
    size comes from the header: the file here has no pixel data at all, and is never decoded."""
    image = png_header_only(tmp_path / "big.png", 8000, 8000)
    result, rss = run_bounded("predict", str(image), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "big.png", "8000x8000 is 61.0 M pixels")
    assert result.returncode == ExitCode.INPUT and not (tmp_path / "out").exists()
    assert rss < REFUSAL_RSS


def test_predict_never_reads_a_small_image_with_gigabytes_behind_it(tiny_bundle, tmp_path):
    """A 64x128 PNG followed by 3 GB of zeros was read whole."""
    image = small_png_with_a_tail(tmp_path / "small.png", 3 << 30)
    result, rss = run_bounded("predict", str(image), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "small.png is 3221 MB, more than the 17 MB")
    assert result.returncode == ExitCode.INPUT and not (tmp_path / "out").exists()
    assert rss < REFUSAL_RSS


@pytest.mark.parametrize("command", ["parity", "bench", "predict"])
def test_a_manifest_claiming_a_huge_export_allocates_nothing(hostile_manifest, tmp_path, command):
    """A manifest claiming a 100000x100000 export made parity allocate 30 GB of synthetic images."""
    args = {"parity": ["--num-images", "1", "--out", str(tmp_path / "report")], "bench": ["--iterations", "1"],
            "predict": [str(png_header_only(tmp_path / "x.png", 64, 64)), "--out", str(tmp_path / "out")]}[command]
    result, rss = run_bounded(command, "--bundle", str(hostile_manifest), *args)
    assert_one_line_error(result, "export", "beyond the supported")
    assert result.returncode == ExitCode.INPUT
    assert rss < REFUSAL_RSS


@pytest.mark.parametrize("option, value, fragment", [
    ("--threads", "100000", f"--threads must be an integer from 1 to {os.cpu_count()}"),  # SIGSEGV before
    ("--warmup", "1000000000000", "--warmup must be an integer from 0 to 100000"),  # ran until killed
    ("--iterations", "1000000000000", "--iterations must be an integer from 1 to 100000"),
    ("--shape", "8192x8192", "8192x8192 is 64.0 M pixels"),
])
def test_bench_options_are_bounded(tiny_bundle, option, value, fragment):
    result, rss = run_bounded("bench", "--bundle", str(tiny_bundle), option, value)
    assert_one_line_error(result, fragment)
    assert result.returncode == ExitCode.USAGE
    assert rss < REFUSAL_RSS


def test_a_legal_run_fits_the_same_limit(tiny_bundle, tmp_path):
    """The limit is not what refuses the cases above: the same commands at legal sizes run under it."""
    image = small_png_with_a_tail(tmp_path / "small.png", 0)
    result, _ = run_bounded("predict", str(image), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    result, _ = run_bounded("bench", "--bundle", str(tiny_bundle), "--iterations", "2", "--warmup", "1",
                            "--threads", "1")
    assert result.returncode == 0, result.stderr
