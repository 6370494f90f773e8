"""numpy functions (``__array_function__``) on RemoteArray and DistArray.

Each function in :data:`HANDLED` has a form that works block by block: structural ones
(transposes, stacking along the split axis, splits, reshapes that keep blocks whole)
move no data; reductions and scans use the ufunc machinery; elementwise functions
(``where``, ``clip``, ``isclose``, ...) align their operands like ufuncs; ``matmul``,
``dot`` and ``tensordot`` are in ``_linalg``.

Every other numpy function runs on **one engine** (``_blockwise.on_one_engine``): the
array operands are copied there (engine to engine), the function runs, and its array
results stay there as arrays of ours. A :class:`PerformanceWarning` says so when the
operands hold more than :data:`WARN_BYTES`. Functions that change an argument in place
(``np.put``, ...) raise NotImplementedError naming themselves: on a copy their change
would be lost.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from . import _kernels as K
from ._blockwise import (
    _wrap,
    blockwise,
    into,
    leader,
    on_one_engine,
    result_class,
)
from ._core import (
    _Array,
    _assemble,
    _axis_key,
    _check_axis,
    _per_block,
    _piece,
    _Plan,
    align,
    gather,
    redistributed,
    region,
)
from ._kernels import BLOCK, Cat
from ._linalg import dot, matmul, tensordot
from ._ufuncs import _axes, _kept_local, accumulate, reduce

__all__ = ["HANDLED", "array_function", "argext", "mean", "reshape", "std", "var"]

HANDLED: dict[Callable[..., Any], Callable[..., Any]] = {}

#: numpy functions that change an argument in place: never run on a copy.
IN_PLACE = frozenset(
    getattr(np, n)
    for n in ("put", "place", "putmask", "fill_diagonal", "put_along_axis")
    if hasattr(np, n)
)


F = TypeVar("F", bound=Callable[..., Any])


def implements(*funcs: Callable[..., Any]) -> Callable[[F], F]:
    def register(impl: F) -> F:
        for f in funcs:
            HANDLED[f] = impl
        return impl

    return register


def array_function(func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for t in types:
        if not issubclass(t, (_Array, np.ndarray)):
            return NotImplemented
    impl = HANDLED.get(func)
    if impl is not None:
        return impl(*args, **kwargs)
    if func in IN_PLACE:
        raise NotImplementedError(
            f"numpy.{func.__name__} changes its argument in place and shoal.arrays has no "
            "form of it yet: use indexing assignment (x[key] = value), or gather, change "
            "and scatter the array"
        )
    return on_one_engine(func, args, kwargs)


# -- what is known here ------------------------------------------------------------------

HANDLED[np.shape] = lambda a: a.shape
HANDLED[np.ndim] = lambda a: a.ndim
HANDLED[np.iscomplexobj] = lambda x: x.dtype.kind == "c"
HANDLED[np.isrealobj] = lambda x: x.dtype.kind != "c"
HANDLED[np.copy] = lambda a, order="K", subok=False: a.copy()


@implements(np.size)
def size(a: Any, axis: int | None = None) -> int:
    return int(a.size if axis is None else a.shape[_check_axis(axis, a.ndim)])


# -- structure: no data moves ---------------------------------------------------------


def _stand_in(ndim: int) -> np.ndarray[Any, Any]:
    """An array of shape (2, 3, 4, ...) that holds no data: what an axis function does to
    it says where each axis goes."""
    return np.broadcast_to(np.empty((), np.int8), tuple(range(2, ndim + 2)))


def _permute(x: _Array, order: tuple[int, ...]) -> Any:
    return x.transpose(order)


@implements(np.transpose)
def transpose(a: Any, axes: Any = None) -> Any:
    return a.transpose(axes)


@implements(np.moveaxis)
def moveaxis(a: Any, source: Any, destination: Any) -> Any:
    return _permute(
        a, tuple(s - 2 for s in np.moveaxis(_stand_in(a.ndim), source, destination).shape)
    )


@implements(np.rollaxis)
def rollaxis(a: Any, axis: int, start: int = 0) -> Any:
    return _permute(a, tuple(s - 2 for s in np.rollaxis(_stand_in(a.ndim), axis, start).shape))


@implements(np.swapaxes)
def swapaxes(a: Any, axis1: int, axis2: int) -> Any:
    return a.swapaxes(axis1, axis2)


@implements(np.expand_dims)
def expand_dims(a: Any, axis: Any) -> Any:
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    ndim = a.ndim + len(axes)
    new = sorted(_check_axis(ax, ndim) for ax in axes)
    if len(set(new)) != len(new):
        raise ValueError("repeated axis")
    kept = [d for d in range(ndim) if d not in new]
    return _per_block(
        a, K.call, np.expand_dims, BLOCK, tuple(new), out_axis=kept[a._axis], view=True
    )


@implements(np.squeeze)
def squeeze(a: Any, axis: Any = None) -> Any:
    if axis is None:
        axes = tuple(d for d, s in enumerate(a.shape) if s == 1)
    else:
        axes = _axes(axis, a.ndim)
        if any(a.shape[d] != 1 for d in axes):
            raise ValueError("cannot select an axis to squeeze out which has size not equal to one")
    if not axes:
        return a
    if a._axis in axes:  # the split axis goes: its one row is in one block
        key = tuple(0 if d == a._axis else slice(None) for d in range(a.ndim))
        rest = tuple(d - (d > a._axis) for d in axes if d != a._axis)
        picked = a[key]
        return squeeze(picked, rest) if rest and isinstance(picked, _Array) else picked
    out_axis = a._axis - sum(d < a._axis for d in axes)
    return _per_block(a, K.call, np.squeeze, BLOCK, axes, out_axis=out_axis, view=True)


@implements(np.reshape)
def reshape(a: Any, shape: Any = None, order: str = "C", **kwargs: Any) -> Any:
    """A reshape that keeps every block whole (no data moves), else a ValueError saying
    how to get there."""
    if shape is None:
        shape = kwargs.pop("newshape", None)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(operator.index(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError("can only specify one unknown dimension")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or a.size % known:
            raise ValueError(f"cannot reshape array of size {a.size} into shape {shape}")
        shape = tuple(a.size // known if s == -1 else s for s in shape)
    if math.prod(shape) != a.size:
        raise ValueError(f"cannot reshape array of size {a.size} into shape {shape}")
    if order not in ("C", "A"):
        raise NotImplementedError("reshape of a shoal array with order='F': transpose it first")
    if shape == a.shape:
        return _per_block(a, K.method, BLOCK, "view", view=True)
    ax = a._axis
    full = [i for i, (lo, hi) in enumerate(itertools.pairwise(a._bounds)) if hi > lo]
    if not shape or a.size == 0 or len(full) <= 1:  # all the data is in one block (or none)
        j = full[0] if full else 0
        plan = _Plan(a._client)
        t = plan.add(a.engines[j], K.call, np.reshape, region(a, ax, 0, a.shape[ax]), shape)
        value = plan.run()(t)
        return _wrap(a._client, value, type(a)) if shape else value
    if shape[: ax + 1] == a.shape[: ax + 1]:  # the axes up to the split axis stay
        return _reshape_blocks(a, shape, ax, a._bounds)
    if math.prod(a.shape[:ax]) == 1 and a.size:
        # The split rows are contiguous runs of the flat array: they stay whole when the
        # first long axis of the new shape cuts the flat array at the same places.
        row = math.prod(a.shape[ax + 1 :])
        k = next((i for i, s in enumerate(shape) if s != 1), len(shape) - 1)
        new_row = math.prod(shape[k + 1 :])
        if math.prod(shape[:k]) == 1 and all(b * row % new_row == 0 for b in a._bounds):
            return _reshape_blocks(a, shape, k, tuple(b * row // new_row for b in a._bounds))
    raise ValueError(
        f"reshaping from {a.shape} to {shape} would move data between engines (the blocks "
        f"split axis {ax} at {list(a._bounds)}): redistribute(x, axis=..., boundaries=...) "
        "so that each block stays whole, or reshape the gathered array"
    )


def _reshape_blocks(a: _Array, shape: tuple[int, ...], axis: int, bounds: tuple[int, ...]) -> Any:
    plan = _Plan(a._client)
    tickets = []
    for b, e, lo, hi in zip(a._blocks, a.engines, bounds[:-1], bounds[1:], strict=True):
        s = list(shape)
        s[axis] = hi - lo
        tickets.append(plan.add(e, K.call, np.reshape, _piece(b), tuple(s)))
    result = plan.run()
    return _assemble(a._client, [result(t) for t in tickets], axis, type(a), a._roots)


@implements(np.ravel)
def ravel(a: Any, order: str = "C") -> Any:
    """The flat array: blocks reshaped in place when their rows are runs of it, else the
    array is first split along its first axis (rows move engine to engine)."""
    try:
        return reshape(a, (-1,), order)
    except ValueError:
        return reshape(redistributed(a, axis=0), (-1,), order)


@implements(np.atleast_1d)
def atleast_1d(*arys: Any) -> Any:
    out = [a if isinstance(a, _Array) else np.atleast_1d(a) for a in arys]
    return out[0] if len(out) == 1 else out


@implements(np.atleast_2d)
def atleast_2d(*arys: Any) -> Any:
    out = [
        (expand_dims(a, 0) if a.ndim == 1 else a) if isinstance(a, _Array) else np.atleast_2d(a)
        for a in arys
    ]
    return out[0] if len(out) == 1 else out


@implements(np.atleast_3d)
def atleast_3d(*arys: Any) -> Any:
    def one(a: Any) -> Any:
        if not isinstance(a, _Array):
            return np.atleast_3d(a)
        if a.ndim == 1:
            return expand_dims(a, (0, 2))
        if a.ndim == 2:
            return expand_dims(a, 2)
        return a

    out = [one(a) for a in arys]
    return out[0] if len(out) == 1 else out


@implements(np.concatenate)
def concatenate(
    arrays: Any,
    axis: int | None = 0,
    out: Any = None,
    dtype: Any = None,
    casting: str = "same_kind",
) -> Any:
    arrays = list(arrays)
    if not arrays:
        raise ValueError("need at least one array to concatenate")
    if axis is None:
        arrays = [ravel(a) if isinstance(a, _Array) else np.ravel(a) for a in arrays]
        axis = 0
    arrays = [a if isinstance(a, _Array) else np.asarray(a) for a in arrays]
    ndim = arrays[0].ndim
    if any(a.ndim != ndim for a in arrays):
        raise ValueError(
            "all the input array dimensions except for the concatenation axis must match "
            "exactly, but the arrays have different numbers of dimensions"
        )
    axis = _check_axis(axis, ndim)
    for a in arrays[1:]:
        if any(
            s != t
            for d, (s, t) in enumerate(zip(a.shape, arrays[0].shape, strict=True))
            if d != axis
        ):
            raise ValueError(
                "all the input array dimensions except for the concatenation axis must match "
                f"exactly, but shapes {arrays[0].shape} and {a.shape} differ"
            )
    target = np.dtype(dtype) if dtype is not None else np.result_type(*(a.dtype for a in arrays))
    # One block can be read as split along any axis: along this one, it joins in place.
    arrays = [_along(a, axis) if isinstance(a, _Array) else a for a in arrays]
    ours = [a for a in arrays if isinstance(a, _Array)]
    client = ours[0]._client
    if all(a._axis == axis for a in ours):
        result = _chain(client, arrays, axis, target, casting)
    else:
        lead = next(a for a in ours if a._axis != axis)
        shape = list(lead.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        layout = (lead._axis, lead._bounds, lead.engines)
        made = blockwise(
            K.concat, (axis, target.str, casting, *arrays), {}, tuple(shape), layout, client
        )
        result = _assemble(client, made, lead._axis, result_class(ours))
    return result if out is None else into(out, result)


def _along(a: _Array, axis: int) -> Any:
    """``a`` seen as split along ``axis`` when it has one block (the same block)."""
    if len(a._blocks) != 1 or a._axis == axis:
        return a
    return type(a)._new(a._client, a._blocks, axis, (0, a.shape[axis]), a.shape, a.dtype, a._roots)


def _chain(client: Any, arrays: list[Any], axis: int, dtype: np.dtype[Any], casting: str) -> Any:
    """Arrays split along the axis they are joined on: their blocks in a row, each copied
    (and cast) on its own engine, so nothing moves (ndarrays become blocks on the engine
    of the block before them)."""
    plan = _Plan(client)
    tickets: list[Any] = []
    first = next(a for a in arrays if isinstance(a, _Array))
    engine = first.engines[0]
    for a in arrays:
        if isinstance(a, _Array):
            for b, e in zip(a._blocks, a.engines, strict=True):
                tickets.append(plan.add(e, K.cast, _piece(b), dtype.str, casting))
                engine = e
        else:
            tickets.append(plan.add(engine, K.cast, a, dtype.str, casting))
    result = plan.run()
    return _assemble(client, [result(t) for t in tickets], axis, first._kind(True))


@implements(np.stack)
def stack(arrays: Any, axis: int = 0, out: Any = None, **kwargs: Any) -> Any:
    arrays = [a if isinstance(a, _Array) else np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("need at least one array to stack")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("all input arrays must have the same shape")
    axis = _check_axis(axis, arrays[0].ndim + 1)
    grown = [
        expand_dims(a, axis) if isinstance(a, _Array) else np.expand_dims(a, axis) for a in arrays
    ]
    return concatenate(grown, axis, out=out, **kwargs)


@implements(np.vstack)
def vstack(tup: Any, **kwargs: Any) -> Any:
    arrays = atleast_2d(*tup)
    return concatenate(arrays if isinstance(arrays, list) else [arrays], 0, **kwargs)


if hasattr(np, "row_stack"):
    HANDLED[np.row_stack] = vstack


@implements(np.hstack)
def hstack(tup: Any, **kwargs: Any) -> Any:
    arrays = atleast_1d(*tup)
    arrays = arrays if isinstance(arrays, list) else [arrays]
    return concatenate(arrays, 0 if arrays[0].ndim == 1 else 1, **kwargs)


@implements(np.dstack)
def dstack(tup: Any) -> Any:
    arrays = atleast_3d(*tup)
    return concatenate(arrays if isinstance(arrays, list) else [arrays], 2)


@implements(np.column_stack)
def column_stack(tup: Any) -> Any:
    cols = []
    for item in tup:
        if isinstance(item, _Array):
            cols.append(reshape(item, (item.shape[0], 1)) if item.ndim == 1 else atleast_2d(item))
        else:
            a = np.asarray(item)
            cols.append(a.reshape(-1, 1) if a.ndim < 2 else a)
    return concatenate(cols, 1)


def _cuts(n: int, sections: Any, equal: bool) -> list[tuple[int, int]]:
    if isinstance(sections, (int, np.integer)):
        k = int(sections)
        if k <= 0:
            raise ValueError("number sections must be larger than 0.")
        if equal and n % k:
            raise ValueError("array split does not result in an equal division")
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        bounds = [0, *np.cumsum(sizes).tolist()]
        return list(itertools.pairwise(bounds))
    points = [0, *(int(p) for p in sections), n]
    cuts = []
    for a, b in itertools.pairwise(points):  # as numpy slices: negative points count back
        lo, hi, _ = slice(a, b).indices(n)
        cuts.append((lo, max(lo, hi)))
    return cuts


@implements(np.array_split)
def array_split(ary: Any, indices_or_sections: Any, axis: int = 0) -> list[Any]:
    axis = _check_axis(axis, ary.ndim)
    return [
        ary[_axis_key(axis, slice(lo, hi))]
        for lo, hi in _cuts(ary.shape[axis], indices_or_sections, False)
    ]


@implements(np.split)
def split(ary: Any, indices_or_sections: Any, axis: int = 0) -> list[Any]:
    axis = _check_axis(axis, ary.ndim)
    return [
        ary[_axis_key(axis, slice(lo, hi))]
        for lo, hi in _cuts(ary.shape[axis], indices_or_sections, True)
    ]


@implements(np.vsplit)
def vsplit(ary: Any, indices_or_sections: Any) -> list[Any]:
    if ary.ndim < 2:
        raise ValueError("vsplit only works on arrays of 2 or more dimensions")
    return split(ary, indices_or_sections, 0)


@implements(np.hsplit)
def hsplit(ary: Any, indices_or_sections: Any) -> list[Any]:
    return split(ary, indices_or_sections, 1 if ary.ndim > 1 else 0)


@implements(np.dsplit)
def dsplit(ary: Any, indices_or_sections: Any) -> list[Any]:
    if ary.ndim < 3:
        raise ValueError("dsplit only works on arrays of 3 or more dimensions")
    return split(ary, indices_or_sections, 2)


@implements(np.broadcast_to)
def broadcast_to(array: Any, shape: Any, subok: bool = False) -> Any:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if np.broadcast_shapes(array.shape, shape) != shape:
        raise ValueError(f"cannot broadcast a shoal array of shape {array.shape} to {shape}")
    axis = array._axis + len(shape) - array.ndim
    if array.shape[array._axis] != shape[axis]:  # broadcast along the split axis: one block
        return on_one_engine(np.broadcast_to, (array, shape), {})
    plan = _Plan(array._client)
    tickets = []
    for b, e, lo, hi in zip(
        array._blocks, array.engines, array._bounds[:-1], array._bounds[1:], strict=True
    ):
        s = list(shape)
        s[axis] = hi - lo
        tickets.append(plan.add(e, K.call, np.broadcast_to, _piece(b), tuple(s)))
    result = plan.run()
    return _assemble(array._client, [result(t) for t in tickets], axis, type(array), array._roots)


@implements(np.broadcast_arrays)
def broadcast_arrays(*args: Any, subok: bool = False) -> Any:
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    return tuple(
        broadcast_to(a, shape) if isinstance(a, _Array) else np.broadcast_to(a, shape) for a in args
    )


# -- reductions -----------------------------------------------------------------------


def _reduction(ufunc: np.ufunc, **fixed: Any) -> Callable[..., Any]:
    def reduction(
        a: Any,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **kw: Any,
    ) -> Any:
        kwargs = {**kw, **fixed}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return reduce(ufunc, a, axis=axis, out=out, keepdims=keepdims, **kwargs)

    return reduction


HANDLED[np.sum] = _reduction(np.add)
HANDLED[np.prod] = _reduction(np.multiply)
HANDLED[np.max] = HANDLED[np.amax] = _reduction(np.maximum)
HANDLED[np.min] = HANDLED[np.amin] = _reduction(np.minimum)
HANDLED[np.any] = _reduction(np.logical_or, dtype=bool)
HANDLED[np.all] = _reduction(np.logical_and, dtype=bool)


@implements(np.ptp)
def ptp(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    top = reduce(np.maximum, a, axis=axis, keepdims=keepdims)
    result = np.subtract(top, reduce(np.minimum, a, axis=axis, keepdims=keepdims))
    return result if out is None else into(out, result)


def _scan(ufunc: np.ufunc) -> Callable[..., Any]:
    """np.cumsum / np.cumprod: numpy's accumulation dtype for small integers and bools."""

    def scan(a: Any, axis: int | None = None, dtype: Any = None, out: Any = None) -> Any:
        if axis is None:
            a, axis = ravel(a), 0
        if (
            dtype is None
            and a.dtype.kind in "bi"
            and (a.dtype.kind == "b" or a.dtype.itemsize < np.dtype(np.intp).itemsize)
        ):
            dtype = np.intp
        if dtype is None and a.dtype.kind == "u" and a.dtype.itemsize < np.dtype(np.uintp).itemsize:
            dtype = np.uintp
        return accumulate(ufunc, a, axis=axis, dtype=dtype, out=out)

    return scan


HANDLED[np.cumsum] = _scan(np.add)
HANDLED[np.cumprod] = _scan(np.multiply)


def _count(a: Any, axis: Any, where: Any, keepdims: bool) -> Any:
    """How many elements each result of a reduction of ``a`` sums up."""
    if where is True:
        return math.prod(a.shape[d] for d in _axes(axis, a.ndim))
    mask = np.broadcast_to(where, a.shape)
    return reduce(np.add, mask, axis=axis, keepdims=keepdims, dtype=np.intp)


@implements(np.mean)
def mean(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    keepdims: bool = False,
    *,
    where: Any = True,
) -> Any:
    work = dtype
    if work is None:
        work = (
            np.float64 if a.dtype.kind in "biu" else np.float32 if a.dtype == np.float16 else None
        )
    total = reduce(np.add, a, axis=axis, dtype=work, keepdims=keepdims, where=where)
    n = _count(a, axis, where, keepdims)
    # In the sums' dtype, as numpy divides (float32 stays float32, where= counts too).
    kind = np.result_type(total)
    result = np.true_divide(total, n, dtype=kind if kind.kind in "fc" else None)
    target = dtype or (np.float16 if a.dtype == np.float16 else None)
    if target is not None:
        result = (
            result.astype(target)
            if isinstance(result, (_Array, np.ndarray))
            else np.dtype(target).type(result)
        )
    return result if out is None else into(out, result)


_mean = mean  # var's keyword `mean` hides the function


@implements(np.var)
def var(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: float = 0,
    keepdims: bool = False,
    *,
    where: Any = True,
    mean: Any = None,
    correction: Any = None,
) -> Any:
    if correction is not None:
        ddof = correction
    centre = (
        mean if mean is not None else _mean(a, axis=axis, dtype=dtype, keepdims=True, where=where)
    )
    d = np.subtract(a, centre)
    sq = np.multiply(d, np.conjugate(d)).real if a.dtype.kind == "c" else np.multiply(d, d)
    total = reduce(np.add, sq, axis=axis, dtype=dtype, keepdims=keepdims, where=where)
    n = _count(a, axis, where, keepdims)
    # In the sums' dtype, as numpy divides (a float32 variance stays float32).
    denominator = np.maximum(np.subtract(n, ddof), 0)
    result = np.true_divide(total, denominator, dtype=np.result_type(total))
    return result if out is None else into(out, result)


@implements(np.std)
def std(
    a: Any,
    axis: Any = None,
    dtype: Any = None,
    out: Any = None,
    ddof: float = 0,
    keepdims: bool = False,
    **kw: Any,
) -> Any:
    result = np.sqrt(var(a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims, **kw))
    return result if out is None else into(out, result)


def argext(a: Any, kind: str, axis: Any, out: Any, keepdims: bool) -> Any:
    """argmax / argmin: numpy's first occurrence (and first NaN) across blocks too."""
    fn = np.argmax if kind == "max" else np.argmin
    if a.size == 0 and (axis is None or a.shape[_check_axis(axis, a.ndim)] == 0):
        raise ValueError(f"attempt to get arg{kind} of an empty sequence")
    if a.size == 0:  # an empty result: nothing to spread
        return on_one_engine(fn, (a,), {"axis": axis, "out": out, "keepdims": keepdims})
    if axis is None:
        flat = ravel(a) if a.ndim > 1 else a
        result = argext(flat, kind, 0, None, False)
        if keepdims:  # an array of ours, as for other reductions with keepdims
            result = _kept_local(a, np.asarray(result).reshape((1,) * a.ndim))
        return result if out is None else into(out, result)
    axis = _check_axis(axis, a.ndim)
    if axis != a._axis:
        out_axis = a._axis if keepdims else a._axis - (axis < a._axis)
        result = _per_block(a, K.call, fn, BLOCK, axis=axis, keepdims=keepdims, out_axis=out_axis)
        return result if out is None else into(out, result)
    plan = _Plan(a._client)
    tickets = []
    offsets = []
    heads = []
    for b, e, lo, hi in zip(a._blocks, a.engines, a._bounds[:-1], a._bounds[1:], strict=True):
        if hi > lo:
            tickets.append(plan.add(e, K.arg_block, kind, _piece(b), axis))
            offsets.append(lo)
            heads.append(e)
    head = heads[0]
    result = plan.run()
    pairs = [result(t) for t in tickets]
    plan = _Plan(a._client)
    t = plan.add(
        head,
        K.arg_combine,
        kind,
        [(_piece(i[0]), _piece(v[0])) for i, v in pairs],
        offsets,
        axis,
        keepdims,
    )
    value = _wrap(a._client, plan.run()(t), result_class([a]))
    return value if out is None else into(out, value)


# -- elementwise functions (aligned like ufunc operands) -------------------------------


def _elementwise(func: Callable[..., Any], nargs: int) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.pop("out", None)
        operands = [
            a if isinstance(a, _Array) or np.ndim(a) == 0 else np.asarray(a) for a in args[:nargs]
        ]
        shape = np.broadcast_shapes(*(np.shape(v) for v in operands))
        layout = leader(operands, shape)
        client = next(v._client for v in operands if isinstance(v, _Array))
        made = blockwise(K.call, (func, *operands, *args[nargs:]), kwargs, shape, layout, client)
        result = _assemble(client, made, layout[0], result_class(operands))
        return result if out is None else into(out, result)

    return run


HANDLED[np.clip] = _elementwise(np.clip, 3)
HANDLED[np.isclose] = _elementwise(np.isclose, 2)
HANDLED[np.round] = _elementwise(np.round, 1)
HANDLED[np.around] = _elementwise(np.around, 1)
HANDLED[np.nan_to_num] = _elementwise(np.nan_to_num, 1)
HANDLED[np.real] = lambda val: val.real
HANDLED[np.imag] = lambda val: val.imag
HANDLED[np.angle] = _elementwise(np.angle, 1)
_where3 = _elementwise(np.where, 3)


@implements(np.where)
def where(condition: Any, *xy: Any) -> Any:
    if not xy:
        return on_one_engine(np.nonzero, (condition,), {})
    if len(xy) != 2:
        raise ValueError("either both or neither of x and y should be given")
    return _where3(condition, *xy)


@implements(np.allclose)
def allclose(
    a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> bool:
    return bool(HANDLED[np.isclose](a, b, rtol=rtol, atol=atol, equal_nan=equal_nan).all())


@implements(np.array_equal)
def array_equal(a1: Any, a2: Any, equal_nan: bool = False) -> bool:
    if np.shape(a1) != np.shape(a2):
        return False
    if equal_nan:
        same = np.logical_or(np.equal(a1, a2), np.logical_and(np.isnan(a1), np.isnan(a2)))
    else:
        same = np.equal(a1, a2)
    if isinstance(same, _Array):  # same.all(), whose method is above this module
        return bool(reduce(np.logical_and, same, axis=None, out=None, keepdims=False, dtype=bool))
    return bool(np.all(same))


@implements(np.count_nonzero)
def count_nonzero(a: Any, axis: Any = None, *, keepdims: bool = False) -> Any:
    return reduce(np.add, np.not_equal(a, 0), axis=axis, dtype=np.intp, keepdims=keepdims)


def _like(fill: Any) -> Callable[..., Any]:
    def like(
        a: Any,
        dtype: Any = None,
        order: str = "K",
        subok: bool = True,
        shape: Any = None,
        **kw: Any,
    ) -> Any:
        if shape is not None and tuple(np.atleast_1d(shape)) != a.shape:
            raise NotImplementedError("*_like(..., shape=) of a shoal array: use the constructors")
        dt = np.dtype(dtype) if dtype is not None else a.dtype
        value = kw.get("fill_value", fill)
        if value is None:
            return _per_block(a, K.empty_like, BLOCK, dt.str)
        return _per_block(a, K.full_like, BLOCK, value, dt.str)

    return like


HANDLED[np.zeros_like] = _like(0)
HANDLED[np.ones_like] = _like(1)
HANDLED[np.empty_like] = _like(None)


@implements(np.full_like)
def full_like(a: Any, fill_value: Any, dtype: Any = None, **kw: Any) -> Any:
    return _like(fill_value)(a, dtype, **kw)


@implements(np.copyto)
def copyto(dst: Any, src: Any, casting: Any = "same_kind", where: Any = True) -> None:
    if not isinstance(dst, _Array):
        np.copyto(dst, gather(src), casting=casting, where=gather(where))
        return
    src = src.copy() if isinstance(src, _Array) and src._roots & dst._roots else src
    shape = dst.shape
    axis, bounds, engines = dst._layout()
    plan = _Plan(dst._client)
    for b, e, lo, hi in zip(dst._blocks, engines, bounds[:-1], bounds[1:], strict=True):
        plan.add(
            e,
            K.copyto,
            _piece(b),
            align(src, len(shape), axis, shape[axis], lo, hi),
            casting,
            align(where, len(shape), axis, shape[axis], lo, hi),
        )
    plan.run()


# -- linear algebra, sorting, selection ---------------------------------------------------

# In _linalg, below _ufuncs: np.matmul is a ufunc too.
implements(np.matmul)(matmul)
implements(np.dot)(dot)
implements(np.tensordot)(tensordot)


@implements(np.take)
def take(
    a: Any, indices: Any, axis: int | None = None, out: Any = None, mode: str = "raise"
) -> Any:
    if mode != "raise" or a.size == 0:  # (numpy checks no index of an empty array)
        return on_one_engine(np.take, (a, indices), {"axis": axis, "mode": mode, "out": out})
    if axis is None:
        a, axis = ravel(a), 0
    axis = _check_axis(axis, a.ndim)
    idx = gather(indices) if isinstance(indices, _Array) else np.asarray(indices)
    if idx.ndim == 0:
        result = a[_axis_key(axis, int(idx))]
    elif idx.ndim == 1:
        result = a[_axis_key(axis, idx.astype(np.intp))]
    else:
        return on_one_engine(np.take, (a, idx), {"axis": axis, "out": out})
    return result if out is None else into(out, result)


@implements(np.sort)
def sort(a: Any, axis: int | None = -1, kind: Any = None, order: Any = None, **kw: Any) -> Any:
    if axis is None:
        a, axis = ravel(a), 0
    axis = _check_axis(axis, a.ndim)
    if axis != a._axis:
        return _per_block(a, K.call, np.sort, BLOCK, axis=axis, kind=kind, order=order, **kw)
    if a.ndim == 1 and order is None and not kw and a.dtype.kind in "biuf" and a.size:
        return _sample_sort(a)
    # along the split axis of an N-d array: sorted on one engine, then split like the input
    one = on_one_engine(np.sort, (a,), {"axis": axis, "kind": kind, "order": order, **kw})
    return redistributed(one, axis, a._bounds, a.engines)


def _sample_sort(a: _Array) -> Any:
    """A 1-d sort in parallel: each block sorts itself and sends a sample; splitters
    from the samples give each engine a range of values, which it gathers from every
    sorted block (engine to engine) and merges. Blocks end up uneven."""
    plan = _Plan(a._client)
    engines = list(dict.fromkeys(a.engines))
    k = len(engines)
    tickets = [
        plan.add(e, K.sort_and_sample, _piece(b), 8 * k)
        for b, e in zip(a._blocks, a.engines, strict=True)
    ]
    result = plan.run()
    sorted_blocks = [result(t) for t in tickets]  # (block handle, kept) and a sample each
    samples = np.sort(np.asarray([v for _, sample in sorted_blocks for v in sample], a.dtype))
    splitters = (
        samples[[len(samples) * d // k for d in range(1, k)]] if samples.size else samples[:0]
    )
    plan = _Plan(a._client)
    tickets = [
        plan.add(e, K.cut_points, _piece(handle[0]), splitters)
        for (handle, _), e in zip(sorted_blocks, a.engines, strict=True)
    ]
    result = plan.run()
    cuts = [[0, *result(t), hi - lo] for t, (_, lo, hi) in zip(tickets, a._spans(), strict=True)]
    plan = _Plan(a._client)
    tickets = []
    for d, e in enumerate(engines):
        parts = [
            _piece(handle[0], (slice(c[d], c[d + 1]),))
            for (handle, _), c in zip(sorted_blocks, cuts, strict=True)
            if c[d + 1] > c[d]
        ]
        piece = Cat(tuple(parts), 0) if parts else K.Empty((0,), a.dtype.str)
        tickets.append(plan.add(e, K.call, np.sort, piece, kind="stable"))
    result = plan.run()
    return _assemble(a._client, [result(t) for t in tickets], 0, type(a))


@implements(np.unique)
def unique(
    ar: Any,
    return_index: bool = False,
    return_inverse: bool = False,
    return_counts: bool = False,
    axis: Any = None,
    **kw: Any,
) -> Any:
    if return_index or return_inverse or return_counts or axis is not None or kw:
        return on_one_engine(
            np.unique,
            (ar,),
            {
                "return_index": return_index,
                "return_inverse": return_inverse,
                "return_counts": return_counts,
                "axis": axis,
                **kw,
            },
        )
    parts = _per_block(ravel(ar) if ar.ndim > 1 else ar, K.call, np.unique, BLOCK)
    return on_one_engine(np.unique, (parts,), {})
