"""The monorepo's promises: layers import only downward, pins admit their siblings."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))
import code_metrics  # noqa: E402 - beside this file, not a package

ORDER = ["wire", "util", "engine", "hub", "arrays"]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def project(path: Path) -> dict[str, object]:
    with (path / "pyproject.toml").open("rb") as f:
        doc = tomllib.load(f)
    table = doc["project"]
    assert isinstance(table, dict)
    return table


def layer_of(distribution: str) -> str | None:
    name = distribution.removeprefix("shoal-")
    return name if name in ORDER else None


VERSIONS = {str(project(p)["name"]): Version(str(project(p)["version"])) for p in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_shoal_pins_admit_siblings_and_point_down(package: Path) -> None:
    """Every shoal-* requirement admits the sibling's version and names a lower layer."""
    meta = project(package)
    me = layer_of(str(meta["name"]))
    deps = meta.get("dependencies", [])
    assert isinstance(deps, list)
    for text in deps:
        req = Requirement(text)
        if not req.name.startswith("shoal"):
            continue
        assert req.name in VERSIONS, f"{package.name} requires unknown {req.name}"
        assert req.specifier.contains(VERSIONS[req.name]), (
            f"{package.name} pins {req} but the sibling is at {VERSIONS[req.name]}"
        )
        if me is not None:
            target = layer_of(req.name)
            assert target is not None
            assert ORDER.index(target) < ORDER.index(me), f"{me} requires higher {target}"


def test_every_layer_folder_is_in_order() -> None:
    """Each packages/<layer> holding code is a layer of ORDER, so the checks here cover it."""
    folders = {p.name for p in PACKAGES if (p / "src").is_dir()}
    assert folders == set(ORDER)


def test_meta_package_requires_every_layer() -> None:
    """`pip install shoal` brings every layer that exists."""
    meta = project(ROOT / "packages" / "shoal")
    deps = meta.get("dependencies", [])
    assert isinstance(deps, list)
    names = {Requirement(d).name for d in deps}
    layers = {f"shoal-{p.name}" for p in PACKAGES if p.name in ORDER}
    assert layers <= names


def test_layers_import_only_downward() -> None:
    """No module of a layer imports a layer above it (and no shoal/__init__.py exists)."""
    bad = []
    for layer in ORDER:
        allowed = set(ORDER[: ORDER.index(layer) + 1])
        for path in (ROOT / "packages" / layer / "src").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                    if node.module == "shoal":
                        names = [f"shoal.{a.name}" for a in node.names]
                for name in names:
                    parts = name.split(".")
                    if len(parts) > 1 and parts[0] == "shoal" and parts[1] not in allowed:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    bad += [str(p) for p in (ROOT / "packages").glob("*/src/shoal/__init__.py")]
    assert bad == []


def test_shared_layer_checker_agrees() -> None:
    """The project's shared checker (when present beside the repo) passes too."""
    checker = ROOT.parent / "shared" / "tools" / "check_layers.py"
    if not checker.exists():
        pytest.skip("shared/tools/check_layers.py is not beside this checkout")
    out = subprocess.run(
        [sys.executable, str(checker), str(ROOT), "--strict-private"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_distribution_uses_another_ones_private_names() -> None:
    """Separately versioned layers meet at public seams: no import of another
    distribution's private module or name, no use of an underscore attribute that only
    another distribution defines (``client._submit`` from shoal.arrays, say)."""
    assert code_metrics.private_uses() == []


def test_no_any_in_public_signatures() -> None:
    """Every public function and method of every layer says what it takes and what comes
    back: no ``Any`` in an annotation (overloads included)."""
    assert code_metrics.public_any() == []


def test_importing_the_client_leaves_the_server_and_managers_alone() -> None:
    """``import shoal.hub`` (what every user and engine pays) loads neither the hub
    process's code nor multiprocessing.managers; they load on first use."""
    code = (
        "import sys, shoal.hub; from shoal.hub import Client, Pool, DirectView;"
        "print(sorted(m for m in sys.modules if m.startswith(('shoal.hub._server',"
        " 'shoal.hub._compat.manager', 'multiprocessing.managers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import shoal.hub; print(shoal.hub.Hub.__module__, shoal.hub.Manager.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["shoal.hub", "shoal.hub"]


# Import cycles between the modules of one distribution, known and not yet broken:
# the modules of each cycle, and why it is still there. A new cycle fails the test, and
# so does an entry here that no longer matches a cycle (delete it then).
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset(
        {
            "shoal.hub._cli.magics",
            "shoal.hub._client.client",
            "shoal.hub._client.views",
            "shoal.hub._compat.context",
            "shoal.hub._compat.pool",
        }
    ): (
        "Client.executor()/pool()/context() hand out Pool, Executor and the multiprocess"
        " context, which are built on Client; DirectView.activate() sets up the %px"
        " magics, which drive views (each import back up runs inside a function)"
    ),
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """The import statements under ``node`` that run (``if TYPE_CHECKING:`` bodies left
    out), each with whether it sits in a function."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), in_function)
        else:
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(child, in_function or inner)


# module -> module it imports -> [(line, in a function)]
ImportGraph = dict[str, dict[str, list[tuple[int, bool]]]]


def import_graph(src: Path) -> ImportGraph:
    """The imports between the modules under ``src`` (a layer's src folder), from the sources:
    relative imports resolved, ``from pkg import mod`` an edge to the submodule (to the
    package when the name is not a module), no edge for the parent packages Python runs
    first (they are always under way)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    graph: ImportGraph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                assert isinstance(node, ast.ImportFrom)
                base = node.module or ""
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in modules]
                if node.module or len(targets) < len(subs):
                    targets.append(base)
            for target in targets:
                if target in modules:
                    edges.setdefault(target, []).append((node.lineno, in_function))
    return graph


def import_cycles(graph: ImportGraph) -> list[frozenset[str]]:
    """The strongly connected sets of modules (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = set()
            while not members or v not in members:
                members.add(stack.pop())
            if len(members) > 1 or v in graph[v]:
                found.append(frozenset(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: ImportGraph, cycle: frozenset[str]) -> str:
    lines = [", ".join(sorted(cycle)) + ":"]
    for a in sorted(cycle):
        for b, where in sorted(graph[a].items()):
            if b in cycle:
                at = ", ".join(f"{n}{' (in a function)' if f else ''}" for n, f in where)
                lines.append(f"    {a} -> {b} at line {at}")
    return "\n".join(lines)


@pytest.mark.parametrize("layer", ORDER)
def test_no_import_cycle_within_a_layer(layer: str) -> None:
    """The modules of a layer import each other as a DAG. An import inside a function
    counts: it only hides a cycle (the module still needs the other at run time, and the
    types between them go vague), so a cycle closed by one fails like any other. Deferred
    imports that close no cycle (optional or costly dependencies, a module's own later
    needs) are not edges back and pass. ``if TYPE_CHECKING:`` imports never run: no edge.
    Known cycles are listed in KNOWN_CYCLES with their reason."""
    graph = import_graph(ROOT / "packages" / layer / "src")
    found = import_cycles(graph)
    known = {c for c in KNOWN_CYCLES if next(iter(c)).split(".")[1] == layer}
    new = [describe(graph, c) for c in found if c not in known]
    assert new == [], "import cycles:\n" + "\n".join(new)
    gone = [sorted(c) for c in known if c not in found]
    assert gone == [], f"KNOWN_CYCLES lists cycles that are gone (delete them): {gone}"


def test_the_cycle_check_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    """The graph resolves relative imports, counts a function's import as an edge and
    leaves ``if TYPE_CHECKING:`` out."""
    pkg = tmp_path / "shoal" / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ._a import f\n")
    (pkg / "_a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import _b\n"
        "if TYPE_CHECKING:\n    from ._c import C\n"
        "def f():\n    from ._c import g\n"
    )
    (pkg / "_b.py").write_text("import shoal.demo._c\n")
    (pkg / "_c.py").write_text("from ._a import f\n")
    graph = import_graph(tmp_path)
    assert graph["shoal.demo"] == {"shoal.demo._a": [(1, False)]}
    assert graph["shoal.demo._a"] == {"shoal.demo._b": [(2, False)], "shoal.demo._c": [(6, True)]}
    assert graph["shoal.demo._b"] == {"shoal.demo._c": [(1, False)]}
    cycle = frozenset({"shoal.demo._a", "shoal.demo._b", "shoal.demo._c"})
    assert import_cycles(graph) == [cycle]
    assert "shoal.demo._a -> shoal.demo._c at line 6 (in a function)" in describe(graph, cycle)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_layer_has_readme_and_typed_marker(package: Path) -> None:
    """Each layer ships a README and a py.typed inside src/shoal/<layer>/."""
    assert (package / "README.md").stat().st_size > 200
    if package.name in ORDER:
        assert (package / "src" / "shoal" / package.name / "py.typed").exists()
