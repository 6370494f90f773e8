"""What runs on the engines: jobs over array blocks.

The client sends each engine one :func:`run` call with a list of jobs. A job is a
function and its arguments; arguments may hold *pieces*, which name array data in the
cluster and become ndarrays on the engine just before the job runs:

* :class:`Get` - a block of an engine's object store, or ``block[key]``. On the engine
  holding it this is the block itself (or a view: no copy); elsewhere it is fetched
  straight from the owning engine (shared memory on one host), never through the client.
* :class:`Cat` - pieces joined along an axis (a region spanning several blocks).
* :class:`Empty` - an empty array of a given shape and dtype (a region with no rows).

What a job returns is kept on this engine when it is an ndarray (the client gets the new
block's id, shape and dtype) and sent back by value otherwise.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from shoal.engine import current_engine
from shoal.hub import empty_shared

__all__ = ["BLOCK", "Cat", "Empty", "Failed", "Get", "Kept", "Place", "run"]


class Get(NamedTuple):
    """``block[key]`` (``key`` None: the whole block) of object ``oid`` on ``engine``."""

    engine: int
    oid: int
    url: str | None
    key: Any = None


class Cat(NamedTuple):
    """Pieces joined along ``axis``."""

    parts: tuple[Any, ...]
    axis: int


class Empty(NamedTuple):
    """A new array of ``shape`` and ``dtype`` (a region with nothing in it, or a block
    for a job to fill)."""

    shape: tuple[int, ...]
    dtype: str


class Place(NamedTuple):
    """A new array of ``shape`` filled along ``axis`` from ``(positions, piece)`` parts
    (rows picked from several blocks, in any order)."""

    shape: tuple[int, ...]
    dtype: str
    axis: int
    parts: tuple[tuple[Any, Any], ...]


#: Stands for "this block" in the arguments of a per-block job (replaced on the client).
BLOCK = object()


class Kept(NamedTuple):
    """An ndarray a job made, kept in this engine's store: what the client learns of it."""

    oid: int
    shape: tuple[int, ...]
    dtype: str


def _store() -> Any:
    engine = current_engine()
    if engine is None or engine.kernel.objects is None:
        raise RuntimeError("shoal.arrays jobs run on shoal engines only")
    return engine, engine.kernel.objects


def materialize(value: Any) -> Any:
    """``value`` with its pieces turned into ndarrays (in tuples, lists and dict values)."""
    cls = type(value)
    if cls is Get:
        return _get(value)
    if cls is Cat:
        parts = [materialize(p) for p in value.parts]
        return _concatenate(parts, value.axis) if len(parts) > 1 else parts[0]
    if cls is Empty:
        return new_block(value.shape, value.dtype)
    if cls is Place:
        out = new_block(value.shape, value.dtype)
        for positions, piece in value.parts:
            out[(slice(None),) * value.axis + (positions,)] = materialize(piece)
        return out
    if cls is tuple or cls is list:
        return cls(materialize(v) for v in value)
    if cls is dict:
        return {k: materialize(v) for k, v in value.items()}
    return value


def _get(piece: Get) -> Any:
    engine, store = _store()
    if piece.engine == engine.engine_id:
        block = store.get(piece.oid)
        return block if piece.key is None else block[piece.key]
    if piece.url is None:
        raise RuntimeError(f"engine {piece.engine} has no direct address to fetch a block from")
    if piece.key is None:
        reply = engine.peer_request(piece.url, "fetch_request", {"id": piece.oid})
    else:
        content = {
            "id": piece.oid,
            "method": "__getitem__",
            "args": [piece.key],
            "kwargs": {},
            "returns": "value",
            "owner": "",
        }
        reply = engine.peer_request(piece.url, "call_method_request", content)
    if reply.get("status") != "ok":
        raise RuntimeError(
            f"fetching a block from engine {piece.engine} failed: "
            f"{reply.get('ename')}: {reply.get('evalue')}"
        )
    return reply["result"]


# -- big results on shared memory ------------------------------------------------------
#
# A new 256 MiB result costs ~65k page faults (the kernel zeroing fresh pages) - about
# as long as adding two such arrays. Big blocks this module makes go on the pages of the
# host's shared memory pool (reused, mapped already) - which also lets a block travel to
# the client or another engine with no copy (see shoal.wire's shared memory).

_SHARED_MIN = 16 << 20


def new_block(shape: tuple[int, ...], dtype: Any) -> Any:
    """``np.empty(shape, dtype)``, on the shared memory pool's pages when it is big."""
    dt = np.dtype(dtype)
    if math.prod(shape) * dt.itemsize < _SHARED_MIN or dt.hasobject:
        return np.empty(shape, dt)
    return empty_shared(shape, dt)


def _weak_dtype(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype
    if type(value) in (int, float, complex):
        return type(value)  # a Python scalar: numpy's weak promotion
    return np.asarray(value).dtype


def _recycled_out(ufunc: np.ufunc, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The output array of a big ufunc call, on recycled memory; None when small or when
    its dtype cannot be told beforehand."""
    if any(k in kwargs for k in ("dtype", "signature", "casting", "subok")):
        return None
    if len(args) != ufunc.nin or not any(type(a) is np.ndarray for a in args):
        return None
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    if math.prod(shape) * 8 < _SHARED_MIN // 2:
        return None
    try:
        dtype = ufunc.resolve_dtypes((*(_weak_dtype(a) for a in args), None))[-1]
    except (TypeError, ValueError):
        return None
    return new_block(shape, dtype)


def keep(value: Any, owner: str) -> Any:
    """Keep ndarrays (also inside a tuple or list) in this engine's store for ``owner``."""
    if type(value) is np.ndarray:
        if value.ndim == 0:
            return value[()]  # a numpy scalar travels by value
        _, store = _store()
        return Kept(store.store(value, owner), value.shape, value.dtype.str)
    if type(value) in (tuple, list):
        return type(value)(keep(v, owner) for v in value)
    return value


Job = tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]


class Failed(NamedTuple):
    """A job's exception, sent back as a value so that the client raises it with its own
    type (numpy's ValueError stays a ValueError); its type's name and the engine's
    traceback text."""

    exception: Exception
    ename: str
    traceback: str


def run(owner: str, jobs: Sequence[Job]) -> list[Any] | Failed:
    """Run ``jobs`` in order on this engine; what each returned, kept or by value.

    When a job fails, what the jobs before it kept is dropped (the client never hears
    of it), and the error goes to the client as a :class:`Failed` (raised instead when
    not even its builtin base type can carry it: the client gets a RemoteError).
    """
    out: list[Any] = []
    try:
        for fn, args, kwargs in jobs:
            result = fn(*materialize(args), **materialize(kwargs))
            out.append(keep(result, owner))
    except BaseException as exc:
        _drop(out, owner)
        sent = _portable(exc) if isinstance(exc, Exception) else None
        if sent is None:
            raise
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None  # its frames hold the blocks the jobs read
        return Failed(sent, type(exc).__name__, text)
    return out


def _portable(exc: Exception) -> Exception | None:
    """``exc`` when it pickles, else its message in the builtin type it derives from
    (numpy's UFuncTypeError holds DType classes that do not pickle: a TypeError)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        base = next(c for c in type(exc).__mro__ if c.__module__ == "builtins")
        try:
            plain: Exception = base(str(exc))
        except Exception:  # a builtin that wants other arguments (UnicodeError, ...)
            return None
        return plain
    return exc


def _drop(values: Any, owner: str) -> None:
    if type(values) is Kept:
        _store()[1].decref(values.oid, 1, owner)
    elif type(values) in (tuple, list):
        for v in values:
            _drop(v, owner)


# -- job functions (picklable by reference: the engines import this module) -------------


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with a result that is always an ndarray when it is one
    in spirit (numpy returns scalars for 0-d results)."""
    return fn(*args, **kwargs)


def method(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    return getattr(obj, name)(*args, **kwargs)


def ufunc_into(ufunc: np.ufunc, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """``ufunc(*args, **kwargs)`` writing into the ``out`` blocks; nothing to keep."""
    ufunc(*args, **kwargs)


def array_chunk(ufunc: np.ufunc, *args: Any, **kwargs: Any) -> Any:
    """A ufunc call whose result is an ndarray even for 0-d blocks (a big one on
    recycled memory)."""
    if type(ufunc) is np.ufunc and ufunc.nout == 1 and "out" not in kwargs:
        out = _recycled_out(ufunc, args, kwargs)
        if out is not None:
            return ufunc(*args, out=out, **kwargs)
    result = ufunc(*args, **kwargs)
    if isinstance(result, tuple):
        return tuple(np.asarray(r) for r in result)
    return np.asarray(result)


def reduce_block(
    ufunc: np.ufunc, block: Any, axis: Any, dtype: Any, where: Any, initial: Any
) -> Any:
    kwargs: dict[str, Any] = {"axis": axis, "dtype": dtype, "keepdims": True}
    if where is not None:
        kwargs["where"] = where
    if initial is not None:
        kwargs["initial"] = initial
    return np.asarray(ufunc.reduce(block, **kwargs))


def combine(
    ufunc: np.ufunc,
    partials: Sequence[Any],
    split: int,
    axis: Any,
    dtype: Any,
    keepdims: bool,
    initial: Any,
) -> Any:
    """Partial reductions (kept with their axes) joined and reduced once more."""
    joined = np.concatenate(partials, axis=split)
    kwargs: dict[str, Any] = {"axis": axis, "dtype": dtype, "keepdims": keepdims}
    if initial is not None:
        kwargs["initial"] = initial
    return np.asarray(ufunc.reduce(joined, **kwargs))


def fold(ufunc: np.ufunc, carry: Any, block: Any, axis: int, dtype: Any, initial: Any) -> Any:
    """One step of a reduction that is not reorderable: the carry so far, then the block."""
    joined = block if carry is None else np.concatenate([carry, block], axis=axis)
    kwargs: dict[str, Any] = {"axis": axis, "dtype": dtype, "keepdims": True}
    if initial is not None:
        kwargs["initial"] = initial
    return np.asarray(ufunc.reduce(joined, **kwargs))


def squeeze_axis(block: Any, axis: Any) -> Any:
    return np.squeeze(block, axis=axis)


def scan_block(ufunc: np.ufunc, block: Any, axis: int, dtype: Any) -> Any:
    """First pass of an accumulation along the split axis: this block alone, and a copy
    of its last row (the second pass changes the block in place)."""
    out = None
    if dtype is None and block.nbytes >= _SHARED_MIN and block.dtype.kind in "biufc":
        with contextlib.suppress(TypeError, ValueError):
            kind = ufunc.resolve_dtypes((block.dtype, block.dtype, None), reduction=True)[-1]
            out = new_block(block.shape, kind)
    acc = np.asarray(ufunc.accumulate(block, axis=axis, dtype=dtype, out=out))
    last = np.take(acc, [acc.shape[axis] - 1], axis=axis) if acc.shape[axis] else acc.copy()
    return acc, last


def sort_and_sample(block: Any, n: int) -> Any:
    """A sorted copy of a 1-d block, and ``n`` evenly spaced values of it as a list (so
    they travel by value)."""
    ordered = np.sort(block)
    if not ordered.size:
        return ordered, []
    picks = np.linspace(0, ordered.size - 1, min(n, ordered.size)).astype(np.intp)
    return ordered, ordered[picks].tolist()


def cut_points(ordered: Any, splitters: Any) -> list[int]:
    """Where each splitter falls in a sorted block (a list: it travels by value)."""
    return [int(i) for i in np.searchsorted(ordered, splitters)]


def reduceat_part(
    ufunc: np.ufunc, part: Any, indices: Any, axis: int, dtype: Any, drop_last: bool
) -> Any:
    """``reduceat`` over the rows a group of indices covers (an extra index marks where
    the group's last slice ends; its output is dropped)."""
    out = np.asarray(ufunc.reduceat(part, indices, axis=axis, dtype=dtype))
    if drop_last:
        out = np.take(out, range(out.shape[axis] - 1), axis=axis)
    return out


def carry_in(ufunc: np.ufunc, block: Any, carries: Sequence[Any], axis: int) -> None:
    """Second pass of an accumulation along the split axis: the running total of the
    blocks before this one (their last rows, folded) combined into every row."""
    total = carries[0]
    for c in carries[1:]:
        total = ufunc(total, c)
    ufunc(total, block, out=block)


def accumulate_after(ufunc: np.ufunc, carry: Any, block: Any, axis: int, dtype: Any) -> Any:
    """An accumulation that is not reorderable, continued from the last row before."""
    if carry is None:
        return np.asarray(ufunc.accumulate(block, axis=axis, dtype=dtype))
    # In the accumulation's dtype (carry's, as numpy's loop): true_divide of ints is float.
    kind = carry.dtype if dtype is None else dtype
    joined = np.concatenate([carry.astype(kind), block.astype(kind)], axis)
    out = ufunc.accumulate(joined, axis=axis, dtype=dtype)
    return np.asarray(np.take(out, range(1, out.shape[axis]), axis=axis))


def arg_block(kind: str, block: Any, axis: int) -> Any:
    """Index and value of the min or max along ``axis`` in one block (kept dims)."""
    fn = np.argmax if kind == "max" else np.argmin
    idx = np.expand_dims(fn(block, axis=axis), axis)
    return idx, np.take_along_axis(block, idx, axis)


def arg_combine(
    kind: str, pairs: Sequence[Any], offsets: Sequence[int], axis: int, keepdims: bool
) -> Any:
    """Per-block winners to the global index: numpy's first-occurrence rule across blocks."""
    values = np.concatenate([v for _, v in pairs], axis=axis)
    idx = np.concatenate([i + off for (i, _), off in zip(pairs, offsets, strict=True)], axis)
    fn = np.argmax if kind == "max" else np.argmin
    which = np.expand_dims(fn(values, axis=axis), axis)
    found = np.take_along_axis(idx, which, axis)
    return found if keepdims else np.asarray(np.squeeze(found, axis=axis))


def assign(block: Any, key: Any, value: Any) -> None:
    block[key] = value


def ufunc_at(ufunc: np.ufunc, block: Any, key: Any, value: Any) -> None:
    if value is None:
        ufunc.at(block, key)
    else:
        ufunc.at(block, key, value)


def count_true(mask: Any) -> int:
    return int(np.count_nonzero(mask))


def random_block(seed: int, index: int, shape: tuple[int, ...], dtype: str, kind: str) -> Any:
    rng = np.random.default_rng([seed, index])
    out = new_block(shape, dtype)
    if kind == "normal":
        return rng.standard_normal(dtype=out.dtype, out=out)
    return rng.random(dtype=out.dtype, out=out)


def arange_block(start: Any, step: Any, lo: int, hi: int, dtype: str) -> Any:
    return np.asarray(start + np.arange(lo, hi) * step).astype(np.dtype(dtype), copy=False)


def full_block(shape: tuple[int, ...], value: Any, dtype: str) -> Any:
    out = new_block(shape, dtype)
    np.copyto(out, value, casting="unsafe")  # as np.full fills
    return out


def empty_block(shape: tuple[int, ...], dtype: str) -> Any:
    return new_block(shape, dtype)


def _concatenate(
    parts: Sequence[Any], axis: int, dtype: Any = None, casting: Any = "same_kind"
) -> Any:
    """``np.concatenate`` into a new block."""
    arrays = [np.asarray(p) for p in parts]
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    dt = np.result_type(*arrays) if dtype is None else np.dtype(dtype)
    return np.concatenate(arrays, axis=axis, out=new_block(tuple(shape), dt), casting=casting)


def concat(axis: int, dtype: str, casting: Any, *parts: Any) -> Any:
    return _concatenate(parts, axis, dtype, casting)


def cast(block: Any, dtype: str, casting: Any) -> Any:
    """A new block of ``dtype`` with the data of ``block`` (a copy, as numpy's joins make)."""
    block = np.asarray(block)
    if not np.can_cast(block.dtype, np.dtype(dtype), casting):
        raise TypeError(f"Cannot cast array data from {block.dtype} to {dtype} ({casting!r})")
    out = new_block(block.shape, dtype)
    np.copyto(out, block, casting="unsafe")  # checked above
    return out


def empty_like(block: Any, dtype: str) -> Any:
    return new_block(block.shape, dtype)


def full_like(block: Any, value: Any, dtype: str) -> Any:
    return full_block(block.shape, value, dtype)


def copyto(block: Any, src: Any, casting: Any, where: Any) -> None:
    np.copyto(block, src, casting=casting, where=where)


def add_all(parts: Sequence[Any]) -> Any:
    """Partial products summed (a product split along its contracted axis)."""
    total = np.array(parts[0])
    for p in parts[1:]:
        total += p
    return total
