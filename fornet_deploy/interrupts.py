"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

By default Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread
happens to be -- halfway through an optimizer step, between two files of a commit -- and
SIGTERM (what schedulers and ``docker stop`` send) ends the process without running any
``finally``. A command that must leave consistent files runs inside :func:`stop_signals`:

- in a :meth:`StopSignals.deferred` block the first SIGINT/SIGTERM only sets
  :attr:`StopSignals.requested`; the code checks it at its next safe point (after a
  training step, after a video frame) and stops there;
- a second signal in a deferred block raises ``KeyboardInterrupt`` at once: the user
  insists, and everything already written is still whole (writes are atomic);
- outside deferred blocks (or in an :meth:`StopSignals.interruptible` block nested in
  one) a signal raises ``KeyboardInterrupt`` at once, as Python does for SIGINT -- for
  work that can be abandoned without a trace, such as a validation pass.

This module imports nothing of the package (layer 0).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """What the handlers of :func:`stop_signals` saw, and how the code wants to be stopped."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal since the last clear()
        self._defer = False

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def clear(self) -> None:
        """Forget a request that has been honoured (e.g. a live source that was stopped)."""
        self.received = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator["StopSignals"]:
        """A signal only sets :attr:`requested` (a second one raises ``KeyboardInterrupt``)."""
        with self._mode(True):
            yield self

    @contextlib.contextmanager
    def interruptible(self) -> Iterator["StopSignals"]:
        """A signal raises ``KeyboardInterrupt`` at once (it also sets :attr:`requested`)."""
        with self._mode(False):
            yield self

    @contextlib.contextmanager
    def _mode(self, defer: bool) -> Iterator[None]:
        previous, self._defer = self._defer, defer
        try:
            yield
        finally:
            self._defer = previous

    def handle(self, signum: int, frame=None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if not (self._defer and first):
            raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Route SIGINT and SIGTERM to a :class:`StopSignals` for the duration of the block.

    The previous handlers come back afterwards. A signal the process ignores (``nohup``,
    a background job) stays ignored, and off the main thread -- where Python cannot handle
    signals -- nothing is installed and the defaults apply.
    """
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, stop.handle)
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
