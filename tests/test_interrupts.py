"""Ctrl-C and SIGTERM as stop requests: real signals sent to this process."""

from __future__ import annotations

import os
import signal

import pytest

from fornet_deploy.interrupts import stop_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_deferred_then_insisted(sig):
    with stop_signals() as stop:
        with stop.deferred():
            os.kill(os.getpid(), sig)  # the handler runs as soon as os.kill returns
            assert stop.requested and stop.name == signal.Signals(sig).name
            with pytest.raises(KeyboardInterrupt):  # a second signal: stop at once
                os.kill(os.getpid(), sig)
        stop.clear()
        assert not stop.requested


def test_interruptible_inside_deferred_and_at_top_level():
    with stop_signals() as stop:
        with stop.deferred(), stop.interruptible(), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        stop.clear()
        with pytest.raises(KeyboardInterrupt):  # outside a deferred block, as Python does for SIGINT
            os.kill(os.getpid(), signal.SIGINT)


def test_handlers_are_restored_and_ignored_signals_stay_ignored():
    before = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with stop_signals() as stop, stop.deferred():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # e.g. started with nohup
            os.kill(os.getpid(), signal.SIGTERM)
            assert not stop.requested
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
