"""The Python names each supported TensorRT release binds, read from NVIDIA's bindings wheels.

TensorRT cannot be installed here (its ``-libs`` wheels download from NVIDIA's own index), but
``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings`` come from PyPI (about 1.3 MB each).
Their module does not import without libnvinfer; its compiled ``tensorrt.so`` holds every name
pybind11 binds (classes, methods, properties, enum members, keyword arguments) as a C string,
and ``__init__.py`` adds a few Python functions (``nptype``) and ``__version__``.

A name counts as bound when it ends a string of the ``.so`` (the linker merges a string into
the tail of a longer one: ``Runtime`` is stored inside ``IRuntime``) or is defined at the top of
``__init__.py``. What strings cannot tell is *which* class or enum holds a name: ``INT8`` is a
``DataType`` member on 11.x, whose ``BuilderFlag`` has no ``INT8``. Per-class questions are the
stand-in modules' job (tests/build/test_trt.py): their surface is checked here too.

``python tests/trt_bindings.py DIR`` downloads the wheels into DIR (CI does this before the
tests); the tests download into :data:`CACHE` when it lacks them and skip, saying why, offline.
"""

from __future__ import annotations

import ast
import enum
import inspect
import re
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

# (package, version): JetPack 6's 10.3, the newest 10.x, the oldest CUDA 13 build the
# [tensorrt-cu13] extra allows, the first 11.x and the newest 11.x (pyproject.toml's extras).
WHEELS = (
    ("tensorrt-cu12-bindings", "10.3.0"),
    ("tensorrt-cu12-bindings", "10.16.1.11"),
    ("tensorrt-cu13-bindings", "10.13.2.6"),
    ("tensorrt-cu12-bindings", "11.0.0.114"),
    ("tensorrt-cu12-bindings", "11.4.0.106"),
)
CACHE = Path(__file__).resolve().parents[1] / ".whl" / "tensorrt-bindings"  # .gitignore: /.whl/
# One interpreter and platform for every machine: the bound names do not depend on them.
PIP_TARGET = ("--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "--platform",
              "manylinux_2_28_x86_64", "--only-binary=:all:", "--no-deps")


def wheel_path(folder: Path, package: str, version: str) -> Path | None:
    found = sorted(folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def download(folder: Path = CACHE) -> list[Path]:
    """Every wheel of :data:`WHEELS` in ``folder`` (downloaded when missing); raises
    ``RuntimeError`` naming the first that pip could not fetch."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for package, version in WHEELS:
        if wheel_path(folder, package, version) is None:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", *PIP_TARGET,
                                     f"{package}=={version}", "--dest", str(folder)],
                                    capture_output=True, text=True, timeout=300)
            if wheel_path(folder, package, version) is None:
                lines = (result.stderr or result.stdout).strip().splitlines()
                raise RuntimeError(f"pip could not download {package}=={version}: {lines[-1] if lines else '?'}")
        wheels.append(wheel_path(folder, package, version))
    return wheels


@dataclass(frozen=True)
class BoundNames:
    """The names one bindings wheel binds; ``name in bound`` asks for one."""

    package: str
    version: str
    strings: str  # the strings of tensorrt.so, each ended by a NUL
    python: frozenset[str]  # names defined at the top of tensorrt_bindings/__init__.py

    @classmethod
    def from_wheel(cls, wheel: Path) -> BoundNames:
        package, version = wheel.name.split("-")[:2]
        with zipfile.ZipFile(wheel) as archive:
            library = archive.read("tensorrt_bindings/tensorrt.so")
            init = archive.read("tensorrt_bindings/__init__.py").decode()
        runs = re.findall(rb"[\x21-\x7e]+\x00", library)
        return cls(package.replace("_", "-"), version, b"".join(runs).decode(),
                   frozenset(top_level_names(init)))

    def __contains__(self, name: str) -> bool:
        return name in self.python or f"{name}\x00" in self.strings  # a whole string or the tail of one

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


def top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


# --- what a stand-in tensorrt module offers --------------------------------------------------


def fake_surface(module, hooks: set[str] = frozenset()) -> dict[str, str]:
    """Every public name a stand-in ``tensorrt`` module offers, by where it is (``ILayer.name``):
    the module's attributes; for each class among them its attributes, methods, properties,
    nested classes, enum members and the public attributes its methods set on ``self``.
    ``hooks``: names that are the tests' own (recorded calls), not TensorRT's."""
    names: dict[str, str] = {}
    seen: set[type] = set()

    def visit(cls: type, where: str) -> None:
        if cls in seen:
            return
        seen.add(cls)
        if issubclass(cls, enum.Enum):
            names.update({f"{where}.{member}": member for member in cls.__members__})
            return
        for klass in cls.__mro__:
            if klass.__module__ in ("builtins", "enum"):
                continue
            for name, value in vars(klass).items():
                if not name.startswith("_") and name not in hooks:
                    names[f"{where}.{name}"] = name
                    if isinstance(value, type):
                        visit(value, f"{where}.{name}")
            names.update({f"{where}.{name}": name for name in self_attributes(klass) - hooks})

    for name, value in vars(module).items():
        if name in hooks or name.startswith("_") and name != "__version__":
            continue
        names[name] = name
        if isinstance(value, type):
            visit(value, name)
    return names


def self_attributes(cls: type) -> set[str]:
    """Public attributes the methods of ``cls`` assign on ``self``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self" and not node.attr.startswith("_"):
            found.add(node.attr)
    return found


if __name__ == "__main__":  # CI: python tests/trt_bindings.py .whl/tensorrt-bindings
    for path in download(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE):
        print(path)
