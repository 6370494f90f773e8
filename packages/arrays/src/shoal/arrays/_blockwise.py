"""Operations block by block: the layout of a result, operands aligned to it, and the
policy for what has no parallel form: running on one engine.

* A result is laid out like its *leading* operand (:func:`leader`: the first DistArray,
  then RemoteArray, not broadcast along its split axis); its class is DistArray when any
  operand is one (:func:`result_class`).
* :func:`blockwise` runs a job per block of a result, the operands aligned to it:
  ``_core.align`` names what a job for rows ``lo:hi`` needs of each operand: its own block
  when the layouts agree, else a region the engine fetches.
* :func:`on_one_engine` runs a numpy function on the engine holding the most of its
  operands (the others copied there, engine to engine), never on the client; a
  :class:`PerformanceWarning` says so above :data:`WARN_BYTES`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _kernels as K
from ._core import (
    WARN_BYTES,
    PerformanceWarning,
    _Array,
    _assemble,
    _Plan,
    align,
    gather,
    is_split,
    whole,
)
from ._indexing import setitem

__all__ = [
    "aligned",
    "blockwise",
    "into",
    "leader",
    "on_one_engine",
    "result_class",
]


# -- layout of results -------------------------------------------------------------------


def leader(
    operands: Sequence[Any], shape: tuple[int, ...]
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The layout of a result of ``shape``: that of the first DistArray (then
    RemoteArray) operand not broadcast along its split axis, else one block on the engine
    of the first operand's data. ``(axis, boundaries, engines)``."""
    n = len(shape)
    ours = [v for v in operands if isinstance(v, _Array)]
    ordered = [v for v in ours if is_split(v)] + [v for v in ours if not is_split(v)]
    for v in ordered:
        axis = v._axis + n - v.ndim
        if v.shape[v._axis] == shape[axis]:
            return axis, v._bounds, v.engines
    v = ordered[0]
    axis = v._axis + n - v.ndim
    first = next(
        (e for (_, lo, hi), e in zip(v._spans(), v.engines, strict=True) if hi > lo), v.engines[0]
    )
    return axis, (0, shape[axis]), (first,)


def result_class(operands: Sequence[Any]) -> type[_Array]:
    """DistArray when any operand is one, else RemoteArray (result types are stable)."""
    first = next(v for v in operands if isinstance(v, _Array))
    return first._kind(any(is_split(v) for v in operands))


def aligned(v: _Array, layout: tuple[int, tuple[int, ...], tuple[int, ...]], ndim: int) -> bool:
    """Whether every region of ``v`` a job needs is its own block, on the job's engine."""
    axis, bounds, engines = layout
    return v._axis == axis - (ndim - v.ndim) and v._bounds == bounds and v.engines == engines


def blockwise(
    fn: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    shape: tuple[int, ...],
    layout: tuple[int, tuple[int, ...], tuple[int, ...]],
    client: Any,
) -> list[Any]:
    """``fn(*args, **kwargs)`` for each block of a result of ``shape`` laid out as
    ``layout``, the array operands aligned; what each job returned, in block order."""
    axis, bounds, engines = layout
    n, size = len(shape), shape[axis]
    plan = _Plan(client)
    tickets = []
    for e, lo, hi in zip(engines, bounds[:-1], bounds[1:], strict=True):
        a = [align(v, n, axis, size, lo, hi) for v in args]
        kw = {k: align(v, n, axis, size, lo, hi) for k, v in kwargs.items()}
        tickets.append(plan.add(e, fn, *a, **kw))
    result = plan.run()
    return [result(t) for t in tickets]


def into(out: Any, result: Any) -> Any:
    """Copy ``result`` into ``out`` (an array of ours: engine to engine; an ndarray:
    gathered, as the caller asked for it here)."""
    if isinstance(out, _Array):
        setitem(out, ..., result)
    else:
        np.copyto(out, gather(result) if isinstance(result, _Array) else result)
    return out


def _client(values: Sequence[Any]) -> Any:
    return next(v._client for v in values if isinstance(v, _Array))


# -- one engine: the policy for everything else ---------------------------------------


def _find(value: Any, found: list[_Array], depth: int = 3) -> None:
    if isinstance(value, _Array):
        found.append(value)
    elif depth > 0 and isinstance(value, (list, tuple)):
        for v in value:
            _find(v, found, depth - 1)
    elif depth > 0 and isinstance(value, dict):
        for v in value.values():
            _find(v, found, depth - 1)


def _pieces(value: Any, depth: int = 3) -> Any:
    if isinstance(value, _Array):
        return whole(value)
    if depth > 0 and type(value) in (list, tuple):
        return type(value)(_pieces(v, depth - 1) for v in value)
    if depth > 0 and type(value) is dict:
        return {k: _pieces(v, depth - 1) for k, v in value.items()}
    return value


def _wrap(client: Any, value: Any, cls: type[_Array]) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], K.Kept):
        return _assemble(client, [value], 0, cls)
    if type(value) in (tuple, list):
        return type(value)(_wrap(client, v, cls) for v in value)
    return value


def on_one_engine(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)`` on the engine holding the most of the operands."""
    kwargs = dict(kwargs)
    out = kwargs.pop("out", None)
    found: list[_Array] = []
    _find((args, kwargs), found)
    biggest = max(found, key=lambda a: a.nbytes)
    sizes = [hi - lo for _, lo, hi in biggest._spans()]
    engine = biggest.engines[sizes.index(max(sizes))]
    moved = sum(a.nbytes for a in found) - max(sizes) * biggest.nbytes // max(
        1, biggest.shape[biggest._axis]
    )
    name = getattr(func, "__name__", repr(func))
    if moved > WARN_BYTES:
        warnings.warn(
            f"numpy.{name} has no parallel form in shoal.arrays: it runs on engine {engine}, "
            f"with {moved} bytes of its operands copied there",
            PerformanceWarning,
            stacklevel=3,
        )
    plan = _Plan(biggest._client)
    t = plan.add(engine, K.call, func, *_pieces(args), **_pieces(kwargs))
    value = _wrap(biggest._client, plan.run()(t), result_class(found))
    return value if out is None else into(out, value)
