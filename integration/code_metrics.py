"""Measures of the code's plan, for the renovation's before/after (issue 15).

    python integration/code_metrics.py

Prints: the ten largest modules (lines), function-level imports, ``Any`` in public
signatures, the time of ``import shoal.hub`` and the uses of another distribution's
private names (modules or underscore attributes).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "packages"
# Each distribution's public modules: their __all__ is the published API.
PUBLIC_MODULES = {
    "wire": ["shoal.wire"],
    "util": ["shoal.util"],
    "engine": ["shoal.engine"],
    "hub": ["shoal.hub", "shoal.hub.managers", "shoal.hub.testing"],
    "arrays": ["shoal.arrays"],
}
_ANY = re.compile(r"\bAny\b")
# Underscore names that are public API (namedtuple's methods).
_PUBLIC_UNDERSCORE = {"_replace", "_make", "_asdict", "_fields"}


def sources() -> dict[str, list[Path]]:
    """Each distribution's source files."""
    return {
        d.name: sorted((d / "src").rglob("*.py"))
        for d in sorted(PACKAGES.iterdir())
        if (d / "src").is_dir()
    }


def largest(n: int = 10) -> list[tuple[int, str]]:
    rows = [
        (len(p.read_text().splitlines()), str(p.relative_to(PACKAGES)))
        for files in sources().values()
        for p in files
    ]
    return sorted(rows, reverse=True)[:n]


def function_level_imports() -> list[str]:
    """Imports inside a function (a cycle hidden, or a cost deferred)."""
    found = []
    for files in sources().values():
        for path in files:
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                found.extend(
                    f"{path.relative_to(PACKAGES)}:{node.lineno}"
                    for node in ast.walk(fn)
                    if isinstance(node, ast.Import | ast.ImportFrom)
                )
    return sorted(set(found))


def _public_callables(module_name: str) -> list[tuple[str, object]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    out: list[tuple[str, object]] = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            out.append((f"{module_name}.{name}", obj.__init__))
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__call__", "__getitem__"):
                    continue
                fn = member
                if isinstance(member, property):
                    fn = member.fget
                elif isinstance(member, classmethod | staticmethod):
                    fn = member.__func__
                if callable(fn):
                    out.append((f"{module_name}.{name}.{attr}", fn))
        elif callable(obj):
            out.append((f"{module_name}.{name}", obj))
    return out


def public_any() -> list[str]:
    """Public functions and methods with ``Any`` in an annotation (overloads included)."""
    found = []
    for modules in PUBLIC_MODULES.values():
        for module_name in modules:
            for qualname, fn in _public_callables(module_name):
                try:
                    variants = [fn, *typing.get_overloads(fn)]  # type: ignore[arg-type]
                except AttributeError:  # a slot wrapper: no annotations
                    continue
                for variant in variants:
                    notes = getattr(variant, "__annotations__", {})
                    for arg, note in notes.items():
                        if _ANY.search(note if isinstance(note, str) else repr(note)):
                            found.append(f"{qualname}({arg})")
    return sorted(set(found))


def import_time(module: str = "shoal.hub") -> float:
    """Median of 5 fresh interpreters' cumulative import time of ``module``, ms."""
    times = []
    for _ in range(5):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for line in err.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                times.append(int(parts[1]) / 1000)
    times.sort()
    return times[len(times) // 2]


def private_uses() -> list[str]:
    """Imports of another distribution's private module, and attribute uses of an
    underscore name that the using distribution does not define itself but another does."""
    files = sources()
    defined: dict[str, set[str]] = {}
    for dist, paths in files.items():
        names: set[str] = set()
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif isinstance(node, ast.arg):
                    names.add(node.arg)
        defined[dist] = names
    found = []
    for dist, paths in files.items():
        others = set().union(*(n for d, n in defined.items() if d != dist))
        for path in paths:
            where = path.relative_to(PACKAGES)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    parts = node.module.split(".")
                    if (
                        parts[0] == "shoal"
                        and len(parts) > 1
                        and parts[1] != dist
                        and any(p.startswith("_") for p in parts[2:])
                    ):
                        found.append(f"{where}:{node.lineno} imports {node.module}")
                    if parts[0] == "shoal" and len(parts) > 1 and parts[1] != dist:
                        found.extend(
                            f"{where}:{node.lineno} imports {alias.name}"
                            for alias in node.names
                            if alias.name.startswith("_")
                        )
                elif isinstance(node, ast.Attribute):
                    attr = node.attr
                    if (
                        attr.startswith("_")
                        and not attr.startswith("__")
                        and attr not in _PUBLIC_UNDERSCORE
                        and attr not in defined[dist]
                        and attr in others
                    ):
                        found.append(f"{where}:{node.lineno} uses .{attr}")
    return found


def main() -> None:
    print("largest modules (lines):")
    for lines, path in largest():
        print(f"  {lines:5d}  {path}")
    total = sum(len(p.read_text().splitlines()) for fs in sources().values() for p in fs)
    print(f"  total {total} lines in {sum(len(fs) for fs in sources().values())} files")
    hub = PACKAGES / "hub" / "src" / "shoal" / "hub"
    print(f"  shoal.hub: {sum(len(p.read_text().splitlines()) for p in hub.rglob('*.py'))} lines")
    imports = function_level_imports()
    print(f"function-level imports: {len(imports)}")
    for item in imports:
        print(f"  {item}")
    anys = public_any()
    print(f"Any in public signatures: {len(anys)}")
    print(f"`import shoal.hub`: {import_time():.0f} ms (median of 5, cumulative)")
    uses = private_uses()
    print(f"uses of another distribution's private names: {len(uses)}")
    for item in uses:
        print(f"  {item}")


if __name__ == "__main__":
    main()
