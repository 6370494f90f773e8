"""Differential tests of numpy's functions and the ndarray methods on shoal arrays.

Each example draws a small array (1-3 dimensions, empty and length-1 axes included), a
split axis, 1-3 blocks on engines drawn from the cluster (repeats allowed) and uneven
boundaries (empty blocks included). The function runs on the DistArray inside
``NoGather`` (no array data may reach the client), then the result is gathered and
compared with numpy's on the local array: its type (DistArray, a list or tuple of them,
or a numpy scalar for a full reduction), shape, dtype and values (exactly for integers
and booleans, with ``assert_allclose`` for floats). ``clean`` checks the engines hold no
leftover blocks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from arrays_testing import NoGather
from differential import (
    FAST,
    FEW,
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

import shoal.arrays as sa
from shoal.hub import Client


def kind_of(rc: Client, data: Any, b: np.ndarray[Any, Any], kinds: list[str]) -> Any:
    """``b`` as one of ``kinds``: an ndarray, a RemoteArray or a DistArray."""
    kind = data.draw(st.sampled_from(kinds))
    if kind == "remote":
        return sa.remote(b, engine=ids(rc)[data.draw(st.integers(0, 2))], client=rc)
    if kind == "dist" and b.ndim:
        return dist(rc, b, data.draw(layouts(b.shape)))
    return b


# -- joining and splitting ----------------------------------------------------------------


@FAST
@given(case=cases(dtypes=[np.int64, np.float64, np.int8]), data=st.data())
def test_concatenate_and_stack(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
    n = data.draw(st.integers(0, 3))
    parts, local = [dist(clean, a, layout)], [a]
    for _ in range(n):
        shape = list(a.shape)
        shape[axis] = data.draw(st.integers(0, 3))
        dtype = data.draw(st.sampled_from([a.dtype, np.dtype(np.int32), np.dtype(np.float32)]))
        b = data.draw(hnp.arrays(dtype, tuple(shape), elements=elements(dtype)))
        parts.append(kind_of(clean, data, b, ["ndarray", "remote", "dist"]))
        local.append(b)
    order = data.draw(st.permutations(range(len(parts))))
    parts, local = [parts[i] for i in order], [local[i] for i in order]
    with NoGather(clean):
        got = np.concatenate(parts, axis=axis)
        flat = np.concatenate(parts, axis=None)
        as_float = np.concatenate(parts, axis=axis, dtype=np.float64)
    same(got, np.concatenate(local, axis=axis))
    same(flat, np.concatenate(local, axis=None))
    same(as_float, np.concatenate(local, axis=axis, dtype=np.float64))
    # stack: arrays of one shape
    b = (a * 2).astype(a.dtype)
    other = kind_of(clean, data, b, ["ndarray", "remote", "dist"])
    where = data.draw(st.integers(-a.ndim - 1, a.ndim))
    x = dist(clean, a, layout)
    with NoGather(clean):
        stacked = np.stack([x, other, x], axis=where)
        out = dist(clean, np.zeros((2, *a.shape), a.dtype), data.draw(layouts((2, *a.shape))))
        into = np.stack([other, x], out=out)
    same(stacked, np.stack([a, b, a], axis=where))
    assert into is out
    same(out, np.stack([b, a]))


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_vstack_hstack_dstack_column_stack(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    b = (a - 1).astype(a.dtype)
    x = dist(clean, a, layout)
    other = kind_of(clean, data, b, ["ndarray", "remote", "dist"])
    with NoGather(clean):
        got = [np.vstack([x, other]), np.hstack([other, x]), np.dstack([x, other, x])]
        cols = np.column_stack([x, other]) if a.ndim <= 2 else None
        single = [np.vstack([x]), np.hstack([x]), np.dstack([x])]
    want = [np.vstack([a, b]), np.hstack([b, a]), np.dstack([a, b, a])]
    for g, w in zip(got, want, strict=True):
        same(g, w)
    if cols is not None:
        same(cols, np.column_stack([a, b]))
    for g, w in zip(single, [np.vstack([a]), np.hstack([a]), np.dstack([a])], strict=True):
        same(g, w)


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_split_array_split_vsplit_hsplit_dsplit(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
    n = a.shape[axis]
    sections = data.draw(st.integers(1, 4))
    points = data.draw(st.lists(st.integers(-n - 2, n + 2), max_size=4))
    if data.draw(st.booleans()):
        points = sorted(points)
    x = dist(clean, a, layout)
    calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        ("array_split sections", np.array_split, (sections, axis)),
        ("array_split points", np.array_split, (points, axis)),
        ("split sections", np.split, (sections, axis)),
        ("split points", np.split, (points, axis)),
        ("vsplit", np.vsplit, (points,)),
        ("hsplit", np.hsplit, (points,)),
        ("dsplit", np.dsplit, (points,)),
    ]
    for name, fn, args in calls:
        want = attempt(lambda fn=fn, args=args: fn(a, *args))
        with NoGather(clean):
            got = attempt(lambda fn=fn, args=args: fn(x, *args))
        try:
            same_outcome(got, want)
        except AssertionError as exc:
            raise AssertionError(f"{name} {args}: {exc}") from exc


# -- axes and shapes ------------------------------------------------------------------------


@FAST
@given(case=cases(dtypes=[np.int64, np.bool_]), data=st.data())
def test_axis_functions_move_no_data(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    nd = a.ndim
    perm = data.draw(st.permutations(range(nd)))
    perm = [p - nd if data.draw(st.booleans()) else p for p in perm]
    k = data.draw(st.integers(1, nd))
    src = data.draw(st.permutations(range(nd)))[:k]
    dst = data.draw(st.permutations(range(-nd, 0)))[:k]
    ax1, ax2 = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    start = data.draw(st.integers(0, nd))
    new = data.draw(st.lists(st.integers(-nd - 2, nd + 1), min_size=1, max_size=2, unique=True))
    x = dist(clean, a, layout)
    calls: list[Callable[[Any], Any]] = [
        np.transpose,
        lambda v: np.transpose(v, perm),
        lambda v: v.transpose(*perm),
        lambda v: v.T,
        lambda v: np.moveaxis(v, src, dst),
        lambda v: np.moveaxis(v, src[0], dst[0]),
        lambda v: np.rollaxis(v, ax1, start),
        lambda v: np.swapaxes(v, ax1, ax2),
        lambda v: v.swapaxes(ax1, ax2),
        lambda v: np.expand_dims(v, new[0]),
        lambda v: np.expand_dims(v, tuple(new)),
        np.squeeze,
        lambda v: np.squeeze(np.expand_dims(v, tuple(new)), axis=tuple(new)),
        lambda v: v.squeeze(),
    ]
    for i, call in enumerate(calls):
        want = attempt(lambda call=call: call(a))
        with NoGather(clean):
            got = attempt(lambda call=call: call(x))
        try:
            same_outcome(got, want)
        except AssertionError as exc:
            raise AssertionError(f"call {i}: {exc}") from exc


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_squeeze_the_split_axis(clean: Client, case: Any, data: Any) -> None:
    a, _ = case
    a = np.expand_dims(a, data.draw(st.integers(0, a.ndim)))
    axis = a.shape.index(1)
    k = data.draw(st.integers(1, 3))
    engines = data.draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    cut = data.draw(st.integers(0, k - 1))
    bounds = [0] * (cut + 1) + [1] * (k - cut)
    x = dist(clean, a, (axis, engines, bounds))
    with NoGather(clean):
        got = [np.squeeze(x, axis=axis), np.squeeze(x), x.squeeze(axis)]
    for g, w in zip(got, [np.squeeze(a, axis=axis), np.squeeze(a), a.squeeze(axis)], strict=True):
        same(g, w)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_broadcast_to_and_broadcast_arrays(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    lead = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2)))
    target = lead + tuple(
        data.draw(st.integers(0, 3)) if s == 1 and data.draw(st.booleans()) else s for s in a.shape
    )
    small = data.draw(hnp.arrays(np.int64, data.draw(broadcastable(a.shape))))
    other = kind_of(clean, data, small, ["ndarray", "remote", "dist"])
    with NoGather(clean):
        to = np.broadcast_to(x, target)
        pair = np.broadcast_arrays(x, other)
        bad = attempt(lambda: np.broadcast_to(x, (*a.shape[:-1], a.shape[-1] + 2)))
    if a.shape[-1] == 1:  # a length-1 axis broadcasts to any length
        bad = attempt(lambda: np.broadcast_to(x, a.shape[:-1]))
    same(to, np.broadcast_to(a, target))
    want = np.broadcast_arrays(a, small)
    assert isinstance(pair, tuple)
    same(pair[0], want[0])
    # the other operand's view: an array of ours when it was one, else an ndarray is fine
    got = pair[1] if isinstance(pair[1], sa.DistArray) else sa.gather(pair[1])
    assert np.shape(got) == want[1].shape
    np.testing.assert_array_equal(sa.gather(got), want[1])
    assert isinstance(bad, ValueError)


def factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
    """The shapes of ``parts`` axes with ``n`` elements (small n)."""
    if parts == 1:
        return [(n,)]
    out = []
    for d in range(1, n + 1) if n else [0, 1, 2]:
        if n == 0 or n % d == 0:
            out += [(d, *rest) for rest in factorizations(n // d if d else 0, parts - 1)]
    return out


@FAST
@given(case=cases(dtypes=[np.int64], min_side=1), data=st.data())
def test_reshape_keeps_blocks_or_raises_a_clear_error(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = layout[0]
    x = dist(clean, a, layout)
    # The axes up to the split axis kept: every block stays whole.
    rest = math.prod(a.shape[axis + 1 :])
    tail = data.draw(st.sampled_from(factorizations(rest, data.draw(st.integers(1, 2)))))
    keep = (*a.shape[: axis + 1], *tail)
    with NoGather(clean):
        kept = x.reshape(keep)
        kept_np = np.reshape(x, keep)
        same_shape = x.reshape(*a.shape)
        inferred = x.reshape(*a.shape[: axis + 1], -1)
    same(kept, a.reshape(keep))
    same(kept_np, a.reshape(keep))
    same(same_shape, a)
    same(inferred, a.reshape(*a.shape[: axis + 1], -1))
    # Any other shape: numpy's result, or a ValueError naming redistribute.
    other = data.draw(st.sampled_from(factorizations(a.size, data.draw(st.integers(1, 3)))))
    with NoGather(clean):
        got = attempt(lambda: x.reshape(other))
    if isinstance(got, ValueError):
        assert "redistribute" in str(got), got
        # the way out the message names gives numpy's result
        y = sa.redistribute(x, axis=0)
        with NoGather(clean):
            via = attempt(lambda: y.reshape(other))
        if not isinstance(via, ValueError):
            same(via, a.reshape(other))
    else:
        same_outcome(got, a.reshape(other))
    # Sizes that don't fit: numpy's ValueError.
    for bad in [(a.size + 1,), (-1, a.size + 1), (-1, -1)]:
        assert isinstance(attempt(lambda bad=bad: x.reshape(bad)), ValueError), bad


@FEW
@given(case=cases(dtypes=[np.int64], min_dims=2, min_side=1))
def test_reshape_gives_a_view_like_numpy(clean: Client, case: Any) -> None:
    a, layout = case
    axis = layout[0]
    x = dist(clean, a, layout)
    keep = (*a.shape[: axis + 1], -1)
    with NoGather(clean):
        y = x.reshape(keep)
        y.fill(-3)
    same(x, np.full_like(a, -3))


# -- reductions ----------------------------------------------------------------------------

REDUCTIONS = ["sum", "prod", "mean", "std", "var", "min", "max", "any", "all"]


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int8, np.float32], nan=True),
    name=st.sampled_from(REDUCTIONS),
    data=st.data(),
)
def test_reductions_as_functions_and_methods(
    clean: Client, case: Any, name: str, data: Any
) -> None:
    a, layout = case
    if name == "prod" and a.dtype.kind in "iu":
        a = np.clip(a, -2, 2).astype(a.dtype)
    kwargs: dict[str, Any] = {
        "axis": data.draw(st.one_of(axes(a.ndim), st.just(layout[0]))),
        "keepdims": data.draw(st.booleans()),
    }
    if name in ("std", "var") and data.draw(st.booleans()):
        kwargs["ddof"] = data.draw(st.sampled_from([0, 1, 2]))
    if name in ("sum", "prod", "mean") and data.draw(st.booleans()):
        kwargs["dtype"] = data.draw(st.sampled_from([np.float64, np.int64, np.float32]))
    mask = None
    if data.draw(st.booleans()):
        mask = data.draw(hnp.arrays(np.bool_, data.draw(broadcastable(a.shape))))
        if name in ("min", "max"):
            kwargs["initial"] = 0
    want = attempt(lambda: getattr(np, name)(a, **kwargs, where=True if mask is None else mask))
    want_method = attempt(lambda: getattr(a, name)(**kwargs, where=True if mask is None else mask))
    x = dist(clean, a, layout)
    where = True if mask is None else kind_of(clean, data, mask, ["ndarray", "dist"])
    with NoGather(clean):
        got = attempt(lambda: getattr(np, name)(x, **kwargs, where=where))
        got_method = attempt(lambda: getattr(x, name)(**kwargs, where=where))
    rtol = 1e-6 if a.dtype.kind in "biu" or name in ("std", "var") else 1e-9
    same_outcome(got, want, rtol=rtol)
    same_outcome(got_method, want_method, rtol=rtol)


@FAST
@given(
    case=cases(dtypes=[np.float64, np.int64, np.bool_], nan=True),
    name=st.sampled_from(["argmin", "argmax"]),
    data=st.data(),
)
def test_argmin_argmax_with_ties_and_nan(clean: Client, case: Any, name: str, data: Any) -> None:
    a, layout = case
    if a.dtype.kind == "f":
        a = np.round(a / 30)  # few values: many ties (and the NaNs stay)
    axis = data.draw(st.sampled_from([None, layout[0], *range(-a.ndim, a.ndim)]))
    keepdims = data.draw(st.booleans())
    want = attempt(lambda: getattr(np, name)(a, axis=axis, keepdims=keepdims))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: getattr(np, name)(x, axis=axis, keepdims=keepdims))
        method = attempt(lambda: getattr(x, name)(axis=axis, keepdims=keepdims))
    same_outcome(got, want)
    same_outcome(method, want)


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int8, np.uint8]),
    name=st.sampled_from(["cumsum", "cumprod"]),
    data=st.data(),
)
def test_cumsum_cumprod(clean: Client, case: Any, name: str, data: Any) -> None:
    a, layout = case
    if name == "cumprod" and a.dtype.kind != "b":
        a = np.clip(a, -2, 2).astype(a.dtype) if a.dtype.kind != "u" else np.clip(a, 0, 2)
    axis = data.draw(st.sampled_from([None, layout[0], *range(-a.ndim, a.ndim)]))
    dtype = data.draw(st.sampled_from([None, None, np.float64, np.int32]))
    want = attempt(lambda: getattr(np, name)(a, axis=axis, dtype=dtype))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: getattr(np, name)(x, axis=axis, dtype=dtype))
        method = attempt(lambda: getattr(x, name)(axis=axis, dtype=dtype))
    same_outcome(got, want)
    same_outcome(method, want)


# -- elementwise functions ------------------------------------------------------------------


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_where_and_clip(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    b = data.draw(
        hnp.arrays(a.dtype, data.draw(broadcastable(a.shape)), elements=elements(a.dtype))
    )
    other = kind_of(clean, data, b, ["ndarray", "remote", "dist"])
    cond_mask = data.draw(hnp.arrays(np.bool_, data.draw(broadcastable(a.shape))))
    cond = kind_of(clean, data, cond_mask, ["ndarray", "dist"])
    lo, hi = data.draw(st.sampled_from([(-3, 3), (None, 0), (0, None), (5, -5)]))
    bound = data.draw(
        hnp.arrays(a.dtype, data.draw(broadcastable(a.shape)), elements=elements(a.dtype))
    )
    with NoGather(clean):
        got = [
            np.where(x > 0, x, other),
            np.where(cond, other, x),
            np.where(cond, 1, x),
            np.where(x < 2, -1.5, 7),
            np.clip(x, lo, hi),
            x.clip(lo, hi),
            np.clip(x, bound, None),
            np.clip(x, min=-1, max=bound),
        ]
        nonzero = np.where(x > 0)
    want = [
        np.where(a > 0, a, b),
        np.where(cond_mask, b, a),
        np.where(cond_mask, 1, a),
        np.where(a < 2, -1.5, 7),
        np.clip(a, lo, hi),
        a.clip(lo, hi),
        np.clip(a, bound, None),
        np.clip(a, min=-1, max=bound),
    ]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        try:
            same(g, w)
        except AssertionError as exc:
            raise AssertionError(f"item {i}: {exc}") from exc
    same(nonzero, np.where(a > 0))


# -- linear algebra -------------------------------------------------------------------------


@st.composite
def matrices(draw: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Two operands numpy's matmul takes: vectors, matrices, or a stack of matrices."""
    n, k, m = (draw(st.integers(0, 4)) for _ in range(3))
    dtype = draw(st.sampled_from([np.int64, np.float64]))
    ashape = draw(st.sampled_from([(k,), (n, k), (2, n, k)]))
    bshape = draw(st.sampled_from([(k,), (k, m), (2, k, m)]))
    a = draw(hnp.arrays(dtype, ashape, elements=elements(dtype)))
    b = draw(hnp.arrays(dtype, bshape, elements=elements(dtype)))
    return a, b


@FAST
@given(ab=matrices(), data=st.data())
def test_matmul_and_dot(clean: Client, ab: Any, data: Any) -> None:
    a, b = ab
    kinds = data.draw(st.sampled_from([("dist", "ndarray"), ("ndarray", "dist"), ("dist", "dist")]))
    kinds += (data.draw(st.sampled_from(["ndarray", "remote"])),)
    x = dist(clean, a, data.draw(layouts(a.shape))) if kinds[0] == "dist" else a
    y = dist(clean, b, data.draw(layouts(b.shape))) if kinds[1] == "dist" else b
    calls: list[Callable[[Any, Any], Any]] = [
        np.matmul,
        lambda u, v: u @ v,
        np.dot,
        lambda u, v: np.tensordot(u, v, axes=1),
    ]
    for i, call in enumerate(calls):
        want = attempt(lambda call=call: call(a, b))
        with NoGather(clean):
            got = attempt(lambda call=call: call(x, y))
        try:
            same_outcome(got, want, rtol=1e-9)
        except AssertionError as exc:
            raise AssertionError(f"call {i} on {kinds[:2]}: {exc}") from exc


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_dims=2, max_dims=2), data=st.data())
def test_matmul_row_split_and_contracted_split(clean: Client, case: Any, data: Any) -> None:
    a, _ = case
    k = a.shape[1]
    m = data.draw(st.integers(1, 3))
    b = data.draw(hnp.arrays(a.dtype, (k, m), elements=elements(a.dtype)))
    v = b[:, 0].copy()
    x = dist(clean, a, data.draw(layouts(a.shape)))
    y = dist(clean, b, data.draw(layouts(b.shape)))
    with NoGather(clean):
        got = [x @ b, x @ y, x @ v, np.dot(x, y), b.T @ x.T, np.matmul(x.T, a), x.T @ x]
    want = [a @ b, a @ b, a @ v, np.dot(a, b), b.T @ a.T, a.T @ a, a.T @ a]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        try:
            same(g, w)
        except AssertionError as exc:
            raise AssertionError(f"item {i} (x split along {x.axis}): {exc}") from exc


def gather(v: Any) -> Any:
    return sa.gather(v) if isinstance(v, sa.DistArray | sa.RemoteArray) else v


def test_matmul_with_mismatched_inner_dimensions_raises(clean: Client) -> None:
    a = np.arange(24).reshape(6, 4)
    for axis in (0, 1):
        x = sa.scatter(a, axis, client=clean)
        y = sa.scatter(a, axis, client=clean)
        for u, v in [(x, a), (x, y), (a, y), (x, np.arange(6)), (x.T, np.arange(4))]:
            for fn in (np.matmul, np.dot):
                want = attempt(lambda fn=fn, u=u, v=v: fn(gather(u), gather(v)))
                assert isinstance(want, ValueError)
                got = attempt(lambda fn=fn, u=u, v=v: fn(u, v))
                same_outcome(got, want)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_tensordot(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    n = data.draw(st.integers(0, a.ndim))
    contracted = data.draw(st.permutations(range(a.ndim)))[:n]
    extra = data.draw(st.integers(1, 3))
    bshape = (*(a.shape[i] for i in contracted), extra)
    b = data.draw(hnp.arrays(a.dtype, bshape, elements=elements(a.dtype)))
    x = dist(clean, a, layout)
    y = kind_of(clean, data, b, ["ndarray", "dist", "remote"])
    axes_ = (list(contracted), list(range(n)))
    back = (list(range(n)), list(contracted))
    with NoGather(clean):
        got = [np.tensordot(x, y, axes_), np.tensordot(y, x, back)]
        if n == 0:
            got.append(np.tensordot(x, y, 0))
    want = [np.tensordot(a, b, axes_), np.tensordot(b, a, back)]
    if n == 0:
        want.append(np.tensordot(a, b, 0))
    for g, w in zip(got, want, strict=True):
        same(g, w)


# -- selection, sorting ---------------------------------------------------------------------


@FAST
@given(case=cases(), data=st.data())
def test_take(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.sampled_from([None, layout[0], *range(-a.ndim, a.ndim)]))
    n = a.size if axis is None else a.shape[axis]
    idx: Any = data.draw(
        st.one_of(
            st.integers(-n - 1, n),
            st.lists(st.integers(-n - 1, n), max_size=5),
            hnp.arrays(np.intp, (2, 2), elements=st.integers(-n - 1, n)),
        )
    )
    if n == 0:  # numpy skips its bounds check when nothing is taken: a quirk, not tested
        idx = []
    mode = data.draw(st.sampled_from(["raise", "raise", "clip", "wrap"]))
    want = attempt(lambda: np.take(a, idx, axis=axis, mode=mode))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = attempt(lambda: np.take(x, idx, axis=axis, mode=mode))
        method = attempt(lambda: x.take(idx, axis=axis)) if mode == "raise" else got
    same_outcome(got, want)
    same_outcome(method, want)


@FAST
@given(case=cases(dtypes=[np.int64, np.float64, np.bool_, np.int8], nan=True), data=st.data())
def test_sort_along_any_axis(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    axis = data.draw(st.sampled_from([None, -1, layout[0], *range(a.ndim)]))
    kind = data.draw(st.sampled_from([None, "stable", "quicksort"]))
    x = dist(clean, a, layout)
    with NoGather(clean):
        got = np.sort(x, axis=axis, kind=kind)
    same(got, np.sort(a, axis=axis, kind=kind), exact=True)
    if axis is not None:
        y = x.copy()
        with NoGather(clean):
            y.sort(axis=axis)
        expected = a.copy()
        expected.sort(axis=axis)
        same(y, expected, exact=True)


@FAST
@given(
    case=cases(dtypes=[np.int64, np.float64, np.bool_], nan=True, max_side=6),
    data=st.data(),
)
def test_unique(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    if a.dtype.kind == "f":
        a = np.round(a / 20)  # repeats (the NaNs stay: numpy keeps one)
    x = dist(clean, a, layout)
    flags = {
        "return_index": data.draw(st.booleans()),
        "return_inverse": data.draw(st.booleans()),
        "return_counts": data.draw(st.booleans()),
    }
    with NoGather(clean):
        got = np.unique(x)
        more = np.unique(x, **flags)
        rows = attempt(lambda: np.unique(x, axis=0))
    same(got, np.unique(a), exact=True)
    want_more = np.unique(a, **flags)
    same(more, want_more if isinstance(want_more, np.ndarray) else tuple(want_more), exact=True)
    want_rows = attempt(lambda: np.unique(a, axis=0))
    same_outcome(rows, want_rows, exact=True)


# -- methods and conversion -----------------------------------------------------------------


@FAST
@given(case=cases(dtypes=[np.int64, np.float64, np.bool_]), data=st.data())
def test_methods(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    dtype = data.draw(st.sampled_from([np.float32, np.int8, np.bool_, np.complex128]))
    with NoGather(clean):
        t = x.T
        cast = x.astype(dtype)
        same_dtype = x.astype(a.dtype, copy=False)
        c = x.copy()
        c.fill(3)
        flat = x.flatten()
        ravel = x.ravel()
        shaped = x.reshape(a.shape)
        shaped2 = x.reshape(*a.shape)
    same(t, a.T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        same(cast, a.astype(dtype))
    assert same_dtype is x  # numpy: no copy when none is needed
    same(c, np.full_like(a, 3))
    same(x, a)  # the copy's fill left x alone
    same(flat, a.flatten())
    same(ravel, a.ravel())
    same(shaped, a)
    same(shaped2, a)
    assert x.shape == a.shape
    assert x.ndim == a.ndim
    assert x.size == a.size
    assert x.nbytes == a.nbytes
    assert x.dtype == a.dtype
    assert len(x) == len(a)
    assert x.tolist() == a.tolist()
    if a.size:
        i = data.draw(st.integers(0, a.size - 1))
        assert x.item(i) == a.item(i)
        idx = np.unravel_index(i, a.shape)
        assert x.item(*idx) == a.item(*idx)


@FEW
@given(case=cases(dtypes=[np.int64, np.float64], min_side=1), data=st.data())
def test_other_functions_run_on_one_engine_with_numpy_results(
    clean: Client, case: Any, data: Any
) -> None:
    """Functions without a parallel form: numpy's result, computed on an engine."""
    a, layout = case
    axis = data.draw(st.integers(0, a.ndim - 1))
    x = dist(clean, a, layout)
    calls: list[Callable[[Any], Any]] = [
        lambda v: np.flip(v, axis),
        lambda v: np.roll(v, 2, axis=axis),
        lambda v: np.diff(v, axis=axis),
        lambda v: np.median(v, axis=axis),
        lambda v: np.percentile(v, 30, axis=axis),
        lambda v: np.cumulative_sum(v, axis=axis),
        lambda v: np.argsort(v, axis=axis, kind="stable"),
        lambda v: np.count_nonzero(v, axis=axis),
        lambda v: np.nansum(v, axis=axis),
        lambda v: np.ptp(v, axis=axis),
        lambda v: np.isclose(v, a),
        lambda v: np.round(v / 3, 1),
    ]
    for i, call in enumerate(calls):
        want = attempt(lambda call=call: call(a))
        with NoGather(clean):
            got = attempt(lambda call=call: call(x))
        try:
            same_outcome(got, want)
        except AssertionError as exc:
            raise AssertionError(f"call {i}: {exc}") from exc
