"""Every TensorRT Python name the package calls exists in the real bindings of each supported
release (tests/trt_bindings.py: the names read from NVIDIA's bindings wheels, 10.3 ... 11.4).

Two halves, because reading source cannot tell the type of ``builder`` or ``config``:

- the package's own source (AST): every ``trt.X.Y`` name, every attribute it sets on a
  TensorRT object, every method its subclasses of TensorRT classes implement for TensorRT to
  call, and every enum member it looks up by name (``getattr(trt.BuilderFlag, flag)``, names
  taken from the build plans each version gets);
- the stand-in modules the adapter tests run against (tests/build/test_trt.py,
  tests/runtimes/test_trt_runner.py, tests/calibration/test_trt_calibrator.py): every public
  name each offers for a version must be bound by that version. Those tests pass, so every
  method the adapter calls on a TensorRT object is one the stand-in offers.

Names the code uses only on TensorRT 10.x (:data:`LEGACY_ONLY`, behind ``--legacy-calibrator``,
which :func:`plan_build` refuses on 11.x) are checked against the 10.x wheels only.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import trt_bindings
from trt_bindings import BoundNames, fake_surface

import fornet_deploy
from fornet_deploy.build.trt import BuildConfig, plan_build
from fornet_deploy.contract import PRECISIONS
from fornet_deploy.errors import FornetError

PACKAGE = Path(fornet_deploy.__file__).parent
TESTS = Path(__file__).resolve().parents[1]
ROOTS = ("trt", "tensorrt")  # what the package calls the tensorrt module
EXPORT_SHAPE = (1, 3, 64, 128)

# Used only by --legacy-calibrator builds (TensorRT 10.x): the entropy calibrator and its
# callbacks, the calibrator setting, and the per-layer FP32 pins of weakly typed networks.
LEGACY_ONLY = {
    "IInt8EntropyCalibrator2": "calibration/trt_calibrator.py: the --legacy-calibrator --int8 calibrator",
    "get_batch_size": "its callbacks", "get_batch": "its callbacks", "read_calibration_cache": "its callbacks",
    "write_calibration_cache": "its callbacks",
    "int8_calibrator": "build/trt.py create_config: set only with a calibrator",
    "precision": "build/trt.py _pin_fp32: only plans with fp32_scopes (legacy) pin layers",
}
# Enums whose members the code looks up by a name from the build plan: the plan field.
PLANNED_MEMBERS = {"BuilderFlag": "builder_flags", "NetworkDefinitionCreationFlag": "network_flags",
                   "ProfilingVerbosity": "profiling_verbosity"}


# --- the real bindings ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def releases() -> list[BoundNames]:
    """The bound names of every wheel of trt_bindings.WHEELS (downloaded into .whl/ when missing)."""
    try:
        wheels = trt_bindings.download()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI"):
            raise  # CI downloads them first (.ci/run): a missing wheel there is a failure
        pytest.skip(f"TensorRT bindings wheels not available (offline?): {exc}")
    return [BoundNames.from_wheel(wheel) for wheel in wheels]


def test_the_wheels_cover_both_majors_and_differ_where_tensorrt_11_removed_names(releases):
    assert {r.major for r in releases} == {10, 11}
    for release in releases:  # a check of the reading: names every version binds, and a made-up one
        for name in ("Builder", "OnnxParser", "STRONGLY_TYPED", "execute_async_v3", "nptype", "__version__"):
            assert name in release, (str(release), name)
        assert "build_serialized_network_v2_that_never_was" not in release
        # removed in 11 (NVIDIA/TensorRT main: pyInt8.cpp gone, BuilderFlag.OBEY_PRECISION_CONSTRAINTS gone)
        assert ("IInt8EntropyCalibrator2" in release) is (release.major == 10)
        assert ("OBEY_PRECISION_CONSTRAINTS" in release) is (release.major == 10)


# --- what the package's source uses -----------------------------------------------------------


@dataclass(frozen=True)
class Use:
    name: str
    where: str  # path:line and how it is used

    def __str__(self) -> str:
        return f"{self.name} ({self.where})"


def uses_tensorrt(source: str) -> bool:
    """A module that imports tensorrt (``import tensorrt``, ``require("tensorrt", ...)``) or is
    handed it (a ``trt`` parameter)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(alias.name == "tensorrt" for alias in node.names):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require" and \
                node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "tensorrt":
            return True
        if isinstance(node, ast.arg) and node.arg == "trt":
            return True
    return False


def package_sources() -> dict[str, str]:
    """The source of every module of the package that uses TensorRT, by path."""
    sources = {path.relative_to(PACKAGE).as_posix(): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}
    return {path: source for path, source in sources.items() if uses_tensorrt(source)}


def method_calls(sources: dict[str, str]) -> set[str]:
    """Every ``x.name(...)`` the package makes on an object (not on an imported module, such as
    ``np.log``): a method of a TensorRT subclass that is not among them is one TensorRT calls."""
    called = set()
    for source in sources.values():
        tree = ast.parse(source)
        modules = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        called |= {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and isinstance(node.func, ast.Attribute)
                   and not (isinstance(node.func.value, ast.Name) and node.func.value.id in modules)}
    return called


def chain(node: ast.expr) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]; None for a chain not rooted at the tensorrt module."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id in ROOTS else None


class TensorrtUses(ast.NodeVisitor):
    def __init__(self, path: str, called: set[str]):
        self.path, self.called = path, called
        self.uses: list[Use] = []
        self.planned: list[Use] = []  # getattr(trt.Enum, <name from the plan>)
        self.in_adapter = [False]  # in a function that names the tensorrt module: its objects are TensorRT's

    def use(self, name: str, node: ast.AST, how: str) -> None:
        if not (name.startswith("__") and name.endswith("__")) or name == "__version__":
            self.uses.append(Use(name, f"{self.path}:{node.lineno} {how}"))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.in_adapter.append(any(isinstance(n, ast.Name) and n.id in ROOTS for n in ast.walk(node)))
        self.generic_visit(node)
        self.in_adapter.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = chain(node)
        if parts is not None:
            for name in parts:
                self.use(name, node, "trt." + ".".join(parts))
            return
        own = isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node.ctx, ast.Store) and self.in_adapter[-1] and not own:  # `config.DLA_core = ...`
            self.use(node.attr, node, f"sets {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(chain(base) for base in node.bases):  # TensorRT calls these methods back
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") and item.name not in self.called:
                    self.use(item.name, item, f"{node.name}.{item.name}, called by TensorRT")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and chain(node.args[0]):
            self.planned.append(Use(".".join(chain(node.args[0])), f"{self.path}:{node.lineno} {ast.unparse(node)}"))
        self.generic_visit(node)


def source_uses(sources: dict[str, str]) -> tuple[list[Use], list[Use]]:
    """(names used, enums looked up by a planned name) in these modules."""
    called = method_calls({p.as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")})
    uses, planned = [], []
    for path, source in sources.items():
        visitor = TensorrtUses(path, called)
        visitor.visit(ast.parse(source))
        uses += visitor.uses
        planned += visitor.planned
    return uses, planned


def planned_names(version: str) -> set[str]:
    """The enum members ``plan_build`` asks for on ``version``, over every build it accepts."""
    names = set()
    for precision in PRECISIONS:
        for legacy in (False, True):
            for dla_core in (None, 0):
                for tf32 in (False, True):
                    config = BuildConfig(precision=precision, legacy_calibrator=legacy, dla_core=dla_core, tf32=tf32,
                                         calibration_set_hash="set" if legacy else None)
                    try:
                        plan = plan_build(config, version, EXPORT_SHAPE)
                    except FornetError:
                        continue  # a build this version refuses
                    names |= {*plan.builder_flags, *plan.network_flags, plan.profiling_verbosity}
                    assert legacy or not (plan.use_calibrator or plan.fp32_scopes)  # LEGACY_ONLY stays legacy
                    assert not legacy or version.startswith("10.")
    return names


def missing_names(uses: list[Use], release: BoundNames, legacy_only=LEGACY_ONLY) -> list[str]:
    """The uses ``release`` does not bind (legacy-only names are asked of 10.x only)."""
    return [str(u) for u in uses if u.name not in release and not (u.name in legacy_only and release.major > 10)]


def test_every_name_the_source_uses_is_bound_by_every_supported_release(releases):
    uses, planned = source_uses(package_sources())
    found = {u.name for u in uses}
    # the reading finds what the adapter is known to use, of each kind
    assert {"Builder", "TF32", "Severity", "__version__", "nptype", "TensorIOMode", "LayerInformationFormat"} <= found
    assert {"DLA_core", "default_device_type", "profiling_verbosity", "int8_calibrator", "precision"} <= found
    assert {"log", "get_batch", "get_batch_size", "read_calibration_cache", "write_calibration_cache"} <= found
    assert not found & {"last_error", "free", "calibration_batches"}  # the package's own names
    assert {u.name.split(".")[0] for u in planned} == set(PLANNED_MEMBERS), [str(u) for u in planned]
    for release in releases:
        problems = missing_names(uses, release)
        problems += [f"{name} (a {', '.join(PLANNED_MEMBERS)} member build plans for {release.version} ask for)"
                     for name in sorted(planned_names(release.version)) if name not in release]
        assert not problems, f"{release} does not bind: {'; '.join(problems)}"
    for name in LEGACY_ONLY:
        assert name in found, f"LEGACY_ONLY lists {name}, which the package no longer uses"


def test_the_check_fails_on_a_name_a_release_lacks(releases):
    """Planted: a flag no release has, and a legacy-only name used as if every release had it."""
    sources = package_sources()
    sources["build/trt.py"] += "\n\ndef planted(trt, config):\n    config.set_flag(trt.BuilderFlag.NO_SUCH_FLAG)\n"
    uses, _ = source_uses(sources)
    for release in releases:
        (missing,) = missing_names(uses, release)
        assert missing.startswith("NO_SUCH_FLAG (build/trt.py:") and missing.endswith("trt.BuilderFlag.NO_SUCH_FLAG)")
    ungated = {k: v for k, v in LEGACY_ONLY.items() if k != "IInt8EntropyCalibrator2"}
    real_uses, _ = source_uses(package_sources())
    for release in releases:
        missing = missing_names(real_uses, release, ungated)
        assert bool(missing) is (release.major > 10)
        assert all(m.startswith("IInt8EntropyCalibrator2 (calibration/trt_calibrator.py:") for m in missing)


# --- the stand-ins the adapter tests run against ---------------------------------------------


def load_test_module(relative: str):
    """A test module of this suite by path (the stand-ins live in them), under a private name."""
    path = TESTS / relative
    spec = importlib.util.spec_from_file_location(f"_stand_in_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_surface(version: str) -> dict[str, str]:
    """Every public name the stand-ins offer for ``version``, by where it is."""
    build, runner = load_test_module("build/test_trt.py"), load_test_module("runtimes/test_trt_runner.py")
    stand_ins = [("build", build, build.fake_tensorrt(version)), ("runner", runner, runner.fake_tensorrt(version))]
    if version.startswith("10."):  # the calibrator runs on 10.x only
        calibrator = load_test_module("calibration/test_trt_calibrator.py")
        stand_ins.append(("calibrator", calibrator, calibrator.FAKE_TRT))
    surface = {}
    for label, module, fake in stand_ins:
        surface.update({f"{label} stand-in {where}": name
                        for where, name in fake_surface(fake, module.TEST_HOOKS).items()})
    return surface


def test_every_name_the_stand_ins_offer_is_bound_by_that_release(releases):
    for release in releases:
        surface = stand_in_surface(release.version)
        assert len(surface) > 40
        missing = sorted(where for where, name in surface.items() if name not in release)
        assert not missing, f"{release} does not bind: {'; '.join(missing)}"


def test_the_stand_ins_check_fails_on_a_name_a_release_lacks(releases):
    """Planted: the 11.x build stand-in offering set_output_type, which TensorRT 11 removed."""
    build = load_test_module("build/test_trt.py")
    release = next(r for r in releases if r.major == 11)
    fake = build.fake_tensorrt(release.version)
    fake.ILayer.set_output_type = lambda self, index, dtype: None
    surface = fake_surface(fake, build.TEST_HOOKS)
    assert [where for where, name in surface.items() if name not in release] == ["ILayer.set_output_type"]
