"""The deploy bundle: one folder per model, described by ``manifest.json``.

Every stage (export, calibrate, build-trt) records its artefacts in the manifest with
their sha256, so a later stage can tell a file that was changed or truncated behind its
back. Four rules keep a bundle consistent (docs/reliability.md holds the tests):

Lineage
    A derived artefact records ``source`` (the artefact it was made from) and
    ``source_sha256`` (that artefact's hash when it was made): ``model.onnx`` <- the
    checkpoint, ``model.fp16.onnx`` and the INT8 graphs <- ``model.onnx``, an engine <- its
    graph, an engine's metadata file <- the engine. Loading an artefact (:meth:`Bundle.path`)
    walks the chain and refuses, naming the command to re-run, one whose source changed.
    A commit removes the artefacts it proves stale (file and entry): re-exporting another
    checkpoint drops the FP16 / INT8 graphs and engines of the old one, and keeps them when
    ``model.onnx`` comes out byte for byte the same.
Transactions
    A writer (:func:`transaction`) writes every file into a private staging folder inside
    the bundle (``.staging-*``, same file system) and commits in one step: a journal
    (``COMMIT.json`` in the staging folder, written atomically) is the commit point, then
    the files are renamed into place and the manifest last. Killed before the journal, the
    bundle is as it was (the next writer deletes the staging folder); killed after it, the
    next command that opens the bundle completes the renames. Ctrl-C or SIGTERM while a
    stage writes is exit 130 with the staging folder removed. A failed write into a fresh
    folder leaves no folder behind. Staging, commit and recovery are the writer of
    :mod:`fornet_deploy.staging`, which predict shares (:data:`LAYOUT` is how the bundle
    differs).
Writer lock
    A writer holds ``flock`` on ``.lock`` for its whole stage and reads the manifest under
    it, so two writers never lose each other's update: the second fails at once with one
    line naming the holder. The operating system releases the lock of a killed process.
Readers
    ``manifest.json`` is one atomically replaced file; a runner checks the bytes it loads
    against that manifest's sha256 (:mod:`fornet_deploy.runtimes.registry`), so a command
    runs the committed state it read or stops with one line, never a mix of two commits.

The manifest is checked on load (:func:`check_manifest`): the types of the sections the
stages read, and artefact names that are plain file names inside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from .contract import (
    BUNDLE_FORMAT,
    FORMATS,
    INPUT_CHANNELS,
    MANIFEST,
    MAX_BATCH,
    MAX_SIDE,
    PRECISIONS,
    check_pixels,
    engine_format,
    format_shape,
)
from .errors import WRITE_ERRNOS, FornetError
from .io import now_iso, read_json, sha256_file
from .staging import JOURNAL as JOURNAL  # the name of a commit's journal in a staging folder
from .staging import Layout, Staging, pending, recover, staged

BUNDLE_VERSION = 1
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
# The staged writer as a bundle uses it (fornet_deploy/staging.py): the journal landing in a
# ".staging-*" folder is the decision; the old manifest stays until the new one replaces it
# (readers complete a pending commit first, :func:`_settle`); everything fsynced.
LAYOUT = Layout(what="bundle folder", prefix=STAGING_PREFIX, claim=MANIFEST, durable=True, lock_file=LOCK)
# A killed commit is completed by the next command; one still running holds the lock for
# the few renames it has left, which a reader waits out for at most this long.
COMMIT_WAIT_S = 30.0

# Artefact names are plain file names in the bundle folder: no folders, nothing hidden
# (the lock, staging folders and scratch are), so no name can reach outside the bundle.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Types of the manifest sections the stages read (besides ``artifacts``).
SECTION_TYPES = {"model": dict, "labels": dict, "classes": list, "palette": list, "preprocessing": dict, "topk": dict,
                 "export": dict, "checkpoint_info": dict, "created": str}


# --- the manifest schema ------------------------------------------------------------------


def check_artifact_name(name: Any, where: str = "bundle") -> str:
    """``name`` if it is a plain file name an artefact may have; else one line."""
    if not isinstance(name, str) or not _NAME.match(name) or name == MANIFEST:
        raise FornetError(f"{where}: artefact name {name!r} is not a plain file name inside the bundle folder")
    return name


def _check_entry(name: str, entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise FornetError(f"{where}: the entry of {name} is a {type(entry).__name__}, not an object")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        raise FornetError(f"{where}: {name} has no valid sha256; it cannot be trusted (re-run the stage that made it)")
    if "source" in entry:
        check_artifact_name(entry["source"], f"{where}: source of {name}")
        if "source_sha256" in entry and not (isinstance(entry["source_sha256"], str)
                                             and _SHA256.match(entry["source_sha256"])):
            raise FornetError(f"{where}: {name} has an invalid source_sha256")
    if "bytes" in entry and (isinstance(entry["bytes"], bool) or not isinstance(entry["bytes"], int)):
        raise FornetError(f"{where}: the byte count of {name} is not an integer")
    for key, allowed in (("kind", None), ("precision", PRECISIONS)):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or (allowed and value not in allowed)):
            raise FornetError(f"{where}: {name} has an invalid {key} {value!r}")


def check_manifest(manifest: Any, where: str) -> dict:
    """The manifest if its shape is one this version reads; else one line naming the problem."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise FornetError(f"{where} is not a fornet-deploy bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise FornetError(f"{where} has manifest version {manifest.get('version')!r}, "
                          f"this fornet-deploy reads version {BUNDLE_VERSION}")
    artifacts = manifest.setdefault("artifacts", {})
    if not isinstance(artifacts, dict):
        raise FornetError(f"{where}: 'artifacts' is a {type(artifacts).__name__}, not an object")
    for name, entry in artifacts.items():
        check_artifact_name(name, where)
        _check_entry(name, entry, where)
    for key, kind in SECTION_TYPES.items():
        if key in manifest and not isinstance(manifest[key], kind):
            raise FornetError(f"{where}: section '{key}' is a {type(manifest[key]).__name__}, not a {kind.__name__}")
    if artifacts and "preprocessing" not in manifest:  # every runner needs it
        raise FornetError(f"{where} lists artefacts but has no 'preprocessing' section (re-run `fornet-deploy export`)")
    if "classes" in manifest and not all(isinstance(c, str) for c in manifest["classes"]):
        raise FornetError(f"{where}: 'classes' must be a list of names")
    # Sizes that drive allocations (parity's synthetic images, DeepStream's infer-dims) are
    # bounded here, before any is made: a hand-edited 100000x100000 allocates nothing.
    if "export" in manifest:
        export = manifest["export"]
        shape = [export.get("batch", 1), INPUT_CHANNELS, export.get("height"), export.get("width")]
        for key, value in zip(("batch", "channels", "height", "width"), shape):
            if not _positive_int(value):
                raise FornetError(f"{where}: export {key} {value!r} is not a positive integer")
        _check_shape(shape, f"{where}: export")
    for name, entry in artifacts.items():
        if "export_shape" in entry:
            shape = entry["export_shape"]
            if not (isinstance(shape, list) and len(shape) == 4 and all(_positive_int(d) for d in shape)):
                raise FornetError(f"{where}: export_shape {shape!r} of {name} is not four positive integers (NCHW)")
            _check_shape(shape, f"{where}: export_shape of {name}")
    return manifest


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_shape(shape: list[int], where: str) -> None:
    """An NCHW shape a manifest records, within the bounds every command runs at
    (:data:`~fornet_deploy.contract.MAX_BATCH`, ``MAX_SIDE``, ``MAX_PIXELS``)."""
    batch, _, height, width = shape
    if batch > MAX_BATCH or max(height, width) > MAX_SIDE:
        raise FornetError(f"{where} {format_shape(shape)} is beyond the supported {MAX_BATCH} images of at most "
                          f"{MAX_SIDE} pixels per side")
    check_pixels(batch, height, width, where, FornetError)


# --- lineage ------------------------------------------------------------------------------


def remake_command(name: str, artifacts: dict[str, dict]) -> str:
    """The command that makes artefact ``name`` (for messages)."""
    entry = artifacts.get(name, {})
    if entry.get("kind") == "tensorrt-engine" and entry.get("precision") in PRECISIONS:
        return engine_format(entry["precision"]).made_by
    if entry.get("kind") == "tensorrt-engine-metadata" and entry.get("engine") in artifacts and entry["engine"] != name:
        return remake_command(entry["engine"], artifacts)
    made_by = [f.made_by for f in FORMATS if f.artifact == name]
    return made_by[0] if made_by else "the command that made it"


class Stale(NamedTuple):
    link: str  # the first artefact on the way whose source is gone, replaced or unknown
    why: str
    proven: bool  # False when the entry merely records no source hash (an older bundle)


def lineage_problem(artifacts: dict[str, dict], name: str) -> Stale | None:
    """Why ``name`` cannot be trusted to come from the artefacts the manifest lists, or None:
    walks the ``source`` links up to an artefact with none (the checkpoint)."""
    seen = {name}
    link = name
    while "source" in artifacts[link]:
        entry, source = artifacts[link], artifacts[link]["source"]
        if source in seen:
            return Stale(link, f"its lineage loops back to {source}", True)
        if source not in artifacts:
            return Stale(link, f"{link} was made from {source}, which the bundle no longer lists", True)
        if "source_sha256" not in entry:
            return Stale(link, f"{link} records no hash of the {source} it was made from", False)
        if artifacts[source]["sha256"] != entry["source_sha256"]:
            return Stale(link, f"{link} was made from a {source} that has been replaced since", True)
        seen.add(source)
        link = source
    return None


def provably_stale(artifacts: dict[str, dict]) -> list[str]:
    """Artefacts whose lineage reaches a source that is gone or has another hash now (what a
    commit removes); entries that merely record no source hash are refused on load instead."""
    return [name for name in artifacts if (problem := lineage_problem(artifacts, name)) and problem.proven]


# --- the bundle as a reader sees it ---------------------------------------------------------


@dataclass
class Bundle:
    """A deploy bundle folder and the manifest read from it.

    ``manifest`` keys: ``format``, ``version``, ``model`` (FoR-Net config), ``labels`` (the
    label set: read it with :func:`fornet_deploy.data.labels.manifest_label_set`; bundles
    from before it have ``classes`` and ``palette``), ``preprocessing``, ``topk``, ``export``
    and ``artifacts`` (file name -> metadata with at least ``sha256``; derived artefacts also
    ``source`` and
    ``source_sha256``; other keys such as ``kind`` and ``precision`` are free).
    """

    root: Path
    manifest: dict = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @classmethod
    def create(cls, root: str | Path, **sections: Any) -> "Bundle":
        """A new (or updated) bundle holding ``sections``; one committed transaction."""
        with transaction(root, "create", create=True) as txn:
            txn.update(**sections)
        return cls.open(root, verify=False)

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "Bundle":
        root = Path(root)
        if not root.is_dir():
            raise FornetError(f"bundle folder {root} does not exist (create one with `fornet-deploy export`)")
        _settle(root)
        if not (root / MANIFEST).is_file():
            raise FornetError(f"bundle folder {root} has no {MANIFEST}: no export into it has finished "
                              "(run `fornet-deploy export`)")
        manifest = check_manifest(read_json(root / MANIFEST, "bundle manifest"), str(root / MANIFEST))
        bundle = cls(root=root, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    @property
    def artifacts(self) -> dict[str, dict]:
        return self.manifest["artifacts"]

    def has(self, name: str) -> bool:
        return name in self.artifacts

    def section(self, key: str) -> Any:
        """A manifest section a stage needs; a missing one is one line."""
        if key not in self.manifest:
            raise FornetError(f"bundle {self.root} has no '{key}' section in its manifest "
                              "(re-run `fornet-deploy export`)")
        return self.manifest[key]

    def sha256(self, name: str) -> str:
        return self.artifacts[name]["sha256"]

    def path(self, name: str, verify: bool = True) -> Path:
        """Path of a recorded artefact; checks it exists and (optionally) its hash and lineage."""
        if name not in self.artifacts:
            present = ", ".join(sorted(self.artifacts)) or "none"
            raise FornetError(f"bundle {self.root} has no {name} (artefacts: {present})")
        if verify:
            self._verify_one(name)
        else:
            self._own_file(name, missing_ok=True)
        return self.root / name

    def _own_file(self, name: str, missing_ok: bool = False) -> None:
        """An artefact is a regular file in the bundle folder: a symbolic link (to
        ``/etc/passwd``, with a hash to match) or a device is never read, hashed or copied."""
        try:
            mode = os.lstat(self.root / name).st_mode
        except FileNotFoundError:
            if missing_ok:
                return
            raise FornetError(f"bundle {self.root}: {name} is listed in the manifest but missing") from None
        if not stat.S_ISREG(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise FornetError(f"bundle {self.root}: {name} is {what}, not a file of the bundle; "
                              f"re-run `{remake_command(name, self.artifacts)}`")

    def check_lineage(self, name: str) -> None:
        """Refuse ``name`` unless every artefact it was made from is the one the manifest lists."""
        problem = lineage_problem(self.artifacts, name)
        if problem is not None:
            raise FornetError(f"bundle {self.root}: {name} is stale ({problem.why}); "
                              f"re-run `{remake_command(problem.link, self.artifacts)}`")

    def _verify_one(self, name: str) -> None:
        path = self.root / name
        self._own_file(name)
        if sha256_file(path) != self.sha256(name):
            raise FornetError(
                f"bundle {self.root}: {name} does not match the sha256 in the manifest "
                f"(changed or truncated since it was written); re-run `{remake_command(name, self.artifacts)}`"
            )
        self.check_lineage(name)

    def verify(self) -> None:
        for name in self.artifacts:
            self._verify_one(name)

    def record(self, name: str, **meta: Any) -> dict:
        """Record a file already written into the bundle folder by other means (hash it,
        commit the manifest); the stages themselves write through :func:`transaction`."""
        with transaction(self.root, "record") as txn:
            entry = txn.adopt(name, **meta)
        self.manifest = txn.manifest
        return entry

    def artifacts_of(self, kind: str) -> dict[str, dict]:
        return {n: m for n, m in self.artifacts.items() if m.get("kind") == kind}


# --- writers: lock, staging, commit ------------------------------------------------------------


class BundleBusy(FornetError):
    """Another command holds the bundle's writer lock."""


class _Lock:
    """``flock`` on the bundle's lock file; the OS releases it when the holder dies."""

    def __init__(self, root: Path, command: str):
        self.path = root / LOCK
        try:  # no symlink followed: the holder writes its name into the file
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise FornetError(f"cannot lock bundle {root} for writing ({self.path}: {exc.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise BundleBusy(f"bundle {root} is being written by another fornet-deploy command ({holder}); "
                             "wait for it to finish, then run this again") from None
        if not os.path.exists(self.path) or os.stat(self.path).st_ino != os.fstat(self.fd).st_ino:
            os.close(self.fd)  # a writer that failed in a fresh folder removed it meanwhile
            raise BundleBusy(f"bundle {root} was removed by another command while this one started; run it again")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}: {command}, since {now_iso()}".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "_Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(root: Path) -> _Lock | None:
    try:
        return _Lock(root, "recovery")
    except BundleBusy:
        return None


def _settle(root: Path) -> None:
    """Before reading: finish a commit a killed writer left, or wait for a running one."""
    deadline = time.monotonic() + COMMIT_WAIT_S
    while pending(root, LAYOUT):
        try:
            lock = _try_lock(root)
        except FornetError:
            raise FornetError(f"bundle {root} holds an unfinished commit; open it once with write access "
                              "(any fornet-deploy command) to complete it") from None
        if lock is not None:
            with lock:
                recover(root, LAYOUT)
            return
        if time.monotonic() > deadline:
            raise FornetError(f"bundle {root} is in the middle of a commit by another command; run this again")
        time.sleep(0.05)


@dataclass
class Transaction:
    """One stage's writes to a bundle; see :func:`transaction`."""

    bundle: Bundle  # as committed when the transaction began: what the stage reads
    staging: Staging
    manifest: dict  # what it will commit
    staged: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.bundle.root

    def path(self, name: str) -> Path:
        """Where to write artefact ``name`` (in the staging folder)."""
        return self.staging.path(check_artifact_name(name))

    def scratch(self) -> Path:
        """A private folder for a tool's temporary files; removed with the staging folder."""
        return Path(tempfile.mkdtemp(prefix=".scratch-", dir=self.staging.folder))

    def record(self, name: str, **meta: Any) -> dict:
        """Record a file written to :meth:`path`; committed with the others."""
        path = self.path(name)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "created": now_iso(), **meta}
        _check_entry(name, entry, f"bundle {self.root}")
        self.manifest["artifacts"][name] = entry
        self.staged.add(name)
        self.removed.discard(name)
        return entry

    def adopt(self, name: str, **meta: Any) -> dict:
        """Record a file that is already in the bundle folder."""
        path = self.root / check_artifact_name(name)
        if not path.is_file():
            raise FornetError(f"bundle {self.root} has no file {name} to record")
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "created": now_iso(), **meta}
        self.manifest["artifacts"][name] = entry
        return entry

    def remove(self, name: str) -> None:
        self.manifest["artifacts"].pop(name, None)
        self.staged.discard(name)
        self.removed.add(name)

    def update(self, **sections: Any) -> None:
        self.manifest.update(sections)

    @property
    def dropped(self) -> list[str]:
        """The artefacts the bundle held before this stage that it no longer lists (removed,
        or stale once :meth:`commit` ran), by name."""
        return sorted(name for name in self.removed if self.bundle.has(name))

    def commit(self) -> list[str]:
        """Drop what this commit makes stale, then journal, rename, manifest; returns the
        names of the artefacts it removed as stale."""
        stale = provably_stale(self.manifest["artifacts"])
        for name in stale:
            self.remove(name)
        check_manifest(self.manifest, f"bundle {self.root}")  # a bug guard: never commit what open refuses
        self.staging.commit(self.manifest, sorted(self.staged), sorted(self.removed))
        return stale


def _write_error(exc: OSError, root: Path, staging: Path) -> FornetError:
    target = Path(exc.filename) if exc.filename else None
    if target is not None and target.is_relative_to(staging):
        target = root / target.name  # name the artefact, not its staging copy
    return FornetError(f"cannot write {target or 'into bundle ' + str(root)}: {exc.strerror}; "
                       "the bundle is as it was before this command")


def _committed_manifest(root: Path, create: bool) -> dict:
    """The manifest the last commit wrote (``create``: a new one when there is none)."""
    if (root / MANIFEST).is_file():
        return check_manifest(read_json(root / MANIFEST, "bundle manifest"), str(root / MANIFEST))
    if create:
        return {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "created": now_iso(), "artifacts": {}}
    raise FornetError(f"bundle folder {root} has no {MANIFEST}: no export into it has finished "
                      "(run `fornet-deploy export`)")


@contextlib.contextmanager
def transaction(root: str | Path, command: str, create: bool = False) -> Iterator[Transaction]:
    """Write a stage into a bundle: ``with transaction(root, "calibrate") as txn:``.

    Takes the writer lock (one line if another command holds it), finishes or clears what
    a killed writer left, reads the committed manifest (``create``: a new bundle when there
    is none), and yields a :class:`Transaction`: write files to ``txn.path(name)``, record
    them with ``txn.record(name, **meta)``. On a normal exit everything is committed in one
    step; on an exception (or a kill, or Ctrl-C / SIGTERM: exit 130) nothing is, and a
    folder this call created is removed. A write that runs out of space or over the
    file-size limit is one line. The staging, commit and recovery are
    :mod:`fornet_deploy.staging`'s, with this module's :data:`LAYOUT`.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FornetError(f"bundle path {root} exists and is not a folder")
    if not root.exists() and not create:
        raise FornetError(f"bundle folder {root} does not exist (create one with `fornet-deploy export`)")
    with staged(root, LAYOUT, lambda: _Lock(root, command)) as staging:
        try:
            manifest = _committed_manifest(root, create)
            txn = Transaction(Bundle(root, manifest), staging, json.loads(json.dumps(manifest)))
            yield txn
            txn.commit()
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise _write_error(exc, root, staging.folder) from None
            raise
