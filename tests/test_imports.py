"""The import contract (issue 26): no import cycles, and pure modules stay pure.

Imports are read from the source (ast), function-level ones included, so a cycle hidden by a
lazy import counts; imports under ``if TYPE_CHECKING:`` do not (they never run). A module whose
docstring calls it "Pure" must not reach, directly or through the vstor modules it imports, any
module that talks to the outside: sockets, TLS, FUSE, SQLite, HTTP, or the daemon's control and
CLI packages. (Running a hook command is allowed: backup policies carry their hooks' defaults.)
"""

from __future__ import annotations

import ast
import os

import vstor

ROOT = os.path.dirname(os.path.dirname(vstor.__file__))
IO_MODULES = ("socket", "ssl", "select", "selectors", "mfusepy", "sqlite3", "http", "urllib", "asyncio",
              "vstor.fuse", "vstor.control", "vstor.cli")


def _modules() -> dict[str, str]:
    out = {}
    for dp, _dn, fn in os.walk(os.path.join(ROOT, "vstor")):
        for f in fn:
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(tree: ast.AST) -> list[str]:
    """Every module name imported anywhere in ``tree`` except under ``if TYPE_CHECKING``."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.orelse:
                visit(n)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


TREES = {m: ast.parse(open(p).read()) for m, p in MODULES.items()}
IMPORTS = {m: _imports(t) for m, t in TREES.items()}
GRAPH = {m: sorted({i for i in imps if i in MODULES and i != m}) for m, imps in IMPORTS.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(GRAPH[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(GRAPH[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_even_through_lazy_imports():
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle():
    GRAPH["vstor.units"].append("vstor.errors")
    GRAPH["vstor.errors"].append("vstor.units")
    try:
        assert ["vstor.errors", "vstor.units"] in _cycles()
    finally:
        GRAPH["vstor.units"].remove("vstor.errors")
        GRAPH["vstor.errors"].remove("vstor.units")


def _reach(mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(i for i in GRAPH.get(m, ()) if i not in seen)
    return seen


def test_pure_modules_reach_no_io():
    pure = [m for m, t in TREES.items() if "Pure" in (ast.get_docstring(t) or "")]
    assert len(pure) >= 20, pure  # the docstrings still say which modules are pure
    bad = {}
    for m in pure:
        for r in _reach(m):
            hits = [i for i in IMPORTS[r] if any(i == x or i.startswith(x + ".") for x in IO_MODULES)]
            if hits:
                bad[m] = f"through {r}: {hits}"
    assert not bad, bad
