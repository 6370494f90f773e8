"""Completion, inspection and "is this code complete?" for plain Python (no IPython): what
a Kernel answers to ``complete_request``, ``inspect_request`` and ``is_complete_request``
when it runs without IPython. Nothing here runs the user's code: names are looked up
attribute by attribute, never evaluated."""

from __future__ import annotations

import codeop
import contextlib
import inspect
import re
import rlcompleter
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["complete", "inspect_name", "is_complete", "line_at_cursor", "token_at_cursor"]

_DOTTED = re.compile(r"[A-Za-z_][\w.]*$|$")
_NAME_CHARS = re.compile(r"[\w.]")


def line_at_cursor(code: str, cursor_pos: int) -> tuple[str, int]:
    """The line of ``code`` that holds ``cursor_pos``, and the offset where it starts."""
    start = code.rfind("\n", 0, cursor_pos) + 1
    end = code.find("\n", cursor_pos)
    return code[start : len(code) if end < 0 else end], start


def complete(namespace: Mapping[str, Any], code: str, cursor_pos: int) -> dict[str, Any]:
    """Names and attributes that complete the dotted name before ``cursor_pos``."""
    before = code[:cursor_pos]
    token = _DOTTED.search(before.rsplit("\n", 1)[-1])
    text = token.group(0) if token else ""
    completer = rlcompleter.Completer(dict(namespace))
    matches: list[str] = []
    if text:
        with warnings.catch_warnings():  # attribute lookups of odd objects may warn
            warnings.simplefilter("ignore")
            state = 0
            while (match := completer.complete(text, state)) is not None and state < 10_000:
                state += 1
                match = match.rstrip("(")  # rlcompleter marks callables
                if match not in matches:
                    matches.append(match)
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": cursor_pos - len(text),
        "cursor_end": cursor_pos,
        "metadata": {},
    }


def token_at_cursor(code: str, cursor_pos: int) -> str:
    """The dotted name under (or just before) the cursor; inside a call's parentheses,
    the called name."""
    line, offset = line_at_cursor(code, cursor_pos)
    at = cursor_pos - offset
    start = at
    while start > 0 and _NAME_CHARS.match(line[start - 1]):
        start -= 1
    end = at
    while end < len(line) and _NAME_CHARS.match(line[end]):
        end += 1
    name = line[start:end].strip(".")
    if name and not name[0].isdigit():
        return name
    depth = 0  # not on a name: the call whose arguments the cursor is in
    for i in range(at - 1, -1, -1):
        char = line[i]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                return token_at_cursor(line, i)
            depth -= 1
    return ""


def _lookup(namespace: Mapping[str, Any], name: str) -> tuple[bool, object]:
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return False, None
    if parts[0] in namespace:
        obj = namespace[parts[0]]
    else:
        builtins = namespace.get("__builtins__")
        table = builtins if isinstance(builtins, dict) else getattr(builtins, "__dict__", {})
        if parts[0] not in table:
            return False, None
        obj = table[parts[0]]
    for part in parts[1:]:
        try:
            obj = getattr(obj, part)
        except Exception:  # any failing attribute means "not found"
            return False, None
    return True, obj


def inspect_name(
    namespace: Mapping[str, Any], code: str, cursor_pos: int, detail_level: int
) -> dict[str, Any]:
    """What is known of the name at the cursor: its type, value, signature, docstring
    (``detail_level`` 1: and its source)."""
    name = token_at_cursor(code, cursor_pos)
    found, obj = _lookup(namespace, name) if name else (False, None)
    if not found:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    lines = [f"Type:        {type(obj).__name__}"]
    try:
        form = repr(obj)
    except Exception:  # a broken __repr__
        form = f"<{type(obj).__name__} object>"
    lines.append(f"String form: {form if len(form) < 200 else form[:197] + '...'}")
    if callable(obj):
        with contextlib.suppress(TypeError, ValueError):  # no signature to show
            lines.append(f"Signature:   {name.rsplit('.', 1)[-1]}{inspect.signature(obj)}")
    doc = inspect.getdoc(obj)
    if doc:
        lines.append("Docstring:\n" + doc)
    if detail_level >= 1:
        with contextlib.suppress(OSError, TypeError):  # built in, or made at run time
            lines.append("Source:\n" + inspect.getsource(obj))  # type: ignore[arg-type]
    return {"status": "ok", "found": True, "data": {"text/plain": "\n".join(lines)}, "metadata": {}}


def is_complete(code: str) -> dict[str, Any]:
    """``complete``, ``incomplete`` (with the indent of the next line) or ``invalid``,
    by Python's own rule for interactive input: a block goes on until a blank line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = codeop.compile_command(code, "<input>", "exec")
    except (SyntaxError, ValueError, OverflowError):
        return {"status": "invalid"}
    lines = code.rstrip("\n").split("\n")
    last = lines[-1] if lines else ""
    indent = last[: len(last) - len(last.lstrip())]
    if compiled is None:
        if last.rstrip().endswith(":"):
            indent += "    "
        return {"status": "incomplete", "indent": indent}
    if indent and not code.endswith("\n\n") and len(lines) > 1:  # inside a block
        return {"status": "incomplete", "indent": indent}
    return {"status": "complete"}
