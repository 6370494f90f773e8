"""Differential tests of indexing and assignment on shoal arrays, compared with numpy.

Each example draws a small array (1-3 dimensions, empty and length-1 axes included), a
split axis, 1-3 blocks on engines drawn from the cluster (repeats allowed) and uneven
boundaries (empty blocks included), then a key: ints (negative too), slices with any
step, ``None``, ``Ellipsis``, integer arrays and boolean masks, on every axis. Reading
runs inside ``NoGather``; the result is gathered and compared with numpy's (type, shape,
dtype, values). Assignment takes scalars, ndarrays, RemoteArrays and DistArrays (also
laid out differently, or overlapping the target), and the whole array is compared with
numpy's after the same assignment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from arrays_testing import NoGather
from differential import (
    FAST,
    attempt,
    broadcastable,
    cases,
    dist,
    elements,
    error_names,
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


@st.composite
def slices(draw: Any, n: int) -> slice:
    """Any slice of an axis of ``n``: bounds past either end, negative, or None; any step."""
    bound = st.one_of(st.none(), st.integers(-n - 2, n + 2))
    step = draw(st.one_of(st.none(), st.integers(-3, 3).filter(bool)))
    return slice(draw(bound), draw(bound), step)


@st.composite
def components(draw: Any, n: int, arrays_too: bool = True) -> Any:
    """One key component for an axis of ``n``."""
    options = [slices(n)]
    if n:
        options.append(st.integers(-n, n - 1))
        if arrays_too:
            options.append(
                st.lists(st.integers(-n, n - 1), max_size=4).map(lambda v: np.array(v, np.intp))
            )
    return draw(st.one_of(options))


def read(rc: Client, x: Any, a: np.ndarray[Any, Any], key: Any, local: Any = None) -> None:
    """``x[key]`` equals ``a[key]`` (``a[local]`` when given: numpy's key for an array
    of ours), or both raise IndexError."""
    want = attempt(lambda: a[key if local is None else local])
    with NoGather(rc):
        got = attempt(lambda: x[key])
    try:
        same_outcome(got, want, exact=True)
    except AssertionError as exc:
        raise AssertionError(f"key {key!r}: {exc}") from exc


# -- reading --------------------------------------------------------------------------------


@FAST
@given(case=cases(), data=st.data())
def test_basic_indexing(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    key = data.draw(hnp.basic_indices(a.shape, min_dims=0, allow_newaxis=True))
    x = dist(clean, a, layout)
    read(clean, x, a, key)


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_slices_with_any_step_on_every_axis(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    key = tuple(data.draw(components(n, arrays_too=False)) for n in a.shape)
    read(clean, x, a, key)
    split = layout[0]
    s = data.draw(slices(a.shape[split]))
    read(clean, x, a, (slice(None),) * split + (s,))
    read(clean, x, a, (Ellipsis, s) if split == a.ndim - 1 else (slice(None),) * split + (s,))
    read(clean, x, a, (None, *(slice(None),) * split, s, None))


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_integer_arrays_on_every_axis(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    key = tuple(data.draw(components(n)) for n in a.shape)
    read(clean, x, a, key)
    for axis in range(a.ndim):
        n = a.shape[axis]
        rows = data.draw(st.lists(st.integers(-n, n - 1), max_size=5)) if n else []
        pre = (slice(None),) * axis
        read(clean, x, a, (*pre, np.array(rows, np.intp)))
        if rows:
            read(clean, x, a, (*pre, rows))  # a list
            read(clean, x, a, (*pre, np.array(rows).reshape(1, -1)))  # a 2-d index
    if a.size:
        shapes = hnp.array_shapes(max_dims=2)
        fancy = data.draw(hnp.integer_array_indices(a.shape, result_shape=shapes))
        read(clean, x, a, fancy)
    if a.ndim == 3 and a.shape[0] and a.shape[2]:  # arrays separated by a slice go first
        read(clean, x, a, (np.array([0, -1]), slice(None), np.array([[0], [-1]])))
        read(clean, x, a, (0, slice(None, None, -1), np.array([0, 0])))


@FAST
@given(case=cases(), data=st.data())
def test_boolean_masks(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    full = data.draw(hnp.arrays(np.bool_, a.shape))
    read(clean, x, a, full)
    mask_layout = data.draw(layouts(a.shape))
    read(clean, x, a, dist(clean, full, mask_layout), full)
    # a mask made by a comparison of the array itself (laid out like it)
    t = a.astype(np.float64).mean() if a.size else 0
    with NoGather(clean):
        cmp = x > t
    assert isinstance(cmp, sa.DistArray)
    want = a[a > t]
    with NoGather(clean):
        got = x[cmp]
    same(got, want, exact=True)
    # a mask on one axis (and on the leading axes)
    axis = data.draw(st.integers(0, a.ndim - 1))
    line = data.draw(hnp.arrays(np.bool_, (a.shape[axis],)))
    read(clean, x, a, (slice(None),) * axis + (line,))
    read(clean, x, a, (Ellipsis, line) if axis == a.ndim - 1 else (slice(None),) * axis + (line,))
    lead = data.draw(hnp.arrays(np.bool_, a.shape[: axis + 1]))
    read(clean, x, a, lead)
    read(clean, x, a, np.bool_(True))
    read(clean, x, a, False)


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_out_of_range_and_bad_keys_raise_index_error(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    axis = data.draw(st.integers(0, a.ndim - 1))
    n = a.shape[axis]
    pre = (slice(None),) * axis
    bad = data.draw(st.sampled_from([n, n + 3, -n - 1, -n - 5]))
    for key in [(*pre, bad), (0,) * (a.ndim + 1)]:
        want = attempt(lambda key=key: a[key])
        assert isinstance(want, IndexError), (key, want)
        got = attempt(lambda key=key: x[key])
        assert isinstance(got, IndexError), f"key {key!r}: numpy raises IndexError, we {got!r}"
    arrays_ = [np.array([0, bad]) if n else np.array([bad]), [bad], np.ones(n + 1, bool)]
    for key in [(*pre, k) for k in arrays_]:
        want = attempt(lambda key=key: a[key])
        assert isinstance(want, IndexError), (key, want)
        got = attempt(lambda key=key: x[key])
        assert isinstance(got, IndexError), f"key {key!r}: numpy raises IndexError, we {got!r}"


def test_one_element_is_a_numpy_scalar(clean: Client) -> None:
    a = np.arange(60.0).reshape(3, 4, 5)
    for axis in range(3):
        x = sa.scatter(a, axis, [ids(clean)[i] for i in (1, 0, 1)], None, client=clean)
        for key in [(0, 0, 0), (-1, -2, -3), (2, 3, 4), (1, Ellipsis, 2, 3)]:
            with NoGather(clean):
                got = x[key]
            assert isinstance(got, np.float64), (key, type(got))
            assert got == a[key]


# -- writing --------------------------------------------------------------------------------


def value_for(
    rc: Client, data: Any, shape: tuple[int, ...], dtype: Any, kinds: list[str]
) -> tuple[Any, Any]:
    """A value to assign into a selection of ``shape``: (what we pass, numpy's)."""
    kind = data.draw(st.sampled_from(kinds))
    if kind == "scalar":
        v = data.draw(st.integers(-9, 9))
        return v, v
    vshape = data.draw(broadcastable(shape)) if kind == "broadcast" and shape else shape
    v = data.draw(hnp.arrays(dtype, vshape, elements=elements(dtype)))
    if kind == "remote" and v.ndim:
        return sa.remote(v, engine=ids(rc)[data.draw(st.integers(0, 2))], client=rc), v
    if kind == "dist" and v.ndim:
        return dist(rc, v, data.draw(layouts(v.shape))), v
    return v, v


VALUES = ["scalar", "ndarray", "broadcast", "remote", "dist"]


def write(
    rc: Client,
    x: Any,
    expected: np.ndarray[Any, Any],
    key: Any,
    pair: Any,
    *,
    numpy_key: Any = None,
) -> None:
    """``x[key] = v`` does what ``expected[key] = local`` does (or both raise the same),
    for ``pair`` = ``(v, local)`` (numpy's key: ``numpy_key`` when given)."""
    v, local = pair
    here = key if numpy_key is None else numpy_key
    want = attempt(lambda: expected.__setitem__(here, local))
    with NoGather(rc):
        got = attempt(lambda: x.__setitem__(key, v))
    if isinstance(want, Exception):
        assert type(want).__name__ in error_names(got), (
            f"key {key!r}: numpy raised {want!r}, we {got!r}"
        )
    elif isinstance(got, Exception):
        pytest.fail(f"key {key!r}: numpy assigned, we raised {got!r}")
    try:
        same(x, expected, exact=True)
    except AssertionError as exc:
        raise AssertionError(f"after x[{key!r}] = {local!r}: {exc}") from exc


@FAST
@given(case=cases(dtypes=[np.int64, np.float64]), data=st.data())
def test_assign_basic_keys(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    expected = a.copy()
    for _ in range(2):
        key = data.draw(hnp.basic_indices(a.shape, min_dims=0, allow_newaxis=True))
        shape = expected[key].shape
        pair = value_for(clean, data, shape, a.dtype, VALUES)
        write(clean, x, expected, key, pair)
    key = tuple(data.draw(components(n, arrays_too=False)) for n in a.shape)
    pair = value_for(clean, data, expected[key].shape, a.dtype, VALUES)
    write(clean, x, expected, key, pair)


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_assign_integer_arrays_and_masks(clean: Client, case: Any, data: Any) -> None:
    a, layout = case
    x = dist(clean, a, layout)
    expected = a.copy()
    axis = data.draw(st.integers(0, a.ndim - 1))
    n = a.shape[axis]
    rows = data.draw(st.lists(st.integers(-n, n - 1), max_size=5, unique=True)) if n else []
    key: Any = (slice(None),) * axis + (np.array(rows, np.intp),)
    pair = value_for(clean, data, expected[key].shape, a.dtype, VALUES)
    write(clean, x, expected, key, pair)
    # a full mask: ndarray or DistArray; values scalar or one per selected element
    mask = data.draw(hnp.arrays(np.bool_, a.shape))
    m = mask if data.draw(st.booleans()) else dist(clean, mask, data.draw(layouts(a.shape)))
    pair = value_for(clean, data, expected[mask].shape, a.dtype, VALUES)
    write(clean, x, expected, m, pair, numpy_key=mask)
    # a mask from a comparison of the array itself
    before = expected.copy()
    with NoGather(clean):
        cmp = x > 0
    with NoGather(clean):
        x[cmp] = -1
    expected[before > 0] = -1
    same(x, expected, exact=True)
    np.testing.assert_array_equal(sa.gather(cmp), before > 0)  # a new array, unchanged
    # a mask on one axis
    line = data.draw(hnp.arrays(np.bool_, (n,)))
    key = (slice(None),) * axis + (line,)
    pair = value_for(clean, data, expected[key].shape, a.dtype, VALUES)
    write(clean, x, expected, key, pair)
    # mixed: an int on one axis, an array on another
    if a.ndim >= 2 and a.shape[0] and a.shape[-1]:
        key = (0, Ellipsis, np.array([-1, 0]))
        pair = value_for(clean, data, expected[key].shape, a.dtype, VALUES)
        write(clean, x, expected, key, pair)


@FAST
@given(case=cases(dtypes=[np.int64], min_side=1), data=st.data())
def test_assign_overlapping_regions_of_the_same_array(clean: Client, case: Any, data: Any) -> None:
    """``x[a:b] = x[c:d]``: numpy reads the source before it writes."""
    a, layout = case
    axis = data.draw(st.sampled_from([layout[0], *range(a.ndim)]))
    n = a.shape[axis]
    length = data.draw(st.integers(0, n))
    src = data.draw(st.integers(0, n - length))
    dst = data.draw(st.integers(0, n - length))
    backwards = length and data.draw(st.booleans())
    pre = (slice(None),) * axis
    target = (*pre, slice(dst, dst + length))
    rows = (
        slice(src + length - 1, src - 1 if src else None, -1)
        if backwards
        else slice(src, src + length)
    )
    source = (*pre, rows)
    x = dist(clean, a, layout)
    expected = a.copy()
    expected[target] = expected[source]
    with NoGather(clean):
        x[target] = x[source]
    same(x, expected, exact=True)
    whole = (*pre, slice(None, None, -1))
    expected[...] = expected[whole]
    with NoGather(clean):
        x[...] = x[whole]
    same(x, expected, exact=True)


@FAST
@given(case=cases(dtypes=[np.int64]), data=st.data())
def test_basic_indexing_gives_views(clean: Client, case: Any, data: Any) -> None:
    """As numpy's: writing into ``x[key]`` (basic indexing) writes into ``x``."""
    a, layout = case
    key = data.draw(hnp.basic_indices(a.shape, min_dims=1, allow_newaxis=True))
    x = dist(clean, a, layout)
    expected = a.copy()
    view = expected[key]
    with NoGather(clean):
        got = x[key]
    if not isinstance(got, sa.DistArray):
        return
    view[...] = -4
    with NoGather(clean):
        got[...] = -4
    same(x, expected, exact=True)
    expected.fill(0)
    with NoGather(clean):
        x.fill(0)
    same(got, view, exact=True)
    expected += 1
    with NoGather(clean):
        x += 1
    same(got, view, exact=True)
