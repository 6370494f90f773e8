"""Views: how work is addressed to engines (ipyparallel's DirectView and LoadBalancedView).

A :class:`DirectView` sends each request to chosen engines (one message per engine);
a :class:`LoadBalancedView` hands tasks to the hub's scheduler, which runs each on
whichever engine is free. Both answer with :class:`AsyncResult`; with ``block=True``
(the view's ``block`` attribute, or the ``block=`` keyword) they wait and return the
result instead.

Types
-----
A view's type says what a call gives back. ``View[int]`` runs each call on one engine
and gives its value: a :class:`LoadBalancedView`, or a :class:`DirectView` on one engine
(``client[0]`` is a ``DirectView[int]``). A view on a list of engines (``client[:]`` is a
``DirectView[list[int]]``) runs each call on all of them and gives a list of values, one
per engine. So ``client[:].apply_sync(f)`` with ``def f() -> int`` is a ``list[int]``,
``client[0].apply_sync(f)`` an ``int``. ``block=True`` returns the value,
``block=False`` an :class:`AsyncResult` of it, and no ``block=`` (the view's own
default, which can change at run time) either of them. Values pulled from engines
(``pull``, ``view["name"]``, ``execute``, ``gather``) are ``object``: their type is
known only where they were made.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

from shoal.engine import MsgType
from shoal.wire import copy_buffer, default_shared_memory, shared_memory_enabled

from .._protocol import LB, engine_route
from .asyncresult import _CTRL_C_WAIT, AsyncMapResult, AsyncResult
from .errors import MAP_INPUT_NOTE, HubLost, short_repr

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike, NDArray

    from .client import Client

__all__ = ["DirectView", "LoadBalancedView", "View", "concatenate_shared", "empty_shared"]

log = logging.getLogger("shoal.hub.client")

T = TypeVar("T")
P = ParamSpec("P")
#: What one call of a view runs on: an engine id (its value comes back as is) or a
#: sequence of engine ids (a list of values comes back, one per engine).
TargetsT = TypeVar("TargetsT", bound="int | Sequence[int]")
_Many = TypeVar("_Many", bound="Sequence[int]")
_Call_co = TypeVar("_Call_co", covariant=True)
_Map_co = TypeVar("_Map_co", covariant=True)
#: Dependencies of a load-balanced task: msg_ids or AsyncResults (of any value), one or
#: a list.
Dependencies: TypeAlias = "str | AsyncResult[Any] | Iterable[str | AsyncResult[Any]]"


def _apply_content(
    f: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
) -> dict[str, object]:
    if not callable(f):
        raise TypeError(f"apply() needs a callable as its first argument, got {f!r}")
    return {"f": f, "args": args, "kwargs": kwargs}


def _map_chunk(f: Callable[..., T], offset: int, *columns: Sequence[object]) -> list[T]:
    """Runs on an engine: ``f`` over one chunk of the zipped sequences, whose first item
    is input number ``offset``. An input that fails gets a note naming it."""
    out: list[T] = []
    try:
        out.extend(map(f, *columns))  # what came before a failure stays in ``out``
    except Exception as exc:
        row = tuple(c[len(out)] for c in columns)
        exc.add_note(
            f"{MAP_INPUT_NOTE} {offset + len(out)}: {short_repr(row[0] if len(row) == 1 else row)}"
        )
        raise
    return out


def _lengths(seqs: Sequence[Any]) -> int:
    if not seqs:
        raise TypeError("map() needs at least one sequence")
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"map() sequences must have equal lengths, got {sorted(lengths)}")
    return lengths.pop()


def _as_sequences(seqs: Iterable[Iterable[object]]) -> list[Any]:
    """Each input as something to slice: itself (a list, a numpy array), else a list."""
    return [s if hasattr(s, "__len__") and hasattr(s, "__getitem__") else list(s) for s in seqs]


class View(Generic[TargetsT]):
    """What both views share: ``apply`` and ``map`` in their blocking and async forms.

    ``View[int]`` runs each call on one engine and gives its value; ``View[list[int]]``
    runs each call on a list of engines and gives a list of values (see the module's
    "Types").

    Attributes
    ----------
    block : bool
        Whether calls wait for their result by default (``False``: they return an
        :class:`AsyncResult`).
    """

    def __init__(self, client: Client, *, block: bool = False) -> None:
        self.client = client
        self.block = block

    def _block(self, block: bool | None) -> bool:
        return self.block if block is None else block

    def _finish(self, result: AsyncResult[T], block: bool | None) -> T | AsyncResult[T]:
        return result.get() if self._block(block) else result

    def _apply(
        self, f: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> AsyncResult[Any]:
        """Send ``f(*args, **kwargs)``; its AsyncResult's value is ``f``'s return value, or
        a list of them (one per engine) on a view of several engines."""
        raise NotImplementedError

    @overload
    def apply(
        self: View[int], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T | AsyncResult[T]: ...
    @overload
    def apply(
        self: View[_Many], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> list[T] | AsyncResult[list[T]]: ...
    def apply(self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> object:
        """Call ``f(*args, **kwargs)`` remotely; blocks or not as ``self.block`` says."""
        return self._finish(self._apply(f, args, kwargs), None)

    @overload
    def apply_async(
        self: View[int], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncResult[T]: ...
    @overload
    def apply_async(
        self: View[_Many], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncResult[list[T]]: ...
    def apply_async(
        self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncResult[T] | AsyncResult[list[T]]:
        """Call ``f(*args, **kwargs)`` remotely; returns an :class:`AsyncResult`."""
        return self._apply(f, args, kwargs)

    @overload
    def apply_sync(
        self: View[int], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    def apply_sync(
        self: View[_Many], f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> list[T]: ...
    def apply_sync(self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T | list[T]:
        """Call ``f(*args, **kwargs)`` remotely and wait for the result."""
        result: T | list[T] = self._apply(f, args, kwargs).get()
        return result

    @overload
    def map(
        self, f: Callable[..., T], *seqs: Iterable[object], block: Literal[True], **kw: object
    ) -> list[T]: ...
    @overload
    def map(
        self, f: Callable[..., T], *seqs: Iterable[object], block: Literal[False], **kw: object
    ) -> AsyncMapResult[T]: ...
    @overload
    def map(
        self,
        f: Callable[..., T],
        *seqs: Iterable[object],
        block: bool | None = None,
        **kw: object,
    ) -> list[T] | AsyncMapResult[T]: ...
    def map(
        self,
        f: Callable[..., T],
        *seqs: Iterable[object],
        block: bool | None = None,
        **kw: object,
    ) -> list[T] | AsyncMapResult[T]:
        """``map(f, *seqs)`` in parallel; a list, or an :class:`AsyncMapResult`."""
        result = self._map(f, seqs, **kw)
        return result.get() if self._block(block) else result

    def map_async(
        self, f: Callable[..., T], *seqs: Iterable[object], **kw: object
    ) -> AsyncMapResult[T]:
        """``map`` returning an :class:`AsyncMapResult` (iterate it for items as they come)."""
        return self._map(f, seqs, **kw)

    def map_sync(self, f: Callable[..., T], *seqs: Iterable[object], **kw: object) -> list[T]:
        """``map`` that waits: the list of results."""
        return list(self._map(f, seqs, **kw).get())

    def _map(
        self, f: Callable[..., T], seqs: Sequence[Iterable[object]], **kw: object
    ) -> AsyncMapResult[T]:
        raise NotImplementedError


class ParallelFunction(Protocol[_Call_co, _Map_co]):
    """What :meth:`DirectView.parallel` makes of a function: ``pf(seq)`` gives each
    engine its part of ``seq`` and joins the parts' results; ``pf.map(*seqs)`` maps over
    the engines. Both wait or not as the decorator's ``block`` said."""

    def __call__(self, seq: object, /) -> _Call_co: ...

    def map(self, *seqs: Iterable[object]) -> _Map_co: ...


class DirectView(View[TargetsT]):
    """Requests sent to chosen engines: all of them run every request.

    ``client[0]`` makes a view on one engine (results come back unwrapped; a
    ``DirectView[int]``); ``client[:]``, ``client[::2]``, ``client[[0, 2]]`` on several
    (a list of results, in the order of ``targets``; a ``DirectView[list[int]]``).
    """

    def __init__(self, client: Client, targets: TargetsT, *, block: bool = False) -> None:
        super().__init__(client, block=block)
        self.targets = targets
        self._single = isinstance(targets, int)
        self._ids: list[int] = [targets] if isinstance(targets, int) else list(targets)

    def __repr__(self) -> str:
        return f"<DirectView {self.targets}>"

    def __len__(self) -> int:
        return len(self._ids)

    def _send(
        self, msg_type: str, content_for: Callable[[int], object], label: str
    ) -> AsyncResult[Any]:
        """One request per engine; the value is the reply's, or their list (several
        engines)."""
        return self.client._request(
            self._ids, msg_type, content_for, single=self._single, label=label
        )

    def _apply(
        self, f: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> AsyncResult[Any]:
        content = _apply_content(f, args, kwargs)
        return self._send(
            MsgType.APPLY_REQUEST, lambda _t: content, getattr(f, "__name__", "apply")
        )

    @overload
    def execute(
        self: DirectView[int], code: str, silent: bool = False, *, block: Literal[True]
    ) -> object: ...
    @overload
    def execute(
        self: DirectView[_Many], code: str, silent: bool = False, *, block: Literal[True]
    ) -> list[object]: ...
    @overload
    def execute(
        self: DirectView[int], code: str, silent: bool = False, *, block: Literal[False]
    ) -> AsyncResult[object]: ...
    @overload
    def execute(
        self: DirectView[_Many], code: str, silent: bool = False, *, block: Literal[False]
    ) -> AsyncResult[list[object]]: ...
    @overload
    def execute(
        self: DirectView[int], code: str, silent: bool = False, block: bool | None = None
    ) -> object | AsyncResult[object]: ...
    @overload
    def execute(
        self: DirectView[_Many], code: str, silent: bool = False, block: bool | None = None
    ) -> list[object] | AsyncResult[list[object]]: ...
    def execute(
        self, code: str, silent: bool = False, block: bool | None = None
    ) -> object | AsyncResult[object] | AsyncResult[list[object]]:
        """Run ``code`` (a str) on the engines; the value of a final expression, if any."""
        if not isinstance(code, str):
            raise TypeError(f"execute() needs code as a str, got {type(code).__name__}")
        content = {"code": code, "silent": silent}
        return self._finish(
            self._send(MsgType.EXECUTE_REQUEST, lambda _t: content, "execute"), block
        )

    @overload
    def run(
        self: DirectView[int], filename: str | os.PathLike[str], *, block: Literal[True]
    ) -> object: ...
    @overload
    def run(
        self: DirectView[_Many], filename: str | os.PathLike[str], *, block: Literal[True]
    ) -> list[object]: ...
    @overload
    def run(
        self: DirectView[int], filename: str | os.PathLike[str], *, block: Literal[False]
    ) -> AsyncResult[object]: ...
    @overload
    def run(
        self: DirectView[_Many], filename: str | os.PathLike[str], *, block: Literal[False]
    ) -> AsyncResult[list[object]]: ...
    @overload
    def run(
        self: DirectView[int], filename: str | os.PathLike[str], block: bool | None = None
    ) -> object | AsyncResult[object]: ...
    @overload
    def run(
        self: DirectView[_Many], filename: str | os.PathLike[str], block: bool | None = None
    ) -> list[object] | AsyncResult[list[object]]: ...
    def run(
        self, filename: str | os.PathLike[str], block: bool | None = None
    ) -> object | AsyncResult[object] | AsyncResult[list[object]]:
        """Run a local Python file's code on the engines."""
        with open(filename, encoding="utf-8") as f:
            return self.execute(f.read(), block=block)

    @overload
    def push(self: DirectView[int], ns: Mapping[str, object], *, block: Literal[True]) -> None: ...
    @overload
    def push(
        self: DirectView[_Many], ns: Mapping[str, object], *, block: Literal[True]
    ) -> list[None]: ...
    @overload
    def push(
        self: DirectView[int], ns: Mapping[str, object], *, block: Literal[False]
    ) -> AsyncResult[None]: ...
    @overload
    def push(
        self: DirectView[_Many], ns: Mapping[str, object], *, block: Literal[False]
    ) -> AsyncResult[list[None]]: ...
    @overload
    def push(
        self: DirectView[int], ns: Mapping[str, object], block: bool | None = None
    ) -> AsyncResult[None] | None: ...
    @overload
    def push(
        self: DirectView[_Many], ns: Mapping[str, object], block: bool | None = None
    ) -> list[None] | AsyncResult[list[None]]: ...
    def push(self, ns: Mapping[str, object], block: bool | None = None) -> object:
        """Set names in the engines' namespaces (one message per engine)."""
        if not isinstance(ns, Mapping):
            raise TypeError(f"push() needs a dict of names to values, got {type(ns).__name__}")
        content = {"namespace": dict(ns)}
        return self._finish(self._send(MsgType.PUSH_REQUEST, lambda _t: content, "push"), block)

    @overload
    def pull(
        self: DirectView[int], names: str | Sequence[str], *, block: Literal[True]
    ) -> object: ...
    @overload
    def pull(
        self: DirectView[_Many], names: str | Sequence[str], *, block: Literal[True]
    ) -> list[object]: ...
    @overload
    def pull(
        self: DirectView[int], names: str | Sequence[str], *, block: Literal[False]
    ) -> AsyncResult[object]: ...
    @overload
    def pull(
        self: DirectView[_Many], names: str | Sequence[str], *, block: Literal[False]
    ) -> AsyncResult[list[object]]: ...
    @overload
    def pull(
        self: DirectView[int], names: str | Sequence[str], block: bool | None = None
    ) -> object | AsyncResult[object]: ...
    @overload
    def pull(
        self: DirectView[_Many], names: str | Sequence[str], block: bool | None = None
    ) -> list[object] | AsyncResult[list[object]]: ...
    def pull(
        self, names: str | Sequence[str], block: bool | None = None
    ) -> object | AsyncResult[object] | AsyncResult[list[object]]:
        """Values of names (or expressions) from the engines (a list of values for a list
        of names)."""
        names = names if isinstance(names, str) else list(names)
        content = {"names": names}
        return self._finish(self._send(MsgType.PULL_REQUEST, lambda _t: content, "pull"), block)

    def __setitem__(self, key: str, value: object) -> None:
        self.push({key: value}, block=True)

    @overload
    def __getitem__(self: DirectView[int], key: str) -> object: ...
    @overload
    def __getitem__(self: DirectView[_Many], key: str) -> list[object]: ...
    def __getitem__(self, key: str) -> object:
        result: object = self.pull(key, block=True)
        return result

    @overload
    def clear(self: DirectView[int], *, block: Literal[True]) -> None: ...
    @overload
    def clear(self: DirectView[_Many], *, block: Literal[True]) -> list[None]: ...
    @overload
    def clear(self: DirectView[int], *, block: Literal[False]) -> AsyncResult[None]: ...
    @overload
    def clear(self: DirectView[_Many], *, block: Literal[False]) -> AsyncResult[list[None]]: ...
    @overload
    def clear(self: DirectView[int], block: bool | None = None) -> AsyncResult[None] | None: ...
    @overload
    def clear(
        self: DirectView[_Many], block: bool | None = None
    ) -> list[None] | AsyncResult[list[None]]: ...
    def clear(self, block: bool | None = None) -> object:
        """Empty the engines' namespaces."""
        return self._finish(self._send(MsgType.CLEAR_REQUEST, lambda _t: {}, "clear"), block)

    @overload
    def scatter(self, key: str, seq: object, axis: int = 0, *, block: Literal[True]) -> None: ...
    @overload
    def scatter(
        self, key: str, seq: object, axis: int = 0, *, block: Literal[False]
    ) -> AsyncResult[None]: ...
    @overload
    def scatter(
        self, key: str, seq: object, axis: int = 0, block: bool | None = None
    ) -> AsyncResult[None] | None: ...
    def scatter(
        self, key: str, seq: object, axis: int = 0, block: bool | None = None
    ) -> AsyncResult[None] | None:
        """Split ``seq`` (a sequence or a numpy array, along ``axis``) across the engines
        in contiguous parts and bind each part to ``key`` there."""
        parts = _partition(seq, len(self._ids), axis)
        by_engine = dict(zip(self._ids, parts, strict=True))
        result: AsyncResult[None] = self.client._request(
            self._ids,
            MsgType.PUSH_REQUEST,
            lambda t: {"namespace": {key: by_engine[t]}},
            single=False,
            combine=lambda _r: None,
            label="scatter",
        )
        return self._finish(result, block)

    @overload
    def gather(self, key: str, axis: int = 0, *, block: Literal[True]) -> object: ...
    @overload
    def gather(self, key: str, axis: int = 0, *, block: Literal[False]) -> AsyncResult[object]: ...
    @overload
    def gather(
        self, key: str, axis: int = 0, block: bool | None = None
    ) -> object | AsyncResult[object]: ...
    def gather(
        self, key: str, axis: int = 0, block: bool | None = None
    ) -> object | AsyncResult[object]:
        """Pull ``key`` from the engines and join the parts (lists, tuples, arrays): a
        list, or an array."""
        result: AsyncResult[object] = self.client._request(
            self._ids,
            MsgType.PULL_REQUEST,
            lambda _t: {"names": key},
            single=False,
            combine=lambda parts: _join(parts, axis),
            label="gather",
        )
        return self._finish(result, block)

    def _map(
        self, f: Callable[..., T], seqs: Sequence[Iterable[object]], **kw: object
    ) -> AsyncMapResult[T]:
        if kw:
            raise TypeError(f"DirectView.map() got unexpected keywords {sorted(kw)}")
        sequences = _as_sequences(seqs)
        n = _lengths(sequences)
        bounds = _bounds(n, len(self._ids))
        chunks = {
            t: [s[a:b] for s in sequences] for t, (a, b) in zip(self._ids, bounds, strict=True)
        }
        starts = {t: a for t, (a, _) in zip(self._ids, bounds, strict=True)}
        requests = [
            (
                engine_route(t),
                MsgType.APPLY_REQUEST,
                {"f": _map_chunk, "args": (f, starts[t], *chunks[t]), "kwargs": {}},
                None,
            )
            for t in self._ids
        ]
        label = f"map({getattr(f, '__name__', 'f')})"
        return self.client._submit(
            requests, lambda ids: AsyncMapResult(self.client, ids, label=label)
        )

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Inside the ``with`` block, imports also run on the engines.

        >>> with view.sync_imports():   # doctest: +SKIP
        ...     import numpy
        """
        real_import = builtins.__import__
        view = self
        # Only the block's own imports travel, not those the imported modules make:
        # frames here are this generator, contextlib's __enter__, then the user's code.
        user_globals = sys._getframe(2).f_globals

        def remote_import(
            name: str,
            globals_: Mapping[str, object] | None = None,
            locals_: Mapping[str, object] | None = None,
            fromlist: Sequence[str] | None = (),
            level: int = 0,
        ) -> types.ModuleType | None:
            module = real_import(name, globals_, locals_, fromlist or (), level) if local else None
            if level == 0 and sys._getframe(1).f_globals is user_globals:
                names = ", ".join(fromlist or ())
                code = f"from {name} import {names}" if fromlist else f"import {name}"
                if not quiet:
                    print(f"importing {names + ' from ' if fromlist else ''}{name} on engine(s)")
                view.execute(code, block=True)
            return module

        # With local=False the import binds None here: the module exists only remotely.
        builtins.__import__ = remote_import  # type: ignore[assignment]
        try:
            yield
        finally:
            builtins.__import__ = real_import

    @overload
    def remote(
        self: DirectView[int], block: Literal[True]
    ) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
    @overload
    def remote(
        self: DirectView[_Many], block: Literal[True]
    ) -> Callable[[Callable[P, T]], Callable[P, list[T]]]: ...
    @overload
    def remote(
        self: DirectView[int], block: Literal[False]
    ) -> Callable[[Callable[P, T]], Callable[P, AsyncResult[T]]]: ...
    @overload
    def remote(
        self: DirectView[_Many], block: Literal[False]
    ) -> Callable[[Callable[P, T]], Callable[P, AsyncResult[list[T]]]]: ...
    @overload
    def remote(
        self: DirectView[int], block: bool | None = None
    ) -> Callable[[Callable[P, T]], Callable[P, T | AsyncResult[T]]]: ...
    @overload
    def remote(
        self: DirectView[_Many], block: bool | None = None
    ) -> Callable[[Callable[P, T]], Callable[P, list[T] | AsyncResult[list[T]]]]: ...
    def remote(self, block: bool | None = None) -> Callable[[Callable[P, T]], Callable[P, object]]:
        """Decorator: calling the function runs it on this view's engines."""

        def decorate(f: Callable[P, T]) -> Callable[P, object]:
            @functools.wraps(f)
            def call(*args: P.args, **kwargs: P.kwargs) -> object:
                return self._finish(self._apply(f, args, kwargs), block)

            return call

        return decorate

    @overload
    def parallel(
        self, block: Literal[True]
    ) -> Callable[[Callable[..., T]], ParallelFunction[object, list[T]]]: ...
    @overload
    def parallel(
        self, block: Literal[False]
    ) -> Callable[[Callable[..., T]], ParallelFunction[AsyncResult[object], AsyncMapResult[T]]]: ...
    @overload
    def parallel(
        self, block: bool | None = None
    ) -> Callable[
        [Callable[..., T]],
        ParallelFunction[object | AsyncResult[object], list[T] | AsyncMapResult[T]],
    ]: ...
    def parallel(
        self, block: bool | None = None
    ) -> Callable[
        [Callable[..., T]],
        ParallelFunction[object | AsyncResult[object], list[T] | AsyncMapResult[T]],
    ]:
        """Decorator: ``f.map(seq)`` maps over the engines; ``f(seq)`` gives each engine
        its part of ``seq`` and returns the parts' results joined."""

        def decorate(
            f: Callable[..., T],
        ) -> ParallelFunction[object | AsyncResult[object], list[T] | AsyncMapResult[T]]:
            view = self

            class Parallel:
                def __call__(self, seq: object, /) -> object | AsyncResult[object]:
                    parts = _partition(seq, len(view._ids), 0)
                    by_engine = dict(zip(view._ids, parts, strict=True))
                    result: AsyncResult[object] = view.client._request(
                        view._ids,
                        MsgType.APPLY_REQUEST,
                        lambda t: {"f": f, "args": (by_engine[t],), "kwargs": {}},
                        single=False,
                        combine=lambda r: _join(r, 0),
                        label=f"parallel({getattr(f, '__name__', 'f')})",
                    )
                    return view._finish(result, block)

                def map(self, *seqs: Iterable[object]) -> list[T] | AsyncMapResult[T]:
                    return view.map(f, *seqs, block=block)

            functools.update_wrapper(Parallel.__call__, f)  # its name and docstring are f's
            return Parallel()

        return decorate

    def abort(self, msg_ids: Sequence[str]) -> None:
        """Drop queued requests before they run."""
        self.client.abort(msg_ids)

    def interrupt(self) -> None:
        """Raise KeyboardInterrupt in whatever the view's engines are running, whoever sent
        it (``AsyncResult.cancel()`` and ``abort()`` stop only their own requests)."""
        results = [self.client._control(t, MsgType.INTERRUPT_REQUEST, {}) for t in self._ids]
        for result in results:
            result.get(10)

    @overload
    def complete(
        self: DirectView[int],
        text: str,
        cursor_pos: int | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, object]: ...
    @overload
    def complete(
        self: DirectView[_Many],
        text: str,
        cursor_pos: int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[dict[str, object]]: ...
    def complete(
        self, text: str, cursor_pos: int | None = None, *, timeout: float | None = None
    ) -> dict[str, object] | list[dict[str, object]]:
        """Complete ``text`` at ``cursor_pos`` (default: its end) in the engines'
        namespaces: Jupyter's ``complete_reply`` content, ``matches``, ``cursor_start``,
        ``cursor_end``, ``metadata`` (one dict, or one per engine).

        Examples
        --------
        >>> rc[0].complete("import os; os.pa")["matches"]  # doctest: +SKIP
        ['os.pardir', 'os.path', 'os.pathconf', 'os.pathconf_names', 'os.pathsep']

        .. versionadded:: 0.6
        """
        content = {"code": text, "cursor_pos": _cursor(text, cursor_pos, "complete")}
        return self._ask(MsgType.COMPLETE_REQUEST, content, timeout)

    @overload
    def inspect(
        self: DirectView[int],
        name_or_code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        timeout: float | None = None,
    ) -> dict[str, object]: ...
    @overload
    def inspect(
        self: DirectView[_Many],
        name_or_code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        timeout: float | None = None,
    ) -> list[dict[str, object]]: ...
    def inspect(
        self,
        name_or_code: str,
        cursor_pos: int | None = None,
        detail_level: int = 0,
        *,
        timeout: float | None = None,
    ) -> dict[str, object] | list[dict[str, object]]:
        """What the engines know of the name at ``cursor_pos`` (default: the end) of
        ``name_or_code``: Jupyter's ``inspect_reply`` content, ``found`` and ``data``
        (a mime bundle: type, value, signature, docstring; ``detail_level=1`` adds the
        source). One dict, or one per engine.

        .. versionadded:: 0.6
        """
        if detail_level not in (0, 1) or isinstance(detail_level, bool):
            raise ValueError(f"inspect(detail_level=...) takes 0 or 1, got {detail_level!r}")
        content = {
            "code": name_or_code,
            "cursor_pos": _cursor(name_or_code, cursor_pos, "inspect"),
            "detail_level": detail_level,
        }
        return self._ask(MsgType.INSPECT_REQUEST, content, timeout)

    def _ask(
        self, msg_type: str, content: dict[str, object], timeout: float | None
    ) -> dict[str, object] | list[dict[str, object]]:
        """Send one request to each engine and wait: the whole reply contents."""

        def make(ids: list[str]) -> AsyncResult[Any]:
            result: AsyncResult[Any] = AsyncResult(
                self.client, ids, single=self._single, label=msg_type
            )
            result._object = True  # the value is the reply content itself
            return result

        requests = [(engine_route(t), msg_type, content, None) for t in self._ids]
        value = self.client._submit(requests, make).get(timeout)
        return cast("dict[str, object] | list[dict[str, object]]", value)

    @overload
    def status(self: DirectView[int]) -> dict[str, object]: ...
    @overload
    def status(self: DirectView[_Many]) -> list[dict[str, object]]: ...
    def status(self) -> dict[str, object] | list[dict[str, object]]:
        """Each engine's pid, host, cores, memory, queue length and uptime."""
        results = [self.client._control(t, MsgType.STATUS_REQUEST, {}) for t in self._ids]
        replies: list[dict[str, object]] = [dict(r.get(10)) for r in results]
        return replies[0] if self._single else replies

    def activate(self, suffix: str = "") -> None:
        """Make IPython's ``%px`` magics run on this view (its client and targets).

        With ``suffix``, e.g. ``"_odd"``, a set of its own beside the first: ``%px_odd``,
        ``%%px_odd``, ``%pxresult_odd``, ``%pxconfig_odd``, ``%autopx_odd``.

        Raises
        ------
        RuntimeError
            Outside an IPython session.
        ValueError
            When ``suffix`` is not letters, digits and ``_``.
        """
        # Up a floor to the magics, which need IPython: imported only when asked for.
        from .._cli.magics import activate  # noqa: PLC0415

        activate(self, suffix)


def _cursor(code: object, cursor_pos: object, method: str) -> int:
    """``cursor_pos`` checked against ``code``; its end when None."""
    if not isinstance(code, str):
        raise TypeError(f"{method}() needs the code as a str, got {type(code).__name__}")
    if cursor_pos is None:
        return len(code)
    if not isinstance(cursor_pos, int) or isinstance(cursor_pos, bool):
        raise TypeError(f"{method}(cursor_pos=...) takes an int, got {type(cursor_pos).__name__}")
    if not 0 <= cursor_pos <= len(code):
        raise ValueError(
            f"{method}(cursor_pos=...) must be between 0 and len(code) = {len(code)},"
            f" got {cursor_pos}"
        )
    return cursor_pos


class LoadBalancedView(View[int]):
    """Tasks go to whichever engine is free; ipyparallel's LoadBalancedView.

    A ``View[int]``: each task runs on one engine, and gives its value.

    Attributes
    ----------
    timeout : float or None
        Seconds a task may run: longer, it is interrupted and fails with a remote
        ``TimeoutError`` (with ``retries``, it runs again); the engine serves on.
    retries : int
        How many times a failed task (remote error or engine death) is run again,
        elsewhere when possible.
    after, follow : list of str or AsyncResult
        Run only after these tasks succeeded / on the engine where they ran.
    targets : list of int or None
        Engines allowed to run tasks (None: any).
    """

    def __init__(
        self, client: Client, targets: Sequence[int] | None = None, *, block: bool = False
    ) -> None:
        super().__init__(client, block=block)
        self.targets = None if targets is None else list(targets)
        self.retries = 0
        self.timeout: float | None = None
        self.after: Dependencies = []
        self.follow: Dependencies = []

    def __repr__(self) -> str:
        return f"<LoadBalancedView {self.targets or 'any engine'}>"

    def set_flags(self, **flags: object) -> None:
        """Set ``retries``, ``timeout``, ``after``, ``follow``, ``targets`` or ``block``."""
        for name, value in flags.items():
            if name not in _FLAGS:
                raise TypeError(f"unknown flag {name!r}; flags: {', '.join(_FLAGS)}")
            setattr(self, name, value)

    @contextlib.contextmanager
    def temp_flags(self, **flags: object) -> Iterator[None]:
        """The flags set for the ``with`` block only."""
        saved = {name: getattr(self, name) for name in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _metadata(self) -> dict[str, object]:
        meta: dict[str, object] = {}
        if self.retries:
            meta["retries"] = int(self.retries)
        if self.timeout is not None:
            if self.timeout <= 0:
                raise ValueError(f"timeout must be positive (seconds), got {self.timeout}")
            meta["timeout"] = float(self.timeout)
        if self.targets is not None:
            meta["targets"] = [int(t) for t in self.targets]
        if self.after:
            meta["after"] = _msg_ids(self.after)
        if self.follow:
            meta["follow"] = _msg_ids(self.follow)
        return meta

    def _apply(
        self, f: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> AsyncResult[Any]:
        content = _apply_content(f, args, kwargs)
        label = getattr(f, "__name__", "apply")
        return self.client._submit(
            [(LB, MsgType.APPLY_REQUEST, content, self._metadata())],
            lambda ids: AsyncResult(self.client, ids, single=True, label=label),
        )

    def _map(  # type: ignore[override]  # the keywords of a load-balanced map
        self,
        f: Callable[..., T],
        seqs: Sequence[Iterable[object]],
        *,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> AsyncMapResult[T]:
        sequences = _as_sequences(seqs)
        n = _lengths(sequences)
        if chunksize is None:  # a few chunks per engine: balance without per-item cost
            engines = max(1, len(self.targets or self.client.ids))
            chunksize = max(1, math.ceil(n / (engines * 4)))
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {chunksize}")
        meta = self._metadata()
        requests = [
            (
                LB,
                MsgType.APPLY_REQUEST,
                {
                    "f": _map_chunk,
                    "args": (f, a, *[s[a : a + chunksize] for s in sequences]),
                    "kwargs": {},
                },
                meta,
            )
            for a in range(0, n, chunksize)
        ]
        label = f"map({getattr(f, '__name__', 'f')})"
        return self.client._submit(
            requests,
            lambda ids: AsyncMapResult(self.client, ids, ordered=ordered, label=label),
        )

    def imap(
        self,
        f: Callable[..., T],
        *seqs: Iterable[object],
        chunksize: int = 1,
        ordered: bool = True,
        max_outstanding: int | None = None,
    ) -> Iterator[T]:
        """Like ``map``, lazily: at most ``max_outstanding`` chunks are submitted and not yet
        consumed at any time, so an endless or huge input streams in bounded memory."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {chunksize}")
        limit = max_outstanding or max(2, 2 * len(self.targets or self.client.ids))
        return _imap(self, f, seqs, chunksize=chunksize, ordered=ordered, limit=limit)


_FLAGS = ("retries", "timeout", "after", "follow", "targets", "block")
_WARM_BYTES = 16 << 20  # a gathered array this big goes on the shared memory pool's pages


def _imap(
    view: LoadBalancedView,
    f: Callable[..., T],
    seqs: Sequence[Iterable[object]],
    *,
    chunksize: int,
    ordered: bool,
    limit: int,
) -> Iterator[T]:
    rows = zip(*seqs, strict=False)
    outstanding: list[AsyncResult[list[T]]] = []
    exhausted = False
    meta = view._metadata()
    submitted = 0

    def submit() -> bool:
        nonlocal submitted
        chunk = [row for _, row in zip(range(chunksize), rows, strict=False)]
        if not chunk:
            return False
        columns = [list(c) for c in zip(*chunk, strict=True)]
        content = {"f": _map_chunk, "args": (f, submitted, *columns), "kwargs": {}}
        submitted += len(chunk)
        outstanding.append(
            view.client._submit(
                [(LB, MsgType.APPLY_REQUEST, content, meta)],
                lambda ids: AsyncResult(view.client, ids, single=True, label="imap"),
            )
        )
        return True

    while True:
        while not exhausted and len(outstanding) < limit:
            exhausted = not submit()
        if not outstanding:
            return
        try:
            if ordered:
                done = outstanding.pop(0)
            else:
                finished, _ = concurrent.futures.wait(
                    outstanding, return_when=concurrent.futures.FIRST_COMPLETED
                )
                done = next(r for r in outstanding if r in finished)
                outstanding.remove(done)
            values = done.get()
        except KeyboardInterrupt:  # the chunks sent ahead are waited for too: stop them
            _stop_ahead(view.client, outstanding)
            raise
        yield from values


def _stop_ahead(client: Client, results: Sequence[AsyncResult[Any]]) -> None:
    """After a Ctrl-C in an ``imap``: stop the chunks it had submitted ahead, say so."""
    ahead = [m for r in results for m in r._unanswered()]
    if not ahead:
        return
    try:
        stopped = client._stop(ahead, _CTRL_C_WAIT)
    except (KeyboardInterrupt, HubLost, RuntimeError, TimeoutError):  # again, or lost
        return
    log.warning(
        "Ctrl-C: %s the %d chunk(s) imap had submitted ahead",
        "stopped" if stopped else "interrupted (some still run)",
        len(ahead),
    )


def _msg_ids(deps: Dependencies) -> list[str]:
    if isinstance(deps, (str, AsyncResult)):
        deps = [deps]
    ids: list[str] = []
    for dep in deps:
        if isinstance(dep, AsyncResult):
            ids.extend(dep.msg_ids)
        elif isinstance(dep, str):
            ids.append(dep)
        else:
            raise TypeError(f"dependencies are msg_ids or AsyncResults, got {dep!r}")
    return ids


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal ``[a, b)`` ranges covering ``range(n)``, larger ones first."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _partition(seq: Any, parts: int, axis: int) -> list[Any]:
    """``seq`` cut into ``parts`` contiguous pieces (numpy arrays along ``axis``)."""
    if type(seq).__module__ == "numpy" and type(seq).__name__ == "ndarray":
        import numpy as np  # noqa: PLC0415 - only when the user has arrays

        return list(np.array_split(seq, parts, axis=axis))
    if not hasattr(seq, "__getitem__") or not hasattr(seq, "__len__"):
        seq = list(seq)
    return [seq[a:b] for a, b in _bounds(len(seq), parts)]


def empty_shared(shape: int | Sequence[int], dtype: DTypeLike = float) -> NDArray[np.generic]:
    """A new array on shared memory pages, uninitialized like ``numpy.empty``.

    Pushing or scattering it, or any part of it, to engines of this host sends no copy:
    from then on each side maps those pages copy-on-write and keeps its own writes. An
    ordinary array costs one copy instead. Small arrays, or shared memory turned off
    (``SHOAL_SHM=0``), give an ordinary ``numpy.empty`` array.
    """
    import numpy as np  # noqa: PLC0415 - only when the user has arrays

    dt = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(dims) * dt.itemsize
    if not shared_memory_enabled() or nbytes < default_shared_memory().threshold:
        return np.empty(dims, dt)
    return np.frombuffer(default_shared_memory().allocate(nbytes), dt).reshape(dims)


def concatenate_shared(arrays: Sequence[NDArray[np.generic]], axis: int = 0) -> NDArray[np.generic]:
    """``numpy.concatenate(arrays, axis)``, made for big results.

    A result of 16 MiB or more goes on shared memory pages (see :func:`empty_shared`):
    warm pages cost fewer page faults than fresh ones, and the result travels on to
    engines of this host with no copy. Parts along axis 0 are copied by as many threads
    as there are cores. ``gather`` and ``DirectView.gather`` join their parts with it.
    """
    import numpy as np  # noqa: PLC0415 - only when the user has arrays

    parts = list(arrays)
    dtype = np.result_type(*parts)
    shape = list(parts[0].shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    if sum(p.nbytes for p in parts) < _WARM_BYTES:
        return np.concatenate(parts, axis=axis)
    joined = empty_shared(shape, dtype)
    if axis == 0 and all(p.dtype == dtype and p.flags.c_contiguous for p in parts):
        flat = joined.reshape(-1).view(np.uint8)
        at = 0  # each part is a run of bytes: copied by as many threads as cores
        for p in parts:
            copy_buffer(flat[at : at + p.nbytes], p)
            at += p.nbytes
        return joined
    return np.concatenate(parts, axis=axis, out=joined)


def _join(parts: list[object], axis: int) -> object:
    """The inverse of :func:`_partition`: one array, or one list."""
    if parts and all(
        type(p).__module__ == "numpy" and type(p).__name__ == "ndarray" for p in parts
    ):
        return concatenate_shared(cast("list[NDArray[np.generic]]", parts), axis)
    out: list[object] = []
    for part in parts:
        if isinstance(part, (list, tuple, range)):
            out.extend(part)
        else:
            out.append(part)
    return out
