"""The core of shoal.arrays: blocks, plans of jobs, regions, and the arrays' data.

Below every other module but ``_kernels``: ``_blockwise``, ``_linalg``, ``_ufuncs``,
``_functions`` and ``_indexing`` plan operations with what is here; ``_array`` defines
RemoteArray and DistArray (the numpy methods, which call those modules) on the
:class:`_Array` base here; ``_create`` makes arrays. The operations make results of
the right class through ``_Array._kind`` (the classes are above them).

Theory of operation
-------------------
* **Blocks.** An array is a list of *blocks*, each an ndarray in one engine's object
  store, split along one axis (``axis``) at ``boundaries`` (``len(blocks) + 1`` offsets;
  blocks may be empty or uneven). A :class:`RemoteArray` is one block; a
  :class:`DistArray` any number. The client holds a :class:`~shoal.hub.Remote` handle per
  block, so a block is freed on its engine when no array uses it any more.
* **Jobs.** An operation is planned on the client and run as one message per engine
  (:func:`shoal.arrays._kernels.run`) holding a job per block. A job names the data it
  needs as pieces: a region of an operand is its own block (no copy) when the layouts
  agree, else the rows are fetched by the engine itself from the engines holding them
  (shared memory on one host), never through the client.
* **Results** are new blocks, laid out like the *leading* operand (the first DistArray
  that is not broadcast along its split axis), or values (numpy scalars of full
  reductions). Reductions along the split axis reduce each block, then combine the small
  partials on one engine; accumulations along it run a second pass with the running
  totals of the blocks before.
* **No silent gathers.** Data comes to the client only through :func:`gather`,
  ``__array__`` (``np.asarray(x)``) and the operations documented to; numpy functions
  without a distributed form run on one engine (:class:`PerformanceWarning` above
  :data:`WARN_BYTES`), not on the client.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, SupportsIndex, TypeVar, cast, overload

import numpy as np
from numpy.typing import DTypeLike, NDArray

from shoal.engine import MsgType
from shoal.hub import (
    AsyncResult,
    Client,
    EngineDiedError,
    Ref,
    Remote,
    RemoteError,
    concatenate_shared,
)
from shoal.hub import gather as hub_gather

from . import _kernels as K
from ._kernels import BLOCK, Cat, Empty, Get, Kept, Place

__all__ = ["WARN_BYTES", "PerformanceWarning", "gather", "transfers"]


#: Functions that run on one engine warn when their operands hold more bytes than this.
WARN_BYTES = 64 * 1024 * 1024

# An array of ours, kept as its own kind (RemoteArray or DistArray) by an operation.
_A = TypeVar("_A", bound="_Array")
_B = TypeVar("_B", bound="_Array")


class PerformanceWarning(UserWarning):
    """An operation ran on one engine (or moved much data) because it has no parallel form."""


class _Transfers:
    """Bytes of array data brought to this client (``gather``, ``np.asarray``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.nbytes = 0
        self.count = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.nbytes += nbytes
            self.count += 1

    def __repr__(self) -> str:
        return f"<transfers to the client: {self.count} ({self.nbytes} bytes)>"


#: What array data came to this process (a count and bytes): tests check that operations
#: leave it alone. The client's own byte count is ``Client.bytes_received``.
transfers = _Transfers()


class _Block(Remote):
    """The handle of one block: its engine frees the block when the last handle goes."""


def _url(client: Client, engine: int) -> str | None:
    return client.direct_url(engine)


def _block(client: Client, engine: int, kept: Kept) -> _Block:
    return _Block(
        Ref(engine, kept.oid), "numpy.ndarray", _url(client, engine), client.owner, client
    )


def _piece(block: _Block, key: Any = None) -> Get:
    ref = block.__ref__
    return Get(ref.engine, ref.id, block.__engine_url__, key)


def _axis_key(axis: int, index: Any) -> tuple[Any, ...]:
    return (slice(None),) * axis + (index,)


def _bounds(sizes: Sequence[int]) -> tuple[int, ...]:
    return (0, *itertools.accumulate(sizes))


# -- running jobs --------------------------------------------------------------------

Jobs = dict[int, list[K.Job]]


def _dispatch(client: Client, jobs: Jobs) -> dict[int, list[Any]]:
    """Run each engine's jobs (one message per engine, all in parallel); their results.

    When one engine fails, the blocks the others made are freed and the first error is
    raised: a job's exception with its own type (or its builtin base type when it does
    not pickle), caused by a RemoteError that holds the engine's traceback.
    """
    owner = client.owner
    gone = sorted(set(jobs) - set(client.ids))
    if gone:
        raise EngineDiedError(
            f"engine {', '.join(map(str, gone))} is gone, and with it the blocks it held: "
            "make the array again (shoal keeps no copies of blocks)"
        )
    if client.references:
        # Blocks dropped since the last operation are freed before this one runs (same
        # socket, so in order): their memory is reused instead of fresh pages faulted in.
        client.references.flush()
    pending = {e: client[e].apply_async(K.run, owner, js) for e, js in jobs.items() if js}
    results: dict[int, list[Any]] = {}
    error: BaseException | None = None
    for e, result in pending.items():
        try:
            value = result.get()
        except BaseException as exc:
            error = error or exc
            continue
        if isinstance(value, K.Failed):
            # The block's own exception type, which is also a RemoteError (engine id,
            # remote traceback), as every remote failure reaches a shoal client.
            reply: dict[str, object] = {"ename": value.ename, "evalue": str(value.exception)}
            reply |= {"traceback": value.traceback, "engine_id": e, "exception": value.exception}
            error = error or RemoteError.from_reply(reply)
        else:
            results[e] = value
    if error is not None:
        for e, values in results.items():
            _handles(client, e, values)  # dropped at once: their engines free them
        raise error
    return results


def _handles(client: Client, engine: int, value: Any) -> Any:
    """``value`` with every :class:`Kept` turned into a block handle."""
    if type(value) is Kept:
        return (_block(client, engine, value), value)
    if type(value) in (tuple, list):
        return type(value)(_handles(client, engine, v) for v in value)
    return value


class _Plan:
    """Jobs for several engines, each job's result found again by its ticket."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.jobs: Jobs = {}

    def add(
        self, engine: int, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[int, int]:
        queue = self.jobs.setdefault(engine, [])
        queue.append((fn, args, kwargs))
        return engine, len(queue) - 1

    def run(self) -> Callable[[tuple[int, int]], Any]:
        results = _dispatch(self.client, self.jobs)
        handled = {e: [_handles(self.client, e, v) for v in vs] for e, vs in results.items()}
        return lambda ticket: handled[ticket[0]][ticket[1]]


def _assemble(
    client: Client,
    made: Sequence[tuple[_Block, Kept]],
    axis: int,
    cls: type[_A],
    roots: frozenset[Ref] | None = None,
) -> _A:
    """An array of class ``cls`` from new blocks in order along ``axis``."""
    kept = [k for _, k in made]
    shape = list(kept[0].shape)
    shape[axis] = sum(k.shape[axis] for k in kept)
    return cls._new(
        client,
        [b for b, _ in made],
        axis,
        _bounds([k.shape[axis] for k in kept]),
        tuple(shape),
        np.dtype(kept[0].dtype),
        roots,
    )


# -- the arrays' data ---------------------------------------------------------------


class _Array:
    """What RemoteArray and DistArray share: metadata known here, blocks on the engines,
    what brings the data here, and the methods that run block by block. The methods that
    call the operation modules are on ``_ArrayMethods``, in ``_array.py``."""

    _client: Client
    _blocks: tuple[_Block, ...]
    _axis: int
    _bounds: tuple[int, ...]
    _roots: frozenset[Ref]
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]

    __slots__ = (
        "__weakref__",
        "_axis",
        "_blocks",
        "_bounds",
        "_client",
        "_roots",
        "dtype",
        "shape",
    )

    #: Whether arrays of this class are split into any number of blocks (DistArray) or
    #: hold one (RemoteArray).
    _split: ClassVar[bool]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"{type(self).__name__} is made by shoal.arrays functions (scatter, zeros, "
            "random, ...) and by operations, not directly"
        )

    @classmethod
    def _new(
        cls: type[_A],
        client: Client,
        blocks: Sequence[_Block],
        axis: int,
        bounds: Sequence[int],
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        roots: frozenset[Ref] | None = None,
    ) -> _A:
        self = object.__new__(cls)
        self._client = client
        self._blocks = tuple(blocks)
        self._axis = axis
        self._bounds = tuple(int(b) for b in bounds)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._roots = roots if roots is not None else frozenset(b.__ref__ for b in blocks)
        return self

    @staticmethod
    def _kind(split: bool) -> type[_Array]:
        """The class of a result: DistArray when ``split``, else RemoteArray. They are
        defined above the operation modules (``_array.py``), which make results of the
        class an operand gives them through this."""
        raise NotImplementedError

    # -- metadata (no messages) -------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def axis(self) -> int:
        """The axis the blocks split."""
        return self._axis

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Where the blocks start and end along :attr:`axis` (``len(blocks) + 1`` offsets)."""
        return self._bounds

    @property
    def engines(self) -> tuple[int, ...]:
        """The engine of each block."""
        return tuple(b.__ref__.engine for b in self._blocks)

    @property
    def client(self) -> Client:
        return self._client

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def _spans(self) -> Iterator[tuple[_Block, int, int]]:
        return zip(self._blocks, self._bounds[:-1], self._bounds[1:], strict=True)

    def _layout(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        return self._axis, self._bounds, self.engines

    def __shoal_gather__(self) -> Callable[[], NDArray[np.generic]]:
        """:func:`shoal.hub.gather`'s protocol: start fetching the blocks."""
        return _start_gather(self)

    # -- to the client ----------------------------------------------------------------
    def __array__(
        self, dtype: DTypeLike | None = None, copy: bool | None = None
    ) -> NDArray[np.generic]:
        if copy is False:
            raise ValueError(
                f"a {type(self).__name__} lives on the engines: np.asarray() must copy it "
                "here, and copy=False forbids that (use shoal.arrays.gather(x))"
            )
        out = gather(self)
        result: NDArray[np.generic] = out if dtype is None else out.astype(dtype, copy=False)
        return result

    def __repr__(self) -> str:
        name = type(self).__name__
        where = (
            f"engine {self.engines[0]}"
            if len(self._blocks) == 1
            else f"{len(self._blocks)} blocks on engines {list(self.engines)} along axis "
            f"{self._axis} at {list(self._bounds)}"
        )
        try:
            preview = _preview(self)
        except Exception as exc:  # a repr must not fail
            preview = f"<preview failed: {type(exc).__name__}: {exc}>"
        return f"{name}(shape={self.shape}, dtype={self.dtype}, {where}):\n{preview}"

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(
                "The truth value of an array with more than one element is ambiguous. "
                "Use a.any() or a.all()"
            )
        return bool(gather(self).reshape(()))

    def __float__(self) -> float:
        return float(gather(self).reshape(()))

    def __int__(self) -> int:
        return int(gather(self).reshape(()))

    def __index__(self) -> int:
        return operator.index(gather(self).reshape(()))

    __hash__ = None  # type: ignore[assignment]  # mutable, like ndarray

    # -- methods block by block (each engine alone; no operation module) -----------
    @property
    def T(self: _A) -> _A:
        return self.transpose()

    def transpose(self: _A, *axes: SupportsIndex | Sequence[SupportsIndex] | None) -> _A:
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = tuple(axes[0] or ())
        # Unwrapped, each is an axis: operator.index refuses anything else, as before.
        order = (
            tuple(range(self.ndim))[::-1]
            if not axes
            else tuple(operator.index(cast(SupportsIndex, a)) % self.ndim for a in axes)
        )
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"axes {axes!r} don't match an array of {self.ndim} dimensions")
        return _per_block(
            self,
            K.call,
            np.transpose,
            BLOCK,
            axes=order,
            out_axis=order.index(self._axis),
            view=True,
        )

    def swapaxes(self: _A, axis1: SupportsIndex, axis2: SupportsIndex) -> _A:
        order = list(range(self.ndim))
        a1, a2 = _check_axis(axis1, self.ndim), _check_axis(axis2, self.ndim)
        order[a1], order[a2] = order[a2], order[a1]
        return self.transpose(order)

    def astype(
        self: _A, dtype: DTypeLike, order: str = "K", casting: str = "unsafe", copy: bool = True
    ) -> _A:
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _per_block(self, K.method, BLOCK, "astype", dtype, order=order, casting=casting)

    def copy(self: _A, order: str = "C") -> _A:
        return _per_block(self, K.method, BLOCK, "copy", order=order)

    def fill(self, value: object) -> None:
        _per_block_inplace(self, K.method, BLOCK, "fill", value)

    def view(self: _A, dtype: DTypeLike | None = None) -> _A:
        if dtype is None:
            return _per_block(self, K.method, BLOCK, "view", view=True)
        if np.dtype(dtype).itemsize != self.dtype.itemsize:
            raise ValueError("views with another item size would move block bounds: astype() it")
        return _per_block(self, K.method, BLOCK, "view", dtype, view=True)

    @property
    def real(self: _A) -> _A:
        return _per_block(self, K.call, np.real, BLOCK, view=True)

    @property
    def imag(self: _A) -> _A:
        return _per_block(self, K.call, np.imag, BLOCK, view=True)


def is_split(v: object) -> bool:
    """Whether ``v`` is a DistArray."""
    return isinstance(v, _Array) and v._split


# -- helpers for per-block work ----------------------------------------------------------


def _check_axis(axis: SupportsIndex, ndim: int) -> int:
    a = operator.index(axis)
    if not -ndim <= a < ndim:
        raise np.exceptions.AxisError(a, ndim)
    return a % ndim


@overload
def _per_block(
    x: _A,
    fn: Callable[..., Any],
    *args: Any,
    out_axis: int | None = None,
    view: bool = False,
    cls: None = None,
    **kwargs: Any,
) -> _A: ...
@overload
def _per_block(
    x: _Array,
    fn: Callable[..., Any],
    *args: Any,
    out_axis: int | None = None,
    view: bool = False,
    cls: type[_B],
    **kwargs: Any,
) -> _B: ...
def _per_block(
    x: _Array,
    fn: Callable[..., Any],
    *args: Any,
    out_axis: int | None = None,
    view: bool = False,
    cls: type[_Array] | None = None,
    **kwargs: Any,
) -> _Array:
    """``fn(*args, **kwargs)`` on every block (:data:`BLOCK` in ``args`` stands for it);
    the results, split along ``out_axis`` (default: the same axis). ``view``: the
    results share memory with ``x``."""
    plan = _Plan(x._client)
    tickets = [
        plan.add(e, fn, *_this(b, args), **kwargs)
        for b, e in zip(x._blocks, x.engines, strict=True)
    ]
    result = plan.run()
    made = [result(t) for t in tickets]
    return _assemble(
        x._client,
        made,
        x._axis if out_axis is None else out_axis,
        cls or type(x),
        x._roots if view else None,
    )


def _this(block: _Block, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with :data:`BLOCK` standing for ``block``."""
    return tuple(_piece(block) if a is BLOCK else a for a in args)


def _per_block_inplace(x: _Array, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    plan = _Plan(x._client)
    for b, e in zip(x._blocks, x.engines, strict=True):
        plan.add(e, fn, *_this(b, args), **kwargs)
    plan.run()


def region(x: _Array, axis: int, lo: int, hi: int) -> Any:
    """A piece naming ``x[..., lo:hi, ...]`` (``lo:hi`` on ``axis``): the block itself
    (or a view of it) when one block holds it all, else pieces joined."""
    parts: list[Any] = []
    if axis == x._axis:
        for b, b0, b1 in x._spans():
            s, e = max(lo, b0), min(hi, b1)
            if s < e:
                key = None if (s == b0 and e == b1) else _axis_key(axis, slice(s - b0, e - b0))
                parts.append(_piece(b, key))
        if not parts:
            shape = list(x.shape)
            shape[axis] = 0
            return Empty(tuple(shape), x.dtype.str)
    else:
        whole = lo == 0 and hi == x.shape[axis]
        key = None if whole else _axis_key(axis, slice(lo, hi))
        parts = [_piece(b, key) for b in x._blocks]
    return parts[0] if len(parts) == 1 else Cat(tuple(parts), x._axis)


def whole(x: _Array) -> Any:
    """A piece naming all of ``x``."""
    return region(x, x._axis, 0, x.shape[x._axis])


def rows(x: _Array, axis: int, positions: np.ndarray[Any, Any]) -> Any:
    """A piece naming ``x.take(positions, axis)``: from each block, the rows it holds."""
    positions = np.asarray(positions, dtype=np.intp)
    if axis != x._axis:
        return Cat(tuple(_piece(b, _axis_key(axis, positions)) for b in x._blocks), x._axis)
    parts = []
    for b, b0, b1 in x._spans():
        inside = np.flatnonzero((positions >= b0) & (positions < b1))
        if inside.size:
            parts.append((inside, _piece(b, _axis_key(axis, positions[inside] - b0))))
    shape = list(x.shape)
    shape[axis] = positions.size
    return Place(tuple(shape), x.dtype.str, axis, tuple(parts))


# -- layouts: where the rows go ---------------------------------------------------------


def engines_and_bounds(
    client: Client, n: int, engines: Sequence[int] | None, boundaries: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The engines and boundaries for ``n`` rows: given, or every engine with rows split
    as evenly as possible (the first blocks get the extra rows, like ``array_split``)."""
    known = client.ids
    if not known:
        raise RuntimeError("the cluster has no engines: client.wait_for_engines(n) first")
    if engines is None:
        if boundaries is not None:
            k = len(boundaries) - 1
            engines = [known[i % len(known)] for i in range(k)]
        else:
            engines = known
    engines = tuple(int(e) for e in engines)
    unknown = [e for e in engines if e not in known]
    if unknown or not engines:
        raise ValueError(f"engines must name engines of the cluster {known}, got {list(engines)}")
    if boundaries is None:
        k = len(engines)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        bounds = tuple(int(b) for b in np.cumsum([0, *sizes]))
    else:
        bounds = tuple(operator.index(b) for b in boundaries)
        if (
            len(bounds) != len(engines) + 1
            or bounds[0] != 0
            or bounds[-1] != n
            or any(b > c for b, c in itertools.pairwise(bounds))
        ):
            raise ValueError(
                f"boundaries must be {len(engines) + 1} non-decreasing offsets from 0 to {n} "
                f"(one block per engine of {list(engines)}), got {list(bounds)}"
            )
    return engines, bounds


def redistributed(
    x: _Array,
    axis: int | None = None,
    boundaries: Sequence[int] | None = None,
    engines: Sequence[int] | None = None,
) -> _Array:
    """:func:`shoal.arrays.redistribute`, which the operations use too: a DistArray of
    ``x``'s data laid out anew, each new block made on its engine from the rows it needs,
    fetched from the engines holding them."""
    client = x._client
    axis = x._axis if axis is None else operator.index(axis) % x.ndim
    if engines is None and boundaries is None:
        engines = list(dict.fromkeys(x.engines))
    elif engines is None and boundaries is not None and len(boundaries) - 1 == len(x.engines):
        engines = list(x.engines)
    engines_, bounds = engines_and_bounds(client, x.shape[axis], engines, boundaries)
    plan = _Plan(client)
    tickets = []
    for e, lo, hi in zip(engines_, bounds[:-1], bounds[1:], strict=True):
        piece = region(x, axis, lo, hi)
        local = isinstance(piece, K.Get) and piece.engine == e
        tickets.append(plan.add(e, K.call, np.array if local else np.asarray, piece))
    result = plan.run()
    return _assemble(client, [result(t) for t in tickets], axis, x._kind(True))


def align(v: Any, ndim: int, axis: int, size: int, lo: int, hi: int) -> Any:
    """What a job needs of operand ``v`` for rows ``lo:hi`` of a result with ``ndim``
    dimensions, split along ``axis`` of ``size`` rows (numpy broadcasting)."""
    if isinstance(v, _Array):
        ax = axis - (ndim - v.ndim)
        if ax < 0 or (v.shape[ax] == 1 and size != 1):
            return whole(v)
        return region(v, ax, lo, hi)
    if isinstance(v, np.ndarray) and v.ndim:
        ax = axis - (ndim - v.ndim)
        if ax < 0 or (v.shape[ax] == 1 and size != 1):
            return v
        return v[_axis_key(ax, slice(lo, hi))]
    return v


def on_one_engine_copy(a: _Array) -> Any:
    """All of ``a`` copied into one block on its first engine."""
    plan = _Plan(a._client)
    t = plan.add(a.engines[0], K.call, np.array, whole(a))
    return _assemble(a._client, [plan.run()(t)], a._axis, a._kind(False))


@overload
def gather(x: _Array) -> NDArray[np.generic]: ...
@overload
def gather(x: object) -> object: ...
def gather(x: object) -> object:
    """Bring arrays here as ndarrays: ``x`` itself, or inside lists, tuples and dicts
    (proxies there come back too: this is :func:`shoal.hub.gather`); anything else passes
    through. Every engine sends its blocks at once."""
    result: object = hub_gather(x)
    return result


def _start_gather(a: _Array) -> Callable[[], NDArray[np.generic]]:
    """Start fetching every block of ``a``; the function that joins them once here."""
    replies = [_fetch(a._client, b) for b in a._blocks]

    def finish() -> NDArray[np.generic]:
        parts = [np.asarray(r.result()["result"]) for r in replies]
        out = parts[0] if len(parts) == 1 else concatenate_shared(parts, a._axis)
        out = out.reshape(a.shape)
        transfers.add(out.nbytes)
        return out

    return finish


def _fetch(client: Client, block: _Block) -> AsyncResult[dict[str, object]]:
    ref = block.__ref__
    return client.object_request(ref.engine, MsgType.FETCH_REQUEST, {"id": ref.id})


def _preview(x: _Array) -> str:
    """A corner of the array (at most 3 along each axis from the first block that has
    data), fetched alone: repr never gathers a big array."""
    if x.size == 0:
        return "[]"
    for b, lo, hi in x._spans():
        if hi > lo:
            key = tuple(slice(0, 3) for _ in range(x.ndim))
            reply = x._client.object_request(
                b.__ref__.engine,
                MsgType.CALL_METHOD_REQUEST,
                {
                    "id": b.__ref__.id,
                    "method": "__getitem__",
                    "args": [key],
                    "kwargs": {},
                    "returns": "value",
                    "owner": x._client.owner,
                },
            )
            corner = np.asarray(reply.result()["result"])
            more = x.size > corner.size
            text = np.array2string(corner, threshold=27, edgeitems=3)
            start = "" if lo == 0 else f"(from index {lo} along axis {x._axis}) "
            return start + text + (" ..." if more else "")
    return "[]"
