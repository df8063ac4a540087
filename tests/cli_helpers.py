"""Run the console entry point as a user does (subprocess: real exit codes and stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-c", "from fornet_deploy.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def private_char_device(folder: Path) -> Path:
    """A character device of our own (the null device's numbers) in ``folder``: tests that a
    write never replaces a device use this, never /dev/null, which a regression would replace
    for every process on the machine. Needs CAP_MKNOD (root); skips without it."""
    import os
    import stat

    import pytest

    path = folder / "null-device"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    return path
