"""Ctrl-C and SIGTERM as stop requests: real signals sent to a real process.

Each check runs in a fresh interpreter (``python -c``): the whole suite's process, with every
native library the earlier tests loaded (ONNX Runtime, OpenVINO, torch thread pools), died of a
SIGSEGV as this module signalled itself (no Python frame, not reproducible with any one earlier
test module); a command-line run is one such fresh process per command.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, signal
from fornet_deploy.interrupts import stop_signals

def raises_keyboard_interrupt(action):
    try:
        action()
    except KeyboardInterrupt:
        return True
    return False
"""


def run_child(body: str) -> None:
    """Run ``body`` (after :data:`PRELUDE`) in a fresh interpreter; it prints ``ok`` when every
    assertion held."""
    source = PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    child = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and child.stdout.strip().endswith("ok"), child.stderr[-2000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_deferred_then_insisted(sig):
    run_child(f"""
    sig = {int(sig)}
    with stop_signals() as stop:
        with stop.deferred():
            os.kill(os.getpid(), sig)  # the handler runs as soon as os.kill returns
            assert stop.requested and stop.name == signal.Signals(sig).name
            assert raises_keyboard_interrupt(lambda: os.kill(os.getpid(), sig))  # a second signal: stop at once
        stop.clear()
        assert not stop.requested
    """)


def test_interruptible_inside_deferred_and_at_top_level():
    run_child("""
    with stop_signals() as stop:
        def inside():
            with stop.deferred(), stop.interruptible():
                os.kill(os.getpid(), signal.SIGTERM)
        assert raises_keyboard_interrupt(inside)
        assert stop.requested
        stop.clear()
        # outside a deferred block, as Python does for SIGINT
        assert raises_keyboard_interrupt(lambda: os.kill(os.getpid(), signal.SIGINT))
    """)


def test_handlers_are_restored_and_ignored_signals_stay_ignored():
    run_child("""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with stop_signals() as stop, stop.deferred():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # e.g. started with nohup
        os.kill(os.getpid(), signal.SIGTERM)
        assert not stop.requested
    assert signal.getsignal(signal.SIGINT) is before
    """)


def test_a_failed_assertion_in_the_child_fails_the_test():
    with pytest.raises(AssertionError):
        run_child("assert False, 'planted'")
