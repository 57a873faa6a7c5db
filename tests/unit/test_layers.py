"""The package layering, checked by parsing every module's imports with `ast`.

engine/ and storage/ are leaves: engine imports only the standard library and its numeric
dependencies, storage only the standard library and SQLAlchemy (and Alembic); neither imports
the other or the crawler. crawler/ is the one package that joins them, and inside it each room
imports only the rooms below it (crawler/__init__.py lists them in order).
"""

import ast
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "storage", "crawler")
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}

# top-level distributions each package may import besides the standard library and itself;
# None means any (the crawler is where third-party glue lives)
ALLOWED_THIRD_PARTY = {
    # mpi4py: the step across processes (engine/distributed.py), imported only under --distributed
    "engine": {"numpy", "numba", "llvmlite", "scipy", "threadpoolctl", "safetensors", "mpi4py"},
    "storage": {"sqlalchemy", "alembic", "numpy"},
    "crawler": None,
}
ALLOWED_PACKAGES = {"engine": {"engine"}, "storage": {"storage"}, "crawler": set(PACKAGES)}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved against
    its package as it lies under `root`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def package_files(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_layers(package):
    files = package_files(package)
    assert files, f"{package}/ has no modules"
    violations = []
    for path in files:
        for line, name in imported_modules(path):
            top = name.split(".")[0]
            if top in STDLIB:
                continue
            if top in PACKAGES:
                ok = top in ALLOWED_PACKAGES[package]
            else:
                allowed = ALLOWED_THIRD_PARTY[package]
                ok = allowed is None or top in allowed
            if not ok:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not violations, f"{package}/ breaks the layering:\n" + "\n".join(violations)


def test_relative_imports_resolve_inside_their_package():
    # the checker itself: a relative import resolves against the importing module's package
    names = [name for _, name in imported_modules(ROOT / "crawler" / "cli" / "main.py")]
    assert "crawler.ingest.data" in names and "engine" in names and "crawler.config" in names
    assert "crawler.cli.progress" in names  # `from .progress import ...` inside crawler/cli/


# the crawler's rooms, lowest first: a module may import its own room and those before it in this
# order (the package's own __init__, `crawler`, holds only `installed_version` and is open to all)
ROOMS = ("logging", "state", "ingest", "config", "training", "service", "bench", "cli", "__main__")
# what a room may not import although it comes later: the engine's model belongs to training and
# bench; ingest and state know nothing of it
NO_ENGINE = ("logging", "state", "ingest")


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def room_violations(root: Path = ROOT) -> list[str]:
    """Every import of a room above the importer's, in the crawler package under `root`."""
    violations = []
    for path in package_files("crawler", root):
        where = path.relative_to(root)
        room = _room(_module_name(path, root))
        if room == "":
            continue
        assert room in ROOMS, f"{where} is in no room: add it to crawler/__init__.py and ROOMS"
        for line, name in imported_modules(path, root):
            top = name.split(".")[0]
            target = _room(name) if top == "crawler" else None
            if top == "crawler" and target and ROOMS.index(target) > ROOMS.index(room):
                violations.append(f"{where}:{line} ({room}) imports {name} ({target}), a room above it")
            if top == "engine" and room in NO_ENGINE:
                violations.append(f"{where}:{line} ({room}) imports {name}")
    return violations


def test_crawler_rooms_import_only_the_rooms_below_them():
    assert not room_violations(), "crawler/ breaks its rooms:\n" + "\n".join(room_violations())


def test_every_room_says_what_it_owns():
    rooms = [p for p in (ROOT / "crawler").iterdir() if (p / "__init__.py").exists()]
    assert {p.name for p in rooms} == {r for r in ROOMS if (ROOT / "crawler" / r).is_dir()}
    for room in rooms:
        doc = ast.get_docstring(ast.parse((room / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"crawler/{room.name}/__init__.py needs a docstring saying what it owns"


def test_the_room_check_catches_an_upward_import(tmp_path):
    # the checker itself: a module of a lower room importing a higher one is reported. The probe
    # goes into a copy of the package's sources, so no test writes into the source tree (a
    # probe left behind by an interrupted run would break the real check).
    shutil.copytree(ROOT / "crawler", tmp_path / "crawler", ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    (tmp_path / "crawler" / "state" / "_upward_probe.py").write_text("from ..service.daemon import Daemon\n",
                                                                      encoding="utf-8")
    violations = room_violations(tmp_path)
    assert any(v.startswith("crawler/state/_upward_probe.py:1 (state) imports crawler.service.daemon (service)")
               and "a room above it" in v for v in violations), violations
