"""What a manager, its server and its proxies share: signed connections and requests.

Theory of operation
-------------------
Every connection to a manager server (see :mod:`shoal.hub._compat.managers`) is a
``multiprocessing.connection`` connection, opened by a proxy or the manager and accepted
by the server, that this module makes safe for shoal's serializer:

1. **Connections authenticate, then every message is signed.** Connections
   authenticate with the authkey (an HMAC challenge both ways, the stdlib's), and then
   each side records the challenge's bytes (a fresh nonce from each side) and derives
   from them and the authkey one key per direction, so no key is used on two connections
   (:class:`_Handshake`); the objects travel as shoal messages
   (:class:`shoal.wire.Codec`: HMAC-SHA256 signature, link stamp, a sequence number that
   refuses replays). Nothing in a message is loaded before it verified; a message that
   fails (unsigned, signed with another key, replayed, recorded on another connection)
   closes its connection, unused, and raises the wire's
   :class:`~shoal.wire.RemoteInputError` on that side. Nothing is encrypted.
2. **Values travel with shoal's serializer** (``serializer="shoal"``, the default): dill
   semantics at C-pickle speed, so ``queue.put(lambda x: x + 1)`` works as it does with
   ``multiprocess``. ``serializer="pickle"`` selects the stdlib's pickle and the stdlib's
   connections instead: authenticated once by the challenge, then **unsigned** pickles,
   which anyone able to write to the TCP stream could replace
   (:func:`_connection_types`).
3. **Requests to the server itself** (``create``, ``incref``, ``decref``, ...) are the
   stdlib's ``(None, method, args, kwds)`` tuples; a reply other than ``#RETURN``
   becomes an exception (:func:`_dispatch`, :func:`_error_of`). A manager whose server
   cannot be reached raises :class:`ManagerLost`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from multiprocessing import connection, managers
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

from shoal.wire import (
    AuthenticationError,
    Codec,
    Message,
    RemoteInputError,
    ReplayGuard,
    Serializer,
    new_header,
)

__all__ = ["Address", "ManagerLost"]

#: Where a manager listens: ``(host, port)`` for TCP, or a Unix socket path.
Address: TypeAlias = "tuple[str, int] | str"

# The stdlib's manager states (multiprocessing.managers.State, not in typeshed): a
# manager's and, through it, its proxies'.
_INITIAL: Final = 0
_STARTED: Final = 1
_SHUTDOWN: Final = 2

_SERIALIZERS: Final = ("shoal", "pickle")

# One frame per message: a manager connection carries length-prefixed byte strings.
_SERIALIZER: Final = Serializer(threshold=sys.maxsize)
_MESSAGE_TYPE: Final = "manager_message"
_KEY_LABEL: Final = b"shoal-manager"


class ManagerLost(ConnectionError):
    """The manager behind a proxy is gone: it was shut down, its process ended (its
    creator exited or was killed), or its address cannot be reached.

    Nothing sent to it will be answered; the objects it held are lost. Start a new
    manager and make new proxies.
    """


# -- the connection: shoal's serializer over multiprocessing.connection --------------------

if TYPE_CHECKING:
    _ConnectionBase = connection.Connection[Any, Any]
else:  # generic only in typeshed's stubs
    _ConnectionBase = connection.Connection


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


# -- requests to the server ---------------------------------------------------------------


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
