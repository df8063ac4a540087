"""The folder ``fornet-deploy package`` writes: all of it or nothing, and only over its own.

Every package folder holds ``fornet-package.json`` (what was packaged from which bundle,
and the sha256 of every file), which is also how a re-run recognises a folder it may
replace. Anything else that already exists at ``--out`` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .._version import __version__
from ..errors import FornetError
from ..io import atomic_folder, atomic_write_json, now_iso, read_json, sha256_file

MARKER = "fornet-package.json"
PACKAGE_FORMAT = "fornet-deploy-package"


def is_package(path: Path) -> bool:
    """Whether ``path`` is a folder an earlier ``fornet-deploy package`` wrote."""
    try:
        meta = read_json(Path(path) / MARKER)
    except FornetError:
        return False
    return isinstance(meta, dict) and meta.get("format") == PACKAGE_FORMAT


def write_package(out: str | Path, target: str, write: Callable[[Path], dict]) -> dict:
    """Run ``write(folder)`` in a temporary folder beside ``out``, record every file it wrote
    in the marker, and move the folder into place; returns ``write``'s summary plus ``files``
    and ``bytes`` (the whole folder, marker included: what is copied to the server)."""
    out = Path(out)
    with atomic_folder(out, is_package) as tmp:
        summary = write(tmp)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / MARKER, {"format": PACKAGE_FORMAT, "target": target, "created": now_iso(),
                                         "fornet_deploy": __version__, **summary, "files": files})
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {**summary, "out": str(out), "files": sorted(files) + [MARKER], "bytes": size}
