"""The deploy bundle: nothing lost, nothing stale (issue 14, docs/reliability.md).

Lineage, the manifest schema, transactional stage writes, the writer lock, and what a
killed, interrupted or out-of-space command leaves behind. The killing tests run the real
``fornet-deploy`` entry point in a subprocess and send it a real signal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli

from fornet_deploy.bundle import JOURNAL, LOCK, STAGING_PREFIX, Bundle, transaction
from fornet_deploy.calibration.qdq import calibrate_bundle
from fornet_deploy.contract import CHECKPOINT, MANIFEST, ONNX_CPU, ONNX_FP16, ONNX_FP32, ONNX_INT8_CPU, ONNX_INT8_QDQ
from fornet_deploy.errors import FornetError
from fornet_deploy.export.fp16 import convert_fp16
from fornet_deploy.export.onnx import ExportConfig, export_bundle
from fornet_deploy.io import sha256_file
from fornet_deploy.model.checkpoint import save_checkpoint
from fornet_deploy.model.fornet import build_model
from fornet_deploy.runtimes.registry import load_runner

SHAPE = "128x256"  # the size of the tiny SynthCity images, so calibration fits the export
CLI = "from fornet_deploy.cli import main; main()"
# Commands run side by side get one CPU thread each (the machines running the suite have two cores).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# Runs the CLI and SIGKILLs it just before its n-th rename into the bundle folder (staged
# manifest, journal, every file moved into place, the manifest): every step of a commit.
KILL_AT_RENAME = r"""
import os, signal, sys
limit, bundle = int(sys.argv[1]), os.path.realpath(sys.argv[2])
real, count = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if os.path.realpath(os.fspath(dst)).startswith(bundle + os.sep):
        count[0] += 1
        if count[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["fornet-deploy", *sys.argv[3:]]
from fornet_deploy.cli import main
main()
"""


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory, tiny_config) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other") / "other.safetensors"
    save_checkpoint(path, build_model(tiny_config))
    return path


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory, tiny_checkpoint, tiny_data) -> Path:
    """Checkpoint A exported, with its FP16 graph and a CPU INT8 graph: everything derived."""
    root = tmp_path_factory.mktemp("full") / "bundle"
    export_bundle(tiny_checkpoint, root, ExportConfig(height=128, width=256))
    convert_fp16(root)
    calibrate_bundle(root, tiny_data, num_images=2, method="minmax", target="cpu")
    return root


@pytest.fixture
def bundle(tmp_path, full_bundle) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(full_bundle, root)
    return root


def hashes(root: Path) -> dict[str, str]:
    """Artefact -> sha256, as the manifest on disk records them."""
    return {name: e["sha256"] for name, e in json.loads((root / MANIFEST).read_text())["artifacts"].items()}


def files(root: Path) -> dict[str, str]:
    """Every file in the bundle folder (sub-folders included) -> its sha256; the lock aside."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK}


def edit_manifest(root: Path, change) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def assert_consistent(root: Path) -> dict[str, str]:
    """Every listed artefact exists with its hash and lineage, and no artefact-looking file
    lies in the folder unlisted; returns the manifest's hashes."""
    bundle = Bundle.open(root)  # finishes a journaled commit, verifies every hash and lineage
    listed = set(bundle.artifacts)
    on_disk = {p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST}
    assert on_disk == listed, (on_disk, listed)
    return {name: e["sha256"] for name, e in bundle.artifacts.items()}


def signal_when_staging(args: list[str], root: Path, sig: int, delay: float = 0.0) -> subprocess.CompletedProcess:
    """Run the CLI; send ``sig`` ``delay`` seconds after its staging folder appears in ``root``."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(root.glob(STAGING_PREFIX + "*")):
            time.sleep(delay)
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- lineage ------------------------------------------------------------------------------


def test_reexport_removes_what_the_old_model_made(tmp_path, bundle, other_checkpoint, tiny_data):
    """Issue 14 defect 1: export A; calibrate; export B; predict --precision int8 ran A's INT8."""
    before = hashes(bundle)
    assert {ONNX_FP16, ONNX_INT8_CPU} <= set(before)
    result = run_cli("export", "--checkpoint", str(other_checkpoint), "--out", str(bundle), "--shape", SHAPE)
    assert result.returncode == 0, result.stderr
    after = assert_consistent(bundle)
    assert set(after) == {CHECKPOINT, ONNX_FP32, ONNX_CPU} and after[ONNX_FP32] != before[ONNX_FP32]
    image = next((tiny_data / "leftImg8bit" / "val").rglob("*.png"))
    for precision, command in (("int8", "fornet-deploy calibrate"), ("fp16", "fornet-deploy export --precision fp16")):
        result = run_cli("predict", str(image), "--bundle", str(bundle), "--out", str(tmp_path / "out"),
                         "--precision", precision)
        assert_one_line_error(result, f"no ort {precision} artefact", command)
        assert result.returncode == 3


def test_reexport_of_the_same_model_keeps_what_it_made(bundle, tiny_checkpoint):
    before = hashes(bundle)
    export_bundle(tiny_checkpoint, bundle, ExportConfig(height=128, width=256))
    assert assert_consistent(bundle) == before  # the export is deterministic: model.onnx is the same file


@pytest.mark.parametrize("artifact, link, runtime, precision, command", [
    (ONNX_INT8_CPU, ONNX_INT8_CPU, "ort", "int8", "fornet-deploy calibrate --target cpu"),
    (ONNX_FP16, ONNX_FP16, "ort", "fp16", "fornet-deploy export --precision fp16"),
    (ONNX_FP16, ONNX_FP32, "ort", "fp16", "fornet-deploy export"),  # two links up: model.onnx <- checkpoint
])
def test_an_artefact_whose_source_changed_is_refused(bundle, artifact, link, runtime, precision, command):
    """A bundle put together by hand (or by a version without lineage) keeps a stale entry:
    loading it names the command to re-run."""
    edit_manifest(bundle, lambda m: m["artifacts"][link].update(source_sha256="0" * 64))
    stale = f"{artifact} is stale .*{link} was made from a .* replaced since.*`{command}`"
    with pytest.raises(FornetError, match=stale):
        load_runner(bundle, runtime, precision)
    result = run_cli("eval", "--bundle", str(bundle), "--data", str(bundle), "--precision", precision)
    assert_one_line_error(result, "is stale", command)


def test_an_artefact_without_a_source_hash_is_not_trusted(bundle):
    edit_manifest(bundle, lambda m: m["artifacts"][ONNX_INT8_CPU].pop("source_sha256"))
    with pytest.raises(FornetError, match="records no hash of the model.onnx it was made from"):
        load_runner(bundle, "ort", "int8")
    with transaction(bundle, "test"):  # a commit leaves an unprovable entry to be refused on load, it does not guess
        pass
    assert ONNX_INT8_CPU in hashes(bundle)


# --- the manifest schema -------------------------------------------------------------------


HOSTILE_MANIFESTS = {
    "entry is a string": (lambda m: m["artifacts"].update({ONNX_FP32: "model.onnx"}), "is a str, not an object"),
    "entry without sha256": (lambda m: m["artifacts"][ONNX_FP32].pop("sha256"), "has no valid sha256"),
    "sha256 not hex": (lambda m: m["artifacts"][ONNX_FP32].update(sha256="yes"), "has no valid sha256"),
    "name climbs out": (lambda m: m["artifacts"].update({"../outside.onnx": m["artifacts"][ONNX_FP32]}),
                        "'../outside.onnx' is not a plain file name"),
    "absolute name": (lambda m: m["artifacts"].update({"/etc/passwd": m["artifacts"][ONNX_FP32]}),
                      "'/etc/passwd' is not a plain file name"),
    "source climbs out": (lambda m: m["artifacts"][ONNX_FP16].update(source="../x"), "source of model.fp16.onnx"),
    "no preprocessing": (lambda m: m.pop("preprocessing"), "no 'preprocessing' section"),
    "preprocessing a list": (lambda m: m.update(preprocessing=[1, 2]), "'preprocessing' is a list"),
    "classes not names": (lambda m: m.update(classes=[1, 2]), "'classes' must be a list of names"),
    "export height text": (lambda m: m["export"].update(height="128"), "export height '128'"),
    # issue 26: parity allocated 30 GB of synthetic images for a manifest claiming this export
    "export 100000x100000": (lambda m: m["export"].update(height=100000, width=100000), "beyond the supported"),
    "export 8192x8192": (lambda m: m["export"].update(height=8192, width=8192), "64.0 M pixels"),
    "export_shape of 32 M pixels": (lambda m: m["artifacts"]["model.onnx"].update(export_shape=[1, 3, 8192, 4096]),
                                    "export_shape of model.onnx 8192x4096 is 32.0 M pixels"),
    "artifacts a list": (lambda m: m.update(artifacts=[]), "'artifacts' is a list"),
    "other version": (lambda m: m.update(version=7), "manifest version 7"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_one_line(bundle, case):
    change, message = HOSTILE_MANIFESTS[case]
    edit_manifest(bundle, change)
    with pytest.raises(FornetError, match=re.escape(message)):
        Bundle.open(bundle, verify=False)


def test_no_artefact_name_reaches_outside_the_bundle(tmp_path, bundle):
    """Issue 14 defect 8: an artefact named ../x made eval hash a file outside the bundle."""
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / ONNX_FP32, outside)
    edit_manifest(bundle, lambda m: m["artifacts"].update({"../outside.onnx": m["artifacts"][ONNX_FP32]}))
    for args in (["eval", "--bundle", str(bundle), "--data", str(tmp_path)], ["parity", "--bundle", str(bundle)]):
        result = run_cli(*args)
        assert_one_line_error(result, "not a plain file name inside the bundle folder")
        assert result.returncode == 3


def test_a_manifest_entry_that_is_a_string_is_one_line_for_predict(tmp_path, bundle, tiny_data):
    edit_manifest(bundle, HOSTILE_MANIFESTS["entry is a string"][0])
    image = next((tiny_data / "leftImg8bit" / "val").rglob("*.png"))
    result = run_cli("predict", str(image), "--bundle", str(bundle), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "the entry of model.onnx is a str")
    assert result.returncode == 3


# --- transactions --------------------------------------------------------------------------


def test_a_failed_export_into_a_fresh_folder_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    """Issue 14 defect 2: a failed export left a bare manifest on which predict raised KeyError."""
    def broken_save(proto, path):
        Path(path).write_bytes(b"half an onnx file")
        raise RuntimeError("disk went away")

    monkeypatch.setattr("fornet_deploy.export.onnx.onnx.save", broken_save)
    with pytest.raises(RuntimeError, match="disk went away"):
        export_bundle(tiny_checkpoint, tmp_path / "fresh" / "bundle", ExportConfig(height=128, width=256))
    assert not (tmp_path / "fresh" / "bundle").exists()


def test_a_failed_stage_leaves_the_bundle_as_it_was(bundle, other_checkpoint, monkeypatch):
    before = files(bundle)

    def broken_save(proto, path):
        Path(path).write_bytes(b"half an onnx file")
        raise RuntimeError("disk went away")

    monkeypatch.setattr("fornet_deploy.export.onnx.onnx.save", broken_save)
    with pytest.raises(RuntimeError):
        export_bundle(other_checkpoint, bundle, ExportConfig(height=128, width=256))
    assert files(bundle) == before and not list(bundle.glob(STAGING_PREFIX + "*"))


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(bundle):
    with transaction(bundle, "calibrate --target cpu") as txn:
        with pytest.raises(FornetError, match=rf"being written by another fornet-deploy command \(pid {os.getpid()}: "
                                              r"calibrate --target cpu, since .*\); wait for it"):
            convert_fp16(bundle)
        txn.update(note="first writer")
    assert Bundle.open(bundle).manifest["note"] == "first writer"
    convert_fp16(bundle)  # the lock is free again


def test_the_lock_of_a_killed_writer_is_released(bundle):
    holder = ("import sys, time\nfrom fornet_deploy.bundle import transaction\n"
              "with transaction(sys.argv[1], 'holder') as txn:\n"
              "    txn.path('junk.bin').write_bytes(b'x' * 1000)\n"
              "    print('locked', flush=True)\n"
              "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(bundle)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        result = run_cli("export", "--checkpoint", str(bundle / CHECKPOINT), "--out", str(bundle), "--shape", SHAPE)
        assert_one_line_error(result, "being written by another fornet-deploy command", "holder")
        assert list(bundle.glob(STAGING_PREFIX + "*/junk.bin"))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with transaction(bundle, "after the kill"):  # the OS dropped the lock; the holder's staging is cleared
        assert not list(bundle.glob(STAGING_PREFIX + "*/junk.bin"))
    assert_consistent(bundle)


def test_two_calibrates_never_lose_an_update(bundle, tiny_data):
    """Issue 14 defect 3: two calibrates (cpu and tensorrt) both exited 0, one INT8 graph listed."""
    edit_manifest(bundle, lambda m: m["artifacts"].pop(ONNX_INT8_CPU))
    (bundle / ONNX_INT8_CPU).unlink()
    procs = {target: subprocess.Popen(
        [sys.executable, "-c", CLI, "calibrate", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2",
         "--method", "minmax", "--target", target], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ONE_THREAD)
        for target in ("cpu", "tensorrt")}
    results = {target: (proc.wait(timeout=300), proc.stderr.read()) for target, proc in procs.items()}
    listed = assert_consistent(bundle)
    artefact = {"cpu": ONNX_INT8_CPU, "tensorrt": ONNX_INT8_QDQ}
    for target, (code, stderr) in results.items():
        if code == 0:
            assert artefact[target] in listed, target  # exit 0 means it is in the manifest
        else:
            assert code == 3 and "being written by another fornet-deploy command" in stderr, stderr
            assert "Traceback" not in stderr
    assert any(code == 0 for code, _ in results.values())


# --- killed and interrupted writers ----------------------------------------------------------------


def test_export_killed_at_every_step_of_its_commit(tmp_path, bundle, other_checkpoint):
    """Issue 14 defect 2: killed while writing, the manifest and checkpoint were new and
    model.onnx old. SIGKILL before each rename of the commit (one process per kill point,
    run side by side): the bundle is the old one or the new one, whole, and a commit cut
    short after its journal is finished by the next command that opens the bundle."""
    old = hashes(bundle)
    roots = {rename: tmp_path / f"kill{rename}" for rename in range(1, 8)}  # 6 renames, then one that runs through
    fresh = {2: tmp_path / "fresh" / "bundle"}  # into a fresh folder, killed before the commit point
    procs = {}
    for rename, root in [*roots.items(), *((-r, f) for r, f in fresh.items())]:
        if rename > 0:
            shutil.copytree(bundle, root)
        procs[rename] = subprocess.Popen(
            [sys.executable, "-c", KILL_AT_RENAME, str(abs(rename)), str(root.parent if rename < 0 else root),
             "export", "--checkpoint", str(other_checkpoint), "--out", str(root), "--shape", SHAPE],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    codes = {rename: proc.wait(timeout=600) for rename, proc in procs.items() if rename > 0}
    assert all(procs[-rename].wait(timeout=600) == -signal.SIGKILL for rename in fresh)
    with pytest.raises(FornetError, match="has no manifest.json: no export into it has finished"):
        Bundle.open(fresh[2])  # no bare manifest
    killed = [rename for rename, code in codes.items() if code == -signal.SIGKILL]
    # staged manifest, journal, 4 renames (checkpoint, model.onnx, model.cpu.onnx, manifest)
    assert killed == list(range(1, len(killed) + 1)) and len(killed) >= 6, codes
    assert all(code == 0 for rename, code in codes.items() if rename not in killed), codes
    new = assert_consistent(roots[len(killed) + 1])  # ran to its end
    assert new != old and set(new) == {CHECKPOINT, ONNX_FP32, ONNX_CPU}
    journaled = [rename for rename in killed if list(roots[rename].glob(f"{STAGING_PREFIX}*/{JOURNAL}"))]
    states = {rename: assert_consistent(roots[rename]) for rename in killed}
    assert journaled and all(states[rename] == (new if rename in journaled else old) for rename in killed), states
    assert min(journaled) > 1  # kills before the commit point leave the old bundle
    with transaction(roots[1], "next writer"):
        pass
    assert not list(roots[1].glob(STAGING_PREFIX + "*"))  # an abandoned staging folder is cleared


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # SIGKILL: every commit step, above
def test_export_interrupted_while_it_writes(bundle, other_checkpoint, sig):
    old = hashes(bundle)
    result = signal_when_staging(["export", "--checkpoint", str(other_checkpoint), "--out", str(bundle),
                                  "--shape", SHAPE], bundle, sig)
    state = assert_consistent(bundle)
    assert state == old or set(state) == {CHECKPOINT, ONNX_FP32}
    if sig == signal.SIGINT and result.returncode != 0:
        assert_one_line_error(result, "interrupted")
        assert result.returncode == 130


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_stage_writes_is_exit_130_and_leaves_no_staging(bundle, other_checkpoint, sig):
    """Issue 26: every signal exit is 130 and leaves no staging behind (SIGTERM ended the
    process at once: exit 143, the staging folder left for the next writer to clear)."""
    old = hashes(bundle)
    result = signal_when_staging(["export", "--checkpoint", str(other_checkpoint), "--out", str(bundle),
                                  "--shape", SHAPE], bundle, sig)
    assert_one_line_error(result, "interrupted")
    assert result.returncode == 130
    assert not list(bundle.glob(STAGING_PREFIX + "*"))
    after = assert_consistent(bundle)
    # The signal lands while the stage stages its files (the bundle stays as it was) or, on a
    # loaded machine, once the commit is decided (the commit completes first, then exit 130):
    # never anything in between.
    assert after == old or after[CHECKPOINT] == sha256_file(other_checkpoint), (after, old)


def test_calibrate_killed_midway_leaves_no_trace(bundle, tiny_data):
    def artefacts(root: Path) -> dict[str, str]:  # the calibration cache aside: a keyed cache, written atomically
        return {k: v for k, v in files(root).items() if not k.startswith((STAGING_PREFIX, "calibration/"))}

    before = artefacts(bundle)
    result = signal_when_staging(["calibrate", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2",
                                  "--target", "tensorrt"], bundle, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    after = assert_consistent(bundle)
    # The kill lands while the stage stages its files (the bundle stays as it was) or, on a fast
    # machine, once its journal has decided the commit (the next reader completes it): never in between.
    assert artefacts(bundle) == before or (ONNX_INT8_QDQ in after and set(before) < set(artefacts(bundle))), \
        (before, after)
    calibrate_bundle(bundle, tiny_data, num_images=2, method="minmax", target="tensorrt")
    assert ONNX_INT8_QDQ in assert_consistent(bundle) and not list(bundle.glob(STAGING_PREFIX + "*"))


# --- readers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["ort", "torch"])
def test_a_runner_loads_only_what_the_manifest_it_read_lists(bundle, other_checkpoint, runtime):
    """A commit between reading the manifest and loading the artefact: the runner stops with
    one line instead of running a file of another commit."""
    snapshot = Bundle.open(bundle)
    runner = load_runner(snapshot, runtime, "fp32")  # checked against the snapshot: fine so far
    export_bundle(other_checkpoint, bundle, ExportConfig(height=128, width=256))  # another command commits
    with pytest.raises(FornetError, match="does not match the sha256 its bundle's manifest records"):
        with runner:
            pass
    with load_runner(bundle, runtime, "fp32"):  # a fresh read runs the new commit
        pass


# --- write failures --------------------------------------------------------------------------


def run_limited(kilobytes: int, *args: str) -> subprocess.Popen:
    """The CLI under ``ulimit -f`` (a write past the limit fails with EFBIG, as Python ignores SIGXFSZ)."""
    script = f'ulimit -f {kilobytes} && exec "$@"'
    return subprocess.Popen(["bash", "-c", script, "_", sys.executable, "-c", CLI, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def test_export_over_the_file_size_limit(tmp_path, bundle, other_checkpoint):
    before = files(bundle)
    outs = (bundle, tmp_path / "fresh")
    procs = [run_limited(80, "export", "--checkpoint", str(other_checkpoint), "--out", str(out), "--shape", SHAPE)
             for out in outs]
    for out, proc in zip(outs, procs):
        result = subprocess.CompletedProcess(proc.args, proc.wait(timeout=300), "", proc.stderr.read())
        assert_one_line_error(result, "File too large", str(out))
        assert result.returncode == 3
    assert files(bundle) == before and not (tmp_path / "fresh").exists()


def test_calibrate_over_the_file_size_limit(bundle, tiny_data):
    before = files(bundle)
    proc = run_limited(80, "calibrate", "--bundle", str(bundle), "--data", str(tiny_data), "--num-images", "2",
                       "--target", "tensorrt")
    result = subprocess.CompletedProcess(proc.args, proc.wait(timeout=300), "", proc.stderr.read())
    assert_one_line_error(result, "File too large")
    assert result.returncode == 3
    assert files(bundle) == before
