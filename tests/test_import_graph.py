"""The module graph of ``refreekv_edu/`` and ``backends/`` has no import cycle (issue 20).

Every ``.py`` file under ``refreekv_edu/`` and ``backends/<package>/`` is parsed with :mod:`ast` (nothing is
imported, so the test needs neither torch nor mlx). Each ``import`` / ``from ... import`` statement gives an edge
``importer -> imported`` when the imported module is one of those files:

- absolute imports (``import refreekv_edu.backend``, ``from refreekv_torch.hf_cache import X``) and relative ones
  (``from . import fused_ops``, ``from ..policies import PRESETS``), resolved against the importer's package;
- ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, else to ``pkg``;
- **every** import counts wherever it stands: at module level, inside functions and methods (lazy imports run too,
  and a cycle hidden behind one is still two modules that need each other; hiding it is exactly what issue 20
  found in ``backend.py`` <-> ``policies.py``), and under ``if TYPE_CHECKING:`` (none exist today);
- an import of ``a.b.c`` is an edge to ``a.b.c`` only, not to the packages ``a`` and ``a.b`` whose ``__init__``
  Python runs first: a package ``__init__`` that re-exports its submodules would otherwise form a "cycle" with
  every submodule that imports a sibling, which is ordinary and harmless.

A cycle is a strongly connected component of two or more modules (or a module importing itself); the failure
message prints one concrete cycle per component, e.g. ``refreekv_edu.backend -> refreekv_edu.policies ->
refreekv_edu.backend``, with the line of each import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_roots(root: Path = ROOT) -> dict[str, Path]:
    """Top-level package name -> its folder: ``refreekv_edu`` and every package under ``backends/``."""
    roots = {"refreekv_edu": root / "refreekv_edu"}
    for init in sorted((root / "backends").glob("*/__init__.py")):
        roots[init.parent.name] = init.parent
    return roots


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the packages (``pkg/__init__.py`` is ``pkg``)."""
    found = {}
    for name, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve_base(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module a (possibly relative) ``from`` names: ``level`` dots from ``module``'s package."""
    if level == 0:
        return target or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``importer -> {imported: line}`` over the modules of ``modules`` (imports of other libraries are dropped)."""
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_base(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # "import a.b.c" names a.b.c; keep the longest prefix that is one of our modules.
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts:
                    edges[name].setdefault(".".join(parts), node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One concrete cycle ``[a, b, ..., a]`` per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)

    return [_shortest_cycle(component[0], set(component), edges) for component in components]


def _shortest_cycle(start: str, members: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """The shortest ``[start, ..., start]`` inside one component (breadth-first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:  # back at the start: walk the predecessors from v
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component without a cycle")


def describe(cycle: list[str], edges: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each step with the line of the import that makes it."""
    steps = [f"{a} ({modules[a].relative_to(ROOT) if modules[a].is_relative_to(ROOT) else modules[a]}:{edges[a][b]})"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def graph(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = module_files(package_roots(root))
    return modules, import_edges(modules)


# ------------------------------------------------------------------------------------------------- tests
def test_the_graph_reads_every_package_and_the_imports_it_should():
    modules, edges = graph()
    assert {"refreekv_edu", "refreekv_edu.policies", "refreekv_edu.eval.cli", "refreekv_torch.backend",
            "refreekv_mlx.backend"} <= set(modules)
    assert "refreekv_edu.fused_ops" in edges["refreekv_edu.backend"]  # relative "from . import fused_ops"
    assert "refreekv_edu.backend" in edges["refreekv_edu.policies"]  # "from .backend import ..."
    assert "refreekv_edu.policies" in edges["refreekv_edu.eval.config"]  # lazy "from ..policies import" in a method
    assert "refreekv_edu.policies" in edges["refreekv_edu.generate"]  # lazy, inside generate()
    assert "refreekv_edu.integration" in edges["refreekv_torch.hf_compress"]  # absolute, across packages


def test_the_cycle_finder_catches_lazy_and_relative_cycles(tmp_path):
    pkg = tmp_path / "refreekv_edu"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "backends").mkdir()
    (pkg / "__init__.py").write_text("from . import a, b\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import a  # lazy\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import refreekv_edu.sub.c\nfrom .. import a\n")  # imports itself
    modules, edges = graph(tmp_path)
    found = cycles(edges)
    assert ["refreekv_edu.a", "refreekv_edu.b", "refreekv_edu.a"] in found
    assert ["refreekv_edu.sub.c", "refreekv_edu.sub.c"] in found
    assert len(found) == 2  # the package __init__ re-exporting a and b is not a cycle
    assert describe(found[0], edges, modules).count("->") == 2


def test_no_import_cycles():
    modules, edges = graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges, modules) for c in found)
