"""Serialization: everything Python can hold, at C-pickle speed, big buffers out of band.

Theory of operation
-------------------
``Serializer.dumps(obj)`` returns a list of frames: frame 0 is a pickle stream (protocol
5), every further frame is one large buffer taken *out of band* (no copy): numpy arrays
and anything else that pickles through ``PickleBuffer``, plus bytes, bytearray and
memoryview objects at or above ``threshold`` bytes.

The rules that make it fast and complete:

1. Small contents of plain data (dict, list, tuple, str, int, float, small bytes, ...)
   and of what plain pickle writes by reference (importable functions and classes,
   module-level builtins), as apply requests usually are, skip the Python-level pickler:
   a bounded scan (``_FastScan``) vets them and ``pickle.dumps`` writes the bytes the full
   path would. Modules and by-value functions (rule 2) get stand-ins whose reduction is
   the only Python call; a function's stand-in carries the state rule 2 sends, read at
   each ``dumps``, and needs no ``state_setter`` as the scan refuses cycles.
2. ``reducer_override`` pickles *by value* what plain pickle could only pickle by
   reference and the receiver could not resolve: functions defined in ``__main__``, in
   a function body, or as lambdas. Their code travels as ``marshal`` bytes (same Python
   minor version on both ends, as for every pickle of code), their closure values and
   the globals they use travel by value, modules by name. A function that refers to
   itself works because its state is restored after it is memoized (``state_setter``).
   Each travels under a *tracker id* (``_identity``): the process that sent it gets
   its own function back, a receiver builds it afresh from every message (its globals
   may have changed) and sends it back under the same id.
3. Classes defined in ``__main__`` (or not importable by name) travel by value too, on
   the C pickler: a skeleton (name, bases, metaclass, ``__slots__``, an enum's members)
   made or found through its tracker id, then its attributes. The sender gets its own
   class back, untouched, so an object sent away and back is an instance of the
   sender's class; a receiver keeps one class per id, brought up to date by each
   message (``_identity`` says how). Instances of such classes stay on this path.
4. What the C pickler still refuses (locks, generators' relatives, ...) is retried
   whole with dill's pickler, which knows them; by-value functions and classes go as in
   rules 2 and 3 there too, under the same ids, and buffers keep going out of band
   (dill's own ndarray reducer is bypassed).
5. What dill refuses raises :class:`UnpicklableError` (a ``TypeError``) naming the type
   and the place inside the object, e.g. ``obj['conn'].sock``.
6. Loading is always the C unpickler; received buffers are handed to it as they are, so
   an array arrives backed by the receive buffer, writable when that buffer is.

A serializer holds no global state: custom reducers are registered on an instance. The
one process-wide table is ``_identity``'s map of tracker ids, because identity is a
fact about the process (what class an id names here), not about a serializer.
"""

from __future__ import annotations

import builtins
import copyreg
import io
import marshal
import pickle
import sys
import types
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeAlias

import dill

from . import _identity
from ._errors import UnpicklableError
from ._identity import PART_REDUCERS, class_by_value, reduce_class

__all__ = ["Buffer", "Serializer"]

#: Anything with the buffer protocol that a transport can send as one frame.
Buffer: TypeAlias = bytes | bytearray | memoryview | pickle.PickleBuffer

_PROTOCOL: Final = 5
_BYTES_LIKE: Final = (bytes, bytearray)
# A shallow scan finds large bytes inside small containers (e.g. apply's ``args``):
# the C pickler writes bytes in band without asking us, so we wrap them first.
_SCAN_DEPTH: Final = 3
_SCAN_WIDTH: Final = 16

Reducer: TypeAlias = Callable[[Any], "str | tuple[Any, ...]"]


def _needs_value(func: Any) -> bool:
    """True when the receiver could not import ``func`` (a function, builtin or class) by
    module and qualified name."""
    module_name = func.__module__
    if module_name in (None, "__main__", "__mp_main__"):
        return True
    qualname = func.__qualname__
    if "<locals>" in qualname or "<lambda>" in qualname:
        return True
    module = sys.modules.get(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is not func


def _global_names(code: types.CodeType) -> Iterator[str]:
    """Every global name a code object (and the code nested in it) may load."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


# Code objects are immutable: what is derived from one is computed once per process. The
# caches are bounded so that a stream of fresh lambdas cannot grow them without limit.
_CACHE_SIZE: Final = 512
_code_facts: dict[types.CodeType, tuple[bytes, tuple[str, ...]]] = {}
_loaded_code: dict[bytes, types.CodeType] = {}


def _code_facts_of(code: types.CodeType) -> tuple[bytes, tuple[str, ...]]:
    """``marshal.dumps(code)`` and the global names it may load."""
    facts = _code_facts.get(code)
    if facts is None:
        if len(_code_facts) >= _CACHE_SIZE:
            _code_facts.clear()
        facts = _code_facts[code] = (marshal.dumps(code), tuple(set(_global_names(code))))
    return facts


def _load_code(code_bytes: bytes) -> types.CodeType:
    if len(_loaded_code) >= _CACHE_SIZE:
        _loaded_code.clear()
    code: types.CodeType = marshal.loads(code_bytes)
    _loaded_code[code_bytes] = code
    return code


def _make_function(
    code_bytes: bytes, globals_: dict[str, Any], name: str, ncells: int
) -> types.FunctionType:
    code = _loaded_code.get(code_bytes)
    if code is None:
        code = _load_code(code_bytes)
    globals_.setdefault("__builtins__", builtins)
    closure = tuple(types.CellType() for _ in range(ncells)) or None
    return types.FunctionType(code, globals_, name, None, closure)


def _make_tracked_function(
    tracker_id: str, code_bytes: bytes, globals_: dict[str, Any], name: str, ncells: int
) -> types.FunctionType:
    """The origin's own function (``_identity`` rule 2), else a fresh one, its id kept."""
    tracker = _identity._TRACKER
    own = tracker.own(tracker_id)
    if own is not None:
        return own  # type: ignore[no-any-return]
    func = _make_function(code_bytes, globals_, name, ncells)
    tracker.remember(func, tracker_id)
    return func


def _set_function_state(func: types.FunctionType, state: dict[str, Any]) -> None:
    if _identity._TRACKER.owns(func):
        return  # the origin's own function: what the message says about it is dropped
    func.__globals__.update(state["globals"])
    for cell, value in zip(func.__closure__ or (), state["cells"], strict=True):
        if value is not _EMPTY_CELL:
            cell.cell_contents = value
    func.__defaults__ = state["defaults"]
    func.__kwdefaults__ = state["kwdefaults"]
    func.__qualname__ = state["qualname"]
    func.__module__ = state["module"]
    func.__doc__ = state["doc"]
    func.__dict__.update(state["dict"])
    func.__annotations__ = state["annotations"]


def _build_function(  # noqa: PLR0917 - called by the unpickler, positionally
    code_bytes: bytes,
    globals_: dict[str, Any],
    name: str,
    used: dict[str, Any],
    cells: tuple[Any, ...],
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
    qualname: str,
    module: str,
    doc: Any,
    attributes: dict[str, Any],
    annotations: dict[str, Any],
) -> types.FunctionType:
    """Rebuild a function sent by ``_FastScan``: what ``_make_function`` then
    ``_set_function_state`` do, in one call, as the function cannot refer to itself."""
    code = _loaded_code.get(code_bytes)
    if code is None:
        code = _load_code(code_bytes)
    globals_.setdefault("__builtins__", builtins)
    globals_.update(used)
    closure = None
    if cells:
        closure = tuple(
            [types.CellType() if v is _EMPTY_CELL else types.CellType(v) for v in cells]
        )
    func = types.FunctionType(code, globals_, name, defaults, closure)
    func.__kwdefaults__ = kwdefaults
    func.__qualname__ = qualname
    func.__module__ = module
    func.__doc__ = doc
    if attributes:
        func.__dict__.update(attributes)
    func.__annotations__ = annotations
    return func


def _build_tracked_function(tracker_id: str, *args: Any) -> types.FunctionType:
    """``_build_function`` behind the tracker, as ``_make_tracked_function``."""
    tracker = _identity._TRACKER
    own = tracker.own(tracker_id)
    if own is not None:
        return own  # type: ignore[no-any-return]
    func = _build_function(*args)
    tracker.remember(func, tracker_id)
    return func


class _EmptyCell:
    """Marks a closure cell that had no value yet (a name assigned later)."""

    def __reduce__(self) -> str:
        return "_EMPTY_CELL"


_EMPTY_CELL: Final = _EmptyCell()


class _OutOfBand:
    """Wraps a large bytes/bytearray so that it pickles through a ``PickleBuffer``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def _memoryview_from(buf: Any) -> memoryview:
    return memoryview(buf)


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    if view.c_contiguous:
        return _memoryview_from, (pickle.PickleBuffer(view.cast("B")),)
    return _memoryview_from, (view.tobytes(),)


def _import_module(name: str) -> types.ModuleType:
    __import__(name)
    return sys.modules[name]


class _Pickler(pickle.Pickler):
    """The C pickler, taught to pickle interactive functions and modules by value/name."""

    def __init__(self, file: io.BytesIO, serializer: Serializer, buffer_callback: Any) -> None:
        super().__init__(file, protocol=_PROTOCOL, buffer_callback=buffer_callback)
        self.dispatch_table = serializer._dispatch_table
        self._registered = serializer._reducers
        # One globals dict per source module, shared by the functions of this message.
        self._globals_by_id: dict[int, dict[str, Any]] = {}

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            if _needs_value(obj):
                return self._reduce_function(obj)
            return NotImplemented
        if kind is types.ModuleType:
            name = obj.__name__
            if name in ("__main__", "__mp_main__") or sys.modules.get(name) is not obj:
                return NotImplemented  # let dill have a go
            return _import_module, (name,)
        if kind is memoryview:
            return _reduce_memoryview(obj)
        if isinstance(obj, type):
            # A class defined interactively does not exist on the other side under its
            # name: it travels by value, under its tracker id (rule 3).
            return reduce_class(obj) if class_by_value(obj, _needs_value) else NotImplemented
        reducer = PART_REDUCERS.get(kind)  # what class attributes hold (rule 3)
        if reducer is not None and kind not in self._registered:
            return reducer(obj)
        return NotImplemented

    def _reduce_function(self, func: types.FunctionType) -> tuple[Any, ...]:
        source_globals = func.__globals__
        shared = self._globals_by_id.setdefault(
            id(source_globals), {"__name__": source_globals.get("__name__", "__main__")}
        )
        code_bytes, names = _code_facts_of(func.__code__)
        used = {
            name: source_globals[name]
            for name in names
            if name in source_globals and name != "__builtins__"
        }
        cells = []
        for cell in func.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:
                cells.append(_EMPTY_CELL)
        state = {
            "globals": used,
            "cells": cells,
            "defaults": func.__defaults__,
            "kwdefaults": func.__kwdefaults__,
            "qualname": func.__qualname__,
            "module": func.__module__,
            "doc": func.__doc__,
            "dict": func.__dict__,
            "annotations": func.__annotations__,
        }
        args = (_identity._TRACKER.id_of(func), code_bytes, shared, func.__name__, len(cells))
        return (_make_tracked_function, args, state, None, None, _set_function_state)


class _DillPickler(dill.Pickler):  # type: ignore[misc]
    """dill's pickler, minus its ndarray reducer, which would pull buffers in band."""

    def __init__(self, file: io.BytesIO, serializer: Serializer, buffer_callback: Any) -> None:
        super().__init__(file, protocol=_PROTOCOL, buffer_callback=buffer_callback, recurse=True)
        self._shoal = _Pickler(io.BytesIO(), serializer, None)
        self.dispatch_table = serializer._dispatch_table

    def reducer_override(self, obj: Any) -> Any:
        # By-value functions and classes as on the C path: they keep their tracker ids.
        kind = type(obj)
        if kind is types.FunctionType:
            return self._shoal._reduce_function(obj) if _needs_value(obj) else NotImplemented
        if isinstance(obj, type):
            return reduce_class(obj) if class_by_value(obj, _needs_value) else NotImplemented
        reducer = PART_REDUCERS.get(kind)
        if reducer is not None and kind not in self._shoal._registered:
            return reducer(obj)
        return NotImplemented

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        kind = type(obj)
        if kind is memoryview:
            self.save_reduce(*_reduce_memoryview(obj), obj=obj)
            return
        if kind in self.dispatch_table:
            reduced = self.dispatch_table[kind](obj)
            if not isinstance(reduced, str):
                self.save_reduce(*reduced, obj=obj)
                return
        if getattr(kind, "__module__", "") == "numpy" and kind.__name__ == "ndarray":
            self.save_reduce(*obj.__reduce_ex__(_PROTOCOL), obj=obj)
            return
        super().save(obj, save_persistent_id)


class Serializer:
    """Turns objects into frames and back: dill semantics, C-pickle speed, zero copies.

    Parameters
    ----------
    threshold : int
        Buffers of at least this many bytes travel as their own frames instead of
        inside the pickle stream. Default 64 KiB.

    Examples
    --------
    >>> import numpy as np
    >>> s = Serializer()
    >>> frames = s.dumps({"f": lambda x: x + 1, "a": np.arange(100_000)})
    >>> len(frames)  # the pickle stream, then the array's memory
    2
    >>> out = s.loads(frames)
    >>> out["f"](1), int(out["a"][-1])
    (2, 99999)

    .. versionadded:: 0.1
    """

    def __init__(self, *, threshold: int = 64 * 1024) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 bytes, got {threshold}")
        self.threshold = threshold
        self._reducers: dict[type, Reducer] = {}
        self._dispatch_table: ChainMap[type, Reducer] = ChainMap(
            self._reducers, copyreg.dispatch_table
        )

    def register(self, cls: type, reducer: Reducer) -> None:
        """Pickle instances of ``cls`` (exactly that type) with ``reducer(obj)``.

        ``reducer`` returns what ``__reduce__`` would: ``(callable, args[, state])``.
        Like ``multiprocess.reduction.register``, but scoped to this serializer.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register() needs a class as its first argument, got {cls!r}")
        if not callable(reducer):
            raise TypeError(f"register() needs a callable reducer, got {reducer!r}")
        self._reducers[cls] = reducer

    def dumps(self, obj: object) -> list[Buffer]:
        """Serialize ``obj`` into ``[pickle_stream, *out_of_band_buffers]``.

        Raises
        ------
        UnpicklableError
            When neither pickle nor dill can serialize a part of ``obj``; the message
            names that part's type and its path inside ``obj``.
        """
        threshold = self.threshold
        if not self._reducers:  # a registered reducer needs the dispatch table: full path
            target = _FastScan(threshold).value(obj, _SCAN_DEPTH)
            if target is not _SLOW:
                return [pickle.dumps(target, _PROTOCOL)]
        buffers: list[Buffer] = []

        def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
            raw = buf.raw()
            if raw.nbytes < threshold:
                return True  # small: inside the stream
            buffers.append(raw)
            return False

        target = _wrap_large(obj, threshold, _SCAN_DEPTH)
        stream = io.BytesIO()
        try:
            _Pickler(stream, self, keep_out_of_band).dump(target)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            buffers.clear()
            stream = io.BytesIO()
            try:
                _DillPickler(stream, self, keep_out_of_band).dump(target)
            except Exception as exc:  # dill raises many kinds; all mean "cannot"
                raise _explain(obj, exc, self) from exc
        return [stream.getvalue(), *buffers]

    def loads(self, frames: Sequence[Buffer]) -> object:
        """Rebuild the object from ``frames`` as returned by :meth:`dumps`.

        Buffers are used in place: an array is backed by its frame's memory.
        """
        if not frames:
            raise ValueError("loads() needs at least one frame (the pickle stream), got none")
        return pickle.loads(frames[0], buffers=frames[1:])


def _wrap_large(obj: Any, threshold: int, depth: int) -> Any:
    """Return ``obj``, or a shallow copy with large bytes wrapped to go out of band."""
    kind = type(obj)
    if kind in _BYTES_LIKE:
        return _OutOfBand(obj) if len(obj) >= threshold else obj
    if kind not in _CONTAINERS or depth == 0 or not obj or len(obj) > _SCAN_WIDTH:
        return obj  # a leaf, empty, or too deep or wide to look into: as it is
    depth -= 1
    if kind is dict:
        for value in obj.values():
            if _wrap_large(value, threshold, depth) is not value:  # copy only if needed
                return {k: _wrap_large(v, threshold, depth) for k, v in obj.items()}
        return obj
    for item in obj:
        if _wrap_large(item, threshold, depth) is not item:
            return kind(_wrap_large(i, threshold, depth) for i in obj)
    return obj


_CONTAINERS: Final = frozenset({tuple, list, dict})
_ATOMS: Final = frozenset({str, int, float, bool, type(None), complex})
_MAIN_NAMES: Final = ("__main__", "__mp_main__")
#: What ``_FastScan.value`` returns for a part that needs the full path.
_SLOW: Final[Any] = object()


class _FunctionByValue:
    """Stands in for a by-value function on the fast path; ``_build_function`` rebuilds it."""

    __slots__ = ("args",)

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _build_tracked_function, self.args


class _ModuleByName:
    """Stands in for an imported module on the fast path (plain pickle refuses modules)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _import_module, (self.name,)


class _FastScan:
    """One ``dumps`` call's check that plain ``pickle.dumps`` can write the object.

    ``value`` returns the object itself when plain pickle writes it exactly as ``_Pickler``
    would; a copy with stand-ins where it holds modules or by-value functions (the copies
    are memoized, so what the object shares stays shared); or ``_SLOW``. Each scan is
    bounded (``_SCAN_DEPTH`` x ``_SCAN_WIDTH``) and each function is scanned once, so big
    data ends in ``_SLOW``, and so do cycles: a function's stand-in is built from its
    state (rule 2's ``state_setter`` is what lets a function reach itself).
    """

    __slots__ = ("_shared", "_stand_ins", "_threshold")

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._stand_ins: dict[int, Any] = {}  # by id of the original, alive during dumps
        # One globals dict per source module, shared by the functions of this message.
        self._shared: dict[int, dict[str, Any]] = {}

    def value(self, obj: Any, depth: int) -> Any:
        """``obj``, or its stand-in, or ``_SLOW``."""
        kind = type(obj)
        if kind in _ATOMS:
            return obj
        if kind is bytes:  # large ones go out of band, on the full path
            return obj if len(obj) < self._threshold else _SLOW
        if kind is types.FunctionType:
            return self._function(obj) if _needs_value(obj) else obj
        if kind in _CONTAINERS:
            if not obj:
                return obj
            if depth == 0 or len(obj) > _SCAN_WIDTH:
                return _SLOW
            stand_in = self._stand_ins.get(id(obj))
            if stand_in is not None:
                return stand_in
            return self._container(obj, kind, depth - 1)
        if kind is types.BuiltinFunctionType:
            owner = obj.__self__  # a bound method pickles its owner: full path
            if owner is None or type(owner) is types.ModuleType:
                return _SLOW if _needs_value(obj) else obj
            return _SLOW
        if kind is type:  # __main__ classes go by value through dill: full path
            return _SLOW if _needs_value(obj) else obj
        if kind is types.ModuleType:
            name = obj.__name__
            if name in _MAIN_NAMES or sys.modules.get(name) is not obj:
                return _SLOW
            return _ModuleByName(name)
        return _SLOW

    def _container(self, obj: Any, kind: type, depth: int) -> Any:
        # Most containers hold only what plain pickle writes as it is: check without
        # allocating, and copy only when something needs a stand-in.
        atoms = _ATOMS
        if kind is dict:
            for key, item in obj.items():
                if type(key) not in atoms:
                    return _SLOW
                if type(item) not in atoms and self.value(item, depth) is not item:
                    return self._copy(obj, kind, depth)
            return obj
        for item in obj:
            if type(item) not in atoms and self.value(item, depth) is not item:
                return self._copy(obj, kind, depth)
        return obj

    def _copy(self, obj: Any, kind: type, depth: int) -> Any:
        """``obj`` with stand-ins (memoized, so that scanning again is cheap), or ``_SLOW``."""
        copy: Any
        if kind is dict:
            copy = {}
            for key, item in obj.items():
                new = copy[key] = self.value(item, depth)
                if new is _SLOW:
                    return _SLOW
        else:
            copy = []
            for item in obj:
                new = self.value(item, depth)
                if new is _SLOW:
                    return _SLOW
                copy.append(new)
            if kind is tuple:
                copy = tuple(copy)
        self._stand_ins[id(obj)] = copy
        return copy

    def _function(self, func: types.FunctionType) -> Any:
        """The function's stand-in, carrying what ``_Pickler._reduce_function`` sends."""
        stand_in = self._stand_ins.get(id(func))
        if stand_in is not None:
            return stand_in  # _SLOW while the function's state is being scanned
        self._stand_ins[id(func)] = _SLOW
        atoms = _ATOMS
        source_globals = func.__globals__
        code_bytes, names = _code_facts_of(func.__code__)
        used: dict[str, Any] = {}
        for name in names:
            if name in source_globals and name != "__builtins__":
                value = source_globals[name]
                if type(value) not in atoms:
                    value = self.value(value, _SCAN_DEPTH)
                    if value is _SLOW:
                        return _SLOW
                used[name] = value
        cells: list[Any] = []
        for cell in func.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:
                value = _EMPTY_CELL
            else:
                if type(value) not in atoms:
                    value = self.value(value, _SCAN_DEPTH)
                    if value is _SLOW:
                        return _SLOW
            cells.append(value)
        tracker_id = _identity._TRACKER.id_of(func)
        args: list[Any] = [tracker_id, code_bytes, None, func.__name__, used, tuple(cells)]
        for part in (
            func.__defaults__,
            func.__kwdefaults__,
            func.__qualname__,
            func.__module__,
            func.__doc__,
            func.__dict__,
            func.__annotations__,
        ):
            value = part if type(part) in atoms else self.value(part, _SCAN_DEPTH)
            if value is _SLOW:
                return _SLOW
            args.append(value)
        shared = self._shared.get(id(source_globals))
        if shared is None:
            module_name = source_globals.get("__name__", "__main__")
            if type(module_name) is not str:
                return _SLOW
            shared = self._shared[id(source_globals)] = {"__name__": module_name}
        args[2] = shared
        stand_in = self._stand_ins[id(func)] = _FunctionByValue(tuple(args))
        return stand_in


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """The parts of ``obj`` that pickling visits, with the path suffix naming each."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
    elif isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            yield f"[{i}]", value
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for key, value in state.items():
                yield f".{key}", value
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                yield f".{slot}", getattr(obj, slot)


def _explain(obj: Any, exc: BaseException, serializer: Serializer) -> UnpicklableError:
    """Find the innermost part of ``obj`` that cannot be serialized, for the message."""
    path, culprit = "obj", obj
    for _ in range(50):  # bounded descent: deep structures end in a clear error anyway
        for suffix, child in _children(culprit):
            try:
                _DillPickler(io.BytesIO(), serializer, None).dump(child)
            except Exception:
                path, culprit = path + suffix, child
                break
        else:
            break
    type_name = f"{type(culprit).__module__}.{type(culprit).__qualname__}"
    return UnpicklableError(
        f"cannot serialize object of type {type_name} at {path}: {exc}",
        path=path,
        type_name=type_name,
    )
