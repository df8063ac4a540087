"""The staged all-or-nothing writer every command that replaces several files uses.

A writer (:func:`staged`) locks the folder it writes, completes or clears what a killed
writer left there (:func:`recover`), and writes every file into a private staging folder
inside it (same file system, so the final moves are renames). :meth:`Staging.commit`
then puts the whole write into place in one step:

1. the claim (the file that says what the folder holds: a bundle's ``manifest.json``,
   predict's ``predictions.json``, a package's ``fornet-package.json``) is written into the
   staging folder;
2. a journal (``COMMIT.json``: the files to move in, the files to delete) is written
   beside it; the **decision** is the journal landing, or -- for a writer with a
   ``committed_prefix`` -- renaming the staging folder to that prefix after it;
3. after the decision, :func:`apply <recover>` removes the old claim (``withdraw_claim``),
   moves the files into place, deletes the listed ones and moves the claim in last. Every
   step can be repeated, so a commit cut short by ``kill -9`` is completed by the next
   writer (or reader) that calls :func:`recover`; killed before the decision, the folder is
   as it was and the staging folder is removed.

What the writer touches in its folder (issue 26): names are relative, ``/``-separated and
stay inside the folder (:func:`confined`); every folder on the way to a file it moves or
deletes must be a real folder, never a symlink -- a move through one is refused before the
decision (one line, the folder as it was), a delete through one is skipped -- and a delete
removes only a regular file, so no command deletes or writes outside its folder through a
link. Recovery follows no link either: a staging-named entry that is not a real folder is
left alone, and a journal's move of anything but a regular file is skipped.

Signals: a writer routes Ctrl-C and SIGTERM (:mod:`fornet_deploy.interrupts`) for its
duration unless its caller does. A signal while files are staged abandons the write
(``KeyboardInterrupt``, exit 130: the staging folder is removed); one during the commit is
honoured after it, so the folder is whole either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ContextManager, Iterable, Iterator

from .errors import FornetError
from .interrupts import StopSignals, stop_signals
from .io import atomic_write_json, read_json

JOURNAL = "COMMIT.json"


@dataclass(frozen=True)
class Layout:
    """How one kind of writer names its files and what its commit promises; the bundle and
    predict differ only in these."""

    what: str  # the folder in messages: "bundle folder", "output folder"
    prefix: str  # of its staging folders: ".staging-", ".predict-"
    claim: str  # the file moved into place last, saying what the folder holds
    # None: the journal landing in the staging folder is the decision. A prefix: renaming the
    # staging folder to it (after the journal) is; predict's folder is ``.predict-commit-*``.
    committed_prefix: str | None = None
    # Remove the old claim before any file moves, so the folder never claims a half-moved
    # write (predict: users read the report). False: the old claim stays until the new one
    # replaces it (a bundle's readers complete a pending commit before they read).
    withdraw_claim: bool = False
    durable: bool = False  # fsync the staged files, the journal and the folder (a bundle; not predict's frames)
    lock_file: str | None = None  # a file the writer's lock keeps in the folder (removed with a folder it made)


def confined(name: str) -> bool:
    """Whether ``name`` stays inside the folder: relative, ``/``-separated, no ``..``."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


# --- resolving names without following symlinks -------------------------------------------------


class _InTheWay(Exception):
    """A symlink or a file where a folder is needed, or a folder where a file goes."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} {why}")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is_file(path: Path) -> bool:
    """A regular file, not a symlink to one."""
    found = _lstat(path)
    return found is not None and stat.S_ISREG(found.st_mode)


def _real_dir(path: Path) -> bool:
    found = _lstat(path)
    return found is not None and stat.S_ISDIR(found.st_mode)


def _parents(root: Path, name: str, create: bool) -> Path | None:
    """The folder ``name`` lies in, every component from ``root`` down checked with
    ``lstat``: a real folder, or (``create``) made; None when one is missing. Raises
    :class:`_InTheWay` for a symlink or a file on the way."""
    folder = root
    for part in PurePosixPath(name).parts[:-1]:
        folder = folder / part
        if _lstat(folder) is None:
            if not create:
                return None
            os.mkdir(folder)
        elif not _real_dir(folder):
            raise _InTheWay(folder, "is a symbolic link or a file, not a folder")
    return folder


def _destination(root: Path, name: str, create: bool) -> Path:
    """Where the staged ``name`` goes (:class:`_InTheWay` when a link or a file is on the
    way, or a folder is where the file goes)."""
    folder = _parents(root, name, create)
    if folder is None:  # made by the move
        return root / name
    target = folder / PurePosixPath(name).name
    if _real_dir(target):
        raise _InTheWay(target, "is a folder")
    return target


def _regular_file(root: Path, name: str) -> Path | None:
    """``root/name`` if it is a regular file reached through real folders only, else None."""
    try:
        folder = _parents(root, name, create=False)
    except _InTheWay:
        return None
    path = None if folder is None else folder / PurePosixPath(name).name
    return path if path is not None and _is_file(path) else None


def _delete(root: Path, name: str) -> None:
    """Delete the regular file ``name`` and the folders it leaves empty; nothing when a
    link, a missing folder or anything but a regular file is on the way."""
    path = _regular_file(root, name)
    if path is None:
        return
    path.unlink()
    folder = path.parent
    while folder != root:  # folders only deleted files were in
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs folders
        _fsync(path)


# --- commit and recovery -------------------------------------------------------------------------


def _committed(folder: Path, layout: Layout) -> bool:
    """Whether a staging folder holds a decided commit (the rule :func:`recover` applies)."""
    if layout.committed_prefix is not None and not folder.name.startswith(layout.committed_prefix):
        return False
    return _is_file(folder / JOURNAL)


def _read_journal(folder: Path) -> tuple[list[str], list[str]]:
    journal = read_json(folder / JOURNAL, "commit journal")
    names = [journal.get(key) if isinstance(journal, dict) else None for key in ("moves", "deletes")]
    if not all(isinstance(n, list) and all(isinstance(x, str) and confined(x) for x in n) for n in names):
        raise FornetError(f"{folder / JOURNAL} is not a commit journal of fornet-deploy")
    return names[0], names[1]


def _apply(root: Path, folder: Path, layout: Layout) -> None:
    """Carry out a decided commit; idempotent, so one cut short by a kill is finished by
    running it again. The staged claim is moved last: once it is gone, all else is done."""
    moves, deletes = _read_journal(folder)
    if _is_file(folder / layout.claim):
        if layout.withdraw_claim:
            _delete(root, layout.claim)
        for name in moves:
            source = _regular_file(folder, name)
            if source is None:  # only files this writer staged; gone once moved
                continue
            try:
                target = _destination(root, name, create=True)
            except _InTheWay as exc:  # put there after the decision: the user's to clear
                raise FornetError(f"cannot complete a commit into {root}: {exc}, and nothing is written through "
                                  "or over one; move it away, then run this again") from None
            os.replace(source, target)
        for name in deletes:
            _delete(root, name)
        os.replace(folder / layout.claim, root / layout.claim)
        if layout.durable:
            _fsync_dir(root)
    shutil.rmtree(folder)


def _staging_folders(root: Path, layout: Layout) -> list[Path]:
    """This writer's staging folders in ``root``; an entry by that name that is a symlink
    or a file is not one (and is never followed)."""
    return [entry for entry in sorted(root.iterdir()) if entry.name.startswith(layout.prefix) and _real_dir(entry)]


def pending(root: Path, layout: Layout) -> list[Path]:
    """Decided commits a killed writer left in ``root`` (what a reader completes first)."""
    return [folder for folder in _staging_folders(root, layout) if _committed(folder, layout)]


def recover(root: Path, layout: Layout) -> None:
    """Under the writer's lock: finish the commits killed writers left, remove their
    abandoned staging folders."""
    for folder in _staging_folders(root, layout):
        if _committed(folder, layout):
            _apply(root, folder, layout)
        else:
            shutil.rmtree(folder, ignore_errors=True)


class Staging:
    """One write into ``root`` in progress, as :func:`staged` yields it: files go to
    :meth:`path`, and :meth:`commit` puts them into place."""

    def __init__(self, root: Path, folder: Path, layout: Layout, stop: StopSignals, owns_stop: bool):
        self.root, self.folder, self.layout = root, folder, layout
        self._stop, self._owns_stop = stop, owns_stop

    def path(self, name: str) -> Path:
        """Where to write the file ``name`` (in the staging folder; its folders are made)."""
        if not confined(name):  # names can come from inputs: never let one climb out of the folder
            raise FornetError(f"output name {name!r} would leave the {self.layout.what} {self.root}")
        if name in (self.layout.claim, JOURNAL, self.layout.lock_file) or name.startswith(self.layout.prefix):
            raise FornetError(f"output name {name!r} is reserved by the writer of {self.layout.what} {self.root}")
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, claim: Any, moves: Iterable[str], deletes: Iterable[str] = ()) -> None:
        """Write ``claim`` (JSON) and put the staged files ``moves`` into place, deleting the
        files ``deletes`` (an earlier write's that this one does not rewrite), in one step."""
        layout = self.layout
        moves = list(dict.fromkeys(moves))
        moved = set(moves)
        deletes = [name for name in dict.fromkeys(deletes) if name not in moved and confined(name)]
        with self._stop.deferred():  # a signal now is honoured once the folder is whole
            for name in [*moves, layout.claim]:  # refused before the decision, never halfway
                try:
                    _destination(self.root, name, create=False)
                except _InTheWay as exc:
                    raise FornetError(f"cannot write {self.root / name}: {exc}, and nothing is written through or "
                                      f"over one; the {layout.what} {self.root} is as it was") from None
            atomic_write_json(self.folder / layout.claim, claim)
            if layout.durable:
                for name in moves:
                    _fsync(self.folder / name)
            atomic_write_json(self.folder / JOURNAL, {"moves": moves, "deletes": deletes})
            if layout.durable:
                _fsync(self.folder / JOURNAL)
            if layout.committed_prefix is not None:
                decided = self.folder.with_name(layout.committed_prefix + self.folder.name[len(layout.prefix):])
                os.replace(self.folder, decided)
                self.folder = decided
            _apply(self.root, self.folder, layout)  # past the decision: the new state wins
        if self._owns_stop and self._stop.requested:
            raise KeyboardInterrupt  # the command stops as asked, with its write complete

    def discard(self) -> None:
        """Remove the staging folder unless it holds a decided commit (the next writer completes that)."""
        if _real_dir(self.folder) and not _committed(self.folder, self.layout):
            shutil.rmtree(self.folder, ignore_errors=True)


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _remove_made(made: list[Path], layout: Layout) -> None:
    """The folders a failed writer made, when they claim nothing and hold nothing else."""
    if not made or (made[-1] / layout.claim).exists():
        return
    if layout.lock_file is not None:
        with contextlib.suppress(OSError):
            (made[-1] / layout.lock_file).unlink()
    for folder in reversed(made):
        with contextlib.suppress(OSError):  # not empty: something else landed in it
            folder.rmdir()


@contextlib.contextmanager
def staged(root: str | Path, layout: Layout, lock: Callable[[], ContextManager[Any]],
           stop: StopSignals | None = None) -> Iterator[Staging]:
    """``with staged(root, layout, lock) as staging:`` write files to ``staging.path(name)``,
    then ``staging.commit(claim, names)``.

    Makes ``root`` (and its missing parents), holds ``lock()`` for the whole write (one line
    if another command holds it), completes or clears what a killed writer left, and makes
    the staging folder. On an exception, or a signal before the commit, the staging folder
    and the folders this call made are removed: the folder is as it was. ``stop``: the
    caller's :class:`~fornet_deploy.interrupts.StopSignals` when it routes signals itself.
    """
    root = Path(root)
    made = _missing_dirs(root)
    with contextlib.ExitStack() as scope:
        owns_stop = stop is None
        if stop is None:
            stop = scope.enter_context(stop_signals())
        staging: Staging | None = None
        try:
            try:
                root.mkdir(parents=True, exist_ok=True)
                scope.enter_context(lock())
            except OSError as exc:
                raise FornetError(f"cannot create {layout.what} {root}: {exc.strerror or exc}") from None
            try:
                recover(root, layout)
                folder = Path(tempfile.mkdtemp(prefix=layout.prefix, dir=root))
            except OSError as exc:
                raise FornetError(f"cannot prepare {layout.what} {root} (completing an earlier, interrupted run's "
                                  f"commit): {exc.strerror or exc}") from None
            staging = Staging(root, folder, layout, stop, owns_stop)
            yield staging
        except BaseException:
            with stop.deferred():  # a signal now waits for the clean-up (a second one, insisting, does not)
                if staging is not None:
                    staging.discard()
                _remove_made(made, layout)
            raise
        finally:
            if staging is not None:
                staging.discard()  # a write left without a commit
