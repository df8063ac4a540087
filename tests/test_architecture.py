"""The package imports only downward (docs/architecture.md): no package-level cycle, no
stage importing a stage at or above its own layer, no runtime importing a stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fornet_deploy"

# Lowest layer first. A unit may import units of lower layers only (and itself).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "errors", "interrupts"),
    ("contract",),
    ("io",),
    ("staging", "targets"),
    ("bundle",),
    ("model", "data"),
    ("runtimes",),
    ("evaluation",),
    ("export",),
    ("calibration",),
    ("build",),
    ("train", "bench", "predict", "package"),
    ("deploy",),
    ("demo",),
    ("api",),
    ("cli", "__init__"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``fornet_deploy.runtimes.trt.runner`` -> ``runtimes``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Absolute names of the fornet_deploy modules a file imports (at any depth in the file)."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fornet_deploy"):
                # "from . import api" names submodules too
                found.add(target)
                if not node.module:  # "from . import api": the names are modules
                    found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fornet_deploy"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("."):
                found.add(f"fornet_deploy{arg.value}")
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """unit -> units it imports, over the sources of ``package`` (a copy of fornet_deploy/)."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        unit = unit_of(module_name(path, package))
        graph.setdefault(unit, set()).update(unit_of(t) for t in imports_of(path, package) if unit_of(t) != unit)
    return graph


def test_every_unit_has_a_layer():
    missing = sorted(set(import_graph()) - set(RANK))
    assert not missing, f"add {missing} to LAYERS here and in docs/architecture.md"


@pytest.mark.parametrize("unit", sorted(RANK))
def test_imports_point_down(unit):
    graph = import_graph()
    upward = sorted(t for t in graph.get(unit, ()) if RANK[t] >= RANK[unit])
    assert not upward, f"{unit} (layer {RANK[unit]}) imports {upward} from its own layer or above"


def test_no_package_level_cycle():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [unit for unit in graph if reaches(unit, unit, {unit})]
    assert not cycles, f"import cycles through {cycles}"


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    """In a copy of the sources: the package tree itself is never written."""
    import shutil

    copy = tmp_path / "fornet_deploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    assert "evaluation" not in import_graph(copy)["runtimes"]
    (copy / "runtimes" / "_planted_for_test.py").write_text("from ..evaluation import metrics\n")
    assert "evaluation" in import_graph(copy)["runtimes"]


# Modules that hold a dataset's own classes: only the data layer may import them; everything
# else reads the label set that travels with the model (data/labels.py).
DATASET_MODULES = ("fornet_deploy.data.cityscapes", "fornet_deploy.data.camvid")
# Class names of those datasets that no other module may spell out as a literal either.
DATASET_CLASS_LITERALS = {"sidewalk", "traffic light", "traffic sign", "vegetation", "terrain", "motorcycle",
                          "Pavement", "SignSymbol", "Bicyclist", "Pedestrian"}


def dataset_knowledge(path: Path, package: Path = PACKAGE) -> list[str]:
    """What ``path`` knows of a particular dataset's classes: imports and literals."""
    found = sorted(name for name in imports_of(path, package) if name.startswith(DATASET_MODULES))
    found += sorted({node.value for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Constant) and node.value in DATASET_CLASS_LITERALS})
    return found


def test_only_the_data_layer_knows_a_datasets_classes():
    outside = {str(p.relative_to(PACKAGE)): dataset_knowledge(p) for p in PACKAGE.rglob("*.py")
               if p.relative_to(PACKAGE).parts[0] != "data"}
    assert {k: v for k, v in outside.items() if v} == {}


def test_the_dataset_check_sees_a_planted_import_and_literal(tmp_path):
    package = tmp_path / "fornet_deploy"  # a stand-in package: nothing is written into the real one
    (package / "bench").mkdir(parents=True)
    planted = package / "bench" / "planted.py"
    planted.write_text("from ..data.cityscapes import CLASS_NAMES\nTHIN = ('pole', 'traffic light')\n")
    assert dataset_knowledge(planted, package) == ["fornet_deploy.data.cityscapes", "traffic light"]


def print_graph() -> None:
    """The import graph by layer, as docs/architecture.md shows it."""
    graph = import_graph()
    for rank, units in enumerate(LAYERS):
        for unit in units:
            targets = sorted(graph.get(unit, ()), key=lambda t: (RANK[t], t))
            print(f"{rank:2d} {unit:12s} -> {', '.join(targets) or '-'}")


if __name__ == "__main__":  # python tests/test_architecture.py
    print_graph()


def test_the_documented_graph_is_the_graph(capsys):
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = doc[doc.index("```\n 0 _version") + 4:]
    print_graph()
    assert block[: block.index("```")] == capsys.readouterr().out, "regenerate docs/architecture.md's graph"
