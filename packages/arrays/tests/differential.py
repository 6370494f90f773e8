"""What the differential tests share: hypothesis strategies for arrays and layouts,
and comparisons of our outcome (result or error) with numpy's."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shoal.arrays as sa
from shoal.hub import Client, RemoteError

FAST = settings(
    max_examples=int(os.environ.get("SHOAL_TEST_EXAMPLES", "20")),  # more: a deeper run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


FEW = settings(FAST, max_examples=12)


Layout = tuple[int, list[int], list[int]]


@st.composite
def layouts(draw: Any, shape: tuple[int, ...]) -> Layout:
    """A split axis, 1-3 blocks (engines as positions in the cluster's ids, repeats
    allowed) and their boundaries (uneven, maybe empty)."""
    axis = draw(st.integers(0, len(shape) - 1))
    k = draw(st.integers(1, 3))
    engines = draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    cuts = sorted(draw(st.lists(st.integers(0, shape[axis]), min_size=k - 1, max_size=k - 1)))
    return axis, engines, [0, *cuts, shape[axis]]


def elements(dtype: Any, nan: bool = False) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "b":
        return st.booleans()
    if kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(max(-20, int(info.min)), min(20, int(info.max)))
    finite = st.floats(-50, 50, width=np.dtype(dtype).itemsize * 8)
    return st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf])) if nan else finite


@st.composite
def arrays(
    draw: Any,
    *,
    dtypes: Any = (np.int64, np.float64, np.bool_),
    min_dims: int = 1,
    max_dims: int = 3,
    min_side: int = 0,
    max_side: int = 5,
    nan: bool = False,
) -> np.ndarray[Any, Any]:
    dtype = draw(st.sampled_from(list(dtypes)))
    shape = draw(
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)
    )
    return draw(hnp.arrays(dtype, shape, elements=elements(dtype, nan)))


@st.composite
def cases(draw: Any, **kwargs: Any) -> tuple[np.ndarray[Any, Any], Layout]:
    a = draw(arrays(**kwargs))
    return a, draw(layouts(a.shape))


def ids(rc: Client) -> list[int]:
    return sorted(rc.ids)


def dist(rc: Client, a: np.ndarray[Any, Any], layout: Layout) -> Any:
    axis, picks, bounds = layout
    engines = [ids(rc)[i] for i in picks]
    x = sa.scatter(a, axis=axis, engines=engines, boundaries=bounds, client=rc)
    assert isinstance(x, sa.DistArray)
    assert (x.axis, list(x.engines), list(x.boundaries)) == (axis, engines, bounds)
    return x


def same(got: Any, want: Any, *, exact: bool | None = None, rtol: float = 1e-9) -> None:
    """``got`` (ours) equals numpy's ``want``: an array of ours (gathered here) for an
    array, a numpy scalar for a scalar; same shape, dtype and values."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, type(want)), type(got)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            same(g, w, exact=exact, rtol=rtol)
        return
    if isinstance(want, np.ndarray) and (want.ndim or not isinstance(got, np.generic)):
        assert isinstance(got, sa.DistArray), f"a DistArray, not {type(got).__name__}"
        got = sa.gather(got)
    else:
        assert isinstance(want, np.ndarray | np.generic), type(want)
        assert isinstance(got, np.generic), f"a numpy scalar, not {type(got).__name__}"
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype.kind in "fc":  # partial results combined: rounding within a few eps
        rtol = max(rtol, 8 * float(np.finfo(want.dtype).eps))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if exact if exact is not None else want.dtype.kind in "biuSUmM":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12, equal_nan=True)


def attempt(fn: Callable[[], Any]) -> Any:
    """What ``fn()`` gives, or the exception it raised (numpy's warnings silenced)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as exc:
        return exc


def error_names(exc: BaseException) -> set[str]:
    """The names an error answers to: its classes, and when it came from an engine (its
    also a RemoteError) the type raised there, which may not pickle (numpy's
    UFuncTypeError arrives as the TypeError it derives from)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, RemoteError):
        names.add(exc.ename)
    return names


def same_outcome(got: Any, want: Any, **kwargs: Any) -> None:
    """Both failed with the same error type, or both succeeded with the same result."""
    if isinstance(want, Exception):
        assert isinstance(got, Exception), f"numpy raised {want!r}, we returned {got!r}"
        assert type(want).__name__ in error_names(got), f"numpy raised {want!r}, we {got!r}"
        return
    if isinstance(got, Exception):
        pytest.fail(f"numpy gave a result, we raised {got!r}")
    same(got, want, **kwargs)


@st.composite
def axes(draw: Any, ndim: int) -> Any:
    """An ``axis`` argument: None, one axis (negative too) or a tuple of distinct axes."""
    return draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), max_size=ndim, unique=True).map(tuple),
        )
    )


@st.composite
def broadcastable(draw: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape``: some axes set to 1, some leading ones gone."""
    drop = draw(st.integers(0, len(shape) - 1))
    ones = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    return tuple(1 if o else s for o, s in zip(ones, shape, strict=True))[drop:]
