"""RemoteArray and DistArray: ndarrays kept on the engines, computed on where they are.

Both classes are the :class:`~shoal.arrays._core._Array` base (data, metadata, gather)
with the numpy methods here, which call the operation modules: ``_ufuncs``
(``__array_ufunc__`` and the operators), ``_functions`` (``__array_function__``) and
``_indexing``. The theory of operation is in ``_core``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from types import EllipsisType
from typing import Any, SupportsIndex, TypeAlias, TypeVar, cast, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from shoal.engine import current_engine
from shoal.hub import Remote

from ._core import _Array, gather
from ._functions import argext, array_function, mean, ravel, reshape, std, var
from ._indexing import getitem, setitem
from ._ufuncs import array_ufunc, reduce

__all__ = ["DistArray", "RemoteArray"]

# An array of ours, kept as its own kind (RemoteArray or DistArray) by an operation.
_A = TypeVar("_A", bound="_ArrayMethods")
# An ``out=`` array: what the operation returns when it is given.
_Out = TypeVar("_Out", bound="_Array | NDArray[np.generic]")

#: A shape, as numpy takes one: an int, or a sequence of them.
ShapeLike: TypeAlias = "SupportsIndex | Sequence[SupportsIndex]"
#: ``axis=`` of a reduction: one axis, several, or all of them (None).
Axes: TypeAlias = "SupportsIndex | Sequence[SupportsIndex] | None"
#: One component of an index key: an int, a slice, ``...``, None (a new axis), a list or
#: array of ints (rows) or bools (a mask), or a shoal array of them.
KeyPart: TypeAlias = (
    "SupportsIndex | slice | EllipsisType | Sequence[SupportsIndex] | NDArray[np.integer]"
    " | NDArray[np.bool_] | RemoteArray | DistArray | None"
)
#: An index key: a component, or a tuple of them (one per axis, numpy's rules).
IndexKey: TypeAlias = "KeyPart | tuple[KeyPart, ...]"
# Keys that keep every axis they index (no int among them): they give an array.
_SliceKey: TypeAlias = "slice | EllipsisType | tuple[slice | EllipsisType | None, ...] | None"


def _rebuild(
    kind: str,
    blocks: list[Any],
    axis: int,
    bounds: tuple[int, ...],
    shape: tuple[int, ...],
    dtype: str,
) -> Any:
    """Unpickle an array: see ``_Array.__reduce__``."""
    if current_engine() is not None:
        parts = [b.__shoal_resolve__() if isinstance(b, Remote) else b for b in blocks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
    client = blocks[0].__client__ if isinstance(blocks[0], Remote) else None
    if client is None:
        raise RuntimeError("a shoal array can be unpickled on an engine or next to a Client only")
    cls = RemoteArray if kind == "RemoteArray" else DistArray
    return cls._new(client, blocks, axis, bounds, shape, np.dtype(dtype))


# numpy functions whose stubs refuse what our methods pass on (keywords forwarded as
# given, our arrays as indices): for our arrays numpy hands the call to
# __array_function__/__array_ufunc__, and the methods cast what comes back.
_np_clip: Callable[..., object] = np.clip
_np_take: Callable[..., object] = np.take
_np_sort: Callable[..., object] = np.sort
_np_cumsum: Callable[..., object] = np.cumsum
_np_cumprod: Callable[..., object] = np.cumprod


class _ArrayMethods(_Array):
    """The numpy methods of RemoteArray and DistArray: operators, indexing, methods."""

    __slots__ = ()

    @staticmethod
    def _kind(split: bool) -> type[_Array]:
        return DistArray if split else RemoteArray

    @property
    def blocks(self) -> list[RemoteArray]:
        """Each block as a RemoteArray (the same data: writing to one writes here)."""
        out = []
        for b, lo, hi in self._spans():
            shape = list(self.shape)
            shape[self._axis] = hi - lo
            out.append(
                RemoteArray._new(
                    self._client,
                    [b],
                    self._axis,
                    (0, hi - lo),
                    tuple(shape),
                    self.dtype,
                    self._roots,
                )
            )
        return out

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        # The blocks travel as references (their handles pickle as proxies): unpickled on
        # an engine, the array is an ndarray made of its blocks, fetched straight from
        # their engines; in another client, an array of the same blocks.
        return (
            _rebuild,
            (
                type(self).__name__,
                list(self._blocks),
                self._axis,
                self._bounds,
                self.shape,
                self.dtype.str,
            ),
        )

    # numpy's protocols: what they return is numpy's to pass on (an array of ours, a
    # numpy scalar, a tuple of them, or NotImplemented).
    def __array_ufunc__(
        self, ufunc: np.ufunc, method: str, *inputs: object, **kwargs: object
    ) -> object:

        result: object = array_ufunc(ufunc, method, inputs, kwargs)
        return result

    def __array_function__(
        self,
        func: Callable[..., object],
        types: Collection[type],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> object:

        result: object = array_function(func, types, args, kwargs)
        return result

    def __iter__(self: _A) -> Iterator[_A | np.generic]:
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        for i in range(self.shape[0]):
            yield self[i]

    # -- operators: all through the ufuncs ------------------------------------------
    # numpy's stubs type np.f(x) of an array-like x as an ndarray (or Any); for our arrays
    # numpy hands the call to __array_ufunc__/__array_function__, which return arrays of
    # ours: the casts below say what they return.
    @overload
    def __getitem__(self: _A, key: _SliceKey) -> _A: ...
    @overload
    def __getitem__(self: _A, key: IndexKey) -> _A | np.generic: ...
    def __getitem__(self: _A, key: IndexKey) -> _A | np.generic:
        """An array of the same kind, or one element as a numpy scalar (an int for every
        axis)."""

        result: _A | np.generic = getitem(self, key)
        return result

    def __setitem__(self, key: IndexKey, value: ArrayLike) -> None:

        setitem(self, key, value)

    def __divmod__(self: _A, other: ArrayLike) -> tuple[_A | DistArray, _A | DistArray]:
        return cast("tuple[_A | DistArray, _A | DistArray]", np.divmod(self, other))

    def __rdivmod__(self: _A, other: ArrayLike) -> tuple[_A | DistArray, _A | DistArray]:
        return cast("tuple[_A | DistArray, _A | DistArray]", np.divmod(other, self))

    # -- methods (those block by block are on _Array, in _core) ----------------------
    @overload
    def reshape(
        self: _A, shape: SupportsIndex, /, *more: SupportsIndex, order: str = "C"
    ) -> _A: ...
    @overload
    def reshape(
        self: _A, shape: Sequence[SupportsIndex] = (), /, *, order: str = "C"
    ) -> _A | np.generic: ...
    def reshape(
        self: _A, *shape: SupportsIndex | Sequence[SupportsIndex], order: str = "C"
    ) -> _A | np.generic:
        """The same data in ``shape`` (ints, or one sequence of them); to shape ``()``
        (one element), a numpy scalar."""

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        result: _A | np.generic = reshape(self, shape, order=order)
        return result

    def ravel(self: _A, order: str = "C") -> _A:

        result: _A = ravel(self, order)
        return result

    def flatten(self: _A, order: str = "C") -> _A:
        return self.ravel(order).copy()

    def squeeze(self: _A, axis: Axes = None) -> _A | np.generic:
        """Without the axes of length one (``axis``, or all); a numpy scalar when no axis
        is left."""
        return cast("_A | np.generic", np.squeeze(self, axis=axis))

    def conj(self: _A) -> _A:
        return cast("_A", np.conjugate(self))

    conjugate = conj

    def round(self: _A, decimals: int = 0) -> _A:
        return cast("_A", np.round(self, decimals))

    def clip(
        self: _A,
        min: ArrayLike | None = None,
        max: ArrayLike | None = None,
        *,
        out: _Out | None = None,
        **kwargs: object,
    ) -> _A | DistArray | _Out:
        """``numpy.clip``: an array of this kind (a DistArray when a bound is one), or
        ``out``."""
        if out is not None:
            kwargs["out"] = out
        return cast("_A | DistArray | _Out", _np_clip(self, min, max, **kwargs))

    def dot(self: _A, other: ArrayLike) -> _A | DistArray | np.generic:
        """``numpy.dot``: an array (a DistArray when either operand is one), or a numpy
        scalar for two vectors."""
        return cast("_A | DistArray | np.generic", np.dot(self, other))

    def take(
        self: _A, indices: ArrayLike, axis: SupportsIndex | None = None
    ) -> _A | DistArray | np.generic:
        """``numpy.take``: an array, or a numpy scalar for one index."""
        return cast("_A | DistArray | np.generic", _np_take(self, indices, axis=axis))

    def sort(self, axis: SupportsIndex = -1, kind: str | None = None) -> None:
        """Sort in place (along the split axis: on one engine, then back in place)."""
        self[...] = cast("_Array", _np_sort(self, axis=axis, kind=kind))

    def tolist(self) -> list[object]:
        """The data here as nested lists of Python scalars (``ndarray.tolist``)."""
        result: list[object] = gather(self).tolist()
        return result

    def item(self, *args: SupportsIndex | tuple[SupportsIndex, ...]) -> object:
        """One element as a Python scalar (by flat index or by indices, like ndarray's):
        ``int``, ``float``, ``complex``, ``bool``, ``str``, ... by the dtype."""
        if len(args) == 1:
            (one,) = args
            if isinstance(one, Iterable):
                args = tuple(one)
            else:  # a flat index
                args = tuple(int(i) for i in np.unravel_index(operator.index(one), self.shape))
        if not args:
            if self.size != 1:
                raise ValueError("can only convert an array of size 1 to a Python scalar")
            args = (0,) * self.ndim
        result: object = np.asarray(self[args]).item()
        return result

    def nonzero(self: _A) -> tuple[_A, ...]:
        return cast("tuple[_A, ...]", np.nonzero(self))

    # reductions and scans: numpy's functions dispatch back to the ufunc machinery. A
    # reduction gives an array of this kind, or a numpy scalar when it reduces every axis;
    # given ``out``, ``out``.
    def sum(
        self: _A,
        axis: Axes = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
        **kw: object,
    ) -> _A | np.generic | _Out:
        result: _A | np.generic | _Out = reduce(np.add, self, axis=axis, dtype=dtype, out=out, **kw)
        return result

    def prod(
        self: _A,
        axis: Axes = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
        **kw: object,
    ) -> _A | np.generic | _Out:
        result: _A | np.generic | _Out = reduce(
            np.multiply, self, axis=axis, dtype=dtype, out=out, **kw
        )
        return result

    def max(
        self: _A, axis: Axes = None, out: _Out | None = None, **kw: object
    ) -> _A | np.generic | _Out:
        result: _A | np.generic | _Out = reduce(np.maximum, self, axis=axis, out=out, **kw)
        return result

    def min(
        self: _A, axis: Axes = None, out: _Out | None = None, **kw: object
    ) -> _A | np.generic | _Out:
        result: _A | np.generic | _Out = reduce(np.minimum, self, axis=axis, out=out, **kw)
        return result

    def any(
        self: _A, axis: Axes = None, out: _Out | None = None, keepdims: bool = False, **kw: object
    ) -> _A | np.bool_ | _Out:
        result: _A | np.bool_ | _Out = reduce(
            np.logical_or, self, axis=axis, out=out, keepdims=keepdims, dtype=bool, **kw
        )
        return result

    def all(
        self: _A, axis: Axes = None, out: _Out | None = None, keepdims: bool = False, **kw: object
    ) -> _A | np.bool_ | _Out:
        result: _A | np.bool_ | _Out = reduce(
            np.logical_and, self, axis=axis, out=out, keepdims=keepdims, dtype=bool, **kw
        )
        return result

    def mean(
        self: _A,
        axis: Axes = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
        *,
        keepdims: bool = False,
        where: ArrayLike = True,
    ) -> _A | np.generic | _Out:

        result: _A | np.generic | _Out = mean(
            self, axis=axis, dtype=dtype, out=out, keepdims=keepdims, where=where
        )
        return result

    def var(
        self: _A,
        axis: Axes = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
        ddof: float = 0,
        *,
        keepdims: bool = False,
        where: ArrayLike = True,
        mean: ArrayLike | None = None,
        correction: float | None = None,
    ) -> _A | np.generic | _Out:

        result: _A | np.generic | _Out = var(
            self,
            axis=axis,
            dtype=dtype,
            out=out,
            ddof=ddof,
            keepdims=keepdims,
            where=where,
            mean=mean,
            correction=correction,
        )
        return result

    def std(
        self: _A,
        axis: Axes = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
        ddof: float = 0,
        *,
        keepdims: bool = False,
        where: ArrayLike = True,
        mean: ArrayLike | None = None,
        correction: float | None = None,
    ) -> _A | np.generic | _Out:

        result: _A | np.generic | _Out = std(
            self,
            axis=axis,
            dtype=dtype,
            out=out,
            ddof=ddof,
            keepdims=keepdims,
            where=where,
            mean=mean,
            correction=correction,
        )
        return result

    def argmax(
        self: _A,
        axis: SupportsIndex | None = None,
        out: _Out | None = None,
        *,
        keepdims: bool = False,
    ) -> _A | np.intp | _Out:

        result: _A | np.intp | _Out = argext(self, "max", axis, out, keepdims)
        return result

    def argmin(
        self: _A,
        axis: SupportsIndex | None = None,
        out: _Out | None = None,
        *,
        keepdims: bool = False,
    ) -> _A | np.intp | _Out:

        result: _A | np.intp | _Out = argext(self, "min", axis, out, keepdims)
        return result

    def cumsum(
        self: _A,
        axis: SupportsIndex | None = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
    ) -> _A | _Out:
        return cast("_A | _Out", _np_cumsum(self, axis=axis, dtype=dtype, out=out))

    def cumprod(
        self: _A,
        axis: SupportsIndex | None = None,
        dtype: DTypeLike | None = None,
        out: _Out | None = None,
    ) -> _A | _Out:
        return cast("_A | _Out", _np_cumprod(self, axis=axis, dtype=dtype, out=out))


def _binary(
    ufunc: np.ufunc, reflected: bool = False, inplace: bool = False
) -> Callable[[_Array, object], object]:
    if inplace:

        def method(self: _Array, other: object) -> object:
            result: object = ufunc(self, other, out=(self,))
            return result

    elif reflected:

        def method(self: _Array, other: object) -> object:
            result: object = ufunc(other, self)
            return result

    else:

        def method(self: _Array, other: object) -> object:
            result: object = ufunc(self, other)
            return result

    return method


def _unary(ufunc: np.ufunc) -> Callable[[_Array], object]:
    def method(self: _Array) -> object:
        result: object = ufunc(self)
        return result

    return method


_OPERATORS = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "matmul": np.matmul,
    "truediv": np.true_divide,
    "floordiv": np.floor_divide,
    "mod": np.remainder,
    "pow": np.power,
    "lshift": np.left_shift,
    "rshift": np.right_shift,
    "and": np.bitwise_and,
    "xor": np.bitwise_xor,
    "or": np.bitwise_or,
}
for _name, _ufunc in _OPERATORS.items():
    setattr(_ArrayMethods, f"__{_name}__", _binary(_ufunc))
    setattr(_ArrayMethods, f"__r{_name}__", _binary(_ufunc, reflected=True))
    setattr(_ArrayMethods, f"__i{_name}__", _binary(_ufunc, inplace=True))
for _name, _ufunc in {
    "lt": np.less,
    "le": np.less_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}.items():
    setattr(_ArrayMethods, f"__{_name}__", _binary(_ufunc))
for _name, _ufunc in {
    "neg": np.negative,
    "pos": np.positive,
    "abs": np.absolute,
    "invert": np.invert,
}.items():
    setattr(_ArrayMethods, f"__{_name}__", _unary(_ufunc))
del _name, _ufunc


class RemoteArray(_ArrayMethods):
    """An ndarray kept on one engine.

    It has the ndarray's metadata here (``shape``, ``dtype``, ``ndim``, ``size``,
    ``nbytes``, ``len``) and its operations run on that engine: numpy's ufuncs and
    functions, operators, indexing and methods give RemoteArrays (or numpy scalars for
    full reductions), and other arrays an operation needs are fetched there engine to
    engine. ``np.asarray(x)`` and :func:`gather` bring the data here.
    """

    __slots__ = ()
    _split = False

    @property
    def engine(self) -> int:
        """The engine holding the array."""
        return self.engines[0]

    @property
    def __engine_id__(self) -> int:
        return self.engines[0]


class DistArray(_ArrayMethods):
    """One logical ndarray split along one axis (:attr:`axis`) into blocks on several
    engines; blocks may be uneven or empty (:attr:`boundaries`, :attr:`engines`,
    :attr:`blocks`).

    It behaves like an ndarray: numpy's ufuncs (every method), the numpy functions users
    reach for, operators, indexing and assignment run block by block, in parallel, on the
    engines holding the data, and give DistArrays (numpy scalars for full reductions).
    """

    __slots__ = ()
    _split = True
