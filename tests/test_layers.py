"""The layers of the package, as docs/architecture.md draws them, checked from the code's imports.

Every import counts, including those inside functions: a lazy import that climbs a
layer is still a dependency, only a hidden one. A module may import its own layer
and the layers below it, never one above, and no group of modules may import each
other in a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jupyter_agent"

#: Bottom to top. A module's layer is the first entry its dotted name starts with.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "vocab"),
    ("core", "config"),
    ("store", "model", "namespace"),
    ("views",),
    ("tools", "testing"),
    ("loop",),
    ("kernel",),
    ("server", "cli", "journal", "__init__", "__main__"),
]

#: Imports a layer must never make, whatever their rank (third-party packages included).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "store.postgres": ("duckdb", "jupyter_agent.store.duckdb"),
    "views": ("IPython", "ipywidgets", "anywidget", "tornado"),
    "kernel": ("tornado", "jupyter_server", "jupyter_agent.server"),
    "server": ("IPython", "ipywidgets", "anywidget", "jupyter_agent.kernel"),
    "cli": ("IPython", "ipywidgets", "anywidget", "jupyter_agent.kernel"),
    "core": ("duckdb", "psycopg", "httpx", "openai", "IPython", "tornado"),
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """Every module name ``module`` imports, resolved to absolute names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _own(name: str, importer: str) -> str | None:
    """The package module ``name`` refers to (itself, or the module holding the attribute)."""
    while name and name not in MODULES:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name if name and name != importer and not importer.startswith(name + ".") else None


def _rank(module: str) -> int:
    short = module.removeprefix("jupyter_agent").lstrip(".") or "__init__"
    for rank, heads in enumerate(LAYERS):
        if any(short == h or short.startswith(h + ".") for h in heads):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


EDGES = {m: {t for n in _imports(m) if (t := _own(n, m))} for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_layer_and_below(module: str) -> None:
    upward = sorted(t for t in EDGES[module] if _rank(t) > _rank(module))
    assert not upward, f"{module} imports a layer above it: {upward}"


@pytest.mark.parametrize("head", sorted(FORBIDDEN))
def test_forbidden_imports(head: str) -> None:
    prefix = f"jupyter_agent.{head}"
    bad = sorted(
        f"{m} imports {n}"
        for m in MODULES
        if m == prefix or m.startswith(prefix + ".")
        for n in _imports(m)
        if any(n == f or n.startswith(f + ".") for f in FORBIDDEN[head])
    )
    assert not bad, bad


def test_no_module_imports_itself_back() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_team_store_loads_no_duckdb() -> None:
    code = (
        "import sys, jupyter_agent.store.postgres.store, jupyter_agent.store.open\n"
        "assert 'duckdb' not in sys.modules, 'duckdb was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
