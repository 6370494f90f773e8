"""Linear algebra (``matmul``, ``dot``, ``tensordot``) block by block.

A split axis that is free stays split: each engine multiplies its block by all of the
other operand (fetched whole). A contracted split axis gives partial products, one per
block, summed on one engine. Other cases run on one engine (:func:`on_one_engine`).
``_ufuncs`` calls :func:`matmul` for ``np.matmul`` (a ufunc); ``_functions`` registers
these for ``__array_function__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _kernels as K
from ._blockwise import _wrap, into, on_one_engine, result_class
from ._core import (
    _Array,
    _assemble,
    _axis_key,
    _check_axis,
    _piece,
    _Plan,
    region,
    whole,
)

__all__ = ["dot", "matmul", "tensordot"]


def _partial_sum(client: Any, plan: _Plan, tickets: list[Any], head: int, cls: type[_Array]) -> Any:
    result = plan.run()
    partials = [result(t) for t in tickets]
    plan = _Plan(client)
    t = plan.add(head, K.add_all, [_piece(p[0]) if isinstance(p, tuple) else p for p in partials])
    return _wrap(client, plan.run()(t), cls)


def _whole_on(x: _Array, engines: Sequence[int]) -> tuple[dict[int, Any], list[Any]]:
    """A piece naming all of ``x`` for each of ``engines``, and the blocks to keep alive
    while they are used. Where several engines lack blocks of ``x``, each first fetches
    them into a block of its own, all at once, before any computes: fetched as part of
    the product instead, an engine that has started multiplying (its main thread in the
    product) serves the others' fetches only when it is done, and the products run one
    after the other."""
    piece = whole(x)
    held = set(x.engines)
    fetching = sorted({e for e in engines if held - {e}})
    if len(fetching) < 2:
        return dict.fromkeys(engines, piece), []
    plan = _Plan(x._client)
    # Each fetching engine lacks a block, so its piece materializes as a fresh array
    # (fetched, or joined from its blocks and fetched ones), never one of x's own blocks.
    tickets = {e: plan.add(e, K.call, np.asarray, piece) for e in fetching}
    result = plan.run()
    blocks = {e: result(t)[0] for e, t in tickets.items()}
    return {e: _piece(blocks[e]) if e in blocks else piece for e in engines}, list(blocks.values())


def matmul(a: Any, b: Any, out: Any = None, **kwargs: Any) -> Any:
    result = _matmul(a, b, kwargs)
    return result if out is None else into(out, result)


def _matmul(a: Any, b: Any, kwargs: dict[str, Any]) -> Any:
    if kwargs:
        return on_one_engine(np.matmul, (a, b), kwargs)
    a_ours, b_ours = isinstance(a, _Array), isinstance(b, _Array)
    a = a if a_ours else np.asarray(a)
    b = b if b_ours else np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: Input operand {0 if a.ndim == 0 else 1} does not have enough dimensions"
        )
    inner_a, inner_b = a.shape[-1], b.shape[0 if b.ndim == 1 else -2]
    if inner_a != inner_b:  # before any engine works on it
        raise ValueError(
            "matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc"
            f" signature (n?,k),(k,m?)->(n?,m?) (size {inner_b} is different from {inner_a})"
        )
    cls = result_class([a, b])
    if a_ours and a.ndim == 2 and a._axis == 0 and b.ndim <= 2:
        # rows of a: each block times all of b
        others, _fetched = _whole_on(b, a.engines) if b_ours else ({}, [])
        plan = _Plan(a._client)
        tickets = [
            plan.add(e, K.call, np.matmul, _piece(blk), others.get(e, b))
            for blk, e in zip(a._blocks, a.engines, strict=True)
        ]
        result = plan.run()
        return _assemble(a._client, [result(t) for t in tickets], 0, cls)
    if a_ours and a._axis == a.ndim - 1 and a.ndim <= 2 and b.ndim <= 2:
        # split along the contracted axis: partial products, summed on one engine
        row = 0 if b.ndim == 1 else b.ndim - 2
        plan = _Plan(a._client)
        tickets = []
        head = a.engines[0]
        for blk, e, lo, hi in zip(a._blocks, a.engines, a._bounds[:-1], a._bounds[1:], strict=True):
            part = region(b, row, lo, hi) if b_ours else b[_axis_key(row, slice(lo, hi))]
            tickets.append(plan.add(e, K.call, np.matmul, _piece(blk), part))
        return _partial_sum(a._client, plan, tickets, head, cls)
    if b_ours and not a_ours and b.ndim == 2 and a.ndim <= 2:
        if b._axis == 1:  # columns of b: all of a times each block
            plan = _Plan(b._client)
            tickets = [
                plan.add(e, K.call, np.matmul, a, _piece(blk))
                for blk, e in zip(b._blocks, b.engines, strict=True)
            ]
            result = plan.run()
            return _assemble(b._client, [result(t) for t in tickets], a.ndim - 1, cls)
        plan = _Plan(b._client)
        tickets = []
        head = b.engines[0]
        for blk, e, lo, hi in zip(b._blocks, b.engines, b._bounds[:-1], b._bounds[1:], strict=True):
            tickets.append(plan.add(e, K.call, np.matmul, a[..., lo:hi], _piece(blk)))
        return _partial_sum(b._client, plan, tickets, head, cls)
    return on_one_engine(np.matmul, (a, b), {})


def dot(a: Any, b: Any, out: Any = None) -> Any:
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        result = np.multiply(a, b)
    elif np.ndim(a) <= 2 and np.ndim(b) <= 2:
        sa, sb = np.shape(a), np.shape(b)
        if sa[-1] != sb[0]:  # numpy's words for dot (matmul's differ)
            raise ValueError(
                f"shapes {sa} and {sb} not aligned: {sa[-1]} (dim {len(sa) - 1}) != {sb[0]} (dim 0)"
            )
        result = _matmul(a, b, {})
    else:
        result = on_one_engine(np.dot, (a, b), {})
    return result if out is None else into(out, result)


def tensordot(a: Any, b: Any, axes: Any = 2) -> Any:
    """Block by block when the split axis is a free axis (the other operand goes whole to
    each engine), partial products summed on one engine when it is contracted."""
    a = a if isinstance(a, _Array) else np.asarray(a)
    b = b if isinstance(b, _Array) else np.asarray(b)
    try:
        if isinstance(axes, (int, np.integer)):
            n = int(axes)
            a_axes = list(range(a.ndim - n, a.ndim))
            b_axes = list(range(n))
        else:
            a_axes = [_check_axis(i, a.ndim) for i in np.atleast_1d(axes[0])]
            b_axes = [_check_axis(i, b.ndim) for i in np.atleast_1d(axes[1])]
    except (TypeError, IndexError, np.exceptions.AxisError):
        return on_one_engine(np.tensordot, (a, b), {"axes": axes})  # numpy's own error
    if len(a_axes) != len(b_axes) or any(
        a.shape[i] != b.shape[j] for i, j in zip(a_axes, b_axes, strict=True)
    ):
        raise ValueError("shape-mismatch for sum")
    spec = (a_axes, b_axes)
    cls = result_class([a, b])
    if isinstance(a, _Array) and a._axis not in a_axes:
        free = [i for i in range(a.ndim) if i not in a_axes]
        others, _fetched = _whole_on(b, a.engines) if isinstance(b, _Array) else ({}, [])
        plan = _Plan(a._client)
        tickets = [
            plan.add(e, K.call, np.tensordot, _piece(blk), others.get(e, b), axes=spec)
            for blk, e in zip(a._blocks, a.engines, strict=True)
        ]
        result = plan.run()
        return _assemble(a._client, [result(t) for t in tickets], free.index(a._axis), cls)
    if isinstance(b, _Array) and b._axis not in b_axes:
        free = [i for i in range(b.ndim) if i not in b_axes]
        others, _fetched = _whole_on(a, b.engines) if isinstance(a, _Array) else ({}, [])
        axis = a.ndim - len(a_axes) + free.index(b._axis)
        plan = _Plan(b._client)
        tickets = [
            plan.add(e, K.call, np.tensordot, others.get(e, a), _piece(blk), axes=spec)
            for blk, e in zip(b._blocks, b.engines, strict=True)
        ]
        result = plan.run()
        return _assemble(b._client, [result(t) for t in tickets], axis, cls)
    if isinstance(a, _Array):  # the split axis is contracted: partial products
        row = b_axes[a_axes.index(a._axis)]
        plan = _Plan(a._client)
        tickets = []
        for blk, e, lo, hi in zip(a._blocks, a.engines, a._bounds[:-1], a._bounds[1:], strict=True):
            part = (
                region(b, row, lo, hi)
                if isinstance(b, _Array)
                else b[_axis_key(row, slice(lo, hi))]
            )
            tickets.append(plan.add(e, K.call, np.tensordot, _piece(blk), part, axes=spec))
        return _partial_sum(a._client, plan, tickets, a.engines[0], cls)
    return on_one_engine(np.tensordot, (a, b), {"axes": axes})
