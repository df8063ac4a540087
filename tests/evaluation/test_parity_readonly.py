"""parity writes its report into BUNDLE/parity/ by default: on a read-only bundle that is one
line naming --out, before the comparison runs (issue 26 (5): an EROFS traceback)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
from cli_helpers import assert_one_line_error

import fornet_deploy.evaluation.parity as parity_module
from fornet_deploy.errors import FornetError
from fornet_deploy.evaluation.parity import parity_bundle

CLI = "from fornet_deploy.cli import main; main()"


def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs root and mount namespaces (unshare -m)")
@pytest.mark.parametrize("earlier_report", [False, True])
def test_parity_on_a_read_only_bundle_is_one_line(tiny_bundle, tmp_path, earlier_report):
    """The bundle is bind-mounted read-only in a private mount namespace (`unshare -m`: the mount
    is gone with the process), so the write fails with the kernel's own EROFS; root's permission
    bypass does not apply to a read-only mount. With ``earlier_report`` the report folder exists
    already (mkdir succeeds; the first write would fail at the end of the run)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    shutil.rmtree(bundle / "parity", ignore_errors=True)  # reports of other tests on the session's bundle
    if earlier_report:
        (bundle / "parity" / "ort-fp32").mkdir(parents=True)
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    script = (f'mount --bind "{bundle}" "{bundle}" && mount -o remount,bind,ro "{bundle}" && '
              f'exec "{sys.executable}" -c "{CLI}" parity --bundle "{bundle}" --num-images 1')
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, f"cannot write the parity report into {bundle / 'parity' / 'ort-fp32'}: "
                                  "Read-only file system; give --out FOLDER")
    assert result.returncode == 3
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before


def test_the_write_error_is_mapped_before_the_run(tiny_bundle, tmp_path, monkeypatch):
    """The same path where mounts are not allowed: the probe write is made to fail with EROFS
    (a simulation of the error, not of the file system); no runner is loaded after it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_runner(*args, **kwargs):
        raise AssertionError("the comparison ran before the report folder was checked")

    monkeypatch.setattr(parity_module.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(parity_module, "load_runner", no_runner)
    with pytest.raises(FornetError, match="Read-only file system; give --out FOLDER"):
        parity_bundle(bundle)
    with pytest.raises(FornetError, match=r"Read-only file system$"):  # --out given: no hint to give it
        parity_bundle(bundle, out_dir=tmp_path / "report")
