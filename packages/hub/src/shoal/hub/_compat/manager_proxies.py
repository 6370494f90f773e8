"""Proxies: the client side of a manager's shared objects, usable in any process.

Theory of operation
-------------------
A proxy forwards method calls to an object held by a manager's server (see
:mod:`shoal.hub._compat.managers`). The classes here are
``multiprocessing.managers.BaseProxy`` subclasses, with the stdlib's protocol
(``_callmethod``, ``_getvalue``, ``_exposed_``, ``_method_to_typeid_``), so code written
for ``multiprocess``/``multiprocessing`` proxies runs unchanged. What changes, and why:

1. **A proxy pickles with everything it needs.** The stdlib only puts the authkey in a
   proxy's pickle while spawning a child process; an engine unpickling a task argument
   would then authenticate with its own key and fail. Here ``BaseProxy.__reduce__``
   always carries the authkey, the exposed method names, and the proxy types that its
   methods may return (``method_to_typeid``), so a proxy rebuilt on an engine connects
   back, increments the referent's count, and builds returned proxies without the
   manager object. Whoever holds a proxy's pickle can use the manager: it travels only
   inside shoal's signed messages (:mod:`shoal.hub._compat.manager_protocol`).
2. **Failures are named.** A method the manager does not expose raises
   ``AttributeError`` before anything is sent; a proxy whose manager is gone (shut down,
   killed, unreachable) raises :class:`ManagerLost` instead of hanging or raising a bare
   ``EOFError``, also for a call in flight when the server stopped (the server ends such
   a connection without a reply: :mod:`shoal.hub._compat.manager_server`).
3. **Typed proxies.** :class:`QueueProxy`, :class:`AcquirerProxy`, ... spell out their
   methods; :class:`ValueProxy`, :class:`ListProxy` and :class:`DictProxy` take the
   stdlib's method tables (they grow with Python versions) and are generic, as typeshed
   has them; :func:`AutoProxy` builds a class forwarding whatever the referent exposes.

A referent lives while some proxy holds it, in any process: keep the client's proxy
until the tasks that received it have unpickled it (e.g. until their results are in).
"""

from __future__ import annotations

import array
import contextlib
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing import managers, process
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeAlias, TypeVar, cast, overload

from .manager_protocol import _SHUTDOWN, ManagerLost, _connection_types, _dispatch, _error_of

if TYPE_CHECKING:
    from .managers import BaseManager

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "NamespaceProxy",
    "QueueProxy",
    "ValueProxy",
]

# Not in typeshed's stubs of multiprocessing, but public in the stdlib module.
_rebuild_proxy: Final[Callable[..., Any]] = getattr(managers, "RebuildProxy")  # noqa: B009

# Names every server answers whatever a type exposes (the stdlib's fallback_mapping).
_FALLBACK_METHODS: Final = frozenset({"__str__", "__repr__", "#GETVALUE"})

_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
# An array.array's items, by typecode: integers, floats or one-character strings.
_ArrayItem = TypeVar("_ArrayItem", int, float, str)

# What makes a proxy from a token: a BaseProxy subclass, or AutoProxy.
_ProxyType: TypeAlias = "Callable[..., BaseProxy]"
# A registry entry, the stdlib's layout: (callable, exposed, method_to_typeid, proxytype).
_Registration: TypeAlias = (
    "tuple[Callable[..., object] | None, tuple[str, ...] | None, dict[str, str] | None, _ProxyType]"
)

if TYPE_CHECKING or sys.version_info >= (3, 13):
    _StdDictProxy = managers.DictProxy
    _StdListProxy = managers.ListProxy
else:  # not subscriptable at run time before Python 3.13: made so the stdlib's way

    class _StdDictProxy(managers.DictProxy):
        __class_getitem__ = classmethod(types.GenericAlias)

    class _StdListProxy(managers.ListProxy):
        __class_getitem__ = classmethod(types.GenericAlias)


def _reachable_types(registry: Mapping[str, _Registration], typeid: str) -> dict[str, _ProxyType]:
    """The proxy types that methods of ``typeid`` may return, through ``method_to_typeid``,
    transitively: what a proxy carries to rebuild returned proxies without its manager."""
    found: dict[str, _ProxyType] = {}
    todo = [typeid]
    while todo:
        entry = registry.get(todo.pop())
        for returned in (entry[2] or {}).values() if entry else ():
            if returned not in found and returned in registry:
                found[returned] = registry[returned][3]
                todo.append(returned)
    return found


class BaseProxy(managers.BaseProxy):
    """A proxy for an object held by a manager; pickles into tasks that run on engines.

    The ``multiprocessing.managers.BaseProxy`` protocol (``_callmethod``,
    ``_getvalue``, ``_exposed_``, ``_method_to_typeid_``), with a pickle that carries the
    manager's authkey, so that the proxy connects back from any process that unpickles it.

    Raises
    ------
    ManagerLost
        From any call once the manager is gone.
    AttributeError
        From ``_callmethod`` of a method the manager does not expose for this type.

    .. versionadded:: 0.1
    """

    # Set by the stdlib's __init__, which typeshed does not describe.
    _token: managers.Token
    _id: str
    _manager: BaseManager | None
    _tls: Any
    _authkey: bytes
    _serializer: str
    _Client: Callable[..., Any]
    _isauto: bool
    _incref: Callable[[], None]
    _connect: Callable[[], None]
    # Declared, not set: a value here would hide the stdlib classes' in subclasses' MROs.
    _exposed_: ClassVar[tuple[str, ...]]
    _method_to_typeid_: ClassVar[dict[str, str]]

    def __init__(  # noqa: PLR0917 - the stdlib's signature
        self,
        token: managers.Token,
        serializer: str,
        manager: BaseManager | None = None,
        authkey: bytes | None = None,
        exposed: Iterable[str] | None = None,
        incref: bool = True,
        manager_owned: bool = False,
        proxytypes: Mapping[str, Callable[..., BaseProxy]] | None = None,
    ) -> None:
        client = _connection_types(serializer)[1]
        # The stdlib looks the serializer up in its own table: give it one it knows.
        super().__init__(token, "pickle", manager, authkey, None, False, manager_owned)
        self._serializer = serializer
        self._Client = client
        self._exposed = None if exposed is None else frozenset(exposed)
        self._proxytypes = None if proxytypes is None else dict(proxytypes)
        if incref:
            try:
                self._incref()
            except (EOFError, OSError) as exc:
                raise ManagerLost(self._lost("use")) from exc

    def _lost(self, what: str) -> str:
        return (
            f"the manager at {self._token.address!r} is gone (shut down, or its process"
            f" ended): cannot {what} this {self._token.typeid!r} proxy"
        )

    def _returned_types(self) -> dict[str, _ProxyType]:
        """Proxy types by typeid for the proxies this one's methods return."""
        if self._proxytypes is None:
            registry = type(self._manager)._registry if self._manager is not None else {}
            self._proxytypes = _reachable_types(registry, str(self._token.typeid))
        return self._proxytypes

    def _drop_connection(self) -> None:
        """Forget this thread's connection: the next call makes a new one."""
        conn = getattr(self._tls, "connection", None)
        if conn is not None:
            del self._tls.connection
            with contextlib.suppress(OSError):
                conn.close()

    def _callmethod(
        self,
        methodname: str,
        args: tuple[Any, ...] = (),
        kwds: dict[str, Any] | None = None,
    ) -> Any:
        """Call ``methodname`` on the referent; return a copy of the result, or a proxy."""
        if (
            self._exposed is not None
            and methodname not in self._exposed
            and methodname not in _FALLBACK_METHODS
        ):
            raise AttributeError(
                f"method {methodname!r} of the {self._token.typeid!r} object is not exposed"
                f" by its manager (exposed: {', '.join(sorted(self._exposed))}); register"
                f" the type with exposed=[..., {methodname!r}] to call it"
            )
        manager = self._manager
        if manager is not None and manager._state.value == _SHUTDOWN:
            raise ManagerLost(self._lost(f"call {methodname!r} on"))
        try:
            conn = getattr(self._tls, "connection", None)
            if conn is None:
                self._connect()
                conn = self._tls.connection
            conn.send((self._id, methodname, args, kwds or {}))
            kind, result = conn.recv()
        except (EOFError, OSError) as exc:
            self._drop_connection()
            raise ManagerLost(self._lost(f"call {methodname!r} on")) from exc
        except BaseException:
            self._drop_connection()  # an exchange cut in half: never read its reply later
            raise
        if kind == "#RETURN":
            return result
        if kind == "#PROXY":
            exposed, token = result
            proxytype = self._returned_types()[token.typeid]
            token.address = self._token.address
            proxy = proxytype(
                token,
                self._serializer,
                manager=manager,
                authkey=self._authkey,
                exposed=exposed,
                proxytypes=self._returned_types(),
            )
            conn = self._Client(token.address, authkey=self._authkey)
            try:
                _dispatch(conn, "decref", (token.id,))
            finally:
                conn.close()
            return proxy
        try:
            raise _error_of(kind, result)
        finally:
            del result  # the exception's traceback refers to this frame

    def __reduce__(self) -> tuple[Any, tuple[Any, Any, str, dict[Any, Any]]]:
        kwds = {
            "authkey": bytes(self._authkey),
            "exposed": None if self._exposed is None else tuple(sorted(self._exposed)),
            "proxytypes": self._returned_types(),
        }
        func = AutoProxy if getattr(self, "_isauto", False) else type(self)
        return (_rebuild_proxy, (func, self._token, self._serializer, kwds))


_auto_types: dict[tuple[str, tuple[str, ...]], type[BaseProxy]] = {}
_auto_types_lock = threading.Lock()


def _forward(name: str) -> Callable[..., object]:
    def method(self: BaseProxy, /, *args: object, **kwds: object) -> object:
        return self._callmethod(name, args, kwds)

    method.__name__ = method.__qualname__ = name
    return method


def _auto_proxy_type(typeid: str, exposed: tuple[str, ...]) -> type[BaseProxy]:
    """A proxy class with one forwarding method per exposed name (cached)."""
    key = (typeid, exposed)
    with _auto_types_lock:
        cls = _auto_types.get(key)
        if cls is None:
            namespace: dict[str, Any] = {name: _forward(name) for name in exposed}
            namespace["_exposed_"] = exposed
            cls = _auto_types[key] = type(f"AutoProxy[{typeid}]", (BaseProxy,), namespace)
        return cls


def AutoProxy(  # noqa: PLR0917 - the stdlib's signature
    token: managers.Token,
    serializer: str,
    manager: BaseManager | None = None,
    authkey: bytes | None = None,
    exposed: Iterable[str] | None = None,
    incref: bool = True,
    manager_owned: bool = False,
    proxytypes: Mapping[str, Callable[..., BaseProxy]] | None = None,
) -> BaseProxy:
    """A proxy forwarding every method the referent exposes: the default ``proxytype``.

    .. versionadded:: 0.1
    """
    if authkey is None:
        authkey = manager._authkey if manager is not None else process.current_process().authkey
    if exposed is None:
        conn = _connection_types(serializer)[1](token.address, authkey=authkey)
        try:
            exposed = _dispatch(conn, "get_methods", (token,))
        finally:
            conn.close()
    names = tuple(exposed or ())
    proxy = _auto_proxy_type(str(token.typeid), names)(
        token,
        serializer,
        manager=manager,
        authkey=authkey,
        exposed=names,
        incref=incref,
        manager_owned=manager_owned,
        proxytypes=proxytypes,
    )
    proxy._isauto = True
    return proxy


class QueueProxy(BaseProxy):
    """A ``queue.Queue`` held by a manager (``Queue`` and ``JoinableQueue``)."""

    _exposed_ = (
        "empty",
        "full",
        "get",
        "get_nowait",
        "join",
        "put",
        "put_nowait",
        "qsize",
        "task_done",
    )

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        self._callmethod("put", (item, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        return self._callmethod("get", (block, timeout))

    def put_nowait(self, item: object) -> None:
        self._callmethod("put_nowait", (item,))

    def get_nowait(self) -> object:
        return self._callmethod("get_nowait")

    def qsize(self) -> int:
        return cast(int, self._callmethod("qsize"))

    def empty(self) -> bool:
        return cast(bool, self._callmethod("empty"))

    def full(self) -> bool:
        return cast(bool, self._callmethod("full"))

    def task_done(self) -> None:
        self._callmethod("task_done")

    def join(self) -> None:
        self._callmethod("join")


class AcquirerProxy(BaseProxy):
    """A lock or semaphore held by a manager; a context manager like the original."""

    _exposed_: ClassVar[tuple[str, ...]] = ("acquire", "release")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        args = (blocking,) if timeout is None else (blocking, timeout)
        return cast(bool, self._callmethod("acquire", args))

    def release(self) -> None:
        self._callmethod("release")

    def __enter__(self) -> bool:
        return cast(bool, self._callmethod("acquire"))

    def __exit__(self, *exc_info: object) -> None:
        self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    """A ``threading.Condition`` held by a manager."""

    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout: float | None = None) -> bool:
        return cast(bool, self._callmethod("wait", (timeout,)))

    def notify(self, n: int = 1) -> None:
        self._callmethod("notify", (n,))

    def notify_all(self) -> None:
        self._callmethod("notify_all")

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """Wait until ``predicate()`` is true (evaluated here, with the lock held); return
        its last result (false when ``timeout`` passed first)."""
        result = predicate()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self.wait(remaining)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    """A ``threading.Event`` held by a manager."""

    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        return cast(bool, self._callmethod("is_set"))

    def set(self) -> None:
        self._callmethod("set")

    def clear(self) -> None:
        self._callmethod("clear")

    def wait(self, timeout: float | None = None) -> bool:
        return cast(bool, self._callmethod("wait", (timeout,)))


class BarrierProxy(BaseProxy):
    """A ``threading.Barrier`` held by a manager."""

    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None) -> int:
        return cast(int, self._callmethod("wait", (timeout,)))

    def abort(self) -> None:
        self._callmethod("abort")

    def reset(self) -> None:
        self._callmethod("reset")

    @property
    def parties(self) -> int:
        return cast(int, self._callmethod("__getattribute__", ("parties",)))

    @property
    def n_waiting(self) -> int:
        return cast(int, self._callmethod("__getattribute__", ("n_waiting",)))

    @property
    def broken(self) -> bool:
        return cast(bool, self._callmethod("__getattribute__", ("broken",)))


class NamespaceProxy(BaseProxy):
    """A ``Namespace`` held by a manager: public attributes live in the manager."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> object:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key: str, value: object) -> None:
        if key[0] == "_":
            object.__setattr__(self, key, value)
            return
        object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            object.__delattr__(self, key)
            return
        object.__getattribute__(self, "_callmethod")("__delattr__", (key,))


class ArrayProxy(BaseProxy, Generic[_ArrayItem]):
    """An ``array.array`` held by a manager: ``int``, ``float`` or ``str`` items, by its
    typecode. An index reads an item, a slice a copy (an ``array.array``)."""

    _exposed_ = ("__len__", "__getitem__", "__setitem__")

    def __len__(self) -> int:
        return cast(int, self._callmethod("__len__"))

    @overload
    def __getitem__(self, index: int) -> _ArrayItem: ...
    @overload
    def __getitem__(self, index: slice) -> array.array[_ArrayItem]: ...
    def __getitem__(self, index: int | slice) -> _ArrayItem | array.array[_ArrayItem]:
        # What the server's array returned, unpickled here: an item, or an array for a slice.
        return cast(
            "_ArrayItem | array.array[_ArrayItem]", self._callmethod("__getitem__", (index,))
        )

    @overload
    def __setitem__(self, index: int, value: _ArrayItem) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: array.array[_ArrayItem]) -> None: ...
    def __setitem__(self, index: int | slice, value: _ArrayItem | array.array[_ArrayItem]) -> None:
        self._callmethod("__setitem__", (index, value))


class IteratorProxy(BaseProxy):
    """An iterator held by a manager (what iterating a dict proxy returns)."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        return self._callmethod("__next__")

    def send(self, value: object) -> object:
        return self._callmethod("send", (value,))

    def throw(self, *args: object) -> object:
        """The referent's ``throw(type[, value[, traceback]])``; its next item."""
        return self._callmethod("throw", args)

    def close(self) -> None:
        self._callmethod("close")


# The stdlib's method tables (they grow with Python versions), on this module's base.
class ValueProxy(BaseProxy, managers.ValueProxy[_T]):
    """A ``Value`` held by a manager: ``get()``, ``set(v)`` and the ``value`` attribute."""


class ListProxy(BaseProxy, _StdListProxy[_T]):
    """A list held by a manager."""


class DictProxy(BaseProxy, _StdDictProxy[_KT, _VT]):
    """A dict held by a manager; iterating it returns an :class:`IteratorProxy`."""
