"""Serializer: dill semantics, C-pickle speed paths, zero-copy buffers, clear failures."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import numpy as np
import pytest

from shoal.wire import Serializer, UnpicklableError

GLOBAL_OFFSET = 100


def roundtrip(obj: Any, serializer: Serializer | None = None) -> tuple[Any, list[Any]]:
    s = serializer or Serializer()
    frames = s.dumps(obj)
    # What a receiver holds: fresh, writable buffers it owns (like zmq frames).
    received = [frames[0], *(bytearray(memoryview(f)) for f in frames[1:])]
    return s.loads(received), frames


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -(2**80),
        3.5,
        "text ü",
        b"bytes",
        [1, [2, [3]]],
        (1, "a"),
        {"a": {"b": (1, 2)}},
        {1, 2},
        frozenset({3}),
        complex(1, 2),
        range(5),
    ],
)
def test_plain_data_roundtrips(obj: Any) -> None:
    """Builtin data comes back equal."""
    assert roundtrip(obj)[0] == obj


def test_plain_data_is_plain_pickle() -> None:
    """Small builtin data is exactly what pickle protocol 5 writes (no detour)."""
    obj = {"a": [1, 2.0, "x"], "b": (None, True)}
    assert Serializer().dumps(obj) == [pickle.dumps(obj, 5)]


def test_lambda_closure_and_global_travel_by_value() -> None:
    """A lambda closing over a local and using a module global works after the trip."""
    y = 5
    f = lambda x: x + y + GLOBAL_OFFSET  # noqa: E731 - a lambda is the point
    g, _ = roundtrip(f)
    assert g(1) == 106


def test_recursive_nested_function() -> None:
    """A nested function that calls itself through its closure survives."""

    def outer() -> Any:
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    g, _ = roundtrip(outer())
    assert g(5) == 120


def test_function_attributes_kept() -> None:
    """Defaults, keyword defaults, name, doc and __dict__ are preserved."""

    def f(a: int, b: int = 2, *, c: int = 3) -> int:
        """Doc."""
        return a + b + c

    f.tag = "t"  # type: ignore[attr-defined]
    g, _ = roundtrip(f)
    assert (g(1), g(1, c=10), g.__name__, g.__doc__, g.tag) == (6, 13, "f", "Doc.", "t")


def test_importable_function_goes_by_reference() -> None:
    """A function importable on both ends travels by name, not by value."""
    frames = Serializer().dumps(np.add.reduce)
    assert len(memoryview(frames[0])) < 100
    frames = Serializer().dumps(pickle.dumps)
    assert b"_make_function" not in bytes(frames[0])


def test_local_class_instance_travels() -> None:
    """An instance of a class defined inside a function is rebuilt (via dill)."""

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        def double(self) -> int:
            return 2 * self.x

    p, _ = roundtrip(Point(21))
    assert p.double() == 42


def test_lock_via_dill() -> None:
    """What the C pickler refuses but dill knows (a lock) still serializes."""
    lock, _ = roundtrip({"lock": threading.Lock()})
    assert lock["lock"].acquire(blocking=False)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(100_000, dtype=np.float64),
        np.arange(100_000, dtype=np.int8).reshape(1000, 100),
        np.ones((300, 300), dtype=np.complex64, order="F"),
        np.zeros(50_000, dtype=[("a", "i4"), ("b", "f8")]),
        np.array(["x" * 10] * 10_000),
    ],
    ids=["f8", "i1-2d", "c8-fortran", "structured", "unicode"],
)
def test_large_arrays_out_of_band(array: np.ndarray[Any, Any]) -> None:
    """Large contiguous arrays of any dtype travel as their own frame and come back equal."""
    out, frames = roundtrip(array)
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == array.nbytes
    np.testing.assert_array_equal(out, array)
    assert out.dtype == array.dtype
    assert out.flags.writeable


def test_zero_copy_both_ways() -> None:
    """dumps references the array's memory and loads uses the frame in place."""
    array = np.arange(1 << 20, dtype=np.float64)
    s = Serializer()
    frames = s.dumps(array)
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float64), array)
    out = s.loads(frames)
    assert np.shares_memory(out, array)


def test_non_contiguous_array_in_band() -> None:
    """A strided view cannot go out of band; it still round-trips correctly."""
    array = np.arange(200_000, dtype=np.float64)[::2]
    out, _ = roundtrip(array)
    np.testing.assert_array_equal(out, array)


def test_small_array_in_band() -> None:
    """Arrays under the threshold stay inside the pickle stream."""
    out, frames = roundtrip(np.arange(10))
    assert len(frames) == 1
    np.testing.assert_array_equal(out, np.arange(10))


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_out_of_band_even_nested(kind: type) -> None:
    """Large bytes and bytearrays, at top level and inside apply-style args, go out of band."""
    blob = kind(b"x" * 200_000)
    for obj in (blob, ("f", (blob, 2), {})):
        out, frames = roundtrip(obj)
        assert len(frames) == 2
        assert out == obj
        found = out if isinstance(out, kind) else out[1][0]
        assert type(found) is kind


def test_memoryview_zero_copy() -> None:
    """A large memoryview arrives as a memoryview of the received buffer."""
    view = memoryview(bytearray(b"m" * 100_000))
    out, frames = roundtrip(view)
    assert isinstance(out, memoryview)
    assert len(frames) == 2
    assert out.tobytes() == view.tobytes()


def test_threshold_is_configurable() -> None:
    """A threshold of 0 sends even tiny arrays out of band; a negative one is refused."""
    assert len(Serializer(threshold=0).dumps(np.arange(4))) == 2
    with pytest.raises(ValueError, match="threshold"):
        Serializer(threshold=-1)


def test_unpicklable_names_type_and_path() -> None:
    """A generator deep inside raises UnpicklableError (a TypeError) with its path."""
    obj = {"outer": [1, {"gen": (i for i in range(3))}]}
    with pytest.raises(TypeError) as info:
        Serializer().dumps(obj)
    err = info.value
    assert isinstance(err, UnpicklableError)
    assert "generator" in str(err)
    assert err.path == "obj['outer'][1]['gen']"


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def test_register_custom_reducer_is_per_instance() -> None:
    """A registered reducer applies to its serializer only (no module state)."""
    s = Serializer()
    s.register(Celsius, lambda c: (Celsius, (c.degrees + 1000,)))
    assert s.loads(s.dumps(Celsius(1))).degrees == 1001
    other = Serializer()
    assert other.loads(other.dumps(Celsius(1))).degrees == 1


def test_register_rejects_bad_arguments() -> None:
    """register() needs a class and a callable."""
    with pytest.raises(TypeError, match="class"):
        Serializer().register("Celsius", lambda c: c)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        Serializer().register(Celsius, 3)  # type: ignore[arg-type]


def test_loads_needs_a_frame() -> None:
    """loads() of nothing says what was missing."""
    with pytest.raises(ValueError, match="at least one frame"):
        Serializer().loads([])
