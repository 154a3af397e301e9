"""The package layout is the architecture (issue 14): no module imports from a layer above its own,
and no import cycle exists, imports inside functions included.

The import graph is read from the source (``ast``), as ``/work/shared/tools/import_cycles.py``
reads it: every ``import`` and ``from ... import`` anywhere in a module, resolved to the package's
modules (``from . import x`` counts as an import of module ``x`` when it is one).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mlflow_amnesia

ROOT = Path(mlflow_amnesia.__file__).parent
PKG = ROOT.name

#: Layers, lowest first. A module may import from its own folder and from any lower layer, never
#: from a higher one; folders that share a layer (unlearn, audit) do not import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("_version", "errors", "progress", "names", "keys", "crypto", "tags", "ids", "interrupts")),
    ("recording", ("recording",)),
    ("learning", ("learning",)),
    ("version", ("version",)),
    ("methods and audit", ("unlearn", "audit")),
    ("mlflow", ("mlflow",)),
    ("jobs", ("jobs",)),
    ("facade", ("cli", "__init__")),  # and every old import path kept as a thin re-export (below)
]
#: The old import paths (thin re-export modules): the facade's layer; nothing in the package imports them.
SHIMS = {"store", "index", "recorder", "data", "models", "training", "flavor", "registry", "concurrency", "tracking",
         "locations", "train", "forget", "purge", "lineage", "records", "verify", "validation"}


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(cur: str, is_pkg: bool, level: int, name: str) -> str:
    if level == 0:
        return name
    base = cur.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the package root itself excluded)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(m, is_pkg, node.level, node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t == PKG and m != PKG:
                    graph[m].add(t)  # the facade: importing it from below is an upward import
                elif t and t != m and t.startswith(PKG) and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(rank, folder) of a module of the package; the package root is the facade."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if len(parts) > 1 and head in SHIMS:
        return len(LAYERS) - 1, head
    for rank, (name, members) in enumerate(LAYERS):
        if head in members:
            return rank, name if name == "core" else head  # the core's modules are one folder
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in tests/test_architecture.py")


def test_every_module_has_a_layer():
    for m in modules():
        layer_of(m)


def test_no_module_imports_from_a_layer_above_its_own():
    found = []
    for m, targets in sorted(import_graph().items()):
        rank, folder = layer_of(m)
        for t in sorted(targets):
            trank, tfolder = layer_of(t)
            if tfolder == folder:
                continue
            if trank > rank or (trank == rank and rank < len(LAYERS) - 1):
                found.append(f"{m} ({LAYERS[rank][0]}) imports {t} ({LAYERS[trank][0]})")
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_nothing_in_the_package_imports_an_old_import_path():
    found = [f"{m} imports {t}" for m, ts in sorted(import_graph().items()) for t in sorted(ts)
             if layer_of(t)[1] in SHIMS and layer_of(m)[1] not in SHIMS and m != PKG]
    assert not found, "use the module's new home, not its kept import path:\n" + "\n".join(found)


def test_there_is_no_import_cycle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
