"""numpy ufuncs on RemoteArray and DistArray: every method, run where the blocks are.

* ``__call__``: the operands are broadcast together; the result is laid out like the
  leading operand (or like ``out``) and each engine computes its blocks from the regions
  of the other operands, its own or fetched from their engines.
* ``reduce``: along other axes, block by block; along the split axis, each block reduces
  to a small partial and one engine combines them (reorderable ufuncs), or the blocks
  are folded in order (``subtract``, ``divide``, ...: numpy's left-to-right order).
* ``accumulate``: along the split axis, each block accumulates alone, then adds the
  running total of the blocks before it (a second pass, in parallel); non-reorderable
  ufuncs run block after block.
* ``reduceat``, ``outer`` and ``at`` route each part to the engine holding it.
"""

from __future__ import annotations

import functools
import numbers
import operator
from typing import Any

import numpy as np

from . import _kernels as K
from ._blockwise import (
    _client,
    aligned,
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
    _piece,
    _Plan,
    align,
    gather,
    on_one_engine_copy,
    region,
    whole,
)
from ._indexing import setitem
from ._linalg import matmul

__all__ = ["accumulate", "array_ufunc", "reduce"]

_SIMPLE = (_Array, np.ndarray, np.generic, numbers.Number, bool, str, bytes, type(None))


def array_ufunc(
    ufunc: np.ufunc, method: str, inputs: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    for v in (*inputs, *(kwargs.get("out") or ())):
        if not isinstance(v, _SIMPLE) and not isinstance(v, (list, tuple)):
            override = getattr(type(v), "__array_ufunc__", None)
            if override is not None and override is not np.ndarray.__array_ufunc__:
                return NotImplemented  # another array library's type: let it decide
    inputs = tuple(
        np.asarray(v) if isinstance(v, (list, tuple)) and not (method == "at" and i == 1) else v
        for i, v in enumerate(inputs)  # at's indices may be a tuple of index arrays
    )
    handler = _METHODS.get(method)
    if handler is None:
        return NotImplemented
    return handler(ufunc, inputs, dict(kwargs))


def reduce(ufunc: np.ufunc, x: Any, **kwargs: Any) -> Any:
    """``ufunc.reduce(x, **kwargs)`` without numpy's dispatch in between.

    Our methods and functions call this rather than ``ufunc.reduce``: numpy (2.4) leaks
    its arguments when an ``__array_ufunc__`` override raises in a reduction (numpy
    issue 31677), and the leaked arguments would keep the array's blocks alive.
    """
    if "out" in kwargs:
        out = kwargs["out"]
        kwargs["out"] = out if isinstance(out, tuple) or out is None else (out,)
    if isinstance(x, _Array):
        return _reduce(ufunc, (x,), kwargs)
    return ufunc.reduce(x, **{k: v for k, v in kwargs.items() if v is not None or k != "out"})


def accumulate(ufunc: np.ufunc, x: Any, **kwargs: Any) -> Any:
    """``ufunc.accumulate(x, **kwargs)`` without numpy's dispatch (see :func:`reduce`)."""
    if "out" in kwargs:
        out = kwargs["out"]
        kwargs["out"] = out if isinstance(out, tuple) or out is None else (out,)
    if isinstance(x, _Array):
        return _accumulate(ufunc, (x,), kwargs)
    return ufunc.accumulate(x, **{k: v for k, v in kwargs.items() if v is not None or k != "out"})


# -- __call__ ----------------------------------------------------------------------------


def _call(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if ufunc.signature is not None:  # a generalized ufunc: core dimensions, not elements
        outs = kwargs.pop("out", None)
        if outs is not None:
            if len(outs) != 1:
                raise NotImplementedError(f"{ufunc.__name__} with several outputs")
            kwargs["out"] = outs[0]
        if ufunc is np.matmul:
            return matmul(*inputs, **kwargs)
        return on_one_engine(ufunc, inputs, kwargs)
    outs = tuple(kwargs.pop("out", None) or (None,) * ufunc.nout)
    where = kwargs.pop("where", True)
    operands = [*inputs] + ([] if where is True else [where])
    shape = np.broadcast_shapes(*(np.shape(v) for v in operands))
    if all(isinstance(o, _Array) for o in outs):
        return _call_into(ufunc, inputs, where, outs, kwargs, shape)
    if where is not True and any(o is not None for o in outs):
        raise NotImplementedError(
            f"{ufunc.__name__}(..., where=...) into an `out` that is not a shoal array: "
            "give `out` as a shoal array, or leave it out"
        )
    if not any(isinstance(v, _Array) for v in operands):
        local = ufunc(*inputs, **kwargs)
        results = local if isinstance(local, tuple) else (local,)
    else:
        layout = leader(operands, shape)
        kw = dict(kwargs)
        if where is not True:
            kw["where"] = where
        made = blockwise(K.array_chunk, (ufunc, *inputs), kw, shape, layout, _client(operands))
        cls = result_class(operands)
        if ufunc.nout == 1:
            results = (_assemble(_client(operands), made, layout[0], cls),)
        else:
            results = tuple(
                _assemble(_client(operands), [m[i] for m in made], layout[0], cls)
                for i in range(ufunc.nout)
            )
    final = tuple(r if o is None else into(o, r) for o, r in zip(outs, results, strict=True))
    return final[0] if ufunc.nout == 1 else final


def _same(v: _Array, outs: tuple[Any, ...]) -> bool:
    """Whether ``v`` is one of ``outs``: the same blocks, in the same shape."""
    refs = [b.__ref__ for b in v._blocks]
    return any(o.shape == v.shape and [b.__ref__ for b in o._blocks] == refs for o in outs)


def _call_into(
    ufunc: np.ufunc,
    inputs: tuple[Any, ...],
    where: Any,
    outs: tuple[Any, ...],
    kwargs: dict[str, Any],
    shape: tuple[int, ...],
) -> Any:
    """A ufunc writing into ``out`` arrays of ours, each engine into its own blocks."""
    first = outs[0]
    full = np.broadcast_shapes(shape, first.shape)
    if full != first.shape or any(o.shape != first.shape for o in outs):
        raise ValueError(
            f"non-broadcastable output operand with shape {first.shape} doesn't match the "
            f"broadcast shape {full}"
        )
    layout = first._layout()
    n = first.ndim
    roots = functools.reduce(operator.or_, (o._roots for o in outs))
    # An input sharing memory with an output is read as numpy reads it only when it is
    # that output's very blocks (each element read where it is written); any other view
    # of that memory (reversed, shifted, ...) is copied first.
    ins = [
        v.copy() if isinstance(v, _Array) and v._roots & roots and not _same(v, outs) else v
        for v in (*inputs, where)
    ]
    if any(not aligned(o, layout, n) for o in outs[1:]):
        results = ufunc(*inputs, where=where, **kwargs) if where is True else None
        if results is None:
            raise NotImplementedError("outputs with different layouts and where=")
        for o, r in zip(outs, results, strict=True):
            into(o, r)
        return outs
    axis, bounds, engines = layout
    plan = _Plan(first._client)
    for i, (e, lo, hi) in enumerate(zip(engines, bounds[:-1], bounds[1:], strict=True)):
        args = [align(v, n, axis, full[axis], lo, hi) for v in ins[:-1]]
        kw = dict(kwargs)
        kw["out"] = tuple(_piece(o._blocks[i]) for o in outs)
        if where is not True:
            kw["where"] = align(ins[-1], n, axis, full[axis], lo, hi)
        plan.add(e, K.ufunc_into, ufunc, args, kw)
    plan.run()
    return outs[0] if ufunc.nout == 1 else outs


# -- reduce --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def reorderable(ufunc: np.ufunc, dtype: np.dtype[Any], work: Any = None) -> bool:
    """Whether numpy lets ``ufunc`` reduce ``dtype`` (in ``work``, when given) over
    several axes at once (its reductions may then be split into partials and combined).
    Only numpy's "not reorderable" says no: with no loop for the dtype, the blocks fail
    with numpy's own error."""
    try:
        ufunc.reduce(np.ones((1, 1), dtype), axis=(0, 1), dtype=work)
    except Exception as exc:
        return "reorderable" not in str(exc)
    return True


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = tuple(_check_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError("duplicate value in 'axis'")
        return axes
    return (_check_axis(axis, ndim),)


def _local(x: Any) -> Any:
    return gather(x) if isinstance(x, _Array) else x


def _reduce(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    (x,) = inputs
    out = (kwargs.pop("out", None) or (None,))[0]
    if not isinstance(x, _Array):  # `where` or `out` is ours: the data is here already
        result = ufunc.reduce(x, **{k: _local(v) for k, v in kwargs.items()})
        return result if out is None else into(out, result)
    if ufunc.nin != 2 or ufunc.nout != 1:
        raise ValueError("reduce only supported for binary functions")
    axes = _axes(kwargs.pop("axis", 0), x.ndim)
    dtype = kwargs.pop("dtype", None)
    keepdims = bool(kwargs.pop("keepdims", False))
    initial = kwargs.pop("initial", None)
    where = kwargs.pop("where", True)
    if kwargs:
        raise TypeError(f"{ufunc.__name__}.reduce() got unexpected arguments {sorted(kwargs)}")
    split = x._axis
    mask = None if where is True else where
    if split not in axes:
        out_axis = split if keepdims else split - sum(a < split for a in axes)
        kw: dict[str, Any] = {"axis": axes, "dtype": dtype, "keepdims": keepdims}
        if initial is not None:
            kw["initial"] = initial
        if mask is not None:
            kw["where"] = mask
        made = blockwise(K.array_chunk, (ufunc.reduce, x), kw, x.shape, x._layout(), x._client)
        result = _assemble(x._client, made, out_axis, type(x))
    elif x.shape[split] == 0:  # no rows anywhere: numpy on an empty stand-in says it all
        kw = {"axis": axes, "dtype": dtype, "keepdims": keepdims}
        if initial is not None:
            kw["initial"] = initial
        if mask is not None:  # only its shape matters: it selects nothing from nothing
            kw["where"] = np.broadcast_to(np.broadcast_to(False, np.shape(mask)), x.shape)
        result = _kept_local(x, np.asarray(ufunc.reduce(np.empty(x.shape, x.dtype), **kw)))
    elif reorderable(ufunc, x.dtype, dtype):
        result = _reduce_split(ufunc, x, axes, dtype, keepdims, initial, mask)
    else:
        if len(axes) > 1:
            raise ValueError(
                f"reduction operation '{ufunc.__name__}' is not reorderable, so at most one "
                "axis may be specified"
            )
        if mask is not None:
            raise NotImplementedError(
                f"{ufunc.__name__}.reduce with where= along the split axis (not reorderable)"
            )
        result = _fold(ufunc, x, dtype, keepdims, initial)
    return result if out is None else into(out, result)


def _nonempty(x: _Array) -> list[tuple[int, Any, int, int]]:
    return [(i, b, lo, hi) for i, (b, lo, hi) in enumerate(x._spans()) if hi > lo]


def _reduce_split(
    ufunc: np.ufunc,
    x: _Array,
    axes: tuple[int, ...],
    dtype: Any,
    keepdims: bool,
    initial: Any,
    mask: Any,
) -> Any:
    """Partials per block (kept dims), combined on the engine of the first block."""
    split = x._axis
    engines = x.engines
    # A block may have nothing to reduce (masked out, or empty along another axis): it
    # needs a start value, the identity, or (max, min: no identity, but idempotent) the
    # caller's initial.
    block_initial = initial if ufunc.identity is None else None
    plan = _Plan(x._client)
    tickets = []
    for i, b, lo, hi in _nonempty(x):
        w = None if mask is None else align(mask, x.ndim, split, x.shape[split], lo, hi)
        tickets.append(
            plan.add(engines[i], K.reduce_block, ufunc, _piece(b), axes, dtype, w, block_initial)
        )
    result = plan.run()
    partials = [result(t) for t in tickets]
    head = engines[_nonempty(x)[0][0]]
    plan = _Plan(x._client)
    t = plan.add(
        head,
        K.combine,
        ufunc,
        [_piece(b) for b, _ in partials],
        split,
        axes,
        dtype,
        keepdims,
        initial,
    )
    value = plan.run()(t)
    return _value_or_array(x, value, split if keepdims else 0)


def _value_or_array(x: _Array, value: Any, axis: int) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], K.Kept):
        return _assemble(x._client, [value], axis, result_class([x]))
    return value


def _kept_local(x: _Array, value: np.ndarray[Any, Any]) -> Any:
    """A small result computed here: a numpy scalar, or put on ``x``'s first engine."""
    if value.ndim == 0:
        return value[()]
    plan = _Plan(x._client)
    t = plan.add(x.engines[0], K.call, np.array, value)
    return _assemble(x._client, [plan.run()(t)], 0, result_class([x]))


def _fold(ufunc: np.ufunc, x: _Array, dtype: Any, keepdims: bool, initial: Any) -> Any:
    """A reduction that is not reorderable: block after block, left to right."""
    split = x._axis
    carry: Any = None
    engines = x.engines
    for n, (i, b, _, _) in enumerate(_nonempty(x)):
        plan = _Plan(x._client)
        t = plan.add(
            engines[i],
            K.fold,
            ufunc,
            None if carry is None else _piece(carry[0]),
            _piece(b),
            split,
            dtype,
            initial if n == 0 else None,
        )
        carry = plan.run()(t)
    if keepdims:
        return _assemble(x._client, [carry], split, result_class([x]))
    plan = _Plan(x._client)
    t = plan.add(carry[0].__ref__.engine, K.squeeze_axis, _piece(carry[0]), split)
    return _value_or_array(x, plan.run()(t), 0)


# -- accumulate ----------------------------------------------------------------------------


def _accumulate(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    (x,) = inputs
    out = (kwargs.pop("out", None) or (None,))[0]
    if not isinstance(x, _Array):
        local = ufunc.accumulate(x, **kwargs)
        return local if out is None else into(out, local)
    axis = _check_axis(kwargs.pop("axis", 0), x.ndim)
    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise TypeError(f"{ufunc.__name__}.accumulate() got unexpected arguments {sorted(kwargs)}")
    split = x._axis
    if axis != split:
        made = blockwise(
            K.array_chunk,
            (ufunc.accumulate, x),
            {"axis": axis, "dtype": dtype},
            x.shape,
            x._layout(),
            x._client,
        )
        result = _assemble(x._client, made, split, type(x))
    elif reorderable(ufunc, x.dtype, dtype):
        result = _scan(ufunc, x, dtype)
    else:
        result = _scan_in_order(ufunc, x, dtype)
    return result if out is None else into(out, result)


def _scan(ufunc: np.ufunc, x: _Array, dtype: Any) -> Any:
    """Each block accumulates alone (and keeps its last row); then each adds the running
    total of the last rows before it, all in parallel."""
    split = x._axis
    engines = x.engines
    plan = _Plan(x._client)
    tickets = [
        plan.add(e, K.scan_block, ufunc, _piece(b), split, dtype)
        for b, e in zip(x._blocks, engines, strict=True)
    ]
    result = plan.run()
    scanned = [result(t) for t in tickets]
    plan = _Plan(x._client)
    lasts: list[Any] = []
    for (acc, last), e, (_, lo, hi) in zip(scanned, engines, x._spans(), strict=True):
        if hi == lo:
            continue
        if lasts:
            plan.add(e, K.carry_in, ufunc, _piece(acc[0]), list(lasts), split)
        lasts.append(_piece(last[0]))
    plan.run()
    return _assemble(x._client, [acc for acc, _ in scanned], split, type(x))


def _scan_in_order(ufunc: np.ufunc, x: _Array, dtype: Any) -> Any:
    split = x._axis
    made = []
    carry: Any = None
    for b, e, (_, lo, hi) in zip(x._blocks, x.engines, x._spans(), strict=True):
        plan = _Plan(x._client)
        t = plan.add(e, K.accumulate_after, ufunc, carry, _piece(b), split, dtype)
        acc = plan.run()(t)
        made.append(acc)
        if hi > lo:
            carry = _piece(acc[0], _axis_key(split, slice(-1, None)))
    return _assemble(x._client, made, split, type(x))


# -- reduceat, outer, at ------------------------------------------------------------------


def _reduceat(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x, indices = inputs
    out = (kwargs.pop("out", None) or (None,))[0]
    if not isinstance(x, _Array):
        local = ufunc.reduceat(x, _local(indices), **kwargs)
        return local if out is None else into(out, local)
    axis = _check_axis(kwargs.pop("axis", 0), x.ndim)
    dtype = kwargs.pop("dtype", None)
    idx = np.asarray(_local(indices), dtype=np.intp)
    if idx.ndim != 1:
        raise ValueError("reduceat: indices must be one-dimensional")
    n = x.shape[axis]
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"index {int(bad[0])} out-of-bounds in {ufunc.__name__}.reduceat [0, {n})")
    split = x._axis
    if axis != split or idx.size == 0:
        made = blockwise(
            K.array_chunk,
            (ufunc.reduceat, x, idx.tolist()),  # a list: not cut along the split axis
            {"axis": axis, "dtype": dtype},
            x.shape,
            x._layout(),
            x._client,
        )
        result = _assemble(x._client, made, split, type(x))
        return result if out is None else into(out, result)
    ends = np.empty_like(idx)
    ends[:-1] = np.where(idx[1:] > idx[:-1], idx[1:], idx[:-1] + 1)
    ends[-1] = n
    owner = np.searchsorted(np.asarray(x._bounds[1:]), idx, side="right")
    plan = _Plan(x._client)
    tickets = []
    start = 0
    for k in range(1, idx.size + 1):
        if k < idx.size and owner[k] == owner[start]:
            continue
        lo, hi = int(idx[start:k].min()), int(ends[start:k].max())
        local = idx[start:k] - lo
        last = int(ends[k - 1]) - lo
        extra = last < hi - lo
        if extra:
            local = np.append(local, last)
        tickets.append(
            plan.add(
                x.engines[owner[start]],
                K.reduceat_part,
                ufunc,
                region(x, axis, lo, hi),
                local,
                axis,
                dtype,
                extra,
            )
        )
        start = k
    collect = plan.run()
    made = [collect(t) for t in tickets]
    out_value = _assemble(x._client, made, axis, type(x))
    return out_value if out is None else into(out, out_value)


def _outer(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a, b = inputs
    out = (kwargs.pop("out", None) or (None,))[0]
    if isinstance(a, _Array):
        lead, axis = a, a._axis
        args = [None, b if not isinstance(b, _Array) else whole(b)]
    else:
        lead, axis = b, np.ndim(a) + b._axis
        args = [a, None]
    plan = _Plan(lead._client)
    tickets = []
    for blk, e in zip(lead._blocks, lead.engines, strict=True):
        here = list(args)
        here[0 if lead is a else 1] = _piece(blk)
        tickets.append(plan.add(e, K.array_chunk, ufunc.outer, *here, **kwargs))
    result = plan.run()
    made = [result(t) for t in tickets]
    cls = result_class([a, b])
    if ufunc.nout == 1:
        value = _assemble(lead._client, made, axis, cls)
        return value if out is None else into(out, value)
    return tuple(
        _assemble(lead._client, [m[i] for m in made], axis, cls) for i in range(ufunc.nout)
    )


def _at(ufunc: np.ufunc, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    a, indices, *rest = inputs
    b = rest[0] if rest else None
    if not isinstance(a, _Array):  # only the values are ours: they must come here
        ufunc.at(a, _local(indices), *([_local(b)] if rest else []))
        return
    key = tuple(
        np.asarray(k, dtype=np.intp if len(k) == 0 else None) if isinstance(k, list) else k
        for k in (indices if isinstance(indices, tuple) else (indices,))
    )
    indices = key if isinstance(indices, tuple) else key[0]
    first = key[0] if key else slice(None)
    simple = (
        a._axis == 0
        and not isinstance(first, (slice, _Array, type(Ellipsis), type(None)))
        and np.ndim(first) == 1
        and np.asarray(first).dtype.kind in "iu"
        and all(isinstance(k, slice) for k in key[1:])
        and not isinstance(b, _Array)
    )
    if not simple:
        _at_on_one_engine(ufunc, a, indices, b, bool(rest))
        return
    idx = np.asarray(first, dtype=np.intp)
    n = a.shape[0]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of bounds for axis 0 with size {n}")
    idx = np.where(idx < 0, idx + n, idx)
    dummy = np.broadcast_to(np.empty((), np.int8), a.shape)
    target = dummy[(idx, *key[1:])].shape
    bv = None if b is None else np.asarray(b)
    per_row = (
        bv is not None and bv.ndim == len(target) and bv.shape[:1] == (idx.size,) and idx.size != 1
    )
    plan = _Plan(a._client)
    for blk, e, (_, lo, hi) in zip(a._blocks, a.engines, a._spans(), strict=True):
        sel = np.flatnonzero((idx >= lo) & (idx < hi))
        if not sel.size:
            continue
        value = bv[sel] if per_row and bv is not None else bv
        plan.add(e, K.ufunc_at, ufunc, _piece(blk), (idx[sel] - lo, *key[1:]), value)
    plan.run()


def _at_on_one_engine(ufunc: np.ufunc, a: _Array, indices: Any, b: Any, has_b: bool) -> None:
    """The general ``ufunc.at``: on a copy of ``a`` on one engine, then copied back."""
    copy = on_one_engine_copy(a)
    plan = _Plan(a._client)
    pieces = indices if not isinstance(indices, _Array) else whole(indices)
    value = whole(b) if isinstance(b, _Array) else b
    plan.add(
        copy.engines[0],
        K.ufunc_at,
        ufunc,
        _piece(copy._blocks[0]),
        pieces,
        value if has_b else None,
    )
    plan.run()
    setitem(a, ..., copy)


_METHODS = {
    "__call__": _call,
    "reduce": _reduce,
    "accumulate": _accumulate,
    "reduceat": _reduceat,
    "outer": _outer,
    "at": _at,
}
