"""The public surface of shoal.util, its version and its layer boundary."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shoal.util

SRC = Path(shoal.util.__file__).parent
EXPECTED = {
    "Namespace",
    "PUBLogHandler",
    "ReverseDict",
    "connect_engine_logger",
    "connect_logger",
    "disambiguate_ip_address",
    "disambiguate_url",
    "generate_exec_key",
    "integer_loglevel",
    "interactive",
    "is_url",
    "local_logger",
    "log_errors",
    "outbound_ip",
    "select_random_ports",
    "set_hwm",
    "signal_children",
    "split_url",
    "validate_url",
    "validate_url_container",
}


def test_all_is_the_documented_surface() -> None:
    """__all__ lists exactly the documented names, each importable from shoal.util."""
    assert set(shoal.util.__all__) == EXPECTED
    assert len(shoal.util.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(shoal.util, name) is not None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_module_path(name: str) -> None:
    """Every export says it lives in shoal.util, not in a private module."""
    assert getattr(shoal.util, name).__module__ == "shoal.util"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_names_have_docstrings(name: str) -> None:
    """Every export has a docstring with a versionadded note."""
    doc = inspect.getdoc(getattr(shoal.util, name)) or ""
    assert ".. versionadded::" in doc


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert shoal.util.__version__ == importlib.metadata.version("shoal-util")


def test_py_typed_ships_in_the_layer() -> None:
    """py.typed is in shoal/util/, and there is no shoal/__init__.py (PEP 420 namespace)."""
    assert (SRC / "py.typed").is_file()
    assert not (SRC.parent / "__init__.py").exists()


def test_wire_pin_admits_installed_wire() -> None:
    """The shoal-wire~=X.Y.Z requirement admits the shoal-wire that is installed."""
    reqs = importlib.metadata.requires("shoal-util") or []
    [pin] = [r for r in reqs if r.startswith("shoal-wire")]
    match = re.fullmatch(r"shoal-wire\s*~=\s*(\d+)\.(\d+)\.(\d+)", pin)
    assert match, f"expected shoal-wire~=X.Y.Z, got {pin!r}"
    major, minor, micro = (int(g) for g in match.groups())
    installed = importlib.metadata.version("shoal-wire")
    parts = [int(p) for p in re.findall(r"\d+", installed)[:3]]
    assert parts[:2] == [major, minor]
    assert parts[2] >= micro
    assert not [r for r in reqs if r.startswith("shoal-") and not r.startswith("shoal-wire")]


def test_sources_import_only_wire_of_shoal() -> None:
    """No module of shoal.util imports a shoal layer other than shoal.wire."""
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name == "shoal" or name.startswith("shoal."):
                    assert name.split(".")[1:2] in (["util"], ["wire"]), f"{path.name}: {name}"


def test_import_loads_no_other_layer() -> None:
    """Importing shoal.util in a fresh interpreter loads only shoal.util and shoal.wire."""
    code = "import sys, shoal.util; print(*(m for m in sys.modules if m.startswith('shoal')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "shoal.util" in loaded
    assert {m.split(".")[1] for m in loaded if "." in m} <= {"util", "wire"}
