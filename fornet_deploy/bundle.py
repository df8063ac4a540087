"""The deploy bundle: one folder per model, described by ``manifest.json``.

Every stage (export, calibrate, build-trt, parity, eval, bench) writes its artefacts into
the bundle and records them in the manifest with their sha256, so a later stage can tell
a file that was changed or truncated behind its back. All writes are atomic
(:mod:`fornet_deploy.io`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .contract import MANIFEST
from .errors import FornetError
from .io import atomic_path, atomic_write_json, now_iso, read_json, sha256_file

BUNDLE_FORMAT = "fornet-deploy-bundle"
BUNDLE_VERSION = 1


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
