"""Indexing and assignment of RemoteArray and DistArray, routed to the blocks.

* The component of the key on the split axis decides the route: an int picks one block;
  a slice (any step) picks a run of rows from each block, so each engine indexes its own
  block (basic indexing gives views, as numpy's does); a boolean mask along the split
  axis is applied block by block (the result has new, irregular blocks); an integer
  array has each result block assemble its rows from the engines holding them.
* Components on other axes (including integer and boolean arrays) go to every block.
* Keys mixing several arrays with the split axis run on one engine (a copy of the array
  there; :class:`PerformanceWarning` when it is large), never on the client.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import numpy as np

from . import _kernels as K
from ._core import (
    WARN_BYTES,
    PerformanceWarning,
    _Array,
    _assemble,
    _piece,
    _Plan,
    align,
    gather,
    on_one_engine_copy,
    rows,
    whole,
)

__all__ = ["getitem", "setitem"]


def _is_int(c: Any) -> bool:
    return isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))


def _is_array(c: Any) -> bool:
    return isinstance(c, (_Array, np.ndarray))


def normalize(key: Any, ndim: int) -> list[Any]:
    """The key as one component per result-making position: Ellipsis expanded, lists made
    arrays, trailing full slices added."""
    if not isinstance(key, tuple):
        key = (key,)
    comps: list[Any] = []
    for k in key:
        c = np.asarray(k) if isinstance(k, (list, bool, np.bool_)) else k
        if isinstance(k, list) and c.size == 0:
            c = c.astype(np.intp)
        comps.append(c)
    used = sum(
        0 if c is None or c is Ellipsis else (c.ndim if _is_array(c) and c.dtype == bool else 1)
        for c in comps
    )
    if sum(c is Ellipsis for c in comps) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if used > ndim:
        raise IndexError(
            f"too many indices for array: array is {ndim}-dimensional, but {used} were indexed"
        )
    out: list[Any] = []
    for c in comps:
        if c is Ellipsis:
            out += [slice(None)] * (ndim - used)
            used = ndim
        else:
            out.append(c)
    return out + [slice(None)] * (ndim - used)


def _dims(comps: list[Any]) -> list[int | None]:
    """The array dimension each component consumes (None: adds one)."""
    dims: list[int | None] = []
    d = 0
    for c in comps:
        if c is None:
            dims.append(None)
        else:
            dims.append(d)
            d += c.ndim if _is_array(c) and c.dtype == bool else 1
    return dims


def _covering(comps: list[Any], dims: list[int | None], axis: int) -> int:
    """The position of the component that indexes ``axis``."""
    for i, (c, d) in enumerate(zip(comps, dims, strict=True)):
        width = c.ndim if _is_array(c) and c.dtype == bool else 1
        if d is not None and d <= axis < d + width:
            return i
    raise AssertionError("normalize() gives a component for every axis")  # pragma: no cover


def _masks_split(x: _Array, comps: list[Any], dims: list[int | None], at: int) -> bool:
    """Whether ``comps[at]`` is a boolean mask whose first axis is the split axis: each
    block then picks its own elements, in numpy's order."""
    c = comps[at]
    return _is_array(c) and c.dtype == bool and c.ndim >= 1 and dims[at] == x._axis


def _check_ints(x: _Array, comps: list[Any], dims: list[int | None]) -> list[Any]:
    out = []
    for c, d in zip(comps, dims, strict=True):
        if _is_int(c) and d is not None:
            n = x.shape[d]
            if not -n <= c < n:
                raise IndexError(f"index {c} is out of bounds for axis {d} with size {n}")
            out.append(int(c) % n)
        else:
            out.append(c)
    return out


def _slice_parts(x: _Array, s: slice) -> list[tuple[int, int, int, slice]]:
    """For the slice ``s`` on the split axis: ``(block, first, end, local slice)`` for
    each block that holds some of its rows, in the order the slice visits them; first
    and end are positions along the result's axis."""
    n = x.shape[x._axis]
    start, stop, step = s.indices(n)
    parts = []
    for j, (_, b0, b1) in enumerate(x._spans()):
        if step > 0:
            p_lo = len(range(start, min(b0, stop), step))
            p_hi = len(range(start, min(b1, stop), step))
        else:
            p_lo = len(range(start, max(b1 - 1, stop), step))
            p_hi = len(range(start, max(b0 - 1, stop), step))
        if p_hi > p_lo:
            first = start + p_lo * step - b0
            last = start + (p_hi - 1) * step - b0
            end = last + (1 if step > 0 else -1)
            parts.append((j, p_lo, p_hi, slice(first, None if end < 0 else end, step)))
    parts.sort(key=lambda p: p[1])
    return parts


def _out_axis(comps: list[Any], at: int) -> int:
    """Where the dimension made by component ``at`` lands in the result (numpy's rule:
    the broadcast dimensions of advanced indices go where the first of them was when
    they are next to each other, else first)."""
    advanced = [
        i for i, c in enumerate(comps) if _is_array(c) or (_is_int(c) and _any_array(comps))
    ]
    # A boolean mask of any ndim stands for its nonzero(): one dimension.
    shapes = [(1,) if _is_array(c) and c.dtype == bool else np.shape(c) for c in comps]
    adv_nd = len(np.broadcast_shapes(*(shapes[i] for i in advanced))) if advanced else 0
    together = advanced == list(range(advanced[0], advanced[-1] + 1)) if advanced else True
    pos = 0 if together else adv_nd
    for i, c in enumerate(comps[:at]):
        if i in advanced:
            if together and i == advanced[0]:
                pos += adv_nd
        elif c is None or isinstance(c, slice):
            pos += 1
    return pos


def _any_array(comps: list[Any]) -> bool:
    return any(_is_array(c) for c in comps)


def _pieces(comps: list[Any]) -> tuple[Any, ...]:
    return tuple(whole(c) if isinstance(c, _Array) else c for c in comps)


def _route(x: _Array, key: Any) -> tuple[str, list[Any], int]:
    """How a key reaches the blocks (the module docstring's routes), its components,
    and the position of the component on the split axis."""
    comps = normalize(key, x.ndim)
    dims = _dims(comps)
    comps = _check_ints(x, comps, dims)
    at = _covering(comps, dims, x._axis)
    c = comps[at]
    others = [k for i, k in enumerate(comps) if i != at]
    lone = not any(_is_array(k) or _is_int(k) for k in others)
    if isinstance(c, slice) and not any(isinstance(k, _Array) for k in others):
        return "slice", comps, at
    if _is_int(c) and not _any_array(comps):
        return "int", comps, at
    if lone and _masks_split(x, comps, dims, at):
        return "mask", comps, at
    if lone and _is_array(c) and c.ndim == 1 and c.dtype.kind in "iu":
        return "rows", comps, at
    return "one engine", comps, at


def getitem(x: _Array, key: Any) -> Any:
    route, comps, at = _route(x, key)
    if route == "slice":
        return _by_slice(x, comps, at)
    if route == "int":
        return _by_int(x, comps, at)
    if route == "mask":
        return _by_mask(x, comps, at)
    if route == "rows":
        return _by_rows(x, comps, at)
    return _on_one_engine(x, comps)


def _by_slice(x: _Array, comps: list[Any], at: int) -> Any:
    parts = _slice_parts(x, comps[at])
    if not parts:  # nothing selected: an empty block on the first engine
        parts = [(0, 0, 0, slice(0, 0))]
    advanced = _any_array(comps)
    plan = _Plan(x._client)
    tickets = []
    for j, _, _, local in parts:
        key = list(comps)
        key[at] = local
        tickets.append(
            plan.add(x.engines[j], K.call, operator.getitem, _piece(x._blocks[j]), tuple(key))
        )
    result = plan.run()
    made = [result(t) for t in tickets]
    return _assemble(x._client, made, _out_axis(comps, at), type(x), None if advanced else x._roots)


def _by_int(x: _Array, comps: list[Any], at: int) -> Any:
    i = comps[at]
    j = int(np.searchsorted(np.asarray(x._bounds[1:]), i, side="right"))
    key = list(comps)
    key[at] = i - x._bounds[j]
    plan = _Plan(x._client)
    t = plan.add(x.engines[j], K.call, operator.getitem, _piece(x._blocks[j]), tuple(key))
    value = plan.run()(t)
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], K.Kept)):
        return value  # one element: a numpy scalar, like numpy's
    return _assemble(x._client, [value], 0, type(x), x._roots)


def _check_mask(x: _Array, mask: Any) -> None:
    want = x.shape[x._axis : x._axis + mask.ndim]
    if mask.shape != want:
        raise IndexError(
            f"boolean index did not match indexed array along axes {x._axis}.."
            f"{x._axis + mask.ndim - 1}; their sizes are {want} but the mask's are {mask.shape}"
        )


def _by_mask(x: _Array, comps: list[Any], at: int) -> Any:
    mask = comps[at]
    n = x.shape[x._axis]
    _check_mask(x, mask)
    plan = _Plan(x._client)
    tickets = []
    for j, (b, lo, hi) in enumerate(x._spans()):
        key = list(comps)
        key[at] = align(mask, mask.ndim, 0, n, lo, hi)
        tickets.append(plan.add(x.engines[j], K.call, operator.getitem, _piece(b), tuple(key)))
    result = plan.run()
    made = [result(t) for t in tickets]
    return _assemble(x._client, made, _out_axis(comps, at), type(x))


def _indices(c: Any, n: int) -> np.ndarray[Any, Any]:
    idx = np.asarray(gather(c) if isinstance(c, _Array) else c, dtype=np.intp)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise IndexError(f"index {bad} is out of bounds for axis with size {n}")
    return np.where(idx < 0, idx + n, idx)


def _by_rows(x: _Array, comps: list[Any], at: int) -> Any:
    """Integer array on the split axis: result block ``d`` (on the d-th engine holding
    data) assembles its rows from the blocks holding them."""
    idx = _indices(comps[at], x.shape[x._axis])
    engines = list(dict.fromkeys(x.engines))
    m = idx.size
    cuts = [d * m // len(engines) for d in range(len(engines) + 1)]
    plan = _Plan(x._client)
    tickets = []
    for d, e in enumerate(engines):
        gathered = rows(x, x._axis, idx[cuts[d] : cuts[d + 1]])
        key = list(comps)
        key[at] = slice(None)
        tickets.append(plan.add(e, K.call, operator.getitem, gathered, tuple(key)))
    result = plan.run()
    made = [result(t) for t in tickets]
    cls = type(x) if len(made) > 1 or x._split else x._kind(False)
    return _assemble(x._client, made, _out_axis(comps, at), cls)


def _warn_one_engine(what: str, nbytes: int) -> None:
    if nbytes > WARN_BYTES:
        warnings.warn(
            f"{what} has no parallel form here: it runs on one engine, with {nbytes} bytes "
            "copied there",
            PerformanceWarning,
            stacklevel=4,
        )


def _on_one_engine(x: _Array, comps: list[Any]) -> Any:
    _warn_one_engine("this indexing", x.nbytes)
    plan = _Plan(x._client)
    t = plan.add(x.engines[0], K.call, operator.getitem, whole(x), _pieces(comps))
    value = plan.run()(t)
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], K.Kept)):
        return value
    return _assemble(x._client, [value], 0, type(x))


# -- assignment ----------------------------------------------------------------------


def setitem(x: _Array, key: Any, value: Any) -> None:
    if isinstance(value, _Array) and value._roots & x._roots:
        value = value.copy()  # its rows would change under the engines reading them
    elif isinstance(value, (list, tuple)):
        value = np.asarray(value)
    route, comps, at = _route(x, key)
    if route == "slice":
        _set_slice(x, comps, at, value)
    elif route == "int":
        c = comps[at]
        j = int(np.searchsorted(np.asarray(x._bounds[1:]), c, side="right"))
        k = list(comps)
        k[at] = c - x._bounds[j]
        plan = _Plan(x._client)
        plan.add(x.engines[j], K.assign, _piece(x._blocks[j]), tuple(k), _whole_value(value))
        plan.run()
    elif route == "mask":
        _set_mask(x, comps, at, value)
    elif route == "rows":
        _set_rows(x, comps, at, value)
    else:
        _warn_one_engine("this assignment", x.nbytes)
        copy = on_one_engine_copy(x)
        plan = _Plan(x._client)
        plan.add(
            copy.engines[0], K.assign, _piece(copy._blocks[0]), _pieces(comps), _whole_value(value)
        )
        plan.run()
        setitem(x, ..., copy)


def _whole_value(value: Any) -> Any:
    return whole(value) if isinstance(value, _Array) else value


def _selected_shape(x: _Array, comps: list[Any]) -> tuple[int, ...]:
    """The shape of ``x[comps]``, from a stand-in that holds no data."""
    stand_in = np.broadcast_to(np.empty((), np.int8), x.shape)
    key = tuple(np.empty(c.shape, c.dtype) if isinstance(c, _Array) else c for c in comps)
    return tuple(stand_in[key].shape)


def _set_slice(x: _Array, comps: list[Any], at: int, value: Any) -> None:
    shape = _selected_shape(x, comps)
    np.broadcast_shapes(np.shape(value), shape)  # numpy's error when it can't broadcast
    if np.ndim(value) > len(shape) or np.broadcast_shapes(np.shape(value), shape) != shape:
        raise ValueError(
            f"could not broadcast input array from shape {np.shape(value)} into shape {shape}"
        )
    pos = _out_axis(comps, at)
    plan = _Plan(x._client)
    for j, p_lo, p_hi, local in _slice_parts(x, comps[at]):
        key = list(comps)
        key[at] = local
        v = align(value, len(shape), pos, shape[pos], p_lo, p_hi) if shape else value
        plan.add(x.engines[j], K.assign, _piece(x._blocks[j]), tuple(key), v)
    plan.run()


def _set_mask(x: _Array, comps: list[Any], at: int, value: Any) -> None:
    mask = comps[at]
    n = x.shape[x._axis]
    _check_mask(x, mask)
    pieces = [align(mask, mask.ndim, 0, n, lo, hi) for _, lo, hi in x._spans()]
    pos = _out_axis(comps, at)
    ndim = x.ndim - mask.ndim + 1 + sum(c is None for c in comps)  # of x[key]
    vnd = np.ndim(value)
    vax = pos - (ndim - vnd)
    per_row = vnd > 0 and vax >= 0 and np.shape(value)[vax] != 1
    counts: list[int] = []
    if per_row:
        plan = _Plan(x._client)
        tickets = [plan.add(e, K.count_true, m) for e, m in zip(x.engines, pieces, strict=True)]
        result = plan.run()
        counts = [result(t) for t in tickets]
        if sum(counts) != np.shape(value)[vax]:
            raise ValueError(
                f"NumPy boolean array indexing assignment cannot assign {np.shape(value)[vax]} "
                f"input values to the {sum(counts)} output values where the mask is true"
            )
    plan = _Plan(x._client)
    start = 0
    for j, (b, _, _) in enumerate(x._spans()):
        key = list(comps)
        key[at] = pieces[j]
        if per_row:
            v = align(value, vnd, vax, sum(counts), start, start + counts[j])
            start += counts[j]
        else:
            v = _whole_value(value)
        plan.add(x.engines[j], K.assign, _piece(b), tuple(key), v)
    plan.run()


def _set_rows(x: _Array, comps: list[Any], at: int, value: Any) -> None:
    idx = _indices(comps[at], x.shape[x._axis])
    shape = _selected_shape(x, [*comps[:at], idx, *comps[at + 1 :]])
    pos = _out_axis(comps, at)
    vnd = np.ndim(value)
    vax = pos - (len(shape) - vnd)
    per_row = vnd and vax >= 0 and np.shape(value)[vax] == idx.size and idx.size != 1
    plan = _Plan(x._client)
    for j, (b, lo, hi) in enumerate(x._spans()):
        sel = np.flatnonzero((idx >= lo) & (idx < hi))
        if not sel.size:
            continue
        key = list(comps)
        key[at] = idx[sel] - lo
        if not per_row:
            v = _whole_value(value)
        elif isinstance(value, _Array):
            v = rows(value, vax, sel)
        else:
            v = np.take(value, sel, axis=vax)
        plan.add(x.engines[j], K.assign, _piece(b), tuple(key), v)
    plan.run()
