"""predict on live sources: a real HTTP MJPEG stream on 127.0.0.1, bounded by --max-frames
or stopped by a real Ctrl-C; the outputs are whole and listed exactly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from cli_helpers import assert_one_line_error, run_cli
from mjpeg_server import mjpeg_stream

from fornet_deploy.data.formats import open_dataset
from fornet_deploy.predict import PredictConfig, collect_inputs, predict


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        assert cap.isOpened(), path
        count = 0
        while cap.read()[0]:  # decode every frame: the file plays, not only its index
            count += 1
        return count
    finally:
        cap.release()


@pytest.fixture(scope="module")
def stream_url(tiny_data):
    frames = [cv2.imread(str(s.image)) for s in open_dataset(tiny_data).samples("val")]
    with mjpeg_stream(frames) as url:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        opened = cap.isOpened()
        cap.release()
        if not opened:
            pytest.skip("this OpenCV build cannot open a network stream (no FFmpeg backend for http://)")
        yield url


def test_stream_names_and_kinds():
    items = collect_inputs(["0", "rtsp://user:secret@cam1:554/live", "videotestsrc ! videoconvert ! appsink"])
    assert [(i.kind, i.name) for i in items] == [("stream", "camera0"), ("stream", "cam1_554_live"),
                                                ("stream", "pipeline")]
    assert items[1].source == "rtsp://user:***@cam1:554/live"  # reports do not carry the password


def test_max_frames_bounds_a_live_source(stream_url, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    calls = []
    summary = predict(tiny_bundle, [stream_url], out, PredictConfig(max_frames=5, label_ids=True, mask=True),
                      progress=lambda done, total, note: calls.append((done, total, note)))
    (item,) = summary["items"]
    assert (item["kind"], item["frames"], item["ended"]) == ("stream", 5, "max_frames")
    assert [c[:2] for c in calls] == [(i, 5) for i in range(1, 6)]
    assert calls[-1][2].endswith(" fps")  # the bar's note: the frame rate while it runs
    name = item["outputs"][0].rsplit("_", 1)[0]
    assert name == "127.0.0.1_" + stream_url.split(":")[2].split("/")[0] + "_live_stream.mjpg"
    for kind in ("overlay", "topk"):
        assert _video_frames(out / f"{name}_{kind}.mp4") == 5
    assert set(summary["files"]) == _files(out) - {"predictions.json"}
    assert len([f for f in summary["files"] if f.endswith("_trainIds.png")]) == 5


def test_ctrl_c_stops_a_live_source_with_everything_written(stream_url, tiny_bundle, tmp_path):
    """A real Ctrl-C (SIGINT) to the real command: exit 0, the frames so far, all of them whole."""
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", "from fornet_deploy.cli import main; main()", "predict", stream_url,
         "--bundle", str(tiny_bundle), "--out", str(out), "--label-ids"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob(".predict-*/*_frames/*_trainIds.png"))) < 4:  # frames are being staged
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no frames from the stream"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    report = json.loads((out / "predictions.json").read_text())
    (item,) = report["items"]
    assert item["ended"] == "SIGINT" and item["frames"] >= 4
    assert f"stopped after {item['frames']} frames (SIGINT)" in stdout
    assert set(report["files"]) == _files(out) - {"predictions.json"}  # exactly what was written, no staging left
    video = next(f for f in report["files"] if f.endswith("_overlay.mp4"))
    assert _video_frames(out / video) == item["frames"]  # the video plays every processed frame
    assert len([f for f in report["files"] if f.endswith("_labelIds.png")]) == item["frames"]


def test_a_camera_that_does_not_exist(tiny_bundle, tmp_path):
    result = run_cli("predict", "97", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "cannot open camera 97")
    assert result.returncode == 3 and not (tmp_path / "out").exists()


def test_a_gstreamer_pipeline(tiny_bundle, tmp_path):
    pipeline = "videotestsrc num-buffers=50 ! video/x-raw,width=256,height=128 ! videoconvert ! appsink"
    out = tmp_path / "out"
    if not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
        result = run_cli("predict", pipeline, "--bundle", str(tiny_bundle), "--out", str(out))
        assert_one_line_error(result, "built without GStreamer")
        assert not out.exists()
    else:  # pragma: no cover - depends on the OpenCV build
        summary = predict(tiny_bundle, [pipeline], out, PredictConfig(max_frames=3))
        assert summary["items"][0]["frames"] == 3


@pytest.mark.parametrize("text, fragment", [
    ("http://127.0.0.1:99999/x", "the URL's port is not a port number"),  # ValueError: Port out of range
    ("rtsp://cam:pass@127.0.0.1:http/x", "the URL's port is not a port number"),  # and its password stays out
    ("²", "does not exist (nor is it a camera index"),  # "²".isdigit(), then int("²")
    ("99999999999999999999", "does not exist (nor is it a camera index"),  # an int OpenCV's binding refused
])
def test_inputs_that_only_look_like_live_sources_are_one_line(tiny_bundle, tmp_path, text, fragment):
    """Issue 26 (5): each was a traceback."""
    result = run_cli("predict", text, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)
    assert "pass" not in result.stderr
    assert result.returncode == 3 and not (tmp_path / "out").exists()


def test_ffmpegs_own_log_does_not_leak_before_the_error(tiny_bundle, tmp_path):
    """Issue 26 (7): FFmpeg printed `[tcp @ 0x...] Connection to tcp://... failed` before our line."""
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("predict", f"http://127.0.0.1:{port}/x", "--bundle", str(tiny_bundle),
                     "--out", str(tmp_path / "out"))
    assert "[tcp @" not in result.stderr
    assert_one_line_error(result, f"cannot open stream http://127.0.0.1:{port}/x")
