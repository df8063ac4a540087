"""The folder ``fornet-deploy package`` writes: only its own files, all of them or none.

A package is written through the staged writer that the bundle and ``predict`` use
(:mod:`fornet_deploy.staging`): into a hidden staging folder inside ``--out``, then moved
into place by one commit, ``fornet-package.json`` last. That marker records what was
packaged from which bundle and the sha256 of every file; it is how a re-run knows which
files are its own:

* a re-run replaces the files the earlier marker lists and deletes those it does not
  write again -- only when they still hold the content the marker records, only regular
  files, never through a symbolic link;
* every other file in the folder is kept: a model the user added to a Triton model
  repository (``repo/yolo/``) survives re-packaging;
* a file the new package would land on that no earlier marker lists is the user's: the
  run is refused before anything is written (one line, the folder as it was).

Ctrl-C or SIGTERM while a package is written is exit 130 with no staging folder left; a
``kill -9`` leaves one that the next ``package`` into the folder removes (or completes,
after the decision), as for the bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .._version import __version__
from ..errors import WRITE_ERRNOS, FornetError
from ..io import folder_lock, now_iso, read_json, sha256_file
from ..staging import Layout, confined, staged

MARKER = "fornet-package.json"
PACKAGE_FORMAT = "fornet-deploy-package"
# The staged writer as package uses it: hidden staging folders in the package folder, the
# decision renames one to ".package-commit-*"; the old marker is withdrawn first, so a folder
# holding fornet-package.json never holds a half-moved package; fsynced (files to serve).
LAYOUT = Layout(what="package folder", prefix=".package-", claim=MARKER, committed_prefix=".package-commit-",
                withdraw_claim=True, durable=True)


def earlier_files(out: Path) -> dict[str, str]:
    """The files an earlier package in ``out`` records (name -> sha256); none without a
    marker. A ``fornet-package.json`` that is not a regular file holding a marker of this
    format is the user's: one line, nothing written over it."""
    marker = out / MARKER
    if not (marker.exists() or marker.is_symlink()):
        return {}
    try:
        meta = read_json(marker, "package marker") if _regular(marker) else None
    except FornetError:
        meta = None
    files = meta.get("files") if isinstance(meta, dict) and meta.get("format") == PACKAGE_FORMAT else None
    if not isinstance(files, dict):
        raise FornetError(f"{marker} is not the marker of a package fornet-deploy wrote; move it away or choose "
                          "another --out (nothing was written)")
    return {name: sha for name, sha in files.items() if isinstance(sha, str) and confined(name)}


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _staged_files(folder: Path) -> dict[str, str]:
    """Every regular file written into the staging folder: name -> sha256."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if _regular(path):
                files[path.relative_to(folder).as_posix()] = sha256_file(path)
    return dict(sorted(files.items()))


def write_package(out: str | Path, target: str, write: Callable[[Path], dict]) -> dict:
    """Run ``write(folder)`` into a staging folder inside ``out``, record every file it wrote
    in the marker and commit them (see the module docstring); returns ``write``'s summary
    plus ``files`` and ``bytes`` (the package's files, marker included: what is copied to the
    server; files of the user's kept in the folder are not counted)."""
    out = Path(out)
    with staged(out, LAYOUT, lambda: folder_lock(out, "package folder")) as staging:
        earlier = earlier_files(out)
        try:
            summary = write(staging.folder)
        except OSError as exc:  # a full disk or the file-size limit, hit by a writer that names no file
            if exc.errno not in WRITE_ERRNOS:
                raise
            raise FornetError(f"cannot write the package into {out}: {exc.strerror}; {out} is as it was") from None
        files = _staged_files(staging.folder)
        for name in files:
            destination = out / name
            if (destination.exists() or destination.is_symlink()) and name not in earlier:
                raise FornetError(f"{destination} exists and was not written by fornet-deploy package; move it "
                                  f"away or choose another --out (nothing was written)")
        # what an earlier package wrote and this one does not, while it is still that file
        deletes = [name for name, sha in earlier.items()
                   if name not in files and _regular(out / name) and sha256_file(out / name) == sha]
        staging.commit({"format": PACKAGE_FORMAT, "target": target, "created": now_iso(),
                        "fornet_deploy": __version__, **summary, "files": files}, list(files), deletes)
    names = list(files) + [MARKER]
    return {**summary, "out": str(out), "files": names, "bytes": sum((out / name).stat().st_size for name in names)}
