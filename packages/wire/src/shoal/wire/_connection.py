"""The ``multiprocess.connection`` API over zmq: ``Listener``, ``Client``, ``Pipe``, ``wait``.

Theory of operation
-------------------
A :class:`Connection` moves whole messages between two processes. Every message is a
shoal message signed with the connection's key (the *authkey*) by a
:class:`~shoal.wire.Session`'s codec; a message whose signature fails is dropped,
counted and logged, never answered and never unpickled. The rules:

1. **Keys.** ``authkey=None`` means ``multiprocessing.current_process().authkey``. An
   empty key is refused; a key shorter than 16 bytes (``b"secret"``) is stretched to 32
   bytes with SHA-256, so multiprocess-style keys work while the codec keeps its
   16-byte minimum. A :func:`Pipe` gets a fresh random key of its own.
2. **Listener and Client.** The listener binds a ROUTER. ``Client`` connects a DEALER and
   sends a signed ``connect`` request; ``accept`` answers it with the url of a fresh
   PAIR socket bound for this connection alone (a random port on the listener's
   interface, or a new ipc path beside the listener's), then waits for the client's
   signed ``hello`` there. A client whose key is wrong is never answered, so ``Client``
   gives up after ``timeout`` seconds with :class:`HandshakeError`.
3. **Pipes.** ``Pipe()`` makes, for each end, a listening Unix socket on an ipc path
   in a private (0700) folder. An end opens its zmq sockets *lazily, in the process
   that first uses it*: a PULL that adopts its listening socket (``ZMQ_USE_FD``) and a
   PUSH connected to its peer's path. So a peer can connect and send before the end is
   opened, and nothing sent is lost. zmq sockets do not survive ``fork`` and cannot be
   pickled, so an end carries only (paths, listening fd, key, role): a ``fork`` child
   inherits the fd, a ``spawn`` child gets it through ``DupFd``.
4. **End of file.** ``close`` sends a signed ``close`` message; the peer's ``recv``
   returns what came before it and then raises :class:`EOFError`. A peer that dies
   without closing is noticed by a socket monitor: once a peer connection completed
   its ZMTP handshake and every such connection is down again (closed by the kernel,
   or after ZMTP heartbeats went unanswered for :data:`HEARTBEAT_TIMEOUT` seconds),
   ``recv`` drains what arrived and raises ``EOFError``, ``poll`` returns true, and
   ``send`` raises ``BrokenPipeError``. Closing an end that was never used in this
   process signals nothing (it may be in use elsewhere: a child's copy).
5. **Zero copy.** Large buffers (numpy arrays, big bytes, ``send_bytes`` payloads) go
   as their own frames without a copy; ``send`` then waits until zmq has written them,
   because a buffer changed before that would break its signature. Before the peer has
   connected at all, large buffers are copied instead, so an end can send to a peer
   that opens later in the same thread.
6. **Exit.** Each open end registers a ``multiprocessing.util.Finalize``: when it is
   garbage collected, or the process exits (including a ``multiprocessing`` child),
   it closes gracefully, and the process's zmq context is then terminated so queued
   messages are flushed for up to :data:`CLOSE_LINGER` seconds.
7. **Fork.** A ``fork`` child has no zmq I/O threads, and often leaves with ``os._exit``
   (no finalizers, no flush). So an end that a child inherited through ``fork`` (the
   object was made in another process: not unpickled here) sends without zmq: over a
   blocking OS socket connected to the peer's address, speaking ZMTP 2.0 as a PUSH
   (libzmq still accepts it, and unlike ZMTP 3 it lets a writer send right behind its
   greeting, before the peer accepted). ``send`` returns once the kernel holds the
   whole message, so it arrives even if the child ``_exit``s at once, or before the
   peer opened its end -- as with a multiprocess pipe. Receiving in the child uses zmq
   (a fresh context). A :func:`Client` connection has its listener's side door for
   this: each accepted connection also binds a PULL (its url comes in the ``accept``
   reply) that forked children of the client write to; its replies still go to the
   process that called ``Client``, so ``recv`` in the child raises ``OSError``, as
   does any use of an accepted end in a fork child (its PAIR belongs to the parent).
   A forked child's ``close`` of a ``Client`` copy signals nothing (the parent's copy
   lives on); on a ``Pipe`` end it sends the ``close`` message.

One end is used by one process at a time. Connections made by ``Listener``/``Client``
cannot be pickled (their sockets are bound to the process that opened them); use
``Pipe()`` to hand a connection to a child process.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import multiprocessing
import multiprocessing.reduction
import multiprocessing.util
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final, NamedTuple, Protocol, TypeAlias, TypeVar, final

import zmq

from ._curve import bind as _checked_bind
from ._errors import AuthenticationError, InvalidKeyError
from ._message import Codec, Message, RawContent, new_header
from ._serialize import Buffer, Serializer
from ._session import Session

__all__ = [
    "CLOSE_LINGER",
    "HEARTBEAT_TIMEOUT",
    "Address",
    "Client",
    "Connection",
    "HandshakeError",
    "Listener",
    "Pipe",
    "wait",
]

log = logging.getLogger("shoal.wire.connection")

#: An address as ``multiprocessing.connection`` takes it: a zmq url, a ``(host, port)``
#: tuple, or a filesystem path (an ipc socket).
Address: TypeAlias = "str | tuple[str, int]"

#: Seconds of silence after which a peer is declared dead (ZMTP heartbeats).
HEARTBEAT_TIMEOUT: Final = 3.0
_HEARTBEAT_IVL_MS: Final = 1000
#: Seconds a closing end (or an exiting process) keeps trying to deliver queued messages.
CLOSE_LINGER: Final = 5.0
_RECONNECT_IVL_MS: Final = 20
_HANDSHAKE_TIMEOUT: Final = 10.0
_MONITOR_EVENTS: Final = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
)
_MAX_IPC_PATH: Final = 100  # sun_path holds 104-108 bytes, depending on the OS

# Message types on a connection.
_OBJ: Final = "obj"
_BYTES: Final = "bytes"
_CLOSE: Final = "close"
_HELLO: Final = "hello"
_CONNECT: Final = "connect"
_ACCEPT: Final = "accept"
_IN_BAND: Final = Serializer(threshold=1 << 62)


class HandshakeError(AuthenticationError, multiprocessing.AuthenticationError):
    """No authenticated answer came from a listener within the client's timeout.

    Raised by :func:`Client`. A listener drops messages signed with another key without
    answering, so a wrong ``authkey`` looks exactly like no listener at all. Check that
    both ends use the same authkey and that a listener is running (and accepting) at
    the address; pass a longer ``timeout`` if the listener is slow to ``accept``.
    Catchable as :class:`shoal.wire.AuthenticationError` and as
    :class:`multiprocessing.AuthenticationError`.

    .. versionadded:: 0.1
    """

    hint = "use the listener's authkey, and check that it is running and accepting"


# -- keys and addresses -----------------------------------------------------------------
def _resolve_authkey(authkey: bytes | None) -> bytes:
    """The signing key for ``authkey`` (rule 1 of the module docstring)."""
    if authkey is None:
        authkey = multiprocessing.current_process().authkey
    if not isinstance(authkey, bytes | bytearray):
        raise TypeError(f"authkey must be bytes, got {type(authkey).__name__}")
    if not authkey:
        raise InvalidKeyError(
            "authkey is empty: messages would be unauthenticated",
            hint="pass the same non-empty bytes to both ends, e.g. os.urandom(32)",
        )
    key = bytes(authkey)
    return key if len(key) >= 16 else hashlib.sha256(key).digest()


class _Where(NamedTuple):
    """An address resolved: the zmq url, and how to report it back to the caller."""

    url: str
    form: str  # "url", "tuple" or "path"
    host: str = ""  # for "tuple": the host as the caller wrote it


def _resolve_address(address: Address | None, family: str | None) -> _Where:
    """Turn a multiprocessing-style address into a zmq url (``*`` for port 0)."""
    if family not in (None, "AF_INET", "AF_INET6", "AF_UNIX"):
        raise ValueError(
            f"family must be 'AF_INET', 'AF_INET6' or 'AF_UNIX', got {family!r}"
            " (named pipes, 'AF_PIPE', are not available over zmq)"
        )
    if address is None:
        if family == "AF_UNIX":
            path = os.path.join(_private_dir(), f"listener-{secrets.token_hex(6)}")
            return _Where(f"ipc://{path}", "path")
        host = "::1" if family == "AF_INET6" else "127.0.0.1"
        address = (host, 0)
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or not isinstance(address[1], int):
            raise TypeError(f"a tuple address must be (host: str, port: int), got {address!r}")
        given, port = address
        host = {"localhost": "127.0.0.1", "": "0.0.0.0"}.get(given, given)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return _Where(f"tcp://{host}:{port or '*'}", "tuple", given)
    if isinstance(address, str):
        if "://" in address:
            return _Where(address, "url")
        return _Where(f"ipc://{address}", "path")
    raise TypeError(
        f"address must be a zmq url, a (host, port) tuple or an ipc path, got {address!r}"
    )


def _report(where: _Where, url: str) -> Address:
    """``url`` (an actual endpoint) in the form the caller gave its address."""
    if where.form == "url":
        return url
    if where.form == "path":
        return url.partition("://")[2]
    host, _, port = url.partition("://")[2].rpartition(":")
    return (where.host or host.strip("[]"), int(port))


def _configure(sock: zmq.Socket[Any], url: str) -> None:
    sock.linger = 0
    sock.heartbeat_ivl = _HEARTBEAT_IVL_MS
    sock.heartbeat_timeout = int(HEARTBEAT_TIMEOUT * 1000)
    sock.heartbeat_ttl = int(2 * HEARTBEAT_TIMEOUT * 1000)
    sock.reconnect_ivl = _RECONNECT_IVL_MS
    if url.startswith(("tcp://[", "tcp://::")):
        sock.ipv6 = True


# -- per-process resources --------------------------------------------------------------
_lock = threading.Lock()
_context_of: dict[int, zmq.Context[Any]] = {}
_dir_of: dict[int, str] = {}
# Per process: connections of which one end was closed here (see _Link.close).
_half_closed: dict[int, set[str]] = {}


def _context() -> zmq.Context[Any]:
    """This process's zmq context (a fresh one after ``fork``), terminated at exit."""
    pid = os.getpid()
    with _lock:
        ctx = _context_of.get(pid)
        if ctx is None:
            _context_of.clear()  # a fork child must not touch its parent's context
            ctx = _context_of[pid] = zmq.Context()
            multiprocessing.util.Finalize(None, _destroy_context, args=(ctx, pid), exitpriority=0)
        return ctx


def _destroy_context(ctx: zmq.Context[Any], pid: int) -> None:
    """At exit: flush what the closed sockets still queue, then end the context."""
    if os.getpid() == pid and not ctx.closed:
        ctx.destroy(linger=0)


def _private_dir() -> str:
    """A folder only this user can enter, for ipc sockets; removed when the process exits."""
    pid = os.getpid()
    with _lock:
        path = _dir_of.get(pid)
        if path is None:
            _dir_of.clear()
            path = _dir_of[pid] = tempfile.mkdtemp(prefix="shoal-")
            multiprocessing.util.Finalize(None, _remove_dir, args=(path, pid), exitpriority=-1)
        return path


def _remove_dir(path: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


# -- the sockets of one end, in one process ---------------------------------------------
class _Plan(NamedTuple):
    """Which sockets an end opens: one PAIR (``pair_url``), or a PULL and/or a PUSH."""

    pair_url: str | None = None
    pair_bind: bool = False
    in_url: str | None = None  # PULL, bound here
    out_url: str | None = None  # PUSH, connected to the peer's PULL
    # The accepted end's side door (rule 7): bound there (pair_bind), known to the client.
    side_url: str | None = None


# ZMTP 2.0's greeting for a PUSH with an empty identity: signature, revision 1, socket
# type, then the identity as a final empty frame. No security handshake follows.
_ZMTP2_GREETING: Final = b"\xff" + bytes(7) + b"\x01\x7f\x01" + bytes((zmq.PUSH, 0, 0))
_ZMTP_MORE: Final = 1
_ZMTP_LONG: Final = 2
_IOV_MAX: Final = 512  # vectors per sendmsg(); POSIX guarantees at least 16, Linux 1024
_NOSIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)


class _StreamWriter:
    """A PUSH peer on a blocking OS socket: a message sent is in the kernel (rule 7).

    Frames go without a copy (``sendmsg`` reads the buffers); a message the kernel did
    not take in full raises, and the peer's zmq drops the partial message with the
    connection, so nothing arrives half or twice.
    """

    def __init__(self, url: str, name: str) -> None:
        scheme, _, rest = url.partition("://")
        address: Any
        if scheme == "ipc":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = rest
        elif scheme == "tcp":
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (host, int(port))
        else:
            raise OSError(
                f"connection {name} cannot be used in a fork child: its peer is at {url},"
                " not an ipc or tcp address (open a new connection in the child)"
            )
        self.name = name
        self.broken = False
        self._sock = sock
        try:
            sock.connect(address)
            sock.sendall(_ZMTP2_GREETING)
            if scheme == "tcp":
                # Read all the peer will ever send us: closing a TCP socket with unread
                # input sends a reset, and a reset can discard what the peer has not
                # read yet. (A unix socket keeps it readable; and a Pipe's peer may not
                # answer before it opens its end, so there we do not wait.)
                sock.settimeout(_HANDSHAKE_TIMEOUT)
                self._read_greeting(sock)
                sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise _broken(name) from exc

    @staticmethod
    def _read_greeting(sock: socket.socket) -> None:
        """Read a zmq peer's answer to a ZMTP 2.0 greeting: its own, then its identity."""

        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise ConnectionResetError("the peer closed the connection")
                data += chunk
            return data

        exactly(12)  # signature, version, socket type
        flags = exactly(1)[0]
        size = exactly(8 if flags & _ZMTP_LONG else 1)
        exactly(int.from_bytes(size, "big"))

    def send(self, frames: list[Buffer]) -> None:
        """Write one message (``frames``); return when the kernel took all of it."""
        if self.broken:
            raise _broken(self.name)
        parts: list[memoryview] = []
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            view = memoryview(frame)
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
            n = view.nbytes
            flags = _ZMTP_MORE if i < last else 0
            if n < 256:
                parts.append(memoryview(bytes((flags, n))))
            else:
                parts.append(memoryview(bytes((flags | _ZMTP_LONG,)) + n.to_bytes(8, "big")))
            if n:
                parts.append(view)
        try:
            self._write(parts)
        except OSError as exc:
            self.broken = True
            raise _broken(self.name) from exc

    def _write(self, parts: list[memoryview]) -> None:
        first = 0
        while first < len(parts):
            sent = self._sock.sendmsg(parts[first : first + _IOV_MAX], (), _NOSIGNAL)
            while sent:
                n = parts[first].nbytes
                if sent < n:
                    parts[first] = parts[first][sent:]
                    break
                sent -= n
                first += 1

    def close(self) -> None:
        self._sock.close()


class _Link:
    """The sockets, monitors and session of one connection end in one process."""

    def __init__(
        self,
        plan: _Plan,
        key: bytes,
        *,
        insecure: bool = False,
        in_fd: int | None = None,
        stream_out: bool = False,
        announce_close: bool = True,
    ) -> None:
        self.pid = os.getpid()
        self.pending: collections.deque[Message] = collections.deque()
        self.peer_closed = False
        self.greeted = False
        # Connections by (monitor index, fd): not yet / already through the ZMTP handshake.
        # A kernel-level connection (a pipe end's listening socket, nobody accepting yet)
        # is not a peer; a handshake is.
        self.unconfirmed: set[tuple[int, int]] = set()
        self.confirmed: set[tuple[int, int]] = set()
        self.seen = False  # a peer completed a handshake at some time
        self.closed = False
        self._poller: zmq.Poller | None = None
        self._mourned = False  # waited once for a dead peer's last messages
        codec = Codec(key)
        self.sockets: list[zmq.Socket[Any]] = []
        self.monitors: list[zmq.Socket[Any]] = []
        self.inbox: zmq.Socket[Any] | None = None
        self.outbox: zmq.Socket[Any] | None = None
        self.side: zmq.Socket[Any] | None = None
        self.in_session: Session | None
        self.out_session: Session | None
        self.side_session: Session | None
        self.side_url: str | None = None
        # Rule 7: in a fork child, send through a _StreamWriter to this url (made lazily).
        self.codec = codec
        self.stream_url = plan.out_url if stream_out else None
        self.stream: _StreamWriter | None = None
        self.announce_close = announce_close
        self.session_id = secrets.token_hex(16)
        self.url = ""
        # Both ends of a connection share this; the pipe paths or the private url.
        self.pair_key = plan.pair_url or min(u for u in (plan.in_url, plan.out_url) if u)
        try:
            self._open_sockets(plan, insecure, in_fd)
        except BaseException:
            self.close(graceful=False)
            raise
        self.in_session, self.out_session, self.side_session = (
            None if sock is None else Session(sock, codec)
            for sock in (self.inbox, self.outbox, self.side)
        )

    def _open_sockets(self, plan: _Plan, insecure: bool, in_fd: int | None) -> None:
        """Open this end's zmq sockets (none for a fork child's stream only)."""
        if plan.pair_url is None and plan.in_url is None and self.stream_url is not None:
            return  # a Client's fork child: no zmq context needed (rule 7)
        ctx = _context()
        if plan.pair_url is not None:
            sock = self._socket(ctx, zmq.PAIR, plan.pair_url)
            if plan.pair_bind:
                self.url = _checked_bind(sock, plan.pair_url, insecure=insecure)
            else:
                sock.connect(plan.pair_url)
                self.url = plan.pair_url
            self.inbox = self.outbox = sock
            if plan.pair_bind and plan.side_url is not None:
                self.side = self._socket(ctx, zmq.PULL, plan.side_url)
                self.side_url = _checked_bind(self.side, plan.side_url, insecure=insecure)
        if plan.in_url is not None:
            self.inbox = self._socket(ctx, zmq.PULL, plan.in_url)
            if in_fd is not None:
                self.inbox.setsockopt(zmq.USE_FD, in_fd)  # zmq owns it from here
            self.inbox.bind(plan.in_url)
            self.url = plan.in_url
        if plan.out_url is not None and self.stream_url is None:
            self.outbox = self._socket(ctx, zmq.PUSH, plan.out_url)
            self.outbox.connect(plan.out_url)
            self.url = self.url or plan.out_url

    def _socket(self, ctx: zmq.Context[Any], kind: int, url: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(kind)
        self.sockets.append(sock)
        _configure(sock, url)
        # Not get_monitor_socket(): its default address reuses fd numbers, and libzmq's
        # I/O thread blocks when a monitor queue is full, so ours is unbounded.
        address = f"inproc://shoal.wire.monitor-{secrets.token_hex(8)}"
        sock.monitor(address, _MONITOR_EVENTS)
        monitor: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
        self.monitors.append(monitor)
        monitor.linger = 0
        monitor.rcvhwm = 0
        monitor.connect(address)
        return sock

    @property
    def gone(self) -> bool:
        """Whether the peer closed, or every connection to it came and went."""
        return self.peer_closed or (self.seen and not self.confirmed)

    def drain_monitors(self) -> None:
        for i, monitor in enumerate(self.monitors):
            while monitor.poll(0):
                head = monitor.recv_multipart()[0]
                event = int.from_bytes(head[:2], "little")
                key = (i, int.from_bytes(head[2:6], "little"))
                if event & (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED):
                    self.unconfirmed.add(key)
                elif event & zmq.EVENT_HANDSHAKE_SUCCEEDED:  # its value is no fd
                    mine = {k for k in self.unconfirmed if k[0] == i}
                    self.unconfirmed -= mine
                    self.confirmed |= mine
                    self.seen = True
                elif event & zmq.EVENT_DISCONNECTED:
                    self.unconfirmed.discard(key)
                    self.confirmed.discard(key)

    def pump(self) -> None:
        """Read valid messages until one is pending; note monitor events when none is."""
        # The inbox first: on the hot path a message is there, and the monitors (only
        # needed to notice a dead peer) would cost system calls for nothing.
        self._read_inbox()
        if not self.pending:
            self.drain_monitors()
            self._read_inbox()
        if not self.pending and self.gone and not self.peer_closed and not self._mourned:
            # A peer that sent and then died: its last messages can become readable after
            # its disconnect shows in a monitor. Give them a moment, once, before EOF.
            self._mourned = True
            if self.inbox is not None and self.inbox.poll(_LAST_WORDS_MS):
                self._read_inbox()

    def _read_inbox(self) -> None:
        self._read(self.inbox, self.in_session)
        if not self.pending and self.side is not None:
            self._read(self.side, self.side_session)

    def _read(self, sock: zmq.Socket[Any] | None, session: Session | None) -> None:
        if sock is None or session is None:
            return
        while not self.pending and not self.peer_closed:
            try:
                frames = session.recv_frames_nowait()  # within the caps, or None
            except zmq.Again:
                return
            if frames is None:
                continue
            msg = session._vet(frames, False)  # counts, logs and drops bad messages
            if msg is None:
                continue
            if msg.msg_type == _CLOSE:
                self.peer_closed = True
            elif msg.msg_type == _HELLO:
                self.greeted = True
            else:
                self.pending.append(msg)

    def done_greeting(self) -> bool:
        return self.greeted or self.gone

    def has_news(self) -> bool:
        return bool(self.pending) or self.gone

    def watched(self) -> list[zmq.Socket[Any]]:
        """What to poll for input: the inbox and every monitor."""
        return [*self.monitors, *(s for s in (self.inbox, self.side) if s is not None)]

    def poller(self) -> zmq.Poller:
        """A poller for input on :meth:`watched` (made once)."""
        if self._poller is None:
            self._poller = zmq.Poller()
            for sock in self.watched():
                self._poller.register(sock, zmq.POLLIN)
        return self._poller

    def send(self, msg_type: str, content: Any, buffers: tuple[Buffer, ...], name: str) -> None:
        """Sign and send; wait until zmq is done with large buffers, or the peer is gone."""
        if self.stream_url is not None:
            self._send_stream(msg_type, content, buffers, name)
            return
        sock, session = self.outbox, self.out_session
        if sock is None or session is None:
            raise OSError(f"connection {name} is read-only")
        frames = session.codec.encode(session.message(msg_type, content, buffers=buffers))
        threshold = sock.copy_threshold
        big = any(memoryview(f).nbytes >= threshold for f in frames)
        if not big and not self.gone:
            try:  # the hot path: room to write, no monitor or poll system calls
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass
            else:
                return
        self._wait_writable(name)
        if not big:
            sock.send_multipart(frames)
        elif not self.seen:
            # Nobody to write to yet: keep a copy, so send() returns (rule 5).
            sock.send_multipart([bytes(memoryview(f)) for f in frames])
        else:
            tracker = sock.send_multipart(frames, copy=False, track=True)
            while tracker is not None:
                try:
                    tracker.wait(0.25)
                    break
                except zmq.NotDone:
                    self.drain_monitors()
                    if self.gone:
                        raise _broken(name) from None

    def _send_stream(
        self, msg_type: str, content: Any, buffers: tuple[Buffer, ...], name: str
    ) -> None:
        """Send through the blocking stream of rule 7: back once the kernel has it all."""
        assert self.stream_url is not None  # noqa: S101
        msg = Message(new_header(msg_type, self.session_id), content=content, buffers=buffers)
        frames = self.codec.encode(msg)  # before connecting: an unpicklable sends nothing
        if self.stream is None:
            self.stream = _StreamWriter(self.stream_url, name)
        self.stream.send(frames)

    def _wait_writable(self, name: str) -> None:
        sock = self.outbox
        assert sock is not None  # noqa: S101
        while True:
            self.drain_monitors()
            if self.gone:
                raise _broken(name)
            if sock.poll(0, zmq.POLLOUT):
                return
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLOUT)
            for monitor in self.monitors:
                poller.register(monitor, zmq.POLLIN)
            poller.poll(250)

    def close(self, *, graceful: bool) -> None:
        """Close the sockets; when ``graceful``, tell the peer and flush for a while."""
        if self.closed or self.pid != os.getpid():
            return  # a fork child never touches its parent's sockets
        self.closed = True
        linger = 0
        # If the other end was opened and closed in this process (one Pipe used within
        # a process, say), nobody is left to flush to: lingering would only delay exit.
        with _lock:
            half = _half_closed.setdefault(self.pid, set())
            sibling_closed = self.pair_key in half
            if sibling_closed:
                half.discard(self.pair_key)
            else:
                half.add(self.pair_key)
        if graceful and not sibling_closed and self.announce_close and self.stream_url:
            with contextlib.suppress(OSError):  # the peer may be gone: then it knows
                self._send_stream(_CLOSE, None, (), "")
        if self.stream is not None:
            self.stream.close()
        if graceful and not sibling_closed:
            self.drain_monitors()
            if not self.gone:
                linger = int(CLOSE_LINGER * 1000)
                sock, session = self.outbox, self.out_session
                if sock is not None and session is not None and sock.poll(0, zmq.POLLOUT):
                    frames = session.codec.encode(session.message(_CLOSE))
                    # If this fails, the peer notices the disconnect instead.
                    with contextlib.suppress(zmq.ZMQError):
                        sock.send_multipart(frames, zmq.NOBLOCK)
        for sock in self.sockets:
            # First stop the events: a lingering socket would block libzmq's I/O thread
            # sending them to a monitor nobody reads.
            sock.disable_monitor()
            sock.close(linger=linger)
        for monitor in self.monitors:
            monitor.close(linger=0)


_LAST_WORDS_MS = 250


def _finalize_link(link: _Link) -> None:
    link.close(graceful=True)


def _broken(name: str) -> BrokenPipeError:
    return BrokenPipeError(
        f"the peer of connection {name} closed or died: nothing more can be sent"
        " (open a new connection)"
    )


# -- Connection -------------------------------------------------------------------------
def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, float(timeout))


def _remaining_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(0, int((deadline - time.monotonic()) * 1000 + 0.999))


def _rebuild_connection(
    plan: _Plan, key: bytes, flags: tuple[bool, bool], name: str, fd: Any
) -> Connection:
    readable, writable = flags
    listener = None if fd is None else socket.socket(fileno=fd.detach())
    return Connection._from_plan(
        plan, key, readable=readable, writable=writable, name=name, listener=listener
    )


@final
class Connection:
    """One end of a message connection, like ``multiprocessing.connection.Connection``.

    Made by :func:`Pipe`, :meth:`Listener.accept` and :func:`Client`; not by hand.
    Objects travel serialized with dill semantics (lambdas, closures, interactively
    defined classes), large buffers without copies; every message is signed with the
    connection's key. The end of a :func:`Pipe` can be passed to a
    ``multiprocessing`` child (``fork`` or ``spawn``) as a ``Process`` argument.

    Examples
    --------
    >>> a, b = Pipe()
    >>> a.send(lambda x: x + 1)
    >>> b.recv()(1)
    2
    >>> b.send_bytes(b"hello world", 6)
    >>> a.recv_bytes()
    b'world'
    >>> a.close()
    >>> b.poll(5)  # true: recv() would not block; it raises EOFError
    True
    >>> b.close()

    .. versionadded:: 0.1
    """

    _plan: _Plan
    _key: bytes
    _readable: bool
    _writable: bool
    _name: str
    _link: _Link | None
    _closed: bool
    _serializer: Serializer
    _finalizer: Callable[[], Any] | None
    _listener: socket.socket | None  # a Pipe end's listening socket, until it is opened
    _opened_in: int | None
    _born_in: int  # the process that made this object; another one inherited it by fork

    def __init__(self) -> None:
        raise TypeError("Connection objects are made by Pipe(), Listener.accept() and Client()")

    @classmethod
    def _from_plan(
        cls,
        plan: _Plan,
        key: bytes,
        *,
        readable: bool,
        writable: bool,
        name: str,
        link: _Link | None = None,
        listener: socket.socket | None = None,
    ) -> Connection:
        self = object.__new__(cls)
        self._plan = plan
        self._key = key
        self._readable = readable
        self._writable = writable
        self._name = name
        self._closed = False
        self._serializer = Serializer()
        self._link = None
        self._finalizer = None
        self._listener = listener
        self._opened_in = None
        self._born_in = os.getpid()
        if link is not None:
            self._adopt(link)
        return self

    def _adopt(self, link: _Link) -> None:
        self._link = link
        self._finalizer = multiprocessing.util.Finalize(
            self, _finalize_link, args=(link,), exitpriority=10
        )

    def _open(self) -> _Link:
        """This process's sockets for this end, opened on first use (rule 3)."""
        if self._closed:
            raise OSError(f"connection {self._name} is closed")
        link = self._link
        if link is None or link.pid != os.getpid():
            forked = self._born_in != os.getpid()
            if self._plan.pair_url is not None:
                self._adopt(self._open_forked_pair(link))
            else:
                self._check_not_opened_elsewhere()
                in_fd = None
                if self._listener is not None:
                    in_fd, self._listener = self._listener.detach(), None
                self._adopt(_Link(self._plan, self._key, in_fd=in_fd, stream_out=forked))
            self._opened_in = os.getpid()
            link = self._link
            assert link is not None  # noqa: S101
        return link

    def _open_forked_pair(self, parents: _Link | None) -> _Link:
        """In a fork child: a Client end's link to the side door, or a clear error (rule 7)."""
        owner = "the parent" if parents is None else f"process {parents.pid}"
        if self._plan.pair_bind:
            raise OSError(
                f"connection {self._name} was accepted by a Listener in {owner}, which"
                " owns its socket: a fork child cannot use it. Accept the connection in"
                " the child, or hand work to the child through a Pipe()"
            )
        if self._plan.side_url is None:
            raise OSError(
                f"connection {self._name} was made by Client() in {owner}, and its"
                " listener offers no way in for a fork child: call Client() in the child"
            )
        plan = _Plan(out_url=self._plan.side_url)
        return _Link(plan, self._key, stream_out=True, announce_close=False)

    def _check_not_opened_elsewhere(self) -> None:
        if self._opened_in is not None and self._plan.in_url is not None:
            raise OSError(
                f"connection {self._name} was already used in process {self._opened_in},"
                " which owns its socket: one process uses an end (pass an end to a child"
                " before using it)"
            )

    # -- properties ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True if :meth:`close` was called."""
        return self._closed

    @property
    def readable(self) -> bool:
        """True if this end can receive."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if this end can send."""
        return self._writable

    def fileno(self) -> int:
        """The zmq socket's notification fd (``ZMQ_FD``): *edge*-triggered.

        Use it to wake an event loop, then check :meth:`poll`; to wait on connections
        with other objects, use :func:`wait`.
        """
        link = self._open()
        sock = link.inbox if link.inbox is not None else link.outbox
        if sock is None:
            raise OSError(
                f"connection {self._name} has no zmq socket in this fork child (it only"
                " sends, through a blocking OS socket): there is nothing to wait for"
            )
        return int(sock.getsockopt(zmq.FD))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._link is not None else "unopened")
        mode = ("r" if self._readable else "") + ("w" if self._writable else "")
        return f"<shoal.wire.Connection {self._name} {mode} {state}>"

    # -- sending ---------------------------------------------------------------------
    def _check_writable(self) -> _Link:
        link = self._open()
        if not self._writable:
            raise OSError(f"connection {self._name} is read-only")
        return link

    def send(self, obj: object) -> None:
        """Send ``obj``, serialized with dill semantics; large buffers go without a copy.

        Raises
        ------
        UnpicklableError
            When ``obj`` cannot be serialized (nothing is sent).
        BrokenPipeError
            When the peer has closed or died.
        """
        link = self._check_writable()
        link.send(_OBJ, obj, (), self._name)

    def send_bytes(self, buf: Buffer, offset: int = 0, size: int | None = None) -> None:
        """Send ``size`` bytes of the bytes-like ``buf`` from ``offset``, as one message."""
        link = self._check_writable()
        view = memoryview(buf)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if offset < 0:
            raise ValueError(f"offset is negative: {offset}")
        if n < offset:
            raise ValueError(f"buffer length {n} < offset {offset}")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError(f"size is negative: {size}")
        elif offset + size > n:
            raise ValueError(f"buffer length {n} < offset + size = {offset + size}")
        link.send(_BYTES, None, (view[offset : offset + size],), self._name)

    # -- receiving -------------------------------------------------------------------
    def _check_readable(self) -> _Link:
        link = self._open()
        if not self._readable:
            raise OSError(f"connection {self._name} is write-only")
        if link.inbox is None:
            raise OSError(
                f"connection {self._name} was made by Client() in process {self._born_in}"
                " and inherited by this fork child: the child can send on it (the"
                " messages arrive), but the replies go to the process that called"
                " Client(). To receive here, call Client() in the child"
            )
        return link

    def _next(self) -> Message:
        link = self._check_readable()
        _wait_link(link, link.has_news, None)
        if link.pending:
            return link.pending.popleft()
        raise EOFError(f"the peer of connection {self._name} closed it or died; no more messages")

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether :meth:`recv` would return (or raise ``EOFError``) without blocking.

        Waits up to ``timeout`` seconds; ``None`` waits forever.
        """
        link = self._check_readable()
        return _wait_link(link, link.has_news, timeout)

    def recv(self) -> Any:
        """Receive an object sent with :meth:`send` (or pickled bytes from ``send_bytes``).

        Raises
        ------
        EOFError
            When the peer has closed the connection or died, and nothing is left.
        """
        msg = self._next()
        if msg.msg_type == _BYTES:
            return self._serializer.loads([msg.buffers[0]])
        content = msg.content
        return content.load(self._serializer) if isinstance(content, RawContent) else content

    def _payload(self, msg: Message) -> memoryview:
        """The bytes of a message as :meth:`recv_bytes` returns them."""
        if msg.msg_type == _BYTES:
            return memoryview(msg.buffers[0]).cast("B")
        content = msg.content
        if isinstance(content, RawContent):
            if len(content.frames) == 1:
                return memoryview(content.frames[0]).cast("B")
            content = content.load(self._serializer)
        # One pickle stream, buffers in band: what multiprocessing's recv_bytes gives.
        return memoryview(_IN_BAND.dumps(content)[0]).cast("B")

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes.

        Raises
        ------
        OSError
            When the message is longer than ``maxlength`` (the message is discarded;
            the connection stays usable).
        EOFError
            When the peer has closed the connection or died.
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError(f"negative maxlength: {maxlength}")
        data = self._payload(self._next())
        if maxlength is not None and data.nbytes > maxlength:
            raise OSError(
                f"bad message length: {data.nbytes} bytes arrived on {self._name},"
                f" more than maxlength={maxlength} (the message was discarded)"
            )
        return data.tobytes()

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive one message into the writable buffer ``buf`` at ``offset``.

        Returns the number of bytes written.

        Raises
        ------
        multiprocessing.BufferTooShort
            When the message does not fit; ``args[0]`` holds the whole message.
        """
        view = memoryview(buf)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        if not 0 <= offset <= view.nbytes:
            raise ValueError(f"offset {offset} is out of bounds for a {view.nbytes}-byte buffer")
        data = self._payload(self._next())
        n = data.nbytes
        if offset + n > view.nbytes:
            raise multiprocessing.BufferTooShort(data.tobytes())
        view[offset : offset + n] = data
        return n

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Close this end; the peer's ``recv`` raises ``EOFError`` after what was sent."""
        if self._closed:
            return
        self._closed = True
        finalizer, self._finalizer, self._link = self._finalizer, None, None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if finalizer is not None:
            finalizer()

    def _abort(self) -> None:
        link, self._link = self._link, None
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.cancel()  # type: ignore[attr-defined]
            self._finalizer = None
        if link is not None:
            link.close(graceful=False)

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise OSError(f"connection {self._name} is closed and cannot be sent")
        if self._plan.pair_url is not None:
            raise TypeError(
                f"connection {self._name} was made by Listener/Client and belongs to the"
                " process that opened it; use Pipe() to hand a connection to a child"
            )
        self._check_not_opened_elsewhere()
        fd = None
        if self._listener is not None:
            # Spawning: the child inherits a duplicate; otherwise multiprocessing's
            # resource sharer passes it over a unix socket.
            fd = multiprocessing.reduction.DupFd(self._listener.fileno())
        return (
            _rebuild_connection,
            (self._plan, self._key, (self._readable, self._writable), self._name, fd),
        )


def _wait_link(link: _Link, ready: Callable[[], bool], timeout: float | None) -> bool:
    """Pump ``link`` until ``ready()``; False when ``timeout`` seconds passed first."""
    deadline = _deadline(timeout)
    while True:
        link.pump()
        if ready():
            return True
        ms = _remaining_ms(deadline)
        if ms == 0:
            return False
        link.poller().poll(ms)


# -- Pipe -------------------------------------------------------------------------------
def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Return two connected ends, like ``multiprocessing.Pipe``.

    The ends open their sockets lazily in the process that uses them, so either end can
    be passed to a ``multiprocessing`` child (``fork``, ``spawn`` or ``forkserver``) as
    a ``Process`` argument. Each pipe has its own random key.

    Parameters
    ----------
    duplex : bool
        If false, the first end only receives and the second only sends.

    Examples
    --------
    >>> r, w = Pipe(duplex=False)
    >>> w.send({"x": 1})
    >>> r.recv()
    {'x': 1}
    >>> r.close(); w.close()

    .. versionadded:: 0.1
    """
    folder = _private_dir()
    token = secrets.token_hex(8)
    key = secrets.token_bytes(32)
    url_a, url_b = f"ipc://{folder}/{token}-a", f"ipc://{folder}/{token}-b"
    if duplex:
        plan_a, plan_b = _Plan(in_url=url_a, out_url=url_b), _Plan(in_url=url_b, out_url=url_a)
    else:
        plan_a, plan_b = _Plan(in_url=url_a), _Plan(out_url=url_a)
    listen_a = _listen(url_a)
    listen_b = _listen(url_b) if duplex else None
    a = Connection._from_plan(
        plan_a, key, readable=True, writable=duplex, name=f"Pipe-{token}[0]", listener=listen_a
    )
    b = Connection._from_plan(
        plan_b, key, readable=duplex, writable=True, name=f"Pipe-{token}[1]", listener=listen_b
    )
    return a, b


def _listen(url: str) -> socket.socket:
    """A listening unix socket at ``url``'s path: peers can connect before zmq adopts it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(url.partition("://")[2])
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


# -- Listener and Client ----------------------------------------------------------------
@final
class Listener:
    """Accepts authenticated connections, like ``multiprocessing.connection.Listener``.

    Parameters
    ----------
    address : str or (host, port), optional
        A zmq url (``tcp://127.0.0.1:*``, ``ipc:///path``), a ``(host, port)`` tuple, or
        a filesystem path (an ipc socket). Port ``0`` or ``*`` picks a free port.
        Default: a free port on 127.0.0.1 (or a fresh ipc path for ``family='AF_UNIX'``).
    family : str, optional
        ``'AF_INET'``, ``'AF_INET6'`` or ``'AF_UNIX'``; only used when ``address`` is None.
    backlog : int
        The listen backlog of the socket.
    authkey : bytes, optional
        The shared key; ``None`` means ``multiprocessing.current_process().authkey``.
    insecure : bool
        Allow binding an address other hosts can reach. Traffic is signed but not
        encrypted: use it on trusted networks only.

    Raises
    ------
    InsecureBindError
        When ``address`` is reachable from other hosts and ``insecure`` is false.
    InvalidKeyError
        When ``authkey`` is empty.

    Examples
    --------
    ``Client`` waits for ``accept``, so in one process the client runs in a thread:

    >>> import concurrent.futures
    >>> with Listener(("127.0.0.1", 0), authkey=b"secret") as listener:
    ...     with concurrent.futures.ThreadPoolExecutor() as pool:
    ...         client = pool.submit(Client, listener.address, authkey=b"secret")
    ...         server = listener.accept()
    ...         client = client.result()
    >>> client.send([1, 2, 3])
    >>> server.recv()
    [1, 2, 3]
    >>> client.close(); server.close()

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        address: Address | None = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        insecure: bool = False,
    ) -> None:
        self._key = _resolve_authkey(authkey)
        self._where = _resolve_address(address, family)
        self._insecure = insecure
        self._requests: collections.deque[tuple[Message, str | None]] = collections.deque()
        self._pid = os.getpid()
        self._closed = False
        #: The address of the last accepted peer (its IP for tcp; None for ipc).
        self.last_accepted: str | None = None
        sock: zmq.Socket[Any] = _context().socket(zmq.ROUTER)
        try:
            _configure(sock, self._where.url)
            sock.backlog = max(1, backlog)
            self._url = _checked_bind(sock, self._where.url, insecure=insecure)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock
        self._session = Session(sock, self._key)

    @property
    def address(self) -> Address:
        """The bound address, connectable, in the form it was given (port filled in)."""
        return _report(self._where, self._url)

    def __repr__(self) -> str:
        return f"<shoal.wire.Listener {self.address!r}{' closed' if self._closed else ''}>"

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(f"listener {self.address!r} is closed")

    def _pump(self) -> bool:
        """Queue the valid connect requests that arrived; whether one is queued."""
        sock = self._socket
        while sock.poll(0):
            try:
                frames = self._session.recv_frames_nowait()  # within the caps, or None
            except zmq.Again:
                break
            if frames is None:
                continue
            try:
                peer = frames[0].get("Peer-Address")
            except zmq.ZMQError:
                peer = None
            msg = self._session._vet(frames, True)  # counts, logs and drops bad messages
            if msg is not None and msg.msg_type == _CONNECT and msg.identities:
                tcp = isinstance(peer, str) and self._url.startswith("tcp://")
                self._requests.append((msg, str(peer) if tcp else None))
        return bool(self._requests)

    def _private_url(self) -> str:
        scheme, _, rest = self._url.partition("://")
        tag = secrets.token_hex(4)
        if scheme == "tcp":
            return f"tcp://{rest.rpartition(':')[0]}:*"
        if scheme == "ipc":
            path = f"{rest}-{tag}"
            if len(path) > _MAX_IPC_PATH:
                path = os.path.join(_private_dir(), f"conn-{secrets.token_hex(8)}")
            return f"ipc://{path}"
        return f"{self._url}-{tag}"

    def accept(self) -> Connection:
        """Wait for a client with the right key and return a connection to it.

        Clients with another key are never answered (their requests are dropped and
        counted); a client that stops half-way through the handshake is skipped.
        """
        self._check_open()
        while True:
            while not self._pump():
                self._socket.poll()
            request, peer = self._requests.popleft()
            link = _Link(
                _Plan(pair_url=self._private_url(), pair_bind=True, side_url=self._private_url()),
                self._key,
                insecure=self._insecure,
            )
            conn = Connection._from_plan(
                _Plan(pair_url=link.url, pair_bind=True, side_url=link.side_url),
                self._key,
                readable=True,
                writable=True,
                name=repr(_report(self._where, link.url)),
                link=link,
            )
            self._session.send(
                _ACCEPT,
                {"url": link.url, "side": link.side_url},
                parent=request,
                identities=request.identities,
            )
            if _wait_link(link, link.done_greeting, _HANDSHAKE_TIMEOUT) and link.greeted:
                self.last_accepted = peer
                return conn
            log.warning(
                "listener %r: client %s did not complete the handshake within %g s; skipped",
                self.address,
                peer or "(ipc)",
                _HANDSHAKE_TIMEOUT,
            )
            conn._abort()

    def close(self) -> None:
        """Stop listening. Connections already accepted stay open."""
        if self._closed:
            return
        self._closed = True
        if self._pid == os.getpid():
            self._socket.close(linger=0)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def Client(
    address: Address,
    family: str | None = None,
    authkey: bytes | None = None,
    *,
    timeout: float | None = _HANDSHAKE_TIMEOUT,
) -> Connection:
    """Connect to a :class:`Listener` and return the connection once it accepted.

    Parameters
    ----------
    address : str or (host, port)
        The listener's address, as :attr:`Listener.address` reports it.
    family : str, optional
        Ignored (the form of ``address`` decides); accepted for compatibility.
    authkey : bytes, optional
        The listener's key; ``None`` means ``multiprocessing.current_process().authkey``.
    timeout : float or None
        Seconds to wait for the listener to accept; ``None`` waits forever.

    Raises
    ------
    HandshakeError
        When no authenticated answer came within ``timeout``: a wrong ``authkey``, no
        listener at ``address``, or a listener that is not accepting.

    .. versionadded:: 0.1
    """
    key = _resolve_authkey(authkey)
    where = _resolve_address(address, None)
    url = where.url
    if url.endswith(":*"):
        raise ValueError(f"cannot connect to port 0 / '*' in {address!r}: pass the real port")
    dealer: zmq.Socket[Any] = _context().socket(zmq.DEALER)
    try:
        _configure(dealer, url)
        dealer.connect(url)
        session = Session(dealer, key)
        request = session.send(_CONNECT, {"pid": os.getpid()})
        deadline = _deadline(timeout)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = session.recv(timeout=left)
            except TimeoutError:
                raise HandshakeError(
                    f"no authenticated answer from {address!r} within {timeout:g} s:"
                    " wrong authkey, or no listener there"
                ) from None
            parent = reply.parent_header
            if (
                reply.msg_type == _ACCEPT
                and parent is not None
                and parent.msg_id == request.header.msg_id
                and isinstance(reply.content, dict)
                and isinstance(reply.content.get("url"), str)
            ):
                break
    finally:
        dealer.close(linger=0)
    private: str = reply.content["url"]
    side = reply.content.get("side")
    side = side if isinstance(side, str) else None
    if url.startswith("tcp://"):
        # The listener may have bound a wildcard: reach its port the way we reached it.
        host = url.rpartition(":")[0]
        private = f"{host}:{private.rpartition(':')[2]}"
        side = None if side is None else f"{host}:{side.rpartition(':')[2]}"
    link = _Link(_Plan(pair_url=private), key)
    conn = Connection._from_plan(
        _Plan(pair_url=private, side_url=side),
        key,
        readable=True,
        writable=True,
        name=repr(_report(where, private)),
        link=link,
    )
    link.send(_HELLO, None, (), conn._name)
    return conn


# -- wait -------------------------------------------------------------------------------
class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: What :func:`wait` watches; it returns some of the very objects it was given.
_Waitable = TypeVar("_Waitable", bound="Connection | Listener | int | _HasFileno")


def wait(object_list: Iterable[_Waitable], timeout: float | None = None) -> list[_Waitable]:
    """Wait until some of ``object_list`` are ready; return those (maybe none on timeout).

    Like ``multiprocessing.connection.wait``: a :class:`Connection` is ready when
    ``recv`` would not block (a message, or the peer gone), a :class:`Listener` when
    ``accept`` has a client waiting, and any other object -- an int fd or an object
    with ``fileno()``, such as ``Process.sentinel`` or a socket -- when it is readable.

    Parameters
    ----------
    object_list : iterable
        The objects to watch.
    timeout : float or None
        Seconds to wait at most; ``None`` waits forever.

    .. versionadded:: 0.1
    """
    objects = list(object_list)
    deadline = _deadline(timeout)
    while True:
        ready: list[Any] = []
        poller = zmq.Poller()
        by_fd: dict[int, list[Any]] = {}
        for obj in objects:
            if isinstance(obj, Connection):
                link = obj._open()
                link.pump()
                if link.pending or link.gone:
                    ready.append(obj)
                for sock in link.watched():
                    poller.register(sock, zmq.POLLIN)
            elif isinstance(obj, Listener):
                obj._check_open()
                if obj._pump():
                    ready.append(obj)
                poller.register(obj._socket, zmq.POLLIN)
            else:
                fd = obj if isinstance(obj, int) else int(obj.fileno())
                by_fd.setdefault(fd, []).append(obj)
                poller.register(fd, zmq.POLLIN)
        ms = 0 if ready else _remaining_ms(deadline)
        events = poller.poll(ms)
        for target, _ in events:
            if isinstance(target, int):
                ready.extend(by_fd.get(target, ()))
        if ready or ms == 0:
            return [obj for obj in objects if any(obj is r for r in ready)]
