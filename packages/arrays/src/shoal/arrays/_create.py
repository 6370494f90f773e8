"""Making arrays: scatter from here, create on the engines, redistribute between them."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from shoal.engine import MsgType, RefDict
from shoal.hub import Client, current_client

from . import _kernels as K
from ._array import DistArray, RemoteArray, ShapeLike
from ._core import (
    _Array,
    _assemble,
    _block,
    _piece,
    _Plan,
    engines_and_bounds,
    redistributed,
)

__all__ = [
    "apply",
    "arange",
    "empty",
    "full",
    "ones",
    "random",
    "redistribute",
    "remote",
    "scatter",
    "standard_normal",
    "vectorize",
    "zeros",
]


_A = TypeVar("_A", bound=_Array)
_R = TypeVar("_R")

#: A real number as numpy's arange takes it: a Python or numpy int or float.
Real: TypeAlias = "float | np.integer | np.floating"


def _client(client: Client | None) -> Client:
    return client if client is not None else current_client()


def _shape(shape: ShapeLike) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, Iterable):
        return (operator.index(shape),)
    out = tuple(operator.index(s) for s in shape)
    if any(s < 0 for s in out):
        raise ValueError(f"negative dimensions are not allowed: {out}")
    return out


def scatter(
    a: ArrayLike,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    *,
    client: Client | None = None,
) -> DistArray:
    """Split ``a`` along ``axis`` into blocks on the engines; a :class:`DistArray`.

    ``engines``: the engine of each block (all engines by default); ``boundaries``: where
    the blocks start and end along ``axis`` (``len(engines) + 1`` offsets; even blocks by
    default, the first ones one row longer). Blocks may be empty. On one host the data
    goes through shared memory.
    """
    client = _client(client)
    a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError("scatter needs an array of at least one dimension; use remote() for 0-d")
    axis = operator.index(axis)
    if not -a.ndim <= axis < a.ndim:
        raise np.exceptions.AxisError(axis, a.ndim)
    axis %= a.ndim
    engines_, bounds = engines_and_bounds(client, a.shape[axis], engines, boundaries)
    pending = []
    for e, lo, hi in zip(engines_, bounds[:-1], bounds[1:], strict=True):
        part = a[(slice(None),) * axis + (slice(lo, hi),)]
        content = {"obj": np.ascontiguousarray(part), "owner": client.owner}
        pending.append((e, part, client.object_request(e, MsgType.STORE_REQUEST, content)))
    made = []
    for e, part, reply in pending:
        oid = cast(RefDict, reply.result()["ref"])["id"]
        kept = K.Kept(oid, part.shape, a.dtype.str)
        made.append((_block(client, e, kept), kept))
    result: DistArray = _assemble(client, made, axis, DistArray)
    return result


def remote(a: ArrayLike, engine: int | None = None, *, client: Client | None = None) -> RemoteArray:
    """Put ``a`` whole on one engine (``engine``, or the first); a :class:`RemoteArray`."""
    client = _client(client)
    a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError("remote() needs an array of at least one dimension")
    one = scatter(a, 0, [client.ids[0] if engine is None else engine], client=client)
    return RemoteArray._new(client, one._blocks, 0, one._bounds, one.shape, one.dtype)


def _create(
    shape: ShapeLike,
    dtype: np.dtype[Any],
    axis: int,
    engines: Sequence[int] | None,
    boundaries: Sequence[int] | None,
    client: Client | None,
    job: Callable[[int, tuple[int, ...]], tuple[Any, ...]],
) -> DistArray:
    """A DistArray whose blocks are made on their engines by ``job(index, shape)``."""
    client = _client(client)
    dims = _shape(shape)
    if not dims:
        raise ValueError("shoal arrays have at least one dimension")
    axis = operator.index(axis)
    if not -len(dims) <= axis < len(dims):
        raise np.exceptions.AxisError(axis, len(dims))
    axis %= len(dims)
    engines_, bounds = engines_and_bounds(client, dims[axis], engines, boundaries)
    plan = _Plan(client)
    tickets = []
    for i, (e, lo, hi) in enumerate(zip(engines_, bounds[:-1], bounds[1:], strict=True)):
        block_shape = list(dims)
        block_shape[axis] = hi - lo
        fn, *args = job(i, tuple(block_shape))
        tickets.append(plan.add(e, fn, *args))
    result = plan.run()
    made = [result(t) for t in tickets]
    out: DistArray = _assemble(client, made, axis, DistArray)
    return out


def full(
    shape: ShapeLike,
    fill_value: object,
    dtype: DTypeLike | None = None,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """A new DistArray of ``shape`` filled with ``fill_value``, made on the engines."""
    dt = np.dtype(dtype) if dtype is not None else np.asarray(fill_value).dtype
    return _create(
        shape,
        dt,
        axis,
        engines,
        boundaries,
        client,
        lambda i, s: (K.full_block, s, fill_value, dt.str),
    )


def zeros(
    shape: ShapeLike,
    dtype: DTypeLike = float,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """A new DistArray of zeros (``axis``, ``engines``, ``boundaries``, ``client`` as
    for :func:`scatter`)."""
    return full(shape, 0, dtype, axis=axis, engines=engines, boundaries=boundaries, client=client)


def ones(
    shape: ShapeLike,
    dtype: DTypeLike = float,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """A new DistArray of ones."""
    return full(shape, 1, dtype, axis=axis, engines=engines, boundaries=boundaries, client=client)


def empty(
    shape: ShapeLike,
    dtype: DTypeLike = float,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """A new DistArray whose values are whatever the engines' memory held."""
    dt = np.dtype(dtype)
    return _create(
        shape, dt, axis, engines, boundaries, client, lambda i, s: (K.empty_block, s, dt.str)
    )


def arange(
    start: Real,
    stop: Real | None = None,
    step: Real = 1,
    dtype: DTypeLike | None = None,
    *,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """``numpy.arange`` made on the engines: a 1-d DistArray."""
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise ZeroDivisionError("arange: step of 0")
    n = max(0, int(np.ceil((stop - start) / step)))
    probe = np.arange(start, start + step, step, dtype=dtype)  # numpy's choice of dtype
    dt = probe.dtype
    client = _client(client)
    engines_, bounds = engines_and_bounds(client, n, engines, boundaries)
    plan = _Plan(client)
    tickets = [
        plan.add(e, K.arange_block, start, step, lo, hi, dt.str)
        for e, lo, hi in zip(engines_, bounds[:-1], bounds[1:], strict=True)
    ]
    result = plan.run()
    out: DistArray = _assemble(client, [result(t) for t in tickets], 0, DistArray)
    return out


def _random(
    kind: str,
    shape: ShapeLike,
    seed: int | None,
    dtype: DTypeLike,
    axis: int,
    engines: Sequence[int] | None,
    boundaries: Sequence[int] | None,
    client: Client | None,
) -> DistArray:
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    dt = np.dtype(dtype)
    return _create(
        shape,
        dt,
        axis,
        engines,
        boundaries,
        client,
        lambda i, s: (K.random_block, seed, i, s, dt.str, kind),
    )


def random(
    shape: ShapeLike,
    seed: int | None = None,
    dtype: DTypeLike = np.float64,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """Uniform random floats in [0, 1), made on the engines; block ``i`` draws from
    ``numpy.random.default_rng([seed, i])`` (a fresh seed when ``seed`` is None), so the
    same seed and layout give the same array."""
    return _random("uniform", shape, seed, dtype, axis, engines, boundaries, client)


def standard_normal(
    shape: ShapeLike,
    seed: int | None = None,
    dtype: DTypeLike = np.float64,
    *,
    axis: int = 0,
    engines: Sequence[int] | None = None,
    boundaries: Sequence[int] | None = None,
    client: Client | None = None,
) -> DistArray:
    """Standard normal floats made on the engines, a generator per block as :func:`random`."""
    return _random("normal", shape, seed, dtype, axis, engines, boundaries, client)


def redistribute(
    x: _Array,
    axis: int | None = None,
    boundaries: Sequence[int] | None = None,
    engines: Sequence[int] | None = None,
) -> DistArray:
    """A new DistArray with ``x``'s data split along ``axis`` at ``boundaries`` over
    ``engines`` (defaults: ``x``'s axis; even blocks; the engines ``x`` uses). Each new
    block is made on its engine from the rows it needs, fetched from the engines holding
    them: data moves engine to engine, never through the client."""
    if not isinstance(x, _Array):
        raise TypeError(f"redistribute takes a RemoteArray or DistArray, not {type(x).__name__}")
    return cast("DistArray", redistributed(x, axis, boundaries, engines))


def apply(
    f: Callable[..., _R], x: _A, /, *args: object, **kwargs: object
) -> _A | list[_R | RemoteArray]:
    """``f(block, *args, **kwargs)`` for every block of ``x``, in parallel, each on its
    engine. When every result is an ndarray with ``x``'s dimensions and sizes on all
    axes but the split one, the results form a new array split like ``x``; else the list
    of results (RemoteArrays for ndarrays)."""
    plan = _Plan(x._client)
    tickets = [
        plan.add(e, K.call, f, _piece(b), *args, **kwargs)
        for b, e in zip(x._blocks, x.engines, strict=True)
    ]
    result = plan.run()
    made = [result(t) for t in tickets]
    kept = [m[1] for m in made if isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], K.Kept)]
    if len(kept) == len(made) and all(
        len(k.shape) == x.ndim
        and all(
            a == b for d, (a, b) in enumerate(zip(k.shape, x.shape, strict=True)) if d != x._axis
        )
        for k in kept
    ):
        return _assemble(x._client, made, x._axis, type(x))
    return [
        _assemble(x._client, [m], 0, RemoteArray)
        if isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], K.Kept)
        else m
        for m in made
    ]


class Vectorized(Protocol[_R]):
    """What :func:`vectorize` returns: ``apply(f, x, *args, **kwargs)`` as a function of
    ``x`` (``f`` returns ``_R`` for a block)."""

    def __call__(
        self, x: _A, /, *args: object, **kwargs: object
    ) -> _A | list[_R | RemoteArray]: ...


def vectorize(f: Callable[..., _R]) -> Vectorized[_R]:
    """``f`` made to run block by block: ``vectorize(f)(x, *args)`` is ``apply(f, x, *args)``."""

    def vectorized(x: _A, /, *args: object, **kwargs: object) -> _A | list[_R | RemoteArray]:
        return apply(f, x, *args, **kwargs)

    vectorized.__name__ = f"vectorized_{getattr(f, '__name__', 'function')}"
    vectorized.__doc__ = f.__doc__
    return vectorized
