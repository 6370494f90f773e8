"""Differential tests: every operation on a DistArray equals numpy's on the same data.

Arrays come from hypothesis (1-3 dimensions, empty and length-1 axes included), split
along a random axis into 1-4 uneven blocks (empty ones included) on random engines of a
3-engine cluster. Each test compares with numpy on the local array: exactly for integer
and boolean results, with ``assert_allclose`` for floating reductions. The ``clean``
fixture checks after each test that the engines hold as many objects as before, and
operations run inside ``NoGather``: no array data reaches the client.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest
from arrays_testing import NoGather
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing.overrides import get_overridable_numpy_ufuncs

import shoal.arrays as sa
from shoal.hub import Client

FAST = settings(
    max_examples=int(os.environ.get("SHOAL_TEST_EXAMPLES", "12")),  # more for a deeper run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [np.int64, np.float64, np.bool_]
ENGINES = [0, 1, 2]


@st.composite
def layouts(draw: Any, shape: tuple[int, ...]) -> tuple[int, list[int], list[int]]:
    """A split axis, the engines of 1-4 blocks and their boundaries (uneven, maybe empty)."""
    axis = draw(st.integers(0, len(shape) - 1))
    k = draw(st.integers(1, 4))
    engines = draw(st.lists(st.sampled_from(ENGINES), min_size=k, max_size=k))
    cuts = sorted(draw(st.lists(st.integers(0, shape[axis]), min_size=k - 1, max_size=k - 1)))
    return axis, engines, [0, *cuts, shape[axis]]


@st.composite
def cases(
    draw: Any, dtypes: list[Any] = DTYPES, min_dims: int = 1, min_side: int = 0
) -> tuple[np.ndarray[Any, Any], tuple[int, list[int], list[int]]]:
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=min_side, max_side=5))
    elements = (
        st.integers(-20, 20)
        if np.dtype(dtype).kind == "i"
        else st.floats(-50, 50, allow_nan=False, width=64)
        if np.dtype(dtype).kind == "f"
        else None
    )
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    return a, draw(layouts(shape))


def dist(client: Client, a: np.ndarray[Any, Any], layout: tuple[int, list[int], list[int]]) -> Any:
    axis, engines, bounds = layout
    return sa.scatter(a, axis, engines, bounds, client=client)


def same(got: Any, want: Any, *, exact: bool | None = None) -> None:
    """``got`` (ours, gathered here) equals numpy's ``want``: value, shape and dtype."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            same(g, w, exact=exact)
        return
    if isinstance(want, np.ndarray) and want.ndim:
        assert isinstance(got, sa.DistArray | sa.RemoteArray), type(got)
        got = sa.gather(got)
    else:
        assert not isinstance(got, sa.DistArray | sa.RemoteArray), "full reductions give scalars"
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if exact if exact is not None else want.dtype.kind in "biuUSM":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True)


# -- ufunc __call__ ------------------------------------------------------------------


UNARY = [
    np.negative,
    np.absolute,
    np.sin,
    np.exp,
    np.sqrt,
    np.isnan,
    np.logical_not,
    np.floor,
    np.sign,
    np.square,
    np.invert,
]


@FAST
@given(case=cases(), ufunc=st.sampled_from(UNARY))
def test_unary_ufuncs(clean: Client, case: Any, ufunc: np.ufunc) -> None:
    a, layout = case
    with np.errstate(all="ignore"):
        try:
            want = ufunc(a)
        except TypeError:
            return  # no loop for this dtype (invert of floats): nothing to compare
        x = dist(clean, a, layout)
        with NoGather(clean):
            got = ufunc(x)
    same(got, want)


BINARY = [
    np.add,
    np.subtract,
    np.multiply,
    np.maximum,
    np.less,
    np.equal,
    np.true_divide,
    np.logical_xor,
    np.arctan2,
]


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64]),
    ufunc=st.sampled_from(BINARY),
    kind=st.sampled_from(["ndarray", "misaligned", "row", "scalar", "remote", "column1"]),
    data=st.data(),
)
def test_binary_ufuncs_broadcast_and_mix_operands(
    clean: Client, case: Any, ufunc: np.ufunc, kind: str, data: Any
) -> None:
    a, layout = case
    b = (a * 3 - 1).astype(a.dtype)
    x = dist(clean, a, layout)
    if kind == "ndarray":
        other, local = b, b
    elif kind == "misaligned":
        other, local = dist(clean, b, data.draw(layouts(b.shape))), b
    elif kind == "row":
        local = np.arange(b.shape[-1], dtype=b.dtype) + 3  # a row, broadcast down
        other = local
    elif kind == "scalar":
        other = local = 2
    elif kind == "remote":
        other, local = sa.remote(b, engine=data.draw(st.sampled_from(ENGINES)), client=clean), b
    else:  # a length-1 split axis, broadcast against x
        local = np.take(b, [0], axis=layout[0]) if b.shape[layout[0]] else b
        other = sa.scatter(local, layout[0], client=clean)
    with np.errstate(all="ignore"):
        want = ufunc(a, local)
        with NoGather(clean):
            got = ufunc(x, other)
            back = ufunc(other, x)
        want_back = ufunc(local, a)
    same(got, want)
    same(back, want_back)


@FAST
@given(case=cases(dtypes=[np.float64]), data=st.data())
def test_out_where_dtype_and_two_outputs(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    mask = a > 0
    out = sa.zeros(a.shape, client=clean, axis=layout[0])
    expected = np.zeros(a.shape)
    with NoGather(clean):
        np.multiply(x, 2, out=out, where=mask)
        m = dist(clean, mask, data.draw(layouts(a.shape)))
        np.add(x, 1, out=out, where=m)
        f32 = np.add(x, 1, dtype=np.float32)
        q, r = np.divmod(x, 3)
        frac, whole = np.modf(x)
    np.multiply(a, 2, out=expected, where=mask)
    np.add(a, 1, out=expected, where=mask)
    same(out, expected)
    same(f32, np.add(a, 1, dtype=np.float32))
    same((q, r), np.divmod(a, 3))
    same((frac, whole), np.modf(a))


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_operators_and_in_place_operators(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    b = (a + 7).astype(a.dtype)
    x = dist(clean, a, layout)
    y = dist(clean, b, data.draw(layouts(b.shape)))
    with NoGather(clean):
        results = [
            x + y,
            x - y,
            x * y,
            x / (abs(y) + 1),
            x // (abs(y) + 1),
            x % (abs(y) + 1),
            x**2,
            -x,
            +x,
            abs(x),
            x < y,
            x <= y,
            x == y,
            x != y,
            x > y,
            x >= y,
            2 - x,
            3 * x,
            divmod(x, 4)[0],
        ]
        z = x.copy()
        z += y
        z *= 2
        z -= x
    expected = [
        a + b,
        a - b,
        a * b,
        a / (abs(b) + 1),
        a // (abs(b) + 1),
        a % (abs(b) + 1),
        a**2,
        -a,
        +a,
        abs(a),
        a < b,
        a <= b,
        a == b,
        a != b,
        a > b,
        a >= b,
        2 - a,
        3 * a,
        divmod(a, 4)[0],
    ]
    for got, want in zip(results, expected, strict=True):
        same(got, want)
    same(z, (a + b) * 2 - a)
    if a.dtype.kind == "i":
        w = x.copy()
        w &= 6
        w |= 1
        w ^= 3
        w <<= 1
        w >>= 1
        same(w, ((((a & 6) | 1) ^ 3) << 1) >> 1)


# -- reduce, accumulate, reduceat, outer, at ----------------------------------------------


@st.composite
def axes(draw: Any, ndim: int) -> Any:
    return draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_], min_side=1),
    ufunc=st.sampled_from([np.add, np.multiply, np.maximum, np.minimum, np.logical_or]),
    data=st.data(),
)
def test_reduce_on_any_axes(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    if ufunc is np.multiply and a.dtype.kind == "i":
        a = np.clip(a, -2, 2)
    axis = data.draw(axes(a.ndim))
    keepdims = data.draw(st.booleans())
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = ufunc.reduce(x, axis=axis, keepdims=keepdims)
        where = a > 0 if a.dtype != bool else a
        got_where = ufunc.reduce(x, axis=axis, keepdims=keepdims, initial=5, where=where)
    same(got, ufunc.reduce(a, axis=axis, keepdims=keepdims))
    same(got_where, ufunc.reduce(a, axis=axis, keepdims=keepdims, initial=5, where=where))


@FAST
@given(case=cases(dtypes=[np.float64], min_side=1), ufunc=st.sampled_from([np.subtract, np.divide]))
def test_reduce_that_numpy_cannot_reorder(clean: Client, case: Any, ufunc: np.ufunc) -> None:
    a, layout = case
    a = a + 100.0  # no division by zero
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = ufunc.reduce(x, axis=layout[0])
        kept = ufunc.reduce(x, axis=layout[0], keepdims=True)
    same(got, ufunc.reduce(a, axis=layout[0]))
    same(kept, ufunc.reduce(a, axis=layout[0], keepdims=True))
    if a.ndim > 1:  # through our hook: numpy 2.4 leaks the arguments of a reduction
        with pytest.raises(ValueError, match="not reorderable"):  # that raises (#31677)
            x.__array_ufunc__(ufunc, "reduce", x, axis=None)


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64]),
    ufunc=st.sampled_from([np.add, np.multiply, np.maximum, np.subtract]),
    data=st.data(),
)
def test_accumulate_along_every_axis(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    if ufunc is np.multiply:
        a = np.clip(a, -2, 2)
    axis = data.draw(st.integers(0, a.ndim - 1))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = ufunc.accumulate(x, axis=axis)
        split = ufunc.accumulate(x, axis=layout[0])
    same(got, ufunc.accumulate(a, axis=axis), exact=a.dtype.kind == "i")
    same(split, ufunc.accumulate(a, axis=layout[0]), exact=a.dtype.kind == "i")


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_reduceat_outer_and_at(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.sampled_from([layout[0], a.ndim - 1]))
    n = a.shape[axis]
    indices = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = np.add.reduceat(x, indices, axis=axis)
    same(got, np.add.reduceat(a, indices, axis=axis))
    flat = a.reshape(-1)
    v = dist(clean, flat, data.draw(layouts(flat.shape)))
    with NoGather(clean):
        outer = np.multiply.outer(v, np.arange(3))
        outer_back = np.subtract.outer(np.arange(2), v)
    same(outer, np.multiply.outer(flat, np.arange(3)))
    same(outer_back, np.subtract.outer(np.arange(2), flat))
    where = data.draw(st.lists(st.integers(-flat.size, flat.size - 1), max_size=8))
    values = np.arange(len(where), dtype=flat.dtype)
    expected = flat.copy()
    np.add.at(expected, where, values)
    with NoGather(clean):
        np.add.at(v, where, values)
    same(v, expected)


_RNG = np.random.default_rng(0)
_TEXT = np.array([["ab", " c", "D1"]] * 5)
_NUM = np.full((5, 3), 2, np.int64)
# String ufuncs list no loops: argument recipes, tried until numpy accepts one.
_RECIPES = {
    1: [(_TEXT,)],
    2: [(_TEXT, _TEXT), (_TEXT, _NUM)],
    3: [(_TEXT, _NUM, np.full((5, 3), "*")), (_TEXT, _TEXT, _NUM), (_TEXT, _NUM, _NUM)],
    4: [(_TEXT, _TEXT, _NUM, _NUM), (_TEXT, _TEXT, _TEXT, _NUM)],
}


def _operand(code: str) -> np.ndarray[Any, Any] | None:
    """A (5, 3) operand for a ufunc loop's type code; None when there is none here."""
    kind = np.dtype(code).kind if code not in "OTV" else code
    if kind == "b":
        return _RNG.random((5, 3)) > 0.5
    if kind in "iu":
        return _RNG.integers(1, 5, (5, 3)).astype(code)
    if kind in "fc":
        return (_RNG.random((5, 3)) * 4 + 0.5).astype(code)
    if kind == "U":
        return _TEXT
    if kind == "M":
        return np.array(["2020-01-01", "NaT", "1999-12-31"] * 5, "datetime64[D]").reshape(5, 3)
    if kind == "m":
        return np.arange(15, dtype="timedelta64[s]").reshape(5, 3)
    return None


def _numpy_accepts(ufunc: np.ufunc, args: tuple[Any, ...]) -> bool:
    try:
        with np.errstate(all="ignore"):
            ufunc(*args)
    except TypeError:  # no loop for these operands
        return False
    except Exception:  # a loop that fails on these values: compared too
        return True
    return True


def _operands(ufunc: np.ufunc) -> Any:
    for loop in ufunc.types:
        candidate = [_operand(c) for c in loop.split("->")[0]]
        if all(a is not None for a in candidate):
            return candidate
    return next((r for r in _RECIPES.get(ufunc.nin, []) if _numpy_accepts(ufunc, r)), None)


def test_every_overridable_ufunc_is_handled(clean: Client) -> None:
    """numpy's list of ufuncs that dispatch to ``__array_ufunc__``: each gives numpy's
    result (or numpy's error) on DistArrays."""
    unhandled, untried = [], []
    for ufunc in sorted(get_overridable_numpy_ufuncs(), key=lambda u: u.__name__):
        args = _operands(ufunc)
        if args is None:
            untried.append(ufunc.__name__)
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                want = ufunc(*args)
            except Exception as exc:
                want = exc
            try:
                got = ufunc(
                    *(sa.scatter(a, 0, [0, 1, 2], [0, 2, 2, 5], client=clean) for a in args)
                )
            except Exception as exc:
                got = exc
        if isinstance(want, Exception):
            name = getattr(got, "ename", type(got).__name__)
            if name != type(want).__name__:
                unhandled.append(f"{ufunc.__name__}: numpy raised {want!r}, we gave {got!r}")
            continue
        try:
            same(got, want, exact=True)
        except AssertionError as exc:
            unhandled.append(f"{ufunc.__name__}: {exc}")
    assert not unhandled, "\n".join(unhandled)
    # numpy's private string ufuncs that need an `out` of a dtype computed beforehand
    # (np.strings.center and friends make it): the test has no operands for them.
    needs_out = {
        "_center",
        "_expandtabs",
        "_ljust",
        "_rjust",
        "_zfill",
        "_replace",
        "_slice",
        "_partition",
        "_partition_index",
        "_rpartition",
        "_rpartition_index",
    }
    assert set(untried) <= needs_out, f"no arguments found to try {set(untried) - needs_out}"


# -- functions and methods ------------------------------------------------------------------


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_reductions_and_scans(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.one_of(st.none(), st.integers(0, a.ndim - 1)))
    x = dist(clean, a, layout)
    names = [
        "sum",
        "prod",
        "mean",
        "std",
        "var",
        "min",
        "max",
        "argmin",
        "argmax",
        "any",
        "all",
        "cumsum",
        "cumprod",
    ]
    small = np.clip(a, -3, 3)
    xs = dist(clean, small, layout)
    for name in names:
        src, arr = (xs, small) if name in ("prod", "cumprod") else (x, a)
        with NoGather(clean):
            got = getattr(src, name)(axis=axis)
            fn = getattr(np, name, None)
            via_np = fn(src, axis=axis) if fn is not None else got
        want = getattr(arr, name)(axis=axis)
        same(got, want)
        same(via_np, want)
    with NoGather(clean):
        spread = np.ptp(x, axis=axis)
    same(spread, np.ptp(a, axis=axis))


@FAST
@given(case=cases(dtypes=[np.float64], min_side=1), data=st.data())
def test_arg_reductions_keep_the_first_of_ties_and_nan(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    a = np.round(a / 25)  # few distinct values: many ties
    if data.draw(st.booleans()):
        a.flat[data.draw(st.integers(0, a.size - 1))] = np.nan
    x = dist(clean, a, layout)
    axis = data.draw(st.one_of(st.none(), st.integers(0, a.ndim - 1)))
    with NoGather(clean), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = (np.argmax(x, axis=axis), np.argmin(x, axis=axis))
    same(got, (np.argmax(a, axis=axis), np.argmin(a, axis=axis)))


@FAST
@given(case=cases(dtypes=[np.int64], min_dims=2), data=st.data())
def test_structural_functions_move_no_data(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    src, dst = data.draw(st.integers(0, a.ndim - 1)), data.draw(st.integers(0, a.ndim - 1))
    with NoGather(clean):
        got = [
            x.T,
            np.transpose(x),
            np.moveaxis(x, src, dst),
            np.rollaxis(x, src, dst),
            np.swapaxes(x, src, dst),
            np.expand_dims(x, dst),
            np.expand_dims(x, (0, -1)),
            np.squeeze(np.expand_dims(x, 0), 0),
            np.broadcast_to(x, (2, *a.shape)),
            np.broadcast_arrays(x, a[:1])[0],
            np.atleast_3d(x),
            x.astype(np.float32),
        ]
    want = [
        a.T,
        np.transpose(a),
        np.moveaxis(a, src, dst),
        np.rollaxis(a, src, dst),
        np.swapaxes(a, src, dst),
        np.expand_dims(a, dst),
        np.expand_dims(a, (0, -1)),
        a,
        np.broadcast_to(a, (2, *a.shape)),
        np.broadcast_arrays(a, a[:1])[0],
        np.atleast_3d(a),
        a.astype(np.float32),
    ]
    for g, w in zip(got, want, strict=True):
        same(g, w)


@FAST
@given(case=cases(dtypes=[np.int64], min_dims=2, min_side=1), data=st.data())
def test_joins_and_splits(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    b = a + 1
    x = dist(clean, a, layout)
    y = dist(clean, b, data.draw(layouts(b.shape)))
    axis = data.draw(st.integers(0, a.ndim - 1))
    sections = data.draw(st.integers(1, 3))
    points = sorted(data.draw(st.lists(st.integers(0, a.shape[axis]), max_size=3)))
    with NoGather(clean):
        got = [
            np.concatenate([x, y, b], axis=axis),
            np.concatenate([x, y], axis=None),
            np.stack([x, y], axis=axis),
            np.vstack([x, y]),
            np.hstack([x, b]),
            np.dstack([x, y]),
            np.column_stack([x, y]),
        ]
        parts = [
            np.array_split(x, sections, axis=axis),
            np.split(x, points, axis=axis),
            np.vsplit(x, [1]),
            np.hsplit(x, [1]),
        ]
        if a.ndim == 3:
            parts.append(np.dsplit(x, [1]))
    want = [
        np.concatenate([a, b, b], axis=axis),
        np.concatenate([a, b], axis=None),
        np.stack([a, b], axis=axis),
        np.vstack([a, b]),
        np.hstack([a, b]),
        np.dstack([a, b]),
        np.column_stack([a, b]),
    ]
    for g, w in zip(got, want, strict=True):
        same(g, w)
    wparts = [
        np.array_split(a, sections, axis=axis),
        np.split(a, points, axis=axis),
        np.vsplit(a, [1]),
        np.hsplit(a, [1]),
    ] + ([np.dsplit(a, [1])] if a.ndim == 3 else [])
    for g, w in zip(parts, wparts, strict=True):
        assert len(g) == len(w)
        for gi, wi in zip(g, w, strict=True):
            same(gi, wi)


@FAST
@given(case=cases(dtypes=[np.int64], min_side=1))
def test_reshape_keeps_blocks_or_says_why(clean: Client, case: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    axis = layout[0]
    keep = (*a.shape[: axis + 1], -1)
    same(x.reshape(keep), a.reshape(keep))
    same(np.reshape(x, a.shape), a)
    for shape in [(-1,), (a.shape[0], -1), (*a.shape[::-1],)]:
        try:
            got = x.reshape(shape)
        except ValueError as exc:
            message = str(exc)
        else:
            same(got, a.reshape(shape))
            continue
        assert "would move data between engines" in message
        assert "redistribute" in message


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_dims=2, min_side=1), data=st.data())
def test_elementwise_functions_and_linear_algebra(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    a2 = a.reshape(a.shape[0], -1)
    x = dist(clean, a, layout)
    x2 = dist(clean, a2, data.draw(layouts(a2.shape)))
    m = a2.T.copy()
    with NoGather(clean):
        got = [
            np.where(x > 0, x, -x),
            np.clip(x, -3, 3),
            np.round(x / 7, 1),
            np.isclose(x, a + 1e-12),
            x2 @ m,
            np.matmul(m, x2),
            np.dot(x2, m[:, 0]),
            np.tensordot(x2, m, axes=1),
        ]
        flags = (np.allclose(x, a), np.array_equal(x, a), np.array_equal(x, a + 1))
    want = [
        np.where(a > 0, a, -a),
        np.clip(a, -3, 3),
        np.round(a / 7, 1),
        np.isclose(a, a + 1e-12),
        a2 @ m,
        np.matmul(m, a2),
        np.dot(a2, m[:, 0]),
        np.tensordot(a2, m, axes=1),
    ]
    for g, w in zip(got, want, strict=True):
        same(g, w)
    assert flags == (True, True, False)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_tensordot_on_any_axes(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    n = data.draw(st.integers(1, a.ndim))
    contracted = data.draw(st.permutations(range(a.ndim)))[:n]
    b = np.arange(int(np.prod([a.shape[i] for i in contracted])) * 2, dtype=a.dtype)
    b = b.reshape(*(a.shape[i] for i in contracted), 2)
    x = dist(clean, a, layout)
    y = dist(clean, b, data.draw(layouts(b.shape)))
    axes = (list(contracted), list(range(n)))
    back = (list(range(n)), list(contracted))
    with NoGather(clean):
        got = [
            np.tensordot(x, b, axes),
            np.tensordot(x, y, axes),
            np.tensordot(b, x, back),
            np.tensordot(y, x, back),
        ]
    want = [
        np.tensordot(a, b, axes),
        np.tensordot(a, b, axes),
        np.tensordot(b, a, back),
        np.tensordot(b, a, back),
    ]
    for g, w in zip(got, want, strict=True):
        same(g, w)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_take_sort_unique_and_methods(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    axis = data.draw(st.integers(0, a.ndim - 1))
    n = a.shape[axis]
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=5)) if n else []
    with NoGather(clean):
        got = [
            np.take(x, idx, axis=axis),
            np.sort(x, axis=axis),
            np.sort(x, axis=layout[0]),
            np.unique(x),
            x.copy(),
            np.zeros_like(x),
            np.full_like(x, 3),
        ]
        s = x.copy()
        s.sort(axis=axis)
        f = x.copy()
        f.fill(7)
    want = [
        np.take(a, np.asarray(idx, dtype=np.intp), axis=axis),
        np.sort(a, axis=axis),
        np.sort(a, axis=layout[0]),
        np.unique(a),
        a.copy(),
        np.zeros_like(a),
        np.full_like(a, 3),
    ]
    for g, w in zip(got, want, strict=True):
        same(g, w)
    same(s, np.sort(a, axis=axis))
    same(f, np.full_like(a, 7))


# -- indexing -----------------------------------------------------------------------------


@FAST
@given(case=cases(), data=st.data())
def test_basic_indexing_on_every_axis(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    key = data.draw(hnp.basic_indices(a.shape, allow_newaxis=True, allow_ellipsis=True))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = x[key]
    same(got, a[key])


@FAST
@given(case=cases(min_side=1), data=st.data())
def test_integer_arrays_and_masks(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    axis = data.draw(st.integers(0, a.ndim - 1))
    n = a.shape[axis]
    rows = np.asarray(data.draw(st.lists(st.integers(-n, n - 1), max_size=6)), dtype=np.intp)
    key = (slice(None),) * axis + (rows,)
    fancy = data.draw(hnp.integer_array_indices(a.shape, result_shape=hnp.array_shapes(max_dims=2)))
    mask = data.draw(hnp.arrays(np.bool_, a.shape))
    line = data.draw(hnp.arrays(np.bool_, (a.shape[layout[0]],)))
    lead = (slice(None),) * layout[0] + (line,)
    with NoGather(clean):
        got = [x[key], x[fancy], x[mask], x[dist(clean, mask, layout)], x[lead]]
    for g, w in zip(got, [a[key], a[fancy], a[mask], a[mask], a[lead]], strict=True):
        same(g, w)


def test_out_of_range_indices_raise_index_error(clean: Client) -> None:
    x = sa.scatter(np.arange(12).reshape(3, 4), client=clean)
    for key in [3, -4, (0, 4), (slice(None), -5), [0, 3]]:
        with pytest.raises(IndexError):
            x[key]
    with pytest.raises(IndexError):
        x[np.ones(4, bool)]


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_assignment_routed_to_the_blocks(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    key = data.draw(hnp.basic_indices(a.shape, allow_newaxis=False, allow_ellipsis=True))
    shape = a[key].shape
    value = np.arange(int(np.prod(shape)), dtype=a.dtype).reshape(shape) + 100
    kind = data.draw(st.sampled_from(["scalar", "ndarray", "remote", "dist", "self"]))
    x = dist(clean, a, layout)
    expected = a.copy()
    if kind == "scalar":
        v, local = -1, -1
    elif kind == "ndarray":
        v = local = value
    elif kind == "remote" and value.ndim:
        v, local = sa.remote(value, engine=data.draw(st.sampled_from(ENGINES)), client=clean), value
    elif kind == "dist" and value.ndim:
        v, local = dist(clean, value, data.draw(layouts(value.shape))), value
    elif kind == "self" and value.ndim:  # overlapping source and target, numpy's semantics
        v, local = x[key][::-1] if value.ndim else x[key], a[key][::-1] if value.ndim else a[key]
    else:
        v = local = value
    expected[key] = local
    with NoGather(clean):
        x[key] = v
    same(x, expected)
    mask = a % 3 == 0
    expected[mask] = 7
    with NoGather(clean):
        x[dist(clean, mask, layout)] = 7
    same(x, expected)
    axis = layout[0]
    n = a.shape[axis]
    if n:
        rows = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4, unique=True))
        sel = (slice(None),) * axis + (np.asarray(rows),)
        expected[sel] = -5
        with NoGather(clean):
            x[sel] = -5
        same(x, expected)


def test_asarray_and_copy_false(clean: Client) -> None:
    a = np.arange(10.0)
    x = sa.scatter(a, client=clean)
    np.testing.assert_array_equal(np.asarray(x), a)
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(x, copy=False)
    with pytest.raises(ValueError, match="copy=False"):
        np.array(x, copy=False)
