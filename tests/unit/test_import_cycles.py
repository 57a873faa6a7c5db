"""No import cycle among the product's modules, counting every import statement.

The graph has one node per module of engine/, storage/ and crawler/ (a package is its
`__init__.py`) and an edge for every import statement that reaches another of those modules:
at the top of the file, inside a function or method (a lazy import only hides a cycle: it
still closes it on the first call), under `try`, and under `if TYPE_CHECKING:`. Type-checking
imports count because the graph is the dependency structure of the source, not the order a
particular run happens to import things in: a module whose annotations need another module
depends on it, and moving an import under TYPE_CHECKING must not be a way to hide a cycle
from this test (it is also the only statement naming what engine/__init__.py's PEP 562
`__getattr__` loads through importlib).

What one statement in module M reaches, names resolved against M's package as Python does:

- `import a.b.c` and `from a.b.c import name`: the module `a.b.c`;
- `from a.b import c` where `a/b/c.py` (or `a/b/c/`) exists: the submodule `a.b.c`; where `c`
  is a name defined in `a/b/__init__.py` (or with `import *`): the package `a.b` itself;
- the packages above the module named, `a` and `a.b`: importing `a.b.c` runs
  `a/__init__.py` and then `a/b/__init__.py` first, so an `__init__` that imports back into
  the importer closes a cycle just as a direct import does. The exception is a package that
  holds M itself: it was already being imported before M's first line ran, so importing it
  again runs nothing (`from .extract import x` inside crawler/ingest/ adds no edge to
  `crawler.ingest`). A statement that names such a package for a name defined in its
  `__init__` (`from .. import ConfigError`) does read it, and counts.

A cycle is a strongly connected component of more than one module, or a module that imports
itself. The failure lists every one with the statements inside it (file, line, and the function
each one sits in), which is what a fix has to break. Dynamic imports by string
(`importlib.import_module`, a child process's `-c` program) are not statements and are not seen.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "storage", "crawler")


@dataclass(frozen=True)
class Edge:
    """One import statement in `importer` that reaches `imported`."""

    importer: str
    imported: str
    path: str  # relative to the root, for the failure message
    line: int
    where: str  # "module level", "in child_main", "in Pool.extract", "under TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.where}): {self.importer} -> {self.imported}"


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file under each package directory."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _packages_holding(module: str) -> set[str]:
    """The module itself and every package above it: all of them are importing while it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


class _Imports(ast.NodeVisitor):
    """(line, where, statement) of every import statement in a tree, at any depth."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.type_checking = 0
        self.found: list[tuple[int, str, ast.Import | ast.ImportFrom]] = []

    def _where(self) -> str:
        where = f"in {'.'.join(self.scope)}" if self.scope else "module level"
        return f"{where}, under TYPE_CHECKING" if self.type_checking else where

    def _nested(self, node: ast.AST) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if name != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        self.type_checking += 1
        for child in node.body:
            self.visit(child)
        self.type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node.lineno, self._where(), node))

    visit_ImportFrom = visit_Import


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name`, or the longest package above it that is one of `modules` (a misspelt module's
    import still runs its packages); None outside them."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def _reached(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that one import statement in `module` runs or reads."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
        runs = named
    else:
        if node.level:
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package = package[:-1]
            base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        # a submodule, or else a name read from the package's __init__
        named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        runs = [base]  # `from a.b import c` runs a.b's __init__ even when c is a submodule
    running = _packages_holding(module)
    reached = set()
    for name in named:
        target = _known(name, modules)
        if target is not None:
            reached.add(target)
    for name in runs:
        target = _known(name, modules)
        if target is not None:
            reached |= _packages_holding(target) - running
    return reached


def import_edges(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Edge]:
    """Every edge of the import graph of the modules under `root`'s `packages`."""
    modules = module_files(root, packages)
    edges = []
    for module, path in modules.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for line, where, node in visitor.found:
            for imported in sorted(_reached(module, node, modules)):
                edges.append(Edge(module, imported, str(path.relative_to(root)), line, where))
    return edges


def import_cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module, and the modules that import
    themselves, each sorted, in sorted order (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        components.append(sorted(component))
    return sorted(components)


def describe(cycles: list[list[str]], edges: list[Edge]) -> str:
    """Each cycle's modules, then the import statements between them."""
    lines = []
    for number, cycle in enumerate(cycles, 1):
        members = set(cycle)
        lines.append(f"cycle {number}: {', '.join(cycle)}")
        lines += [f"    {edge}" for edge in edges if edge.importer in members and edge.imported in members]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def test_no_import_cycle_among_the_product_modules():
    edges = import_edges()
    assert len({edge.importer for edge in edges}) > 50, "the graph missed the product's modules"
    cycles = import_cycles(edges)
    assert not cycles, f"{len(cycles)} import cycle(s), counting imports inside functions:\n" + describe(cycles, edges)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_the_check_sees_a_cycle_closed_inside_a_function(tmp_path):
    # the checker itself: a lazy import is an edge, relative names resolve, and the failure
    # says which function of which file closes the cycle
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import helper\n",
        "pkg/b.py": "def helper():\n    from . import a\n    return a\n",
        "pkg/c.py": "from pkg.a import helper\n",  # reaches the cycle, is not in it
    })
    edges = import_edges(tmp_path, ("pkg",))
    cycles = import_cycles(edges)
    assert cycles == [["pkg.a", "pkg.b"]]
    report = describe(cycles, edges)
    assert "pkg/b.py:2 (in helper): pkg.b -> pkg.a" in report and "pkg/a.py:1 (module level)" in report


def test_the_check_sees_type_checking_imports_and_package_inits(tmp_path):
    # a TYPE_CHECKING import counts; importing x.y.z runs x/y/__init__.py, which imports back;
    # `from .. import name` reads the package's __init__; a module's own packages add nothing
    _write(tmp_path, {
        "top/__init__.py": "",
        "top/one.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .two import Two\n",
        "top/two.py": "from .one import One\n",
        "top/room/__init__.py": "from .inner import Inner\n",
        "top/room/inner.py": "from ..three import Three\nfrom . import other\n",
        "top/room/other.py": "",
        "top/three.py": "import top.room.other\n",
        "top/four.py": "from . import NAME\n",
        "top/leaf/__init__.py": "from .x import X\n",
        "top/leaf/x.py": "import top.leaf.y\n",  # top.leaf is already running: no cycle
        "top/leaf/y.py": "",
    })
    edges = import_edges(tmp_path, ("top",))
    cycles = import_cycles(edges)
    assert ["top.one", "top.two"] in cycles
    assert ["top.room", "top.room.inner", "top.three"] in cycles
    assert any(str(e) == "top/one.py:3 (module level, under TYPE_CHECKING): top.one -> top.two" for e in edges)
    reached = {(e.importer, e.imported) for e in edges}
    assert ("top.room.inner", "top.room") not in reached and ("top.leaf.x", "top.leaf") not in reached
    assert ("top.four", "top") in reached and ("top.leaf.x", "top.leaf.y") in reached
    assert len(cycles) == 2, describe(cycles, edges)


def test_the_check_sees_a_module_importing_itself(tmp_path):
    _write(tmp_path, {"solo/__init__.py": "", "solo/me.py": "def f():\n    from solo.me import f\n"})
    edges = import_edges(tmp_path, ("solo",))
    assert import_cycles(edges) == [["solo.me"]]
