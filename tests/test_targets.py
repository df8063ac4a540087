"""Where a command may write (fornet_deploy/targets.py): --json files and --out folders are
never inputs, bundle files, links or devices; each issue-26 command through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, private_char_device, run_cli

from fornet_deploy.errors import ExitCode, FornetError
from fornet_deploy.model.checkpoint import load_checkpoint
from fornet_deploy.targets import is_bundle, output_file, output_folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_json_onto_its_own_checkpoint_is_refused_before_anything_is_written(tiny_checkpoint, tmp_path):
    """Issue 26 (1): `export --checkpoint my.safetensors --out E --json my.safetensors` replaced the
    user's trained weights with JSON."""
    mine = tmp_path / "my.safetensors"
    shutil.copyfile(tiny_checkpoint, mine)
    before = mine.read_bytes()
    result = run_cli("export", "--checkpoint", "my.safetensors", "--out", "E", "--shape", "64x64",
                     "--json", "my.safetensors", cwd=tmp_path)
    assert_one_line_error(result, "--json my.safetensors", "reads or writes")
    assert result.returncode == ExitCode.INPUT
    assert mine.read_bytes() == before and not (tmp_path / "E").exists()
    load_checkpoint(mine)  # still the weights
    # the same file under another spelling is the same file
    result = run_cli("export", "--checkpoint", str(mine), "--out", "E", "--shape", "64x64",
                     "--json", "./sub/../my.safetensors", cwd=tmp_path)
    assert_one_line_error(result, f"({mine})")
    assert mine.read_bytes() == before and not (tmp_path / "E").exists()


def test_eval_json_onto_the_bundles_manifest_is_refused(tiny_bundle, tiny_data, tmp_path):
    """Issue 26 (1): `eval ... --json BUNDLE/manifest.json` left a bundle that no longer opened."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = snapshot(bundle)
    result = run_cli("eval", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "1",
                     "--json", str(bundle / "manifest.json"))
    assert_one_line_error(result, "manifest.json", "inside")
    assert snapshot(bundle) == before
    # any bundle, not only the one the command reads: a bundle holds only what its manifest lists
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    result = run_cli("info", "--json", str(other / "manifest.json"))
    assert_one_line_error(result, "inside the bundle folder")
    assert snapshot(other) == before


@pytest.mark.parametrize("kind", ["device", "symlink", "fifo", "folder"])
def test_json_never_replaces_a_device_a_link_a_fifo_or_a_folder(tmp_path, kind):
    """Issue 26 (1): `--json` onto a symbolic link or a device replaced it with a plain file (as
    root, `--json /dev/null` would replace /dev/null). The device is a private node with
    /dev/null's numbers: a regression must not replace the machine's own."""
    target = {"device": None, "symlink": tmp_path / "link.json", "fifo": tmp_path / "fifo",
              "folder": tmp_path / "folder"}[kind] or private_char_device(tmp_path)
    victim = tmp_path / "victim.json"
    victim.write_text("keep")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    before = os.lstat(target)
    result = run_cli("info", "--json", str(target))
    assert_one_line_error(result, f"--json {target} is a")
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert victim.read_text() == "keep"


def test_lint_json_into_a_folder_is_one_line(tiny_bundle, tmp_path):
    """Issue 26 (5): `lint ... --json DIR` was an IsADirectoryError traceback, after the lint ran."""
    (tmp_path / "reports").mkdir()
    result = run_cli("lint", str(tiny_bundle / "model.onnx"), "--json", str(tmp_path / "reports"))
    assert_one_line_error(result, "is a folder")
    assert list((tmp_path / "reports").iterdir()) == []
    result = run_cli("lint", str(tiny_bundle / "model.onnx"), "--json", str(tiny_bundle / "model.onnx"))
    assert_one_line_error(result, "reads or writes")


def test_a_file_on_the_way_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_cli("info", "--json", str(tmp_path / "afile" / "x.json"))
    assert_one_line_error(result, "afile is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_file_rules(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.json").write_text("[]")
    assert output_file(None) is None
    assert output_file(tmp_path / "new.json", reads=[data, tiny_bundle]) == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("{}")
    assert output_file(tmp_path / "old.json") == tmp_path / "old.json"  # a regular file is replaced
    for path, fragment in [(data / "classes.json", "inside"), (data / "new.json", "inside"),
                           (tiny_bundle / "results.json", "inside"), (tiny_bundle / "manifest.json", "inside")]:
        with pytest.raises(FornetError, match=fragment):
            output_file(path, reads=[data, tiny_bundle])
    with pytest.raises(FornetError, match="inside the bundle folder"):  # a bundle the command does not read
        output_file(tiny_bundle / "model.onnx")
    with pytest.raises(FornetError, match="reads or writes"):  # the run folder train writes
        output_file(tmp_path / "run" / "log.jsonl", writes=[tmp_path / "run"])


def test_output_folder_rules(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert output_folder(tmp_path / "out", reads=[data, tiny_bundle]) == tmp_path / "out"
    cases = [(data, {}, "is an input"), (tmp_path, {}, "holds"), (data / "out", {}, "inside"),
             (tiny_bundle, {}, "is an input"), (tiny_bundle / "sub", {}, "inside"), (tiny_bundle.parent, {}, "holds")]
    for path, options, fragment in cases:
        with pytest.raises(FornetError, match=fragment):
            output_folder(path, reads=[data, tiny_bundle], **options)
    assert output_folder(data / "out", reads=[data], inside_reads=True) == data / "out"  # predict's choice
    with pytest.raises(FornetError, match="is a bundle folder"):  # even one the command does not read
        output_folder(tiny_bundle)
    with pytest.raises(FornetError, match="inside the bundle folder"):
        output_folder(tiny_bundle / "sub")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FornetError, match="exists and is not a folder"):
        output_folder(tmp_path / "afile")
    with pytest.raises(FornetError, match="afile is a file"):
        output_folder(tmp_path / "afile" / "x")


def test_a_foreign_manifest_does_not_make_a_bundle(tiny_bundle, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "a web app"}))
    assert not is_bundle(tmp_path) and is_bundle(tiny_bundle)
    assert output_file(tmp_path / "result.json") == tmp_path / "result.json"
