"""The monorepo's promises: layers import only downward, pins admit their siblings."""

from __future__ import annotations

import ast
import subprocess
import sys
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
        " 'shoal.hub._compat.managers', 'multiprocessing.managers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import shoal.hub; print(shoal.hub.Hub.__module__, shoal.hub.Manager.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["shoal.hub", "shoal.hub"]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_layer_has_readme_and_typed_marker(package: Path) -> None:
    """Each layer ships a README and a py.typed inside src/shoal/<layer>/."""
    assert (package / "README.md").stat().st_size > 200
    if package.name in ORDER:
        assert (package / "src" / "shoal" / package.name / "py.typed").exists()
