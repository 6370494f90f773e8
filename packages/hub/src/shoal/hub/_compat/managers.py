"""Managers: the ``multiprocess.managers`` API, with proxies that work on any engine.

Theory of operation
-------------------
A manager is a server process that holds Python objects (a ``queue.Queue``, a
``threading.Lock``, a dict, ...) and *proxies* that forward method calls to them. This
module builds on the stdlib's :mod:`multiprocessing.managers`, so that code written for
``multiprocess``/``multiprocessing`` managers runs unchanged: the server is the stdlib's
``Server`` (a thread per connection), the registry has the stdlib's layout, and the
proxies are ``multiprocessing.managers.BaseProxy`` subclasses. What changes, and why:

1. **A proxy pickles with everything it needs.** The stdlib only puts the authkey in a
   proxy's pickle while spawning a child process; an engine unpickling a task argument
   would then authenticate with its own key and fail. Here ``BaseProxy.__reduce__``
   always carries the authkey, the exposed method names, and the proxy types that its
   methods may return (``method_to_typeid``), so a proxy rebuilt on an engine connects
   back, increments the referent's count, and builds returned proxies without the
   manager object. Whoever holds a proxy's pickle can use the manager: it travels only
   inside shoal's signed messages.
2. **The server is a fresh interpreter** (``sys.executable``), started with
   :mod:`subprocess`, never forked: the client has zmq threads, and a fork of a threaded
   process can deadlock. Its registry and initializer travel over the child's stdin as
   shoal frames (``shoal.wire.Serializer``), so lambdas and interactively defined
   functions can be registered. The parent's ``sys.path`` goes with them.
3. **The server ends with its creator.** Its stdin stays open for its whole life and the
   creator writes nothing more: end of file means the creator is gone (exited, crashed
   or SIGKILLed). The server also polls its parent pid every 0.5 s. ``shutdown()``, the
   ``with`` block's end, garbage collection of the manager and the creator's normal exit
   (a ``multiprocessing.util.Finalize`` with an exit priority) all close that pipe and
   wait for the process; after ``shutdown_timeout`` it is terminated, then killed.
4. **It listens on loopback TCP by default** (``("127.0.0.1", 0)``: a random port), which
   every engine of a local cluster reaches. Pass ``address=(host, port)`` for engines on
   other hosts; a wildcard host (``""``, ``"0.0.0.0"``) is advertised as
   ``socket.gethostname()``. Connections authenticate with the authkey (an HMAC
   challenge both ways, the stdlib's), and then **every message is signed**: each side
   records the challenge's bytes (a fresh nonce from each side) and derives from them and
   the authkey one key per direction, so no key is used on two connections; the objects
   travel as shoal messages (:class:`shoal.wire.Codec`: HMAC-SHA256 signature, link stamp,
   a sequence number that refuses replays). Nothing in a message is loaded before it
   verified; a message that fails (unsigned, signed with another key, replayed, recorded
   on another connection) closes its connection, unused, and raises the wire's
   :class:`~shoal.wire.RemoteInputError` on that side. Nothing is encrypted.
5. **Values travel with shoal's serializer** (``serializer="shoal"``, the default): dill
   semantics at C-pickle speed, so ``queue.put(lambda x: x + 1)`` works as it does with
   ``multiprocess``. ``serializer="pickle"`` selects the stdlib's pickle and the stdlib's
   connections instead: authenticated once by the challenge, then **unsigned** pickles,
   which anyone able to write to the TCP stream could replace.
6. **Failures are named.** A method the manager does not expose raises
   ``AttributeError`` before anything is sent; a proxy whose manager is gone (shut down,
   killed, unreachable) raises :class:`ManagerLost` instead of hanging or raising a bare
   ``EOFError``, also for a call in flight when the server stopped (the stdlib's server
   would answer it ``None``); misconfigured managers and registrations raise
   ``TypeError`` or ``ValueError`` naming the argument.

A referent lives while some proxy holds it, in any process: keep the client's proxy
until the tasks that received it have unpickled it (e.g. until their results are in).
"""

from __future__ import annotations

import array
import builtins
import contextlib
import hashlib
import hmac
import json
import math
import os
import pickle
import queue
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing import ProcessError, connection, managers, process, util
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Generic,
    Literal,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

from shoal.wire import (
    AuthenticationError,
    Codec,
    Message,
    RemoteInputError,
    ReplayGuard,
    Serializer,
    new_header,
)

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

#: Where a manager listens: ``(host, port)`` for TCP, or a Unix socket path.
Address: TypeAlias = "tuple[str, int] | str"

Token = managers.Token
Namespace = managers.Namespace

# Not in typeshed's stubs of multiprocessing, but public in the stdlib module.
_rebuild_proxy: Final[Callable[..., Any]] = getattr(managers, "RebuildProxy")  # noqa: B009

# The stdlib's manager states (multiprocessing.managers.State, not in typeshed).
_INITIAL: Final = 0
_STARTED: Final = 1
_SHUTDOWN: Final = 2

_LOOPBACK: Final = ("127.0.0.1", 0)
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - recognised, not bound
_START_TIMEOUT: Final = 60.0
_PARENT_POLL: Final = 0.5
# Names every server answers whatever a type exposes (the stdlib's fallback_mapping).
_FALLBACK_METHODS: Final = frozenset({"__str__", "__repr__", "#GETVALUE"})
_SERIALIZERS: Final = ("shoal", "pickle")

# One frame per message: a manager connection carries length-prefixed byte strings.
_SERIALIZER: Final = Serializer(threshold=sys.maxsize)
_MESSAGE_TYPE: Final = "manager_message"
_KEY_LABEL: Final = b"shoal-manager"

_P = TypeVar("_P", bound="BaseProxy")
_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
# An array.array's items, by typecode: integers, floats or one-character strings.
_ArrayItem = TypeVar("_ArrayItem", int, float, str)
_IntTypeCode: TypeAlias = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"]
_FloatTypeCode: TypeAlias = Literal["f", "d"]

# What makes a proxy from a token: a BaseProxy subclass, or AutoProxy.
_ProxyType: TypeAlias = "Callable[..., BaseProxy]"
# A registry entry, the stdlib's layout: (callable, exposed, method_to_typeid, proxytype).
_Registration: TypeAlias = (
    "tuple[Callable[..., object] | None, tuple[str, ...] | None, dict[str, str] | None, _ProxyType]"
)
# The server's copy: no proxy types (they may not even import there).
_ServerRegistration: TypeAlias = (
    "tuple[Callable[..., object] | None, tuple[str, ...] | None, dict[str, str] | None, None]"
)


class ManagerLost(ConnectionError):
    """The manager behind a proxy is gone: it was shut down, its process ended (its
    creator exited or was killed), or its address cannot be reached.

    Nothing sent to it will be answered; the objects it held are lost. Start a new
    manager and make new proxies.
    """


# -- the connection: shoal's serializer over multiprocessing.connection --------------------

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

    _ConnectionBase = connection.Connection[Any, Any]
else:  # generic only in typeshed's stubs
    _ConnectionBase = connection.Connection

if TYPE_CHECKING or sys.version_info >= (3, 13):
    _StdDictProxy = managers.DictProxy
    _StdListProxy = managers.ListProxy
else:  # not subscriptable at run time before Python 3.13: made so the stdlib's way

    class _StdDictProxy(managers.DictProxy):
        __class_getitem__ = classmethod(types.GenericAlias)

    class _StdListProxy(managers.ListProxy):
        __class_getitem__ = classmethod(types.GenericAlias)


class _Connection(_ConnectionBase):
    """A ``multiprocessing.connection.Connection`` whose objects travel as signed shoal
    messages: serialized by shoal's serializer (functions and lambdas by value), signed and
    stamped by :class:`shoal.wire.Codec` with this connection's keys, and verified (link
    MAC, replay, signature) before anything in them is loaded.

    A message that fails verification closes the connection and raises the wire's
    :class:`~shoal.wire.RemoteInputError`: a byte stream cannot find the next honest message
    after a bad one.
    """

    _send_codec: Codec
    _recv_codec: Codec

    def send(self, obj: Any) -> None:
        # One head frame: the serializer's threshold keeps every buffer in band.
        (head,) = self._send_codec.encode(Message(new_header(_MESSAGE_TYPE, ""), content=obj))
        self.send_bytes(head)

    def recv(self) -> Any:
        frame = self.recv_bytes()
        try:
            content = self._recv_codec.decode([frame], content=False).content
        except RemoteInputError as exc:
            self.close()
            if sys.version_info >= (3, 11):
                exc.add_note("the manager connection was closed; nothing in the message was used")
            raise
        # Loaded only now, so that an authenticated message that cannot be loaded here (a
        # class this process cannot import) fails as before: an error, the connection kept.
        return content.load(_SERIALIZER)


class _Handshake(_Connection):
    """A :class:`_Connection` during the stdlib's authkey challenge, which uses
    ``send_bytes``/``recv_bytes``: it records what passes (both sides see the same bytes in
    the same order), and on the first ``send``/``recv`` derives the connection's keys from
    the authkey and that record, then becomes a plain :class:`_Connection`.

    Each side's challenge carries a nonce it drew, so a key of this connection was never
    used before: a signed message recorded on another connection does not verify here.
    """

    _authkey: bytes
    _is_server: bool
    _transcript: list[bytes]

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        super().send_bytes(buf, offset, size)
        view = memoryview(buf).cast("B")
        self._transcript.append(bytes(view[offset : None if size is None else offset + size]))

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        data = super().recv_bytes(maxlength)
        self._transcript.append(data)
        return data

    def send(self, obj: Any) -> None:
        self._start()
        _Connection.send(self, obj)

    def recv(self) -> Any:
        self._start()
        return _Connection.recv(self)

    def _start(self) -> None:
        """Key the codecs from the challenge's record; become a plain :class:`_Connection`."""
        if not self._transcript:
            self.close()
            raise AuthenticationError(
                "a shoal manager connection carries no messages before the authkey challenge",
                hint="connect with the manager's authkey",
            )
        record = hashlib.sha256()
        for data in self._transcript:
            record.update(len(data).to_bytes(8, "little"))
            record.update(data)
        digest = record.digest()
        to_server, to_client = (
            hmac.new(self._authkey, _KEY_LABEL + direction + digest, hashlib.sha256).digest()
            for direction in (b" to server ", b" to client ")
        )
        send_key, recv_key = (to_client, to_server) if self._is_server else (to_server, to_client)
        # The codec's own link stamps what this connection sends. The guard refuses what is
        # not after the last message accepted; its window is moot (the keys are new: nothing
        # recorded before this connection verifies), so clocks of other hosts do not matter.
        self._send_codec = Codec(send_key, serializer=_SERIALIZER, replay=None)
        self._recv_codec = Codec(
            recv_key, serializer=_SERIALIZER, replay=ReplayGuard(window=math.inf)
        )
        del self._authkey, self._is_server, self._transcript
        cast(_Connection, self).__class__ = _Connection


def _shoal_connection(
    conn: connection.Connection[Any, Any], authkey: bytes, *, is_server: bool
) -> _Connection:
    """The same connection, before its authkey challenge, sending and receiving signed
    messages once the challenge passed (:class:`_Handshake`)."""
    # The object changes class in place: Python 3.10 and 3.11 have no Connection.detach()
    # to hand its handle to a new object.
    conn.__class__ = _Handshake
    handshake = cast(_Handshake, conn)
    handshake._authkey = bytes(authkey)
    handshake._is_server = is_server
    handshake._transcript = []
    return handshake


class _Listener:
    """Wraps a ``multiprocessing.connection.Listener`` to hand out :class:`_Connection`\\ s.

    With ``challenge``, ``accept()`` runs the authkey challenge as the stdlib's listener
    does; without, the caller runs it (the manager's ``Server`` does, in each connection's
    thread).
    """

    def __init__(self, listener: connection.Listener, authkey: bytes, *, challenge: bool) -> None:
        self._listener = listener
        self._authkey = bytes(authkey)
        self._challenge = challenge

    @property
    def address(self) -> Any:
        return self._listener.address

    def accept(self) -> _Connection:
        conn = _shoal_connection(_no_delay(self._listener.accept()), self._authkey, is_server=True)
        if self._challenge:
            try:  # what the stdlib's Listener.accept() does with an authkey
                connection.deliver_challenge(conn, self._authkey)
                connection.answer_challenge(conn, self._authkey)
            except BaseException:
                conn.close()
                raise
        return conn

    def close(self) -> None:
        self._listener.close()


def _no_delay(conn: connection.Connection[Any, Any]) -> connection.Connection[Any, Any]:
    """``conn`` with Nagle's algorithm off when it is TCP: a request written right behind
    the challenge's last reply would otherwise wait for a delayed ack (40 ms), and making
    a proxy opens several connections (176 ms before, 3 ms after, per ``m.dict()``)."""
    with contextlib.suppress(OSError, ValueError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            sock.close()
    return conn


def _listen(
    address: Address | None = None,
    family: str | None = None,
    backlog: int = 1,
    authkey: bytes | None = None,
) -> _Listener:
    """``multiprocessing.connection.Listener``, handing out :class:`_Connection`\\ s."""
    if authkey is None:
        raise ValueError("a shoal manager listener needs the manager's authkey to sign with")
    return _Listener(connection.Listener(address, family, backlog), authkey, challenge=True)


def _client(address: Any, family: str | None = None, authkey: bytes | None = None) -> _Connection:
    """``multiprocessing.connection.Client`` (the same handshake), as a :class:`_Connection`."""
    if authkey is None:
        raise ValueError("a shoal manager connection needs the manager's authkey to sign with")
    conn = _shoal_connection(
        _no_delay(connection.Client(address, family)), authkey, is_server=False
    )
    try:  # what Client() does with an authkey, on the recording connection
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    except BaseException:
        conn.close()
        raise
    return conn


def _connection_types(serializer: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The ``(Listener, Client)`` pair for a manager's ``serializer``."""
    if serializer == "shoal":
        return _listen, _client
    if serializer == "pickle":
        return connection.Listener, connection.Client
    raise ValueError(f"serializer must be one of {_SERIALIZERS}, got {serializer!r}")


def _dispatch(
    conn: Any, methodname: str, args: tuple[Any, ...] = (), kwds: Mapping[str, Any] | None = None
) -> Any:
    """One request to the server itself (``create``, ``incref``, ...): its result or error."""
    conn.send((None, methodname, args, dict(kwds or {})))
    kind, result = conn.recv()
    if kind == "#RETURN":
        return result
    raise _error_of(kind, result)


def _error_of(kind: str, result: Any) -> BaseException:
    """The exception for a server's non-``#RETURN`` reply (the stdlib's convert_to_error)."""
    if kind == "#ERROR" and isinstance(result, BaseException):
        return result
    if kind == "#UNSERIALIZABLE":
        return managers.RemoteError(f"the manager could not serialize its reply:\n{result}")
    if kind == "#TRACEBACK":
        return managers.RemoteError(result)
    return ValueError(f"unrecognized reply from the manager: {kind!r}")


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


# -- proxies ----------------------------------------------------------------------------


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


# -- the server ---------------------------------------------------------------------------


def _advertised(address: Any) -> Any:
    """The address to hand to peers: a wildcard host becomes this machine's name."""
    if isinstance(address, tuple) and address[0] in _WILDCARD_HOSTS:
        return (socket.gethostname(), address[1])
    return address


class Server(managers.Server):
    """The stdlib's manager server with shoal's connections, serving until its creator ends.

    ``BaseManager.get_server()`` returns one; ``serve_forever()`` serves until the
    ``shutdown`` request (and, for a server started by :meth:`BaseManager.start`, until the
    creator's pipe closes or the parent process changes).
    """

    listener: Any

    def __init__(
        self,
        registry: dict[str, tuple[Any, Any, Any, Any]],
        address: Address | None,
        authkey: bytes,
        serializer: str,
    ) -> None:
        listen = _connection_types(serializer)[0]
        super().__init__(registry, address, authkey, "pickle")  # binds the socket
        if listen is _listen:  # the stdlib's handle_request() runs the challenge
            self.listener = _Listener(self.listener, authkey, challenge=False)
        self.address = _advertised(self.address)
        self._parent_pid: int | None = None
        self._parent_pipe: IO[bytes] | None = None

    def watch_parent(self, pid: int, pipe: IO[bytes]) -> None:
        """Stop serving when ``pipe`` reaches end of file or the parent is no longer ``pid``."""
        self._parent_pid = pid
        self._parent_pipe = pipe

    def _watch_pipe(self, pipe: IO[bytes]) -> None:
        try:
            while pipe.read(65536):
                pass
        except OSError:
            pass
        self.stop_event.set()

    def accept_connection(self, c: Any, name: str) -> None:
        """Serve one proxy connection until its peer leaves or the server stops."""
        super().accept_connection(c, name)
        # serve_client() returned because the server is stopping. The stdlib would now send
        # ('#RETURN', None), which a proxy waiting on this connection takes as the answer
        # to its call (e.g. get() returning None): end the thread without a reply instead.
        # handle_request() catches the SystemExit and closes the connection.
        sys.exit(0)

    def serve_forever(self) -> None:
        """Serve until stopped, then exit the process (``SystemExit``), as the stdlib does."""
        self.stop_event = threading.Event()
        # RebuildProxy reads it: proxies unpickled here (nested ones) are manager-owned.
        setattr(process.current_process(), "_manager_server", self)  # noqa: B010
        threading.Thread(target=self.accepter, name="manager-accepter", daemon=True).start()
        if self._parent_pipe is not None:
            threading.Thread(
                target=self._watch_pipe,
                args=(self._parent_pipe,),
                name="manager-parent",
                daemon=True,
            ).start()
        try:
            while not self.stop_event.wait(_PARENT_POLL):
                if self._parent_pid is not None and os.getppid() != self._parent_pid:
                    break
        except KeyboardInterrupt:
            pass
        sys.exit(0)


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(struct.pack("!Q", len(data)))
    stream.write(data)


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("the manager's creator closed the pipe before the configuration")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> bytes:
    (size,) = struct.unpack("!Q", _read_exactly(stream, 8))
    return _read_exactly(stream, size)


def _serve_child() -> None:
    """The manager server process: read the configuration, report, serve (see start())."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the creator (bpo-36368)
    pipe, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        header = pickle.loads(_read_frame(pipe))
        parent_path = header["sys_path"]  # the creator's first, then ours ('' is the cwd)
        sys.path[:] = [*parent_path, *(p for p in sys.path if p not in parent_path)]
        # The creator's own configuration, over our stdin (start() wrote it).
        config = cast("tuple[Any, ...]", _SERIALIZER.loads([_read_frame(pipe)]))
        server_type, registry, address, authkey, serializer, initializer, initargs = config
        if initializer is not None:
            initializer(*initargs)
        server = server_type(registry, address, authkey, serializer)
    except BaseException as exc:
        traceback.print_exc()
        out.write(b"ERROR " + json.dumps(f"{type(exc).__name__}: {exc}").encode() + b"\n")
        out.flush()
        sys.exit(1)
    out.write(b"READY " + json.dumps(server.address).encode() + b"\n")
    out.flush()
    os.dup2(2, 1)  # later prints go to stderr; the creator stopped reading stdout
    server.watch_parent(header["parent"], pipe)
    server.serve_forever()


_SERVER_MAIN: Final = "from shoal.hub._compat.managers import _serve_child; _serve_child()"


def _read_report(popen: subprocess.Popen[bytes], timeout: float) -> str:
    """The server's one status line (``READY ...``/``ERROR ...``), or why there is none."""
    fd = cast(IO[bytes], popen.stdout).fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"ERROR {json.dumps(f'no report within {timeout:g} s')}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                code = popen.wait()
                message = f"its process exited with code {code} first (its stderr says why)"
                return f"ERROR {json.dumps(message)}"
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _kill(popen: subprocess.Popen[bytes]) -> None:
    """End a server that failed to start."""
    if popen.stdin is not None:
        with contextlib.suppress(OSError):
            popen.stdin.close()
    popen.kill()
    popen.wait()


def _stop_server(
    popen: subprocess.Popen[bytes],
    address: Any,
    state: Any,
    timeout: float,
) -> None:
    """End the server process (the manager's finalizer): close its pipe, wait, insist."""
    state.value = _SHUTDOWN
    if popen.stdin is not None:
        with contextlib.suppress(OSError):
            popen.stdin.close()  # the server watches it: end of file means stop
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    managers.BaseProxy._address_to_local.pop(address, None)


# -- managers ---------------------------------------------------------------------------


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
