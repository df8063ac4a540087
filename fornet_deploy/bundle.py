"""The deploy bundle: one folder per model, described by ``manifest.json``.

Every stage (export, calibrate, build-trt, parity, eval, bench) writes its artefacts into
the bundle and records them in the manifest with their sha256, so a later stage can tell
a file that was changed or truncated behind its back. All writes are atomic: a file is
written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import FornetError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "fornet-deploy-bundle"
BUNDLE_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the artefact the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FornetError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FornetError(f"{what} {path} is not valid JSON ({exc})") from None


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Bundle:
    """A deploy bundle folder and its manifest.

    ``manifest`` keys: ``format``, ``version``, ``model`` (FoR-Net config), ``classes``,
    ``palette``, ``preprocessing``, ``topk`` and ``artifacts`` (file name -> metadata with
    at least ``sha256``; other keys such as ``kind``, ``precision``, ``source`` are free).
    """

    root: Path
    manifest: dict = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @classmethod
    def create(cls, root: str | Path, **sections: Any) -> "Bundle":
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise FornetError(f"bundle path {root} exists and is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "created": now_iso()}
        manifest.update(sections)
        manifest.setdefault("artifacts", {})
        bundle = cls(root=root, manifest=manifest)
        bundle.save()
        return bundle

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "Bundle":
        root = Path(root)
        if not root.is_dir():
            raise FornetError(f"bundle folder {root} does not exist (create one with `fornet-deploy export`)")
        manifest = read_json(root / MANIFEST, "bundle manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise FornetError(f"{root / MANIFEST} is not a fornet-deploy bundle manifest")
        if manifest.get("version") != BUNDLE_VERSION:
            raise FornetError(
                f"bundle {root} has manifest version {manifest.get('version')}, "
                f"this fornet-deploy reads version {BUNDLE_VERSION}"
            )
        manifest.setdefault("artifacts", {})
        bundle = cls(root=root, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    @property
    def artifacts(self) -> dict[str, dict]:
        return self.manifest["artifacts"]

    def has(self, name: str) -> bool:
        return name in self.artifacts

    def path(self, name: str, verify: bool = True) -> Path:
        """Path of a recorded artefact; checks it exists and (optionally) its hash."""
        if name not in self.artifacts:
            present = ", ".join(sorted(self.artifacts)) or "none"
            raise FornetError(f"bundle {self.root} has no {name} (artefacts: {present})")
        path = self.root / name
        if verify:
            self._verify_one(name)
        return path

    def _verify_one(self, name: str) -> None:
        path = self.root / name
        if not path.is_file():
            raise FornetError(f"bundle {self.root}: {name} is listed in the manifest but missing")
        expected = self.artifacts[name].get("sha256")
        if expected and sha256_file(path) != expected:
            raise FornetError(
                f"bundle {self.root}: {name} does not match the sha256 in the manifest "
                "(changed or truncated since it was written); re-run the stage that made it"
            )

    def verify(self) -> None:
        for name in self.artifacts:
            self._verify_one(name)

    def record(self, name: str, **meta: Any) -> dict:
        """Record a file already written into the bundle folder (hash it, save manifest)."""
        path = self.root / name
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "created": now_iso()}
        entry.update(meta)
        self.artifacts[name] = entry
        self.save()
        return entry

    @contextlib.contextmanager
    def writing(self, name: str, **meta: Any) -> Iterator[Path]:
        """Write an artefact atomically and record it: ``with bundle.writing("x.onnx") as tmp:``."""
        with atomic_path(self.root / name) as tmp:
            yield tmp
        self.record(name, **meta)

    def artifacts_of(self, kind: str) -> dict[str, dict]:
        return {n: m for n, m in self.artifacts.items() if m.get("kind") == kind}
