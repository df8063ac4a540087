"""The folder `package` writes (fornet_deploy/package/output.py): only its own files, never the
bundle it packages, no link followed, no staging left by a signal (issue 26)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.package.output import LAYOUT, MARKER

CLI = "from fornet_deploy.cli import main; main()"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def package_cli(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("package", "--bundle", str(bundle), "--target", "triton", "--device", "cpu", "--out", str(out),
                   *extra)


def test_repackaging_a_triton_repository_keeps_a_model_the_user_added(tiny_bundle, tmp_path):
    """Issue 26 (3): re-packaging into a Triton model repository deleted `repo/yolo/`."""
    repo = tmp_path / "repo"
    assert package_cli(tiny_bundle, repo).returncode == 0
    (repo / "yolo" / "1").mkdir(parents=True)
    (repo / "yolo" / "config.pbtxt").write_text('name: "yolo"\n')
    (repo / "yolo" / "1" / "model.onnx").write_bytes(b"the user's model")
    result = package_cli(tiny_bundle, repo, "--max-batch", "2")
    assert result.returncode == 0, result.stderr
    assert (repo / "yolo" / "config.pbtxt").read_text() == 'name: "yolo"\n'
    assert (repo / "yolo" / "1" / "model.onnx").read_bytes() == b"the user's model"
    marker = json.loads((repo / MARKER).read_text())
    assert not any(name.startswith("yolo/") for name in marker["files"])
    assert "max_batch_size: 2" in (repo / "fornet_ort_fp32" / "config.pbtxt").read_text()
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_earlier_packages_files_are_deleted_only_while_they_are_its_own(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    assert package_cli(tiny_bundle, repo).returncode == 0
    marker = json.loads((repo / MARKER).read_text())
    marker["files"]["old_model/config.pbtxt"] = marker["files"]["README.md"]  # as if an earlier run wrote both
    marker["files"]["edited.txt"] = "0" * 64  # listed, but its content is not what was written
    (repo / MARKER).write_text(json.dumps(marker))
    (repo / "old_model").mkdir()
    shutil.copyfile(repo / "README.md", repo / "old_model" / "config.pbtxt")
    (repo / "edited.txt").write_text("the user's since")
    assert package_cli(tiny_bundle, repo).returncode == 0
    assert not (repo / "old_model").exists()  # the earlier package's file, unchanged: gone with its folder
    assert (repo / "edited.txt").read_text() == "the user's since"
    mine = tmp_path / "mine"  # a file of the marker's name that is not a marker
    mine.mkdir()
    (mine / MARKER).write_text("my notes")
    assert_one_line_error(package_cli(tiny_bundle, mine), "is not the marker of a package fornet-deploy wrote")
    assert [p.name for p in mine.iterdir()] == [MARKER] and (mine / MARKER).read_text() == "my notes"


def test_a_target_that_holds_or_is_inside_the_bundle_is_refused(tiny_bundle, tmp_path):
    """Issue 26 (3): `package --bundle P/bundle --out P` deleted the bundle being packaged."""
    project = tmp_path / "P"
    assert package_cli(tiny_bundle, project).returncode == 0  # P is an earlier package
    shutil.copytree(tiny_bundle, project / "bundle")
    before = snapshot(project)
    for out, fragment in ((project, "holds"), (project / "bundle", "is an input"),
                          (project / "bundle" / "repo", "inside")):
        result = package_cli(project / "bundle", out)
        assert_one_line_error(result, f"--out {out}", fragment)
        assert result.returncode == 3
    assert snapshot(project) == before


def test_a_bundle_file_that_is_a_symlink_is_never_copied(tiny_bundle, tmp_path):
    """Issue 26 (3): a bundle file that is a symlink to /etc/passwd, its hash in the manifest,
    was copied into a DeepStream package. Here the link leads to a copy of the real graph
    outside the bundle, so the hash matches too."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    outside = tmp_path / "outside.onnx"
    (bundle / "model.onnx").rename(outside)
    (bundle / "model.onnx").symlink_to(outside)
    for target in ("deepstream", "triton"):
        result = run_cli("package", "--bundle", str(bundle), "--target", target, "--out", str(tmp_path / target))
        assert_one_line_error(result, "model.onnx is a symbolic link, not a file of the bundle")
        assert not (tmp_path / target).exists()


def test_out_below_a_file_is_one_line(tiny_bundle, tmp_path):
    """Issue 26 (5): `package --out afile/x` was a FileExistsError traceback."""
    (tmp_path / "afile").write_text("mine")
    result = package_cli(tiny_bundle, tmp_path / "afile" / "x")
    assert_one_line_error(result, "afile is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_write_past_the_file_size_limit_names_the_package_folder(tiny_bundle, tmp_path):
    """Issue 26 (7): a third-party writer's full disk was "cannot write a file", without its name."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
    result = subprocess.run([sys.executable, "-c", limit + CLI, "package", "--bundle", str(tiny_bundle),
                             "--target", "triton", "--device", "cpu", "--out", str(tmp_path / "repo")],
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, f"cannot write the package into {tmp_path / 'repo'}: File too large")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_packaging_is_exit_130_and_leaves_no_staging(tiny_bundle, tmp_path, sig):
    """Issue 26 (7): SIGTERM during `package` exited 143 and left a `.ds.*.tmp` folder no re-run removed."""
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "package", "--bundle", str(tiny_bundle), "--target",
                             "deepstream", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not any(out.glob(LAYOUT.prefix + "*")):
        time.sleep(0.002)
    assert proc.poll() is None, "the package was written before the signal could be sent"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_one_line_error(result, "interrupted")
    assert result.returncode == 130
    assert not out.exists()  # the folder this run made, empty again, is gone
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("target", ["deepstream", "triton"])
def test_class_names_that_would_break_a_labels_file_are_one_line(tiny_bundle, tmp_path, target):
    """Issue 26 (6): a class name holding a newline and a comma gave a 20-line labels.txt for
    19 classes (and a Triton `classes` parameter that splits wrong); a hand-edited manifest."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"]["classes"][0] = "road\nsurface, wet"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("package", "--bundle", str(bundle), "--target", target, "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "class name 'road\\nsurface, wet' holds a comma, a control character")
    assert result.returncode == 3 and not (tmp_path / "out").exists()
