"""A live source for tests: an HTTP MJPEG stream (multipart/x-mixed-replace) on 127.0.0.1,
looping over a few frames, as IP cameras serve it; OpenCV's FFmpeg backend reads it as a URL."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Sequence

import cv2
import numpy as np


@contextlib.contextmanager
def mjpeg_stream(frames: Sequence[np.ndarray], fps: float = 25.0) -> Iterator[str]:
    """Serve BGR ``frames`` in a loop, forever, at about ``fps``; yields the stream's URL."""
    jpegs = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in frames]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            index = 0
            try:
                while True:
                    jpeg = jpegs[index % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                    index += 1
                    time.sleep(1 / fps)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client is done

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/live/stream.mjpg"
    finally:
        server.shutdown()
        server.server_close()
