"""Where a command may write: the rules every command applies to the paths it is told to write.

One place for them, so ``--json`` and ``--out`` mean the same thing on every command
(issue 26; docs/reliability.md, "Outputs"):

* an output **file** (``--json``) is never an input of the same run, never inside a folder
  the run reads or writes (a dataset, a bundle, a run folder), never inside any bundle
  (a bundle holds what its manifest lists), and never a symbolic link, a folder, a device
  such as ``/dev/null`` or a FIFO (a write renames a new file over it);
* an output **folder** (``--out``) is a folder or missing, with no file on the way to it;
  it never is, holds, or (unless the command allows it) lies inside a folder the run reads,
  so outputs never land among inputs and a command that clears its own earlier output
  cannot reach them.

Every refusal is one line (exit 3) before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .contract import BUNDLE_FORMAT, MANIFEST
from .errors import FornetError
from .io import check_replaceable, read_bytes

MAX_MANIFEST_BYTES = 16 << 20  # read this much of a manifest.json to tell a bundle from another manifest


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a fornet-deploy bundle's ``manifest.json`` (however stale)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        content = json.loads(read_bytes(manifest, "bundle manifest", MAX_MANIFEST_BYTES))
    except (FornetError, ValueError):
        return False
    return isinstance(content, dict) and content.get("format") == BUNDLE_FORMAT


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _paths(paths: Iterable[str | Path | None]) -> list[tuple[Path, Path]]:
    """(as given, resolved) for each path given."""
    return [(Path(p), _real(Path(p))) for p in paths if p is not None]


def _no_file_on_the_way(path: Path, option: str) -> None:
    """Every existing folder on the way to ``path`` must be a folder (or a link to one)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise FornetError(f"{option} {path}: {parent} is a file, not a folder")


def _enclosing_bundle(real: Path) -> Path | None:
    return next((folder for folder in real.parents if is_bundle(folder)), None)


def output_file(path: str | Path | None, option: str = "--json", *, reads: Iterable[str | Path | None] = (),
                writes: Iterable[str | Path | None] = ()) -> Path | None:
    """``path`` if a command that reads ``reads`` and writes ``writes`` (files or folders)
    may write a result file there; else one line. None stays None (no file asked for)."""
    if path is None:
        return None
    path = Path(path)
    check_replaceable(path, option)
    _no_file_on_the_way(path, option)
    real = _real(path)
    for given, other in _paths([*reads, *writes]):
        if real == other:
            same = "" if given == path else f" ({given})"
            raise FornetError(f"{option} {path} is a file this command reads or writes{same}: name another file")
        if real.is_relative_to(other):
            raise FornetError(f"{option} {path} is inside {given}, which this command reads or writes: "
                              "write the result outside it")
    bundle = _enclosing_bundle(real)
    if bundle is not None:
        raise FornetError(f"{option} {path} is inside the bundle folder {bundle}, which holds only what its "
                          "manifest lists: write the result outside it")
    return path


def output_folder(path: str | Path, option: str = "--out", *, reads: Iterable[str | Path | None] = (),
                  inside_reads: bool = False) -> Path:
    """``path`` if a command that reads ``reads`` (files or folders) may write its output
    folder there: a folder or missing, no file on the way, not a bundle, and neither one
    of ``reads`` nor holding one nor (unless ``inside_reads``) inside one or inside a
    bundle; else one line."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise FornetError(f"{option} {path} exists and is not a folder")
    _no_file_on_the_way(path, option)
    real = _real(path)
    for given, other in _paths(reads):
        if real == other:
            same = "" if given == path else f" ({given})"
            raise FornetError(f"{option} {path} is an input of this command{same}: choose another output folder")
        if other.is_relative_to(real):
            raise FornetError(f"{option} {path} holds {given}, which this command reads: outputs would land "
                              "among the inputs; choose an output folder outside it")
        if not inside_reads and real.is_relative_to(other):
            raise FornetError(f"{option} {path} is inside {given}, which this command reads: choose an output "
                              "folder outside it")
    if is_bundle(real):
        raise FornetError(f"{option} {path} is a bundle folder: choose another output folder")
    bundle = _enclosing_bundle(real)
    if bundle is not None and not inside_reads:
        raise FornetError(f"{option} {path} is inside the bundle folder {bundle}: choose an output folder outside it")
    return path
