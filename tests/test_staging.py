"""The staged all-or-nothing writer the bundle and predict share (fornet_deploy/staging.py):
a commit killed at every step, symlinks on the way of a move, a delete or a recovery, and
Ctrl-C / SIGTERM while staging and while committing. Both writers' layouts run every test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fornet_deploy.bundle import LAYOUT as BUNDLE
from fornet_deploy.errors import FornetError
from fornet_deploy.predict.outputs import LAYOUT as PREDICT
from fornet_deploy.staging import JOURNAL, Layout, recover, staged

LAYOUTS = {"bundle": BUNDLE, "predict": PREDICT}
NEW = {"a/x": "new x", "a/y": "new y", "z": "new z"}  # what the new write holds
OLD = {"a/x": "old x", "old/q": "old q"}  # what the earlier write left, listed by its claim


def claim_text(files) -> str:
    """A claim listing ``files``, as the writer writes one (atomic_write_json)."""
    return json.dumps({"files": sorted(files)}, indent=2) + "\n"


def unlocked():
    return contextlib.nullcontext()


def write_old(root: Path, layout: Layout) -> None:
    for name, text in OLD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / layout.claim).write_text(claim_text(OLD))
    (root / "keep.txt").write_text("mine")  # no write lists it: never touched


def write_new(root: Path, layout: Layout) -> None:
    with staged(root, layout, unlocked) as staging:
        for name, text in NEW.items():
            staging.path(name).write_text(text)
        staging.commit({"files": sorted(NEW)}, sorted(NEW), sorted(OLD))


def state(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links as ``-> target``); the lock file aside."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file() and name != ".lock":
            found[name] = path.read_text()
    return found


def expected(files: dict[str, str], layout: Layout) -> dict[str, str]:
    return {**files, "keep.txt": "mine", layout.claim: claim_text(files)}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_commit_moves_deletes_and_claims_last(tmp_path, layout):
    root = tmp_path / "out"
    root.mkdir()
    write_old(root, layout)
    write_new(root, layout)
    found = state(root)
    assert json.loads(found.pop(layout.claim)) == {"files": sorted(NEW)}
    assert found == {**NEW, "keep.txt": "mine"}  # old/q and its emptied folder are gone
    assert sorted(p.name for p in root.iterdir()) == sorted([layout.claim, "a", "keep.txt", "z"])


# Writes NEW over OLD into argv[2] with the layout argv[1]; SIGKILLs itself just before its
# n-th rename inside the folder (argv[3]).
KILL_AT_RENAME = r"""
import os, signal, sys
sys.path.insert(0, os.path.dirname(sys.argv[4]))
from test_staging import LAYOUTS, write_new
layout, root, limit = LAYOUTS[sys.argv[1]], sys.argv[2], int(sys.argv[3])
real, count = os.replace, [0]
def replace(src, dst):
    if os.path.realpath(dst).startswith(os.path.realpath(root) + os.sep):
        count[0] += 1
        if count[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
from pathlib import Path
write_new(Path(root), layout)
"""


@pytest.mark.parametrize("name", LAYOUTS)
def test_killed_at_every_rename_of_a_commit(tmp_path, name):
    """kill -9 before each rename of a commit (claim, journal, the folder for predict, each
    file, the claim): the next ``recover`` leaves the old write (killed before the decision)
    or the new one (after it), whole; with ``withdraw_claim`` the folder claims nothing
    until then, never a half-moved write."""
    layout = LAYOUTS[name]
    decision = 2 if layout.committed_prefix is None else 3  # the journal; or the folder's rename after it
    renames = decision + len(NEW) + 1
    roots = {n: tmp_path / f"kill{n}" for n in range(1, renames + 2)}  # the last one runs through
    procs = {}
    for n, root in roots.items():
        root.mkdir()
        write_old(root, layout)
        procs[n] = subprocess.Popen([sys.executable, "-c", KILL_AT_RENAME, name, str(root), str(n), __file__],
                                    stderr=subprocess.PIPE, text=True)
    codes = {n: proc.wait(timeout=120) for n, proc in procs.items()}
    assert codes == {**{n: -signal.SIGKILL for n in range(1, renames + 1)}, renames + 1: 0}, \
        {n: p.stderr.read() for n, p in procs.items()}
    old, new = expected(OLD, layout), expected(NEW, layout)
    for n, root in roots.items():
        left = state(root)
        if layout.withdraw_claim and layout.claim in left:  # a claim present is a whole write
            claimed = json.loads(left[layout.claim])["files"]
            assert {k: v for k, v in left.items() if k in claimed} == {k: (old if n <= decision else new)[k]
                                                                       for k in claimed}, n
        recover(root, layout)
        assert state(root) == (old if n <= decision else new), n
        assert not [p for p in root.iterdir() if p.name.startswith(layout.prefix)], n


# --- symlinks (issue 26: a command deletes and writes only inside its own folder) ---------------


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder outside the one written, reached through links: nothing in it may change."""
    folder = tmp_path / "victim"
    folder.mkdir()
    for name in ("f", "q", "g"):
        (folder / name).write_text(f"precious {name}")
    return folder


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_delete_never_follows_a_symlink(tmp_path, victim, layout):
    """An earlier write's folder replaced by a link to an archive, and a claim listing
    ``sub/f`` with ``sub`` a link: the commit deletes neither the files behind the links
    nor the links (they are not files it wrote)."""
    root = tmp_path / "out"
    root.mkdir()
    write_old(root, layout)
    (root / "sub").symlink_to(victim)
    (root / "g").symlink_to(victim / "g")
    with staged(root, layout, unlocked) as staging:
        staging.path("z").write_text("new z")
        staging.commit({"files": ["z"]}, ["z"], ["sub/f", "g", "old/q"])
    assert state(victim) == {"f": "precious f", "q": "precious q", "g": "precious g"}
    assert (root / "sub").is_symlink() and (root / "g").is_symlink()
    assert not (root / "old").exists()


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_move_through_a_symlink_is_refused_before_the_decision(tmp_path, victim, layout):
    root = tmp_path / "out"
    root.mkdir()
    write_old(root, layout)
    (root / "sub").symlink_to(victim)
    before = state(root)
    with pytest.raises(FornetError, match=r"sub is a symbolic link or a file, not a folder.*as it was") as info:
        with staged(root, layout, unlocked) as staging:
            for name in ("z", "sub/f"):
                staging.path(name).write_text("new")
            staging.commit({"files": ["z", "sub/f"]}, ["z", "sub/f"], [])
    assert "\n" not in str(info.value)
    assert state(victim) == {"f": "precious f", "q": "precious q", "g": "precious g"}
    assert state(root) == before  # no staging folder left, nothing moved


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_recovery_follows_no_symlink(tmp_path, victim, layout):
    """A staging-named link to a folder holding a journal (moves out of it, deletes in the
    folder): recovery leaves it alone (issue 26: a ``.staging-*`` that is a symlink). And a
    real one whose journal moves ``sub/f`` with ``sub`` a link: nothing is taken from behind it."""
    root = tmp_path / "out"
    root.mkdir()
    write_old(root, layout)
    (victim / layout.claim).write_text("{}")
    (victim / JOURNAL).write_text(json.dumps({"moves": ["f"], "deletes": ["keep.txt", "a/x"]}))
    link = root / ((layout.committed_prefix or layout.prefix) + "planted")
    link.symlink_to(victim)
    before = state(root)
    recover(root, layout)
    assert state(root) == before and link.is_symlink()
    assert "f" in state(victim)

    folder = root / ((layout.committed_prefix or layout.prefix) + "real")
    folder.mkdir()
    (folder / "sub").symlink_to(victim)
    (folder / layout.claim).write_text(claim_text(["sub/f"]))
    (folder / JOURNAL).write_text(json.dumps({"moves": ["sub/f"], "deletes": []}))
    recover(root, layout)
    assert state(victim)["f"] == "precious f" and not (root / "sub").exists() and not folder.exists()


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_journal_that_moves_a_folder_onto_a_file(tmp_path, layout):
    """Issue 26 (a traceback before): a decided commit whose journal names a folder is
    completed without it; the file in the way stays."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "d").write_text("a file")
    folder = root / ((layout.committed_prefix or layout.prefix) + "left")
    (folder / "d").mkdir(parents=True)
    (folder / "d" / "inner").write_text("staged in a folder")
    (folder / layout.claim).write_text(json.dumps({"files": ["d"]}))
    (folder / JOURNAL).write_text(json.dumps({"moves": ["d"], "deletes": []}))
    recover(root, layout)
    assert state(root) == {"d": "a file", layout.claim: json.dumps({"files": ["d"]})}


# --- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_signal_while_staging_abandons_the_write(tmp_path, layout, sig):
    """Ctrl-C or SIGTERM before the commit: KeyboardInterrupt (the CLI's exit 130), no
    staging folder, no folder this write made; the handlers are restored."""
    root = tmp_path / "fresh" / "out"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        with staged(root, layout, unlocked) as staging:
            staging.path("a/x").write_text("half of a write")
            os.kill(os.getpid(), sig)
    assert not (tmp_path / "fresh").exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
def test_a_signal_during_the_commit_is_honoured_after_it(tmp_path, layout, monkeypatch):
    """SIGTERM at the first file moved: the commit completes, then the write stops
    (KeyboardInterrupt) -- unless the caller routes signals itself (predict), which then
    decides (its run completes)."""
    real = os.replace
    sent = []

    def replace(src, dst):
        if not sent and Path(dst).name == "x":
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "out"
    root.mkdir()
    write_old(root, layout)
    with pytest.raises(KeyboardInterrupt):
        write_new(root, layout)
    assert sent and state(root) == expected(NEW, layout)
