"""Differential tests of numpy's ufuncs on shoal arrays: every method, compared with numpy.

Each example draws a small array (1-3 dimensions, empty and length-1 axes included), a
split axis, 1-3 blocks on engines drawn from the cluster (repeats allowed) and uneven
boundaries (empty blocks included). The operation runs on the DistArray inside
``NoGather`` (no array data may reach the client), then the result is gathered and
compared with numpy's on the local array: its type (DistArray, or a numpy scalar for a
full reduction), shape, dtype and values (exactly for integers and booleans, with
``assert_allclose`` for floats). ``clean`` checks the engines hold no leftover blocks.

numpy (2.4) keeps the arguments of a ``reduce``/``accumulate``/``reduceat`` whose
``__array_ufunc__`` raised (numpy issue 31677), which would keep blocks alive: where such
a call is expected to fail, the test calls ``x.__array_ufunc__`` itself, as numpy does.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import pytest
from arrays_testing import NoGather
from differential import (
    FAST,
    FEW,
    arrays,
    attempt,
    axes,
    broadcastable,
    cases,
    dist,
    elements,
    ids,
    layouts,
    same,
    same_outcome,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing.overrides import get_overridable_numpy_ufuncs

import shoal.arrays as sa
from shoal.hub import Client

# -- __call__ ---------------------------------------------------------------------------

UNARY = [
    np.negative,
    np.positive,
    np.absolute,
    np.sign,
    np.sqrt,
    np.cbrt,
    np.exp,
    np.expm1,
    np.log1p,
    np.sin,
    np.arctan,
    np.tanh,
    np.floor,
    np.ceil,
    np.rint,
    np.trunc,
    np.isnan,
    np.isinf,
    np.isfinite,
    np.signbit,
    np.logical_not,
    np.invert,
    np.square,
    np.reciprocal,
    np.conjugate,
    np.bitwise_count,
    np.spacing,
    np.deg2rad,
]


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int8, np.float32], nan=True),
    ufunc=st.sampled_from(UNARY),
)
def test_unary_ufuncs(clean: Client, case: Any, ufunc: np.ufunc) -> None:
    a, layout = case
    want = attempt(lambda: ufunc(a))
    if isinstance(want, TypeError):
        return  # numpy has no loop for this dtype
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: ufunc(x))
    same_outcome(got, want, rtol=1e-6 if a.dtype == np.float32 else 1e-12)


BINARY = [
    np.add,
    np.subtract,
    np.multiply,
    np.true_divide,
    np.floor_divide,
    np.remainder,
    np.fmod,
    np.maximum,
    np.minimum,
    np.fmax,
    np.arctan2,
    np.hypot,
    np.copysign,
    np.greater,
    np.less_equal,
    np.equal,
    np.not_equal,
    np.logical_and,
    np.logical_xor,
    np.bitwise_and,
    np.bitwise_or,
    np.left_shift,
    np.gcd,
    np.heaviside,
]

OPERAND_KINDS = [
    "ndarray",
    "ndarray-broadcast",
    "ndarray-bigger",
    "python-scalar",
    "numpy-scalar",
    "remote",
    "dist-misaligned",
    "dist-broadcast",
    "list",
]


def local_operand(data: Any, kind: str, a: np.ndarray[Any, Any]) -> Any:
    """numpy's side of an operand of ``kind`` to combine with ``a``."""
    dtype = data.draw(st.sampled_from([a.dtype, np.dtype(np.int32), np.dtype(np.float32)]))
    if kind == "python-scalar":
        return data.draw(st.sampled_from([3, -2, 2.5, True]))
    if kind == "numpy-scalar":
        return dtype.type(data.draw(st.integers(-3, 3)))
    if kind in ("ndarray-broadcast", "dist-broadcast"):
        shape = data.draw(broadcastable(a.shape))
    elif kind == "ndarray-bigger":
        shape = (2, *a.shape)
    else:
        shape = a.shape
    return data.draw(hnp.arrays(dtype, shape, elements=elements(dtype)))


def ours(rc: Client, data: Any, kind: str, b: Any) -> Any:
    """The operand of ``kind`` we pass for numpy's ``b``."""
    if kind == "remote":
        return sa.remote(b, engine=data.draw(st.sampled_from(ids(rc))), client=rc)
    if kind in ("dist-misaligned", "dist-broadcast"):
        return dist(rc, b, data.draw(layouts(b.shape)))
    if kind == "list" and b.size:
        return b.tolist()
    return b


def other_operand(rc: Client, data: Any, kind: str, a: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    """An operand of ``kind`` to combine with ``a``: (what we pass, numpy's equivalent)."""
    b = local_operand(data, kind, a)
    return ours(rc, data, kind, b), np.asarray(b.tolist()) if kind == "list" and b.size else b


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int8]),
    ufunc=st.sampled_from(BINARY),
    kind=st.sampled_from(OPERAND_KINDS),
    data=st.data(),
)
def test_binary_ufuncs_with_every_kind_of_operand(
    clean: Client, case: Any, ufunc: np.ufunc, kind: str, data: Any
) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    other, b = other_operand(clean, data, kind, a)
    want = attempt(lambda: ufunc(a, b))
    want_back = attempt(lambda: ufunc(b, a))
    with NoGather(clean):
        got = attempt(lambda: ufunc(x, other))
        back = attempt(lambda: ufunc(other, x))
    same_outcome(got, want)
    same_outcome(back, want_back)


@FEW
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_binary_ufunc_of_two_dist_arrays_broadcast_along_their_split_axes(
    clean: Client, case: Any, data: Any
) -> None:
    """A column against a row (each split along its length-1 axis or the other): the
    result is bigger than both."""
    a, _ = case
    col = a.reshape(-1, 1)
    row = (a.reshape(1, -1) * 2).astype(a.dtype)
    x = dist(clean, col, data.draw(layouts(col.shape)))
    y = dist(clean, row, data.draw(layouts(row.shape)))
    with NoGather(clean):
        got = [x + y, y - x, np.maximum(x, y), x * row, col * y]
    for g in got:
        assert g.shape == (a.size, a.size)
    same(got[0], col + row)
    same(got[1], row - col)
    same(got[2], np.maximum(col, row))
    same(got[3], col * row)
    same(got[4], col * row)


def test_length_one_split_axis_broadcasts(clean: Client) -> None:
    a = np.arange(12).reshape(4, 3)
    one = np.array([[10, 20, 30]])
    for engines, bounds in [([0], [0, 1]), ([1, 2], [0, 0, 1]), ([2, 0, 1], [0, 1, 1, 1])]:
        y = sa.scatter(one, 0, [ids(clean)[e] for e in engines], bounds, client=clean)
        x = sa.scatter(a, 0, client=clean)
        with NoGather(clean):
            got = [x + y, y + x, y * a, a * y, np.add(y, 1)]
        for g, w in zip(got, [a + one, one + a, one * a, a * one, one + 1], strict=True):
            same(g, w)


@FAST
@given(case=cases(dtypes=[np.float64, np.int64]), data=st.data())
def test_out_where_and_dtype(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    b = data.draw(hnp.arrays(a.dtype, a.shape, elements=elements(a.dtype)))
    y = dist(clean, b, data.draw(layouts(b.shape)))
    mask = data.draw(hnp.arrays(np.bool_, data.draw(broadcastable(a.shape))))
    where = data.draw(st.sampled_from(["ndarray", "dist", "remote"]))
    m = (
        mask
        if where == "ndarray"
        else sa.remote(mask, engine=ids(clean)[0], client=clean)
        if where == "remote"
        else dist(clean, mask, data.draw(layouts(mask.shape)))
    )
    start = np.full(a.shape, -7, a.dtype)
    out = dist(clean, start, data.draw(layouts(a.shape)))
    out2 = dist(clean, start, layout)
    expected = start.copy()
    with NoGather(clean):
        r1 = np.add(x, y, out=out, where=m)
        r2 = np.multiply(x, 3, out=(out2,))
        f32 = np.add(x, y, dtype=np.float32)
        masked = np.subtract(x, y, where=m)
        cast = np.true_divide(x, 2, out=sa.zeros(a.shape, np.int64, client=clean), casting="unsafe")
    np.add(a, b, out=expected, where=mask)
    assert r1 is out
    assert r2 is out2
    same(out, expected)
    same(out2, a * 3)
    same(f32, np.add(a, b, dtype=np.float32))
    full = np.broadcast_to(mask, a.shape)
    np.testing.assert_array_equal(sa.gather(masked)[full], (a - b)[full])
    same(cast, np.true_divide(a, 2).astype(np.int64))


@FEW
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_out_that_is_an_ndarray_or_a_remote_array(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    here = np.zeros(a.shape, a.dtype)
    got = np.add(x, 1, out=here)  # the caller asked for the result here
    assert got is here
    np.testing.assert_array_equal(here, a + 1)
    r = sa.remote(np.zeros(a.shape, a.dtype), engine=ids(clean)[data.draw(st.integers(0, 2))])
    with NoGather(clean):
        got = np.multiply(x, x, out=r)
    assert got is r
    np.testing.assert_array_equal(sa.gather(r), a * a)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_out_overlapping_an_input(clean: Client, case: Any, data: Any) -> None:
    """numpy computes as if the inputs were copied before any output is written."""
    a, layout = case
    axis = layout[0]
    step = data.draw(st.sampled_from([1, -1]))
    flip = (slice(None),) * axis + (slice(None, None, step),)
    x = dist(clean, a, layout)
    with NoGather(clean):
        np.add(x, x[flip], out=x)
        np.multiply(x[flip], 2, out=x)
    expected = a.copy()
    np.add(expected, expected[flip], out=expected)
    np.multiply(expected[flip], 2, out=expected)
    same(x, expected)


def test_out_overlapping_a_reversed_input_on_one_engine(clean: Client) -> None:
    """Blocks of the same engine (the reversed view has the same boundaries)."""
    a = np.arange(6)
    e = ids(clean)[0]
    x = sa.scatter(a, 0, [e, e], [0, 3, 6], client=clean)
    with NoGather(clean):
        np.add(x, x[::-1], out=x)
    same(x, a + a[::-1])


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64]),
    ufunc=st.sampled_from([np.divmod, np.modf, np.frexp]),
    data=st.data(),
)
def test_ufuncs_with_two_outputs(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    args: tuple[Any, ...] = (a,) if ufunc.nin == 1 else (a, data.draw(st.sampled_from([3, -2])))
    want = attempt(lambda: ufunc(*args))
    if isinstance(want, TypeError):
        return  # modf and frexp of integers: no loop
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = ufunc(x, *args[1:])
        outs = tuple(dist(clean, np.empty_like(w), data.draw(layouts(a.shape))) for w in want)
        into = ufunc(x, *args[1:], out=outs)
    same(got, want)
    assert isinstance(into, tuple)
    assert all(g is o for g, o in zip(into, outs, strict=True))
    same(outs, want)
    if ufunc is np.divmod:
        with NoGather(clean):
            pair = divmod(x, args[1])
            rpair = divmod(7, x + (x == 0))
        same(pair, want)
        with np.errstate(all="ignore"):
            same(rpair, divmod(7, a + (a == 0)))


# -- operators --------------------------------------------------------------------------

ARITHMETIC = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.lt,
    operator.le,
    operator.eq,
    operator.ne,
    operator.gt,
    operator.ge,
]
BITWISE = [operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift]
IN_PLACE = {
    operator.add: operator.iadd,
    operator.sub: operator.isub,
    operator.mul: operator.imul,
    operator.truediv: operator.itruediv,
    operator.floordiv: operator.ifloordiv,
    operator.mod: operator.imod,
    operator.pow: operator.ipow,
    operator.and_: operator.iand,
    operator.or_: operator.ior,
    operator.xor: operator.ixor,
    operator.lshift: operator.ilshift,
    operator.rshift: operator.irshift,
}


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64]),
    op=st.sampled_from(ARITHMETIC + BITWISE),
    kind=st.sampled_from(["ndarray", "dist-misaligned", "dist-broadcast", "python-scalar"]),
    data=st.data(),
)
def test_operators_reflected_and_in_place(
    clean: Client, case: Any, op: Any, kind: str, data: Any
) -> None:
    a, layout = case
    small = op in (operator.lshift, operator.rshift, operator.pow)
    if op in BITWISE and a.dtype.kind == "f":
        a = a.astype(np.int64)
    if small:
        a = np.clip(a, 0, 5)
    x = dist(clean, a, layout)
    b = local_operand(data, kind, a)
    if small:
        b = np.clip(b, 0, 3).astype(np.result_type(b)) if np.ndim(b) else 2
    other = ours(clean, data, kind, b)
    want = attempt(lambda: op(a, b))
    want_back = attempt(lambda: op(b, a))
    with NoGather(clean):
        got = attempt(lambda: op(x, other))
        back = attempt(lambda: op(other, x))
    same_outcome(got, want)
    same_outcome(back, want_back)
    iop = IN_PLACE.get(op)
    if iop is None:
        return
    expected = a.copy()
    want_in = attempt(lambda: iop(expected, b))
    z = x.copy()
    with NoGather(clean):
        got_in = attempt(lambda: iop(z, other))
    if isinstance(want_in, Exception):
        same_outcome(got_in, want_in)
        same(z, a)  # a failed in-place operation leaves the array as it was
    else:
        assert got_in is z, "an in-place operator returns the same array"
        same(z, expected)


def test_unary_operators_and_matmul_operators(clean: Client) -> None:
    a = np.arange(-6, 6).reshape(4, 3)
    sq = np.arange(9).reshape(3, 3)
    x = sa.scatter(a, 0, client=clean)
    s = sa.scatter(sq, 1, client=clean)
    with NoGather(clean):
        got = [-x, +x, abs(x), ~x, x @ sq, sq.T @ x.T, x @ s]
        y = x.copy()
        y @= sq
    for g, w in zip(got, [-a, +a, abs(a), ~a, a @ sq, sq.T @ a.T, a @ sq], strict=True):
        same(g, w)
    same(y, a @ sq)


# -- reduce -----------------------------------------------------------------------------


REORDERABLE = [
    np.add,
    np.multiply,
    np.maximum,
    np.minimum,
    np.fmin,
    np.logical_and,
    np.logical_or,
    np.bitwise_xor,
    np.bitwise_or,
]


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int16], nan=True),
    ufunc=st.sampled_from(REORDERABLE),
    data=st.data(),
)
def test_reduce_any_axes_keepdims_initial_dtype(
    clean: Client, case: Any, ufunc: np.ufunc, data: Any
) -> None:
    a, layout = case
    if ufunc is np.multiply and a.dtype.kind in "iu":
        a = np.clip(a, -2, 2)
    kwargs: dict[str, Any] = {"axis": data.draw(axes(a.ndim))}
    if data.draw(st.booleans()):
        kwargs["axis"] = layout[0]  # the split axis, often
    kwargs["keepdims"] = data.draw(st.booleans())
    if data.draw(st.booleans()):
        kwargs["initial"] = data.draw(st.sampled_from([0, 1, 5, True]))
    if data.draw(st.booleans()):
        kwargs["dtype"] = data.draw(st.sampled_from([np.float64, np.int64, np.bool_, None]))
    want = attempt(lambda: ufunc.reduce(a, **kwargs))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: x.__array_ufunc__(ufunc, "reduce", x, **kwargs))
    same_outcome(got, want, rtol=1e-7)
    if not isinstance(want, Exception):
        with NoGather(clean):
            via_numpy = ufunc.reduce(x, **kwargs)
        same(via_numpy, want, rtol=1e-7)


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64]),
    ufunc=st.sampled_from([np.add, np.maximum, np.minimum, np.multiply]),
    data=st.data(),
)
def test_reduce_with_where(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    if ufunc is np.multiply:
        a = np.clip(a, -2, 2)
    axis = data.draw(st.one_of(axes(a.ndim), st.just(layout[0])))
    keepdims = data.draw(st.booleans())
    mask = data.draw(hnp.arrays(np.bool_, data.draw(broadcastable(a.shape))))
    kind = data.draw(st.sampled_from(["ndarray", "dist"]))
    m = mask if kind == "ndarray" else dist(clean, mask, data.draw(layouts(mask.shape)))
    initial = 3 if ufunc.identity is None or data.draw(st.booleans()) else None
    kwargs: dict[str, Any] = {"axis": axis, "keepdims": keepdims, "where": m}
    if initial is not None:
        kwargs["initial"] = initial
    want = attempt(lambda: ufunc.reduce(a, **{**kwargs, "where": mask}))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: x.__array_ufunc__(ufunc, "reduce", x, **kwargs))
    same_outcome(got, want, rtol=1e-7)


# numpy 2.3 and 2.4 get a float power reduction along a contiguous axis wrong
# ((2.0**3.0)**2.0 gives 4.0), so their float64 answer is no reference there.
FLOAT_POWER_REDUCES = np.power.reduce(np.array([2.0, 3.0, 2.0])) == 64


@FAST
@given(
    case=cases(dtypes=[np.float64, np.int64]),
    ufunc=st.sampled_from([np.subtract, np.true_divide, np.floor_divide, np.power]),
    data=st.data(),
)
def test_reduce_that_is_not_reorderable(
    clean: Client, case: Any, ufunc: np.ufunc, data: Any
) -> None:
    """numpy's order, left to right, along any one axis (the split axis too)."""
    a, layout = case
    float_power_wrong = ufunc is np.power and not FLOAT_POWER_REDUCES
    if ufunc is np.power:
        a = np.clip(a, 0, 3).astype(np.int64 if float_power_wrong else a.dtype)
    elif ufunc is not np.subtract:
        a = np.where(a == 0, 3, a)
    axis = data.draw(st.sampled_from([layout[0], layout[0], -1, 0]))
    kwargs: dict[str, Any] = {"axis": axis, "keepdims": data.draw(st.booleans())}
    if data.draw(st.booleans()):
        kwargs["initial"] = data.draw(st.sampled_from([1, 100]))
    if data.draw(st.booleans()) and not float_power_wrong:
        kwargs["dtype"] = np.float64
    want = attempt(lambda: ufunc.reduce(a, **kwargs))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: x.__array_ufunc__(ufunc, "reduce", x, **kwargs))
    same_outcome(got, want, rtol=1e-7)
    several = attempt(lambda: ufunc.reduce(a, axis=None))
    ours = attempt(lambda: x.__array_ufunc__(ufunc, "reduce", x, axis=None))
    same_outcome(ours, several, rtol=1e-7)


def test_reduce_of_empty_arrays(clean: Client) -> None:
    a = np.zeros((0, 3))
    for engines, bounds in [([0], [0, 0]), ([1, 2], [0, 0, 0])]:
        x = sa.scatter(a, 0, [ids(clean)[e] for e in engines], bounds, client=clean)
        for ufunc, kwargs in [
            (np.add, {"axis": 0}),
            (np.add, {"axis": None}),
            (np.multiply, {"axis": 0, "keepdims": True}),
            (np.maximum, {"axis": 0}),
            (np.maximum, {"axis": 0, "initial": -1.0}),
            (np.maximum, {"axis": 1}),
            (np.subtract, {"axis": 0}),
        ]:
            want = attempt(lambda u=ufunc, k=kwargs: u.reduce(a, **k))
            got = attempt(lambda u=ufunc, k=kwargs, x=x: x.__array_ufunc__(u, "reduce", x, **k))
            same_outcome(got, want)


@FEW
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1))
def test_reduce_into_out(clean: Client, case: Any) -> None:
    a, layout = case
    axis = layout[0]
    x = dist(clean, a, layout)
    want = np.add.reduce(a, axis=axis)
    if want.ndim == 0:
        return
    out = sa.zeros(want.shape, want.dtype, client=clean)
    with NoGather(clean):
        got = np.add.reduce(x, axis=axis, out=out)
        tot = np.sum(x, axis=axis, out=sa.zeros(want.shape, want.dtype, client=clean))
    assert got is out
    same(out, want)
    same(tot, want)


# -- accumulate -------------------------------------------------------------------------


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_]),
    ufunc=st.sampled_from(
        [np.add, np.multiply, np.subtract, np.maximum, np.minimum, np.logical_or, np.true_divide]
    ),
    data=st.data(),
)
def test_accumulate_along_every_axis(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    if ufunc in (np.multiply, np.true_divide) and a.dtype.kind != "b":
        a = np.clip(a, -3, 3)
        if ufunc is np.true_divide:
            a = np.where(a == 0, 2, a).astype(a.dtype)
    axis = data.draw(st.sampled_from([layout[0], *range(-a.ndim, a.ndim)]))
    kwargs: dict[str, Any] = {"axis": axis}
    if data.draw(st.booleans()):
        kwargs["dtype"] = data.draw(st.sampled_from([np.float64, np.int64]))
    want = attempt(lambda: ufunc.accumulate(a, **kwargs))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: x.__array_ufunc__(ufunc, "accumulate", x, **kwargs))
    same_outcome(got, want, rtol=1e-7)
    if not isinstance(want, Exception):
        out = dist(clean, np.zeros_like(want), data.draw(layouts(want.shape)))
        with NoGather(clean):
            into = ufunc.accumulate(x, out=out, **kwargs)
        assert into is out
        same(out, want, rtol=1e-7)


# -- reduceat, outer, at ----------------------------------------------------------------


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64], min_side=1),
    ufunc=st.sampled_from([np.add, np.maximum, np.multiply, np.subtract]),
    data=st.data(),
)
def test_reduceat(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    if ufunc is np.multiply:
        a = np.clip(a, -2, 2)
    axis = data.draw(st.sampled_from([layout[0], layout[0], *range(a.ndim)]))
    n = a.shape[axis]
    indices = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=7))
    if data.draw(st.booleans()):
        indices = sorted(indices)
    want = attempt(lambda: ufunc.reduceat(a, indices, axis=axis))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: x.__array_ufunc__(ufunc, "reduceat", x, indices, axis=axis))
    same_outcome(got, want, rtol=1e-7)
    bad = [0, n]
    same_outcome(
        attempt(lambda: x.__array_ufunc__(ufunc, "reduceat", x, bad, axis=axis)),
        attempt(lambda: ufunc.reduceat(a, bad, axis=axis)),
    )


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64], max_dims=2),
    ufunc=st.sampled_from([np.add, np.multiply, np.subtract, np.greater, np.divmod]),
    kind=st.sampled_from(["ndarray", "dist", "remote", "list", "scalar"]),
    data=st.data(),
)
def test_outer(clean: Client, case: Any, ufunc: np.ufunc, kind: str, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    b = data.draw(arrays(dtypes=[np.int64, np.float64], max_dims=2, max_side=3))
    b = np.where(b == 0, 1, b).astype(b.dtype)
    if kind == "dist":
        other: Any = dist(clean, b, data.draw(layouts(b.shape)))
    elif kind == "remote":
        other = sa.remote(b, engine=ids(clean)[data.draw(st.integers(0, 2))], client=clean)
    elif kind == "list" and b.size:
        other = b.tolist()
        b = np.asarray(other)
    elif kind == "scalar":
        other = b = np.int64(3)
    else:
        other = b
    want = attempt(lambda: ufunc.outer(a, b))
    want_back = attempt(lambda: ufunc.outer(b, a))
    with NoGather(clean):
        got = attempt(lambda: ufunc.outer(x, other))
        back = attempt(lambda: ufunc.outer(other, x))
    same_outcome(got, want)
    same_outcome(back, want_back)


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64], min_side=1),
    ufunc=st.sampled_from([np.add, np.maximum, np.subtract, np.negative, np.multiply]),
    data=st.data(),
)
def test_at_with_repeated_indices(clean: Client, case: Any, ufunc: np.ufunc, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.integers(0, a.ndim - 1))
    n = a.shape[axis]
    idx = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=8))
    if data.draw(st.booleans()):
        idx = idx + idx[:2]  # repeated: numpy applies each occurrence
    key: Any = (slice(None),) * axis + (np.asarray(idx),)
    if axis == 0 and data.draw(st.booleans()):
        key = idx  # a plain list of row indices
    target = a[key].shape
    args: tuple[Any, ...] = ()
    if ufunc.nin == 2:
        vshape = data.draw(st.sampled_from([(), target, target[1:], (1, *target[1:])]))
        values = data.draw(hnp.arrays(a.dtype, vshape, elements=elements(a.dtype)))
        kind = data.draw(st.sampled_from(["ndarray", "dist", "scalar"]))
        if kind == "scalar" or values.ndim == 0:
            args = (values[()] if values.ndim == 0 else 2,)
            local = args
        elif kind == "dist":
            args = (dist(clean, values, data.draw(layouts(values.shape))),)
            local = (values,)
        else:
            args = local = (values,)
    else:
        local = ()
    expected = a.copy()
    ufunc.at(expected, key, *local)
    x = dist(clean, a, layout)
    with NoGather(clean):
        ufunc.at(x, key, *args)
    same(x, expected, rtol=1e-12)


def test_at_with_a_tuple_of_index_arrays(clean: Client) -> None:
    a = np.arange(20).reshape(4, 5)
    rows, cols = np.array([0, 3, 3, 1, 0]), np.array([4, 1, 1, 0, 4])
    for axis in (0, 1):
        x = sa.scatter(a, axis, [ids(clean)[i] for i in (2, 0, 2)], None, client=clean)
        expected = a.copy()
        np.add.at(expected, (rows, cols), 10)
        np.maximum.at(expected, (rows, slice(None)), 11)
        with NoGather(clean):
            np.add.at(x, (rows, cols), 10)
            np.maximum.at(x, (rows, slice(None)), 11)
        same(x, expected)


# -- every ufunc ------------------------------------------------------------------------

_RNG = np.random.default_rng(7)
_SHAPE = (6, 4)
_TEXT = np.array([["ab", " c", "D1", "x y"]] * 6)
_NUM = np.full(_SHAPE, 2, np.int64)


def _operand(code: str) -> np.ndarray[Any, Any] | None:
    """A dummy operand for a ufunc loop's type code (None: not one we can make)."""
    if code in "OPV":
        return None
    dtype = np.dtype(code)
    if dtype.kind == "b":
        return _RNG.random(_SHAPE) > 0.5
    if dtype.kind in "iu":
        return _RNG.integers(1, 6, _SHAPE).astype(dtype)
    if dtype.kind in "fc":
        return (_RNG.random(_SHAPE) * 3 + 0.25).astype(dtype)
    if dtype.kind == "M":
        days = _RNG.integers(0, 20000, _SHAPE)
        out = days.astype("datetime64[D]")
        out[0, 0] = np.datetime64("NaT")
        return out
    if dtype.kind == "m":
        return _RNG.integers(-50, 50, _SHAPE).astype("timedelta64[s]")
    if dtype.kind in "US":
        return _TEXT.astype(dtype.kind)
    return None


def _candidates(ufunc: np.ufunc) -> list[tuple[np.ndarray[Any, Any], ...]]:
    """Operands for each of the ufunc's loops we can make operands for, then some
    recipes for the string ufuncs (they list no typed loops)."""
    found = []
    for loop in ufunc.types:
        ins = loop.split("->")[0]
        ops = [_operand(c) for c in ins]
        if all(o is not None for o in ops):
            found.append(tuple(o for o in ops if o is not None))
    texts: list[tuple[np.ndarray[Any, Any], ...]] = [
        (_TEXT,) * ufunc.nin,
        (_TEXT, *(_NUM,) * (ufunc.nin - 1)),
        (_TEXT, _TEXT, *(_NUM,) * (ufunc.nin - 2)),
        (_TEXT, _NUM, *(np.full(_SHAPE, "*"),) * (ufunc.nin - 2)),
        (_TEXT, _TEXT, _TEXT, *(_NUM,) * (ufunc.nin - 3)),
    ]
    found += [t for t in texts if len(t) == ufunc.nin]
    return found


def _first_accepted(ufunc: np.ufunc) -> tuple[np.ndarray[Any, Any], ...] | None:
    """The first operands numpy has a loop for (its result may still be an error)."""
    for ops in _candidates(ufunc):
        want = attempt(lambda o=ops: ufunc(*o))
        if not isinstance(want, TypeError):
            return ops
    return None


def test_every_overridable_ufunc_is_handled(clean: Client) -> None:
    """Each ufunc numpy dispatches to ``__array_ufunc__``, on DistArrays split along
    either axis: numpy's result, or numpy's error."""
    problems, untried = [], []
    engines = [ids(clean)[i] for i in (0, 1, 2, 1)]
    for ufunc in sorted(get_overridable_numpy_ufuncs(), key=lambda u: u.__name__):
        ops = _first_accepted(ufunc)
        if ops is None:
            untried.append(ufunc.__name__)
            continue
        want = attempt(lambda u=ufunc, o=ops: u(*o))
        for axis, bounds in [(0, [0, 2, 2, 5, 6]), (1, [0, 1, 3, 3, 4])]:
            xs = [sa.scatter(o, axis, engines, bounds, client=clean) for o in ops]
            with NoGather(clean):
                got = attempt(lambda u=ufunc, xs=xs: u(*xs))
            try:
                same_outcome(got, want, exact=True)
            except AssertionError as exc:
                problems.append(f"{ufunc.__name__} (split along {axis}): {exc}")
            del xs, got
    assert not problems, "\n".join(problems)
    # numpy's private string ufuncs whose `out` dtype their public wrappers compute
    # (np.strings.center, ...): no dummy operands give them a loop.
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
    assert set(untried) <= needs_out, f"no operands found for {sorted(set(untried) - needs_out)}"


@pytest.mark.parametrize("method", ["reduce", "accumulate"])
def test_every_binary_ufunc_method_on_the_split_axis(clean: Client, method: str) -> None:
    """``reduce``/``accumulate`` along the split axis for every binary ufunc numpy
    allows them for, on a float and an int operand."""
    problems = []
    engines = [ids(clean)[i] for i in (0, 1, 0)]
    for ufunc in sorted(get_overridable_numpy_ufuncs(), key=lambda u: u.__name__):
        if ufunc.nin != 2 or ufunc.nout != 1 or ufunc.signature is not None:
            continue
        for ops in _candidates(ufunc)[:1]:
            a = ops[0]
            if a.dtype.kind not in "biuf":
                continue
            want = attempt(lambda u=ufunc, a=a: getattr(u, method)(a, axis=0))
            if isinstance(want, Exception):
                continue  # not compared: numpy would leak our arguments on an error
            x = sa.scatter(a, 0, engines, [0, 3, 3, 6], client=clean)
            with NoGather(clean):
                got = attempt(lambda u=ufunc, x=x: getattr(u, method)(x, axis=0))
            try:
                same_outcome(got, want, rtol=1e-7)
            except AssertionError as exc:
                problems.append(f"{ufunc.__name__}.{method}: {exc}")
            del x, got
    assert not problems, "\n".join(problems)
