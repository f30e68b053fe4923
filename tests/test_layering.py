"""The layering of ``profiler/`` and ``hooks/``, read from the code (AST): no import circles, and
the boundaries of ``../shared/DESIGN.md`` ("Boundaries worth keeping").

Every import counts, wherever it stands (module level, in a function, under ``TYPE_CHECKING``),
with one exception for circles: an import inside a function (or under ``TYPE_CHECKING``) whose
line carries the comment ``# import-circle-ok: <why>`` is left out of the circle check (it runs
after both modules have loaded, so it does not break; the comment says why the dependency is
wanted). A module-level import always counts. The boundary rules admit no exception.

Ruff's ``banned-api`` (``pyproject.toml``) holds the first rule at lint time as well: nothing in
``hooks/`` imports ``profiler``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("profiler", "hooks")
CIRCLE_OK = "# import-circle-ok:"

# The framework a framework module of hooks/ may import at module level (DESIGN.md: "the
# framework itself is imported only by the module for that framework").
HOOK_FRAMEWORKS = {
    "hooks.pytorch": {"torch"},
    "hooks.torch_cuda": {"torch"},
    "hooks.hf": {"transformers"},
}
# What accounting (pure arithmetic over samples and events) must not import: I/O of any kind
# (files, sockets, processes, devices) and the parts that do it.
IO_MODULES = (
    "sqlite3", "socket", "http", "subprocess", "urllib", "shutil", "fcntl",
    "os", "io", "pathlib", "tempfile", "glob", "mmap", "select", "selectors", "ssl", "asyncio",
    "psutil", "pynvml", "prometheus_client",
    "profiler.ledger", "profiler.daemon", "profiler.report", "profiler.grafana", "profiler.cli",
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen in ``source`` (a module of ours)."""

    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (a module of ours where it names one)
    path: Path
    line: int
    module_level: bool  # runs when ``source`` is imported (not in a function, not type-only)
    circle_ok: bool  # marked ``# import-circle-ok:`` (honoured only where not module_level)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    """Every module of ``profiler/`` and ``hooks/`` (``hooks/autoload/sitecustomize.py`` too,
    under the name ``hooks.autoload.sitecustomize``), by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import statement with whether it runs at import time of its module."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, runs_at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, runs_at_import))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), runs_at_import)
            else:
                visit(child, runs_at_import)

    visit(tree, True)
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of module ``name``; ``from a.b import c`` names ``a.b.c`` when that is one of
    our modules, else ``a.b``; relative imports are resolved."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, runs_at_import in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        marked = CIRCLE_OK in lines[node.lineno - 1]
        for target in dict.fromkeys(targets):
            found.append(Import(name, target, path, node.lineno, runs_at_import, marked))
    return found


@pytest.fixture(scope="module")
def all_imports() -> list[Import]:
    modules = our_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def within(module: str, *packages: str) -> bool:
    """Whether dotted ``module`` is one of ``packages`` or inside one."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def package_of(module: str) -> str:
    """The part a module belongs to: ``profiler.<subpackage>`` (or a top module such as
    ``profiler.config``), ``profiler`` for the package itself, ``hooks`` for all of hooks/."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "profiler" else parts[0]


def circles(
    imports: list[Import], group: Callable[[str], str] = str
) -> list[tuple[list[Import], list[str]]]:
    """The import circles among our modules, or among the groups ``group`` puts them in: for
    each strongly connected component of two or more, one circle through it (as the imports
    that make it) and the component's members."""
    modules = our_modules()
    edges: dict[str, dict[str, Import]] = {group(name): {} for name in modules}
    for imp in imports:
        if imp.target not in modules or imp.circle_ok and not imp.module_level:
            continue
        source, target = group(imp.source), group(imp.target)
        if source != target:
            edges[source].setdefault(target, imp)

    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))

    found = []
    for component in components:
        members = set(component)
        # One circle: walk from the first module, inside the component, until a module repeats.
        path = [component[0]]
        while True:
            nxt = min(t for t in edges[path[-1]] if t in members)
            if nxt in path:
                path = path[path.index(nxt) :] + [nxt]
                break
            path.append(nxt)
        found.append(([edges[a][b] for a, b in pairwise(path)], component))
    return found


def describe(found: tuple[list[Import], list[str]], group: Callable[[str], str] = str) -> str:
    cycle, component = found
    hops = [
        f"{group(imp.source)} -> {group(imp.target)} ({imp.where()}: {imp.target})"
        if group is not str
        else f"{imp.source} -> {imp.target} ({imp.where()})"
        for imp in cycle
    ]
    return "circle: " + "; ".join(hops) + f" [all caught in it: {', '.join(component)}]"


def test_the_scan_sees_the_code(all_imports: list[Import]) -> None:
    modules = our_modules()
    assert {"hooks.wire", "hooks.pytorch", "profiler.cli.main", "profiler.daemon.core"} <= set(
        modules
    )
    assert any(i.source == "hooks.client" and i.target == "hooks.wire" for i in all_imports)


def test_no_import_circles(all_imports: list[Import]) -> None:
    found = [describe(circle) for circle in circles(all_imports)]
    assert not found, "\n".join(found)


def test_no_import_circles_between_packages(all_imports: list[Import]) -> None:
    """The packages follow the data (hooks -> ingest -> accounting -> cost -> ledger -> report;
    the daemon and the CLI on top): no package imports one that imports it back."""
    found = [describe(c, package_of) for c in circles(all_imports, package_of)]
    assert not found, "\n".join(found)


def test_hooks_import_only_the_standard_library_and_hooks_at_module_level(
    all_imports: list[Import],
) -> None:
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for imp in all_imports:
        if not within(imp.source, "hooks"):
            continue
        if within(imp.target, "profiler"):
            bad.append(f"{imp.where()}: {imp.source} imports {imp.target} (profiler)")
            continue
        top = imp.target.split(".")[0]
        allowed = top in stdlib or top == "hooks" or top in HOOK_FRAMEWORKS.get(imp.source, ())
        if imp.module_level and not allowed:
            bad.append(f"{imp.where()}: {imp.source} imports {imp.target} at module level")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("package", "forbidden", "why"),
    [
        (
            "profiler.sensors",
            ("profiler.accounting", "profiler.cost", "profiler.ledger", "profiler.daemon"),
            "sensors measure devices; they know nothing of runs or money",
        ),
        ("profiler.accounting", IO_MODULES, "accounting is arithmetic: no I/O"),
        (
            "profiler.report",
            ("profiler.daemon", "profiler.sensors"),
            "reports read the ledger, never a live daemon or hardware",
        ),
        ("profiler.ingest", ("profiler.daemon",), "the daemon wires ingest, not the reverse"),
    ],
)
def test_package_boundaries(
    all_imports: list[Import], package: str, forbidden: tuple[str, ...], why: str
) -> None:
    bad = [
        f"{imp.where()}: {imp.source} imports {imp.target} ({why})"
        for imp in all_imports
        if within(imp.source, package) and within(imp.target, *forbidden)
    ]
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_the_cli(all_imports: list[Import]) -> None:
    bad = [
        f"{imp.where()}: {imp.source} imports {imp.target}"
        for imp in all_imports
        if within(imp.target, "profiler.cli")
        and not within(imp.source, "profiler.cli", "profiler.__main__")
    ]
    assert not bad, "\n".join(bad)
