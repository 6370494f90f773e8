"""Managers: the ``multiprocess.managers`` API, with proxies that work on any engine.

Theory of operation
-------------------
A manager is a server process that holds Python objects (a ``queue.Queue``, a
``threading.Lock``, a dict, ...) and *proxies* that forward method calls to them. This
module and its siblings build on the stdlib's :mod:`multiprocessing.managers`, so that
code written for ``multiprocess``/``multiprocessing`` managers runs unchanged: the server
is the stdlib's ``Server`` (a thread per connection), the registry has the stdlib's
layout, and the proxies are ``multiprocessing.managers.BaseProxy`` subclasses. What
changes, and why, is told where it is done:

- :mod:`~shoal.hub._compat.manager_protocol`: the connections. Every message is signed
  with keys of that connection alone, and values travel with shoal's serializer (dill
  semantics) unless ``serializer="pickle"``.
- :mod:`~shoal.hub._compat.manager_server`: the server process. A fresh interpreter,
  configured over its stdin, that ends with its creator.
- :mod:`~shoal.hub._compat.manager_proxies`: the proxies. Each pickles with the authkey
  and its interface, so a task on any engine connects back to the server directly.
- This module: :class:`BaseManager` (its registry, ``start``, ``connect``, ...),
  :class:`SyncManager` with the standard shared types, and :func:`Manager`; it
  re-exports the public names of the others (``shoal.hub.managers`` takes them from
  here).

**It listens on loopback TCP by default** (``("127.0.0.1", 0)``: a random port), which
every engine of a local cluster reaches. Pass ``address=(host, port)`` for engines on
other hosts; a wildcard host (``""``, ``"0.0.0.0"``) is advertised as
``socket.gethostname()``.

**Failures are named.** A proxy whose manager is gone raises :class:`ManagerLost`, as
does a manager whose server cannot be reached; a manager used before ``start()`` or
after ``shutdown()`` raises the stdlib's ``ProcessError``; misconfigured managers and
registrations raise ``TypeError`` or ``ValueError`` naming the argument.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pickle
import queue
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing import ProcessError, managers, util
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias, TypeVar, cast, overload

from .manager_protocol import (
    _INITIAL,
    _SERIALIZER,
    _SHUTDOWN,
    _STARTED,
    Address,
    ManagerLost,
    _connection_types,
    _dispatch,
)
from .manager_proxies import (
    AcquirerProxy,
    ArrayProxy,
    AutoProxy,
    BarrierProxy,
    BaseProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    ListProxy,
    NamespaceProxy,
    QueueProxy,
    ValueProxy,
    _Registration,
)
from .manager_server import _SERVER_MAIN, Server, _kill, _read_report, _stop_server, _write_frame

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseManager",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "Manager",
    "ManagerLost",
    "Namespace",
    "NamespaceProxy",
    "QueueProxy",
    "SyncManager",
    "Token",
    "ValueProxy",
]

Token = managers.Token
Namespace = managers.Namespace

_LOOPBACK: Final = ("127.0.0.1", 0)
_START_TIMEOUT: Final = 60.0

_P = TypeVar("_P", bound="BaseProxy")
_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
# An array.array's items, by typecode: integers, floats or one-character strings.
_ArrayItem = TypeVar("_ArrayItem", int, float, str)
_IntTypeCode: TypeAlias = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"]
_FloatTypeCode: TypeAlias = Literal["f", "d"]

# The server's copy: no proxy types (they may not even import there).
_ServerRegistration: TypeAlias = (
    "tuple[Callable[..., object] | None, tuple[str, ...] | None, dict[str, str] | None, None]"
)


def _check_address(address: object) -> Address:
    if address is None:
        return _LOOPBACK
    if isinstance(address, str):
        return address
    if (
        isinstance(address, tuple)
        and len(address) == 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
    ):
        return (address[0], address[1])
    raise TypeError(
        f"address must be a (host, port) tuple such as ('127.0.0.1', 0), or a Unix socket"
        f" path, got {address!r}"
    )


class BaseManager(managers.BaseManager):
    """A server process holding shared objects, and the factory of their proxies.

    The ``multiprocessing.managers.BaseManager`` API: ``register``, ``start``,
    ``shutdown``, ``connect``, ``get_server``, ``address``, ``join`` and the context
    manager. Proxies it creates work in this process and in any process that unpickles
    them, e.g. tasks on shoal engines.

    Parameters
    ----------
    address : (str, int) or str, optional
        Where the server listens. Default ``("127.0.0.1", 0)``: loopback, a random port
        (every engine of a local cluster reaches it). Use a host the engines can reach
        for a cluster on several machines.
    authkey : bytes, optional
        The key connections authenticate with. Default: a fresh random key for this
        manager (pass the server's key to a manager that will :meth:`connect`).
    serializer : {"shoal", "pickle"}
        How values travel to and from the server: shoal's serializer (dill semantics:
        functions and lambdas by value) in signed messages (the default), or the
        stdlib's pickle, unsigned after the authkey challenge (for trusted networks
        only).
    ctx : object, optional
        Accepted for compatibility and unused: the server is always a fresh interpreter.
    shutdown_timeout : float
        Seconds to wait for the server to end on shutdown before terminating it, and
        again before killing it.

    Examples
    --------
    >>> class MathsManager(BaseManager):
    ...     pass
    >>> MathsManager.register("Counter", collections.Counter)  # doctest: +SKIP
    >>> with MathsManager() as m:  # doctest: +SKIP
    ...     c = m.Counter("hello")
    ...     c.most_common(1)
    [('l', 2)]

    .. versionadded:: 0.1
    """

    _registry: ClassVar[dict[str, _Registration]] = {}
    _Server: ClassVar[type[Server]] = Server
    # Set by the stdlib's __init__, which typeshed does not describe.
    _address: Any
    _authkey: bytes
    _state: Any
    _serializer: str
    _Client: Callable[..., Any]
    _Listener: Callable[..., Any]

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        serializer: str = "shoal",
        ctx: object = None,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        checked = _check_address(address)
        if authkey is None:
            authkey = secrets.token_bytes(32)
        elif not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, got {type(authkey).__name__} {authkey!r}")
        listener, client = _connection_types(serializer)
        if not isinstance(shutdown_timeout, int | float) or shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be seconds >= 0, got {shutdown_timeout!r}")
        super().__init__(checked, authkey, "pickle")
        self._serializer = serializer
        self._Listener, self._Client = listener, client
        self._shutdown_timeout = float(shutdown_timeout)
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id once :meth:`start` ran, else ``None``."""
        return None if self._popen is None else self._popen.pid

    def _check_state(self, action: str) -> None:
        """Raise the stdlib's ``ProcessError``, worded for ``action``, unless started."""
        if self._state.value == _INITIAL:
            raise ProcessError(
                f"cannot {action}: the manager is not started; call start() or connect(),"
                " or use it in a with block"
            )
        if self._state.value == _SHUTDOWN:
            raise ProcessError(f"cannot {action}: the manager was shut down; start a new one")

    def _check_initial(self) -> None:
        if self._state.value == _STARTED:
            raise ProcessError("the manager's server is already started")
        if self._state.value == _SHUTDOWN:
            raise ProcessError("the manager was shut down: a manager starts only once")

    def _server_registry(self) -> dict[str, _ServerRegistration]:
        # The server needs no proxy types: they stay here (they may not even import there).
        return {t: (c, e, m, None) for t, (c, e, m, _) in self._registry.items()}

    def get_server(self) -> Server:
        """A :class:`Server` for this manager's registry, to run with ``serve_forever()``."""
        self._check_initial()
        return self._Server(
            self._server_registry(), self._address, bytes(self._authkey), self._serializer
        )

    def connect(self) -> None:
        """Use a server that is already running at ``address`` (started elsewhere)."""
        if isinstance(self._address, tuple) and self._address[1] == 0:
            raise ValueError(
                "connect() needs the address of a running manager server: pass"
                " address=(host, port) (and its authkey) to the constructor"
            )
        try:
            conn = self._Client(self._address, authkey=self._authkey)
        except (EOFError, OSError) as exc:
            raise ManagerLost(f"no manager server answers at {self._address!r}: {exc}") from exc
        try:
            _dispatch(conn, "dummy")
        finally:
            conn.close()
        self._state.value = _STARTED

    def start(
        self, initializer: Callable[..., object] | None = None, initargs: Iterable[object] = ()
    ) -> None:
        """Start the server process; return once it listens.

        Raises
        ------
        ProcessError
            When the manager was already started, or the server could not start (the
            message says why: an address in use, an initializer that raised, a
            registered callable that does not import in a fresh interpreter, ...).
        shoal.wire.UnpicklableError
            When the registry or the initializer cannot be serialized.
        """
        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        header = pickle.dumps({"sys_path": list(sys.path), "parent": os.getpid()})
        config = _SERIALIZER.dumps(
            (
                self._Server,
                self._server_registry(),
                self._address,
                bytes(self._authkey),
                self._serializer,
                initializer,
                tuple(initargs),
            )
        )[0]
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-c", _SERVER_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        stdin, stdout = popen.stdin, popen.stdout
        assert stdin is not None  # noqa: S101 - both are pipes
        assert stdout is not None  # noqa: S101
        try:
            try:
                _write_frame(stdin, header)
                _write_frame(stdin, bytes(config))
                stdin.flush()
            except BrokenPipeError:
                pass  # it died early: its report (or exit code) says why
            report = _read_report(popen, _START_TIMEOUT)
        except BaseException:
            _kill(popen)
            raise
        finally:
            stdout.close()
        kind, _, payload = report.partition(" ")
        if kind != "READY":
            _kill(popen)
            raise ProcessError(f"the manager server did not start: {json.loads(payload)}")
        address = json.loads(payload)
        self._address = tuple(address) if isinstance(address, list) else address
        self._popen = popen
        self._state.value = _STARTED
        self.shutdown = util.Finalize(
            self,
            _stop_server,
            args=(popen, self._address, self._state, self._shutdown_timeout),
            exitpriority=0,
        )

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to end (at most ``timeout`` seconds)."""
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)

    def _create(
        self, typeid: str, /, *args: object, **kwds: object
    ) -> tuple[managers.Token, tuple[str, ...]]:
        """Create a ``typeid`` object in the server: its token and exposed method names."""
        self._check_state(f"create a {typeid!r}")
        try:
            conn = self._Client(self._address, authkey=self._authkey)
        except (EOFError, OSError) as exc:
            raise ManagerLost(
                f"the manager at {self._address!r} is gone (its process ended): cannot"
                f" create a {typeid!r}"
            ) from exc
        try:
            ident, exposed = _dispatch(conn, "create", (typeid, *args), kwds)
        finally:
            conn.close()
        return managers.Token(typeid, self._address, ident), exposed

    def _make(self, typeid: str, /, *args: object, **kwds: object) -> BaseProxy:
        """Create a ``typeid`` object and return its proxy (what ``register`` methods do)."""
        token, exposed = self._create(typeid, *args, **kwds)
        proxytype = self._registry[typeid][3]
        proxy = proxytype(
            token, self._serializer, manager=self, authkey=self._authkey, exposed=exposed
        )
        conn = self._Client(token.address, authkey=self._authkey)
        try:
            _dispatch(conn, "decref", (token.id,))  # the proxy holds its own reference now
        finally:
            conn.close()
        return proxy

    @classmethod
    def register(  # noqa: PLR0917 - the stdlib's signature
        cls,
        typeid: str,
        callable: Callable[..., object] | None = None,
        proxytype: Callable[..., BaseProxy] | None = None,
        exposed: Sequence[str] | None = None,
        method_to_typeid: Mapping[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Register a type (or any callable returning an object) to share through managers.

        Parameters
        ----------
        typeid : str
            The name; with ``create_method`` it is also the manager's method creating one.
        callable : callable, optional
            Called in the server with the creation arguments; ``None`` registers a type
            that only methods return (through ``method_to_typeid``).
        proxytype : BaseProxy subclass or AutoProxy, optional
            The proxy class; default :func:`AutoProxy` (every exposed method forwarded).
        exposed : sequence of str, optional
            The method names proxies may call; default the proxy type's ``_exposed_``,
            else every public method of the object.
        method_to_typeid : mapping of str to str, optional
            Methods whose result stays in the server and comes back as a proxy of the
            registered typeid named here.
        create_method : bool
            Add a ``typeid`` method to the manager class.
        """
        if not isinstance(typeid, str) or not typeid.isidentifier():
            raise TypeError(f"typeid must be a str naming a method, got {typeid!r}")
        if callable is not None and not builtins.callable(callable):
            raise TypeError(f"callable for {typeid!r} must be callable or None, got {callable!r}")
        if proxytype is None:
            proxytype = AutoProxy
        elif not (
            proxytype is AutoProxy
            or (isinstance(proxytype, type) and issubclass(proxytype, BaseProxy))
        ):
            raise TypeError(
                f"proxytype for {typeid!r} must be a subclass of shoal's BaseProxy (or"
                f" AutoProxy), got {proxytype!r}: other proxies do not work on engines"
            )
        if isinstance(exposed, str) or (
            exposed is not None and not all(isinstance(name, str) for name in exposed)
        ):
            raise TypeError(
                f"exposed for {typeid!r} must be a sequence of method names, got {exposed!r}"
            )
        if method_to_typeid is not None and not (
            isinstance(method_to_typeid, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in method_to_typeid.items())
        ):
            raise TypeError(
                f"method_to_typeid for {typeid!r} must map method names to typeids (str to"
                f" str), got {method_to_typeid!r}"
            )
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        cls._registry[typeid] = (
            callable,
            None if exposed is None else tuple(exposed),
            None if method_to_typeid is None else dict(method_to_typeid),
            proxytype,
        )
        if create_method:

            def create(self: BaseManager, /, *args: object, **kwds: object) -> BaseProxy:
                return self._make(typeid, *args, **kwds)

            create.__name__ = create.__qualname__ = typeid
            create.__doc__ = f"Create a shared {typeid!r} object; return its proxy."
            setattr(cls, typeid, create)


class SyncManager(BaseManager):
    """A :class:`BaseManager` with the standard shared types registered.

    ``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
    ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``, ``Namespace``,
    ``Value``, ``Array``, ``list`` and ``dict``: the types of
    ``multiprocess.managers.SyncManager`` (without ``Pool``; shoal's ``Pool`` runs on the
    cluster). :func:`Manager` returns a started one.

    Examples
    --------
    >>> with SyncManager() as m:  # doctest: +SKIP
    ...     q = m.Queue()
    ...     rc[:].apply_sync(lambda q: q.put(os.getpid()), q)
    ...     sorted(q.get() for _ in rc.ids)

    .. versionadded:: 0.1
    """

    _registry: ClassVar[dict[str, _Registration]] = {}

    def _made(self, kind: type[_P], typeid: str, /, *args: object, **kwds: object) -> _P:
        return cast(_P, self._make(typeid, *args, **kwds))

    def Queue(self, maxsize: int = 0) -> QueueProxy:
        """A ``queue.Queue``."""
        return self._made(QueueProxy, "Queue", maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> QueueProxy:
        """A queue with ``task_done()`` and ``join()`` (a ``queue.Queue``)."""
        return self._made(QueueProxy, "JoinableQueue", maxsize)

    def Lock(self) -> AcquirerProxy:
        """A ``threading.Lock``."""
        return self._made(AcquirerProxy, "Lock")

    def RLock(self) -> AcquirerProxy:
        """A ``threading.RLock``: reentrant for the same process and thread."""
        return self._made(AcquirerProxy, "RLock")

    def Semaphore(self, value: int = 1) -> AcquirerProxy:
        """A ``threading.Semaphore``."""
        return self._made(AcquirerProxy, "Semaphore", value)

    def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy:
        """A ``threading.BoundedSemaphore``."""
        return self._made(AcquirerProxy, "BoundedSemaphore", value)

    def Condition(self, lock: AcquirerProxy | None = None) -> ConditionProxy:
        """A ``threading.Condition``, on ``lock`` (a Lock or RLock proxy) or a new RLock."""
        return self._made(ConditionProxy, "Condition", lock)

    def Event(self) -> EventProxy:
        """A ``threading.Event``."""
        return self._made(EventProxy, "Event")

    def Barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> BarrierProxy:
        """A ``threading.Barrier`` for ``parties`` waiters (``action`` runs in the server)."""
        return self._made(BarrierProxy, "Barrier", parties, action, timeout)

    def Namespace(self, **kwds: object) -> NamespaceProxy:
        """An object whose public attributes are shared."""
        return self._made(NamespaceProxy, "Namespace", **kwds)

    def Value(self, typecode: str | type[object], value: _T, lock: bool = True) -> ValueProxy[_T]:
        """A shared value: ``.value``, ``get()``, ``set(v)`` (``typecode``, e.g. ``"i"`` or
        ``ctypes.c_int``, is not enforced)."""
        return cast("ValueProxy[_T]", self._make("Value", typecode, value, lock))

    # The overloads of typeshed's array.array(): the typecode says what the items are.
    @overload
    def Array(
        self, typecode: _IntTypeCode, sequence: Iterable[int], lock: bool = True
    ) -> ArrayProxy[int]: ...
    @overload
    def Array(
        self, typecode: _FloatTypeCode, sequence: Iterable[float], lock: bool = True
    ) -> ArrayProxy[float]: ...
    @overload
    def Array(
        self, typecode: Literal["u"], sequence: Iterable[str], lock: bool = True
    ) -> ArrayProxy[str]: ...
    @overload
    def Array(
        self, typecode: str, sequence: Iterable[_ArrayItem], lock: bool = True
    ) -> ArrayProxy[_ArrayItem]: ...
    def Array(
        self, typecode: str, sequence: Iterable[_ArrayItem], lock: bool = True
    ) -> ArrayProxy[_ArrayItem]:
        """An ``array.array(typecode, sequence)``."""
        return cast("ArrayProxy[_ArrayItem]", self._make("Array", typecode, sequence, lock))

    def list(self, sequence: Iterable[_T] = (), /) -> ListProxy[_T]:
        """A list."""
        return cast("ListProxy[_T]", self._make("list", sequence))

    # The overloads of typeshed's dict(), as its SyncManager.dict has them.
    @overload
    def dict(self, /) -> DictProxy[_KT, _VT]: ...
    @overload
    def dict(self, /, **kwds: _VT) -> DictProxy[str, _VT]: ...
    @overload
    def dict(self, map: SupportsKeysAndGetItem[_KT, _VT], /) -> DictProxy[_KT, _VT]: ...
    @overload
    def dict(
        self, map: SupportsKeysAndGetItem[str, _VT], /, **kwds: _VT
    ) -> DictProxy[str, _VT]: ...
    @overload
    def dict(self, iterable: Iterable[tuple[_KT, _VT]], /) -> DictProxy[_KT, _VT]: ...
    @overload
    def dict(self, iterable: Iterable[tuple[str, _VT]], /, **kwds: _VT) -> DictProxy[str, _VT]: ...
    @overload
    def dict(self, iterable: Iterable[builtins.list[str]], /) -> DictProxy[str, str]: ...
    @overload
    def dict(self, iterable: Iterable[builtins.list[bytes]], /) -> DictProxy[bytes, bytes]: ...
    def dict(self, /, *args: object, **kwds: object) -> DictProxy[_KT, _VT]:
        """A dict (the arguments of ``dict()``)."""
        return cast("DictProxy[_KT, _VT]", self._make("dict", *args, **kwds))


for _typeid, _callable, _proxytype in (
    ("Queue", queue.Queue, QueueProxy),
    ("JoinableQueue", queue.Queue, QueueProxy),
    ("Lock", threading.Lock, AcquirerProxy),
    ("RLock", threading.RLock, AcquirerProxy),
    ("Semaphore", threading.Semaphore, AcquirerProxy),
    ("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy),
    ("Condition", threading.Condition, ConditionProxy),
    ("Event", threading.Event, EventProxy),
    ("Barrier", threading.Barrier, BarrierProxy),
    ("Namespace", managers.Namespace, NamespaceProxy),
    ("Value", getattr(managers, "Value"), ValueProxy),  # noqa: B009 - not in typeshed
    ("Array", getattr(managers, "Array"), ArrayProxy),  # noqa: B009
    ("list", list, ListProxy),
    ("dict", dict, DictProxy),
):
    SyncManager.register(_typeid, _callable, _proxytype, create_method=False)
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
del _typeid, _callable, _proxytype


def Manager(
    *,
    address: Address | None = None,
    authkey: bytes | None = None,
    serializer: str = "shoal",
    shutdown_timeout: float = 1.0,
) -> SyncManager:
    """A started :class:`SyncManager`, like ``multiprocess.Manager()``.

    Its proxies can be passed to tasks on any engine (``rc[:].apply_async(f, queue)``):
    they connect back to the manager from there. The server ends on ``shutdown()``, at
    the end of a ``with`` block, or when this process ends.

    Examples
    --------
    >>> with Manager() as m:  # doctest: +SKIP
    ...     counter, lock = m.Value("i", 0), m.Lock()
    ...     def add(counter, lock, n):
    ...         for _ in range(n):
    ...             with lock:
    ...                 counter.value += 1
    ...     rc[:].apply_sync(add, counter, lock, 1000)
    ...     counter.value
    2000

    .. versionadded:: 0.1
    """
    manager = SyncManager(address, authkey, serializer, shutdown_timeout=shutdown_timeout)
    manager.start()
    return manager
