"""The package layering, checked by parsing every module's imports with `ast`.

engine/ and storage/ are leaves: engine imports only the standard library and its numeric
dependencies, storage only the standard library and SQLAlchemy (and Alembic); neither imports
the other or the crawler. crawler/ is the one package that joins them.
"""

import ast
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
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


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


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
    names = [name for _, name in imported_modules(ROOT / "crawler" / "cli.py")]
    assert "crawler.data" in names and "engine" in names
