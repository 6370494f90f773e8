"""Serializer's fast path: same objects out of ``loads`` as the full path, for less work.

The full path (``_Pickler``, then dill) is unchanged, and a serializer with a registered
reducer always takes it: ``full()`` below is the reference each fast result is held to.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import json
import math
import operator
import os
import pickle
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shoal.wire import Serializer, _identity, _serialize

# What a script run as ``python script.py`` defines: its functions travel by value.
MAIN_SOURCE = '''
import math

OFFSET = 10
DATA = [1, 2]
COUNTER = 0


def add1(x):
    return x + 1


square = lambda x: x * x


def make_scaler(k):
    def scale(x):
        return x * k

    return scale


def make_pending():
    def pending():
        return later

    return pending
    later = 1  # never runs: the cell stays empty


def described(a, b=2, *, c=3) -> int:
    """Doc."""
    return a + b + c


described.tag = "t"
described.__qualname__ = "Renamed.described"


def use_globals(x):
    return math.sqrt(x) + OFFSET


def total():
    return sum(DATA)


def helper(x):
    return 2 * x


def uses_helper(x):
    return helper(x) + 1


def bump():
    global COUNTER
    COUNTER += 1
    return COUNTER


def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)


class Point:
    def __init__(self, x):
        self.x = x
'''


class _Unrelated:
    pass


def full() -> Serializer:
    """A serializer that always takes the full path (as every call did before)."""
    s = Serializer()
    s.register(_Unrelated, lambda u: (_Unrelated, ()))
    return s


def main_namespace() -> dict[str, Any]:
    """A fresh ``__main__``-like module namespace running ``MAIN_SOURCE``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(MAIN_SOURCE), "<main>", "exec"), namespace)  # noqa: S102
    return namespace


@contextlib.contextmanager
def as_receiver() -> Iterator[None]:
    """Load as another process does: with a tracker that made none of the ids.

    In the process that sent them, by-value functions come back as themselves.
    """
    saved = _identity._TRACKER
    _identity._TRACKER = _identity._Tracker()
    try:
        yield
    finally:
        _identity._TRACKER = saved


def roundtrip(obj: Any, serializer: Serializer | None = None) -> tuple[Any, list[Any]]:
    """``dumps`` here, ``loads`` as a receiver (another process) would."""
    s = serializer or Serializer()
    frames = s.dumps(obj)
    received = [frames[0], *(bytearray(memoryview(f)) for f in frames[1:])]
    with as_receiver():
        return s.loads(received), frames


@pytest.fixture
def fast_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if dumps takes the full path (``_Pickler`` or dill)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dumps took the full path")

    monkeypatch.setattr(_serialize, "_Pickler", refuse)
    monkeypatch.setattr(_serialize, "_DillPickler", refuse)


def _summary(value: Any) -> Any:
    if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
        return ("by value", value.__qualname__, value.__code__)  # not deeper: may recurse
    return value


def describe(func: Any) -> dict[str, Any]:
    """Everything a caller can observe of a rebuilt function, short of calling it."""
    cells = []
    for cell in func.__closure__ or ():
        try:
            cells.append(_summary(cell.cell_contents))
        except ValueError:
            cells.append("<empty>")
    return {
        "code": func.__code__,
        "name": func.__name__,
        "qualname": func.__qualname__,
        "module": func.__module__,
        "doc": func.__doc__,
        "defaults": func.__defaults__,
        "kwdefaults": func.__kwdefaults__,
        "annotations": func.__annotations__,
        "dict": func.__dict__,
        "cells": cells,
        "globals": [(k, _summary(v)) for k, v in func.__globals__.items()],
    }


def apply(f: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"f": f, "args": args, "kwargs": kwargs}


IMPORTABLE_CONTENTS = [
    apply(json.dumps, {"a": 1}, indent=2),
    apply(len, [1, 2, 3]),
    apply(math.sqrt, 2.0),
    apply(os.getpid),
    apply(pickle.dumps, (1, 2)),  # a builtin of the _pickle module
    apply(operator.add, 1, 2),
    apply(int, "7"),
    apply(collections.OrderedDict, {"a": 1}),
    apply(map, str, [1, 2]),  # classes as arguments too
    {"f": [json.loads, (math.floor, max)], "x": b"small", "y": None},
]


@pytest.mark.parametrize("content", IMPORTABLE_CONTENTS)
def test_importable_callables_are_plain_pickle(content: Any, fast_only: None) -> None:
    """Importable functions, builtins and classes: one plain pickle, as the full path wrote."""
    frames = Serializer().dumps(content)
    assert frames == [pickle.dumps(content, 5)]


@pytest.mark.parametrize("content", IMPORTABLE_CONTENTS)
def test_importable_callables_same_bytes_as_full_path(content: Any) -> None:
    """The fast path writes the very bytes the full path writes."""
    assert Serializer().dumps(content) == full().dumps(content)


def test_module_in_content_travels_by_name(fast_only: None) -> None:
    """A module among the arguments comes back as the receiver's module."""
    out, frames = roundtrip(apply(json.dumps, math, [os]))
    assert out["args"] == (math, [os])
    assert len(frames) == 1


MAIN_NAMES = [
    "add1",
    "square",
    "scaler",
    "pending",
    "described",
    "use_globals",
    "total",
    "uses_helper",
    "bump",
]


def _main_function(namespace: dict[str, Any], name: str) -> Any:
    if name == "scaler":
        return namespace["make_scaler"](3)
    if name == "pending":
        return namespace["make_pending"]()
    return namespace[name]


def _call(func: Any) -> Any:
    try:
        return func() if func.__code__.co_argcount == 0 else func(4)
    except NameError as exc:
        return ("NameError", str(exc))


@pytest.mark.parametrize("name", MAIN_NAMES)
def test_main_function_takes_fast_path(name: str, fast_only: None) -> None:
    """Functions of ``__main__`` whose state is plain take the fast path, and still work."""
    func = _main_function(main_namespace(), name)
    out, frames = roundtrip(apply(func, 4))
    assert len(frames) == 1
    assert out["f"] is not func
    assert _call(out["f"]) == _call(func)


@pytest.mark.parametrize("name", [*MAIN_NAMES, "fact"])
def test_main_function_same_as_full_path(name: str) -> None:
    """What comes back is what the full path gives: code, state, globals, result."""
    func = _main_function(main_namespace(), name)
    content = apply(func, 4)
    fast, _ = roundtrip(content)
    reference, _ = roundtrip(content, full())
    assert describe(fast["f"]) == describe(reference["f"])
    assert fast["f"].__globals__["__builtins__"] is builtins
    assert _call(fast["f"]) == _call(reference["f"]) == _call(func)


def test_receiver_sees_globals_as_they_are_at_each_dumps() -> None:
    """Rebinding or mutating a global between two sends changes what the receiver runs."""
    namespace = main_namespace()
    s = Serializer()
    before = s.dumps(apply(namespace["use_globals"], 4))
    total_before = s.dumps(apply(namespace["total"]))
    namespace["OFFSET"] = 20
    namespace["DATA"].append(3)
    after = s.dumps(apply(namespace["use_globals"], 4))
    total_after = s.dumps(apply(namespace["total"]))
    namespace["math"] = types.SimpleNamespace(sqrt=lambda x: -1.0)  # not plain: full path
    patched = s.dumps(apply(namespace["use_globals"], 4))
    with as_receiver():
        assert s.loads(before)["f"](4) == 12.0
        assert s.loads(after)["f"](4) == 22.0
        assert s.loads(total_before)["f"]() == 3
        assert s.loads(total_after)["f"]() == 6
        assert s.loads(patched)["f"](4) == 19.0


def test_each_message_gets_fresh_globals() -> None:
    """A function that assigns a global changes its own message's globals only."""
    bump = main_namespace()["bump"]
    s = Serializer()
    frames = s.dumps(apply(bump))
    with as_receiver():
        first, second = s.loads(frames)["f"], s.loads(frames)["f"]
    assert (first(), first(), second()) == (1, 2, 1)
    assert first.__globals__ is not second.__globals__
    assert bump.__globals__["COUNTER"] == 0


def test_functions_of_one_message_share_their_module_globals(fast_only: None) -> None:
    """As on the full path: one globals dict per source module and message."""
    namespace = main_namespace()
    other = main_namespace()
    out, _ = roundtrip(apply(namespace["add1"], namespace["total"], other["total"]))
    assert out["f"].__globals__ is out["args"][0].__globals__
    assert out["f"].__globals__ is not out["args"][1].__globals__
    assert set(out["f"].__globals__) == {"__name__", "__builtins__", "DATA"}


def test_shared_objects_stay_shared(fast_only: None) -> None:
    """A function, a container holding one, or a global, sent twice, arrives once."""
    namespace = main_namespace()
    add1, total = namespace["add1"], namespace["total"]
    holder = [add1]
    out, _ = roundtrip({"a": add1, "b": add1, "h": (holder, holder), "t": total})
    assert out["a"] is out["b"]
    assert out["h"][0] is out["h"][1]
    assert out["h"][0][0] is out["a"]
    out, _ = roundtrip(apply(total, namespace["DATA"]))
    assert out["args"][0] is out["f"].__globals__["DATA"]
    assert out["f"]() == 3


def test_function_that_reaches_itself_takes_full_path() -> None:
    """Recursion through a global needs the full path's state setter; it still works."""
    fact = main_namespace()["fact"]
    out, _ = roundtrip(apply(fact, 5))
    assert b"_build_function" not in bytes(Serializer().dumps(fact)[0])
    assert out["f"](5) == 120
    assert out["f"].__globals__["fact"] is out["f"]


@pytest.mark.parametrize("main", [False, True], ids=["importable", "main"])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_still_out_of_band(main: bool, kind: type) -> None:
    """Bytes at the threshold go out of band, below it in band, next to any function."""
    func = main_namespace()["add1"] if main else json.dumps
    s = Serializer(threshold=1000)
    for size, nframes in ((999, 1), (1000, 3)):
        content = apply(func, kind(b"x" * size), key=[kind(b"y" * size)])
        out, frames = roundtrip(content, s)
        assert len(frames) == nframes
        assert out["args"][0] == content["args"][0]
        assert type(out["args"][0]) is kind
        assert out["kwargs"]["key"] == content["kwargs"]["key"]
        assert out["f"](1) == (2 if main else "1")


def test_large_global_bytes_as_on_full_path() -> None:
    """A function's large bytes global travels as the full path sends it (in band)."""
    namespace = main_namespace()
    namespace["DATA"] = b"z" * 100_000
    content = apply(namespace["total"])
    out, frames = roundtrip(content)
    reference, reference_frames = roundtrip(content, full())
    assert len(frames) == len(reference_frames)
    assert out["f"].__globals__["DATA"] == reference["f"].__globals__["DATA"]


@pytest.mark.parametrize(("size", "nframes"), [(10, 1), (100_000, 2)])
def test_numpy_arrays_next_to_main_function(size: int, nframes: int) -> None:
    """Arrays keep their frames: large ones out of band, small ones in band."""
    array = np.arange(size, dtype=np.float64)
    out, frames = roundtrip(apply(main_namespace()["add1"], array))
    assert len(frames) == nframes == len(full().dumps(apply(json.dumps, array)))
    np.testing.assert_array_equal(out["f"](out["args"][0]), array + 1)


def test_registered_reducer_disables_fast_path() -> None:
    """A reducer registered for a type the fast path knows (complex) is still used."""
    s = Serializer()
    s.register(complex, lambda z: (complex, (z.real + 1, z.imag)))
    out, _ = roundtrip(apply(json.dumps, 1j, z=2j), s)
    assert out["args"] == (1 + 1j,)
    assert out["kwargs"] == {"z": 1 + 2j}
    add1 = main_namespace()["add1"]
    out, _ = roundtrip(apply(add1, 1j), s)
    assert out["args"] == (1 + 1j,)
    assert out["f"](1) == 2


def test_bound_builtin_method_takes_full_path() -> None:
    """A builtin bound to an object pickles that object: it may hold __main__ functions."""
    add1 = main_namespace()["add1"]
    out, _ = roundtrip(apply([add1].copy))
    (copied,) = out["f"]()
    assert copied(1) == 2


def test_main_class_takes_full_path() -> None:
    """A class defined in __main__ travels by value, not by a name the peer lacks."""
    point = main_namespace()["Point"]
    out, _ = roundtrip(apply(point, 3))
    assert out["f"](*out["args"]).x == 3
    assert out["f"] is not point
