"""CurveZMQ encryption, client authentication, and the refusal of insecure binds.

Theory of operation
-------------------
CurveZMQ alone encrypts, but it does not *authenticate*: a Curve server socket accepts
every client that knows the server's public key, whatever its own keypair. Deciding who
may connect is the job of a ZAP handler (ZeroMQ RFC 27): a REP socket bound to
``inproc://zeromq.zap.01`` in the *same context* as the server socket, which libzmq asks
about every new connection. The rules here:

* :class:`CurveServer` owns the server keypair, an allow-list of client public keys, and
  the ZAP handler thread for one :class:`zmq.Context` (libzmq allows one per context).
  The handler is *default deny*: it admits a connection only if it uses the CURVE
  mechanism and the client's public key is in the allow-list at handshake time. The
  allow-list changes at runtime (:meth:`CurveServer.allow`, :meth:`CurveServer.revoke`);
  a change applies to new connections, never to established ones.
* :meth:`CurveServer.configure` turns a socket into a Curve server and starts the
  handler first, so a configured socket is never served without one. libzmq admits
  *every* client when no handler is bound, so close the server sockets before
  :meth:`CurveServer.stop` (the context manager order does this naturally).
* An admitted message carries the client's Z85 public key as its ``User-Id`` frame
  property (``frame.get("User-Id")``).
* :func:`bind` refuses a non-loopback url (see :func:`is_loopback_url`) on a socket that
  is not a Curve server, unless the caller passes ``insecure=True``. Loopback, ``ipc://``
  and ``inproc://`` never leave the machine and need no encryption.
* Keys are Z85 text (40 characters for 32 bytes), as in connection files; a malformed key
  raises :class:`~shoal.wire.InvalidKeyError` naming it, before libzmq sees it.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import final

import zmq
from zmq.utils import z85

from ._errors import CurveSetupError, InsecureBindError, InvalidKeyError
from ._files import CurveKeys

__all__ = [
    "CurveServer",
    "bind",
    "configure_curve_client",
    "curve_keypair",
    "is_loopback_url",
]

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"
_LOCAL_TRANSPORTS = frozenset({"ipc", "inproc"})


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveSetupError(
            f"libzmq {zmq.zmq_version()} was built without CURVE support",
            hint="install a pyzmq wheel from PyPI (it bundles libzmq with CURVE)",
        )


def _decode_key(key: bytes | str, name: str) -> bytes:
    """Return the 32 raw bytes of the Z85 key ``key``, or raise naming ``name``."""
    try:
        text = key.encode("ascii") if isinstance(key, str) else bytes(key)
        raw = z85.decode(text) if len(text) == 40 else b""
    except (ValueError, KeyError, TypeError, struct.error):
        text, raw = b"", b""
    # Z85 has several spellings of some values: accept only the canonical one.
    if len(raw) != 32 or z85.encode(raw) != text:
        raise InvalidKeyError(
            f"{name} must be a Z85 CurveZMQ key of 40 characters, got {key!r}",
            hint="make keys with shoal.wire.curve_keypair()",
        )
    return raw


def curve_keypair() -> tuple[bytes, bytes]:
    """Return a new CurveZMQ keypair ``(public, secret)``, each 40 bytes of Z85 text.

    Raises
    ------
    CurveSetupError
        When libzmq was built without CURVE.

    Examples
    --------
    >>> public, secret = curve_keypair()
    >>> len(public), len(secret)
    (40, 40)

    .. versionadded:: 0.1
    """
    _require_curve()
    return zmq.curve_keypair()


def configure_curve_client(socket: zmq.Socket[object], keys: CurveKeys) -> None:
    """Make ``socket`` a Curve client of the server whose public key is in ``keys``.

    Call it before ``connect``; options set later do not apply to that connection.

    Raises
    ------
    InvalidKeyError
        When a key is not 40 characters of canonical Z85.

    .. versionadded:: 0.1
    """
    _require_curve()
    _decode_key(keys.server_public, "keys.server_public")
    _decode_key(keys.client_public, "keys.client_public")
    _decode_key(keys.client_secret, "keys.client_secret")
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.client_public
    socket.curve_secretkey = keys.client_secret


@final
class CurveServer:
    """A CurveZMQ server identity with a runtime allow-list of client public keys.

    Owns the server keypair and the ZAP handler thread of one context. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`.

    Parameters
    ----------
    context : zmq.Context, optional
        The context of the server sockets; defaults to ``zmq.Context.instance()``. A
        blocking one, not a ``zmq.asyncio.Context``: the ZAP handler thread reads it.
    public_key, secret_key : bytes, optional
        The server keypair (Z85). Both or neither; a new one is made when omitted.
    allowed : iterable of bytes or str
        Client public keys (Z85) admitted from the start.
    domain : str
        The ZAP domain set on configured sockets.

    Examples
    --------
    >>> ctx = zmq.Context()
    >>> with CurveServer(ctx) as server:
    ...     client_keys = server.new_client()
    ...     router = ctx.socket(zmq.ROUTER)
    ...     server.configure(router)
    ...     url = bind(router, "tcp://127.0.0.1:*")
    ...     router.close(linger=0)
    >>> ctx.term()

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        context: zmq.SyncContext | None = None,
        *,
        public_key: bytes | None = None,
        secret_key: bytes | None = None,
        allowed: Iterable[bytes | str] = (),
        domain: str = "shoal",
    ) -> None:
        _require_curve()
        if (public_key is None) != (secret_key is None):
            raise InvalidKeyError("pass both public_key and secret_key, or neither")
        if public_key is None or secret_key is None:
            public_key, secret_key = curve_keypair()
        _decode_key(public_key, "public_key")
        _decode_key(secret_key, "secret_key")
        self.context: zmq.SyncContext = zmq.Context.instance() if context is None else context
        self.domain = domain
        self._public_key = public_key
        self._secret_key = secret_key
        self._lock = threading.Lock()
        # Replaced whole under the lock, read without it by the handler thread.
        self._allowed: frozenset[bytes] = frozenset()
        self._pipe: zmq.SyncSocket | None = None
        self._thread: threading.Thread | None = None
        self.allow(*allowed)

    # -- keys ---------------------------------------------------------------------
    @property
    def public_key(self) -> bytes:
        """The server's public key (Z85); clients need it as ``server_public``."""
        return self._public_key

    @property
    def secret_key(self) -> bytes:
        """The server's secret key (Z85). Store it only in private files."""
        return self._secret_key

    @property
    def allowed(self) -> frozenset[bytes]:
        """The client public keys (Z85) admitted now."""
        return frozenset(z85.encode(raw) for raw in self._allowed)

    def allow(self, *keys: bytes | str) -> None:
        """Admit clients with these public keys (Z85) from their next handshake on."""
        raws = {_decode_key(k, "client public key") for k in keys}
        with self._lock:
            self._allowed = self._allowed | raws

    def revoke(self, *keys: bytes | str) -> None:
        """Refuse new connections from these public keys; established ones stay open."""
        raws = {_decode_key(k, "client public key") for k in keys}
        with self._lock:
            self._allowed = self._allowed - raws

    def is_allowed(self, key: bytes | str) -> bool:
        """Whether a client with this public key (Z85) would be admitted now."""
        return _decode_key(key, "client public key") in self._allowed

    def new_client(self) -> CurveKeys:
        """Make a client keypair, admit it, and return the keys the client needs."""
        public, secret = curve_keypair()
        self.allow(public)
        return CurveKeys(server_public=self._public_key, client_public=public, client_secret=secret)

    # -- sockets ------------------------------------------------------------------
    def configure(self, socket: zmq.Socket[object]) -> None:
        """Make ``socket`` a Curve server checked against the allow-list.

        Starts the ZAP handler if it is not running. Call it before ``bind``.

        Raises
        ------
        CurveSetupError
            When ``socket`` belongs to another context than this server's.
        """
        if socket.context.underlying != self.context.underlying:
            raise CurveSetupError(
                "the socket belongs to another zmq context than this CurveServer, whose"
                " ZAP handler would never be asked: every client would get in",
                hint="create the socket with server.context.socket(...)",
            )
        self.start()
        socket.curve_secretkey = self._secret_key
        socket.curve_publickey = self._public_key
        socket.zap_domain = self.domain.encode("utf-8")
        socket.curve_server = True

    # -- lifetime -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the ZAP handler thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> CurveServer:
        """Start the ZAP handler thread; does nothing if it runs already.

        Raises
        ------
        CurveSetupError
            When another ZAP handler is bound in this context.
        """
        if self._thread is not None:
            return self
        zap = self.context.socket(zmq.REP)
        try:
            zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close(linger=0)
            raise CurveSetupError(
                f"cannot bind the ZAP handler at {_ZAP_ENDPOINT}: {exc}; this context"
                " already has one (another CurveServer or a zmq.auth authenticator)",
                hint="use one CurveServer per context",
            ) from exc
        pipe_url = f"inproc://shoal.wire.curve-stop.{secrets.token_hex(8)}"
        self._pipe = self.context.socket(zmq.PAIR)
        self._pipe.bind(pipe_url)
        inbox = self.context.socket(zmq.PAIR)
        inbox.connect(pipe_url)
        self._thread = threading.Thread(
            target=self._serve, args=(zap, inbox), name="shoal-wire-zap", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the ZAP handler and close its sockets; does nothing if it is stopped.

        Close the Curve server sockets first: without a handler libzmq admits everyone.
        """
        if self._thread is None or self._pipe is None:
            return
        self._pipe.send(b"stop")
        self._thread.join()
        self._pipe.close(linger=0)
        self._thread = self._pipe = None

    def __enter__(self) -> CurveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, zap: zmq.SyncSocket, inbox: zmq.SyncSocket) -> None:
        """Answer ZAP requests until a message arrives on ``inbox`` (handler thread)."""
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(inbox, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if inbox in events:
                    return
                if zap in events:
                    zap.send_multipart(self._answer(zap.recv_multipart()))
        finally:
            # Unbinding inproc is synchronous, closing is not: after stop() has joined
            # this thread the endpoint is free for a new handler at once.
            zap.unbind(_ZAP_ENDPOINT)
            zap.close(linger=0)
            inbox.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """Return the ZAP reply to ``request`` (RFC 27): admit allowed CURVE keys only."""
        request_id = request[1] if len(request) > 1 else b""
        status, text, user_id = b"400", b"not allowed", b""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            text = b"malformed ZAP request"
        elif request[5] != b"CURVE" or len(request) != 7:
            text = b"only CURVE is allowed"
        elif request[6] in self._allowed:
            status, text, user_id = b"200", b"OK", z85.encode(request[6])
        return [_ZAP_VERSION, request_id, status, text, user_id, b""]


def is_loopback_url(url: str) -> bool:
    """Whether a zmq url can only be reached from this machine.

    ``ipc://`` and ``inproc://`` are local, and so is ``tcp://`` on 127.0.0.0/8,
    ``[::1]`` or ``localhost``. Wildcards (``tcp://*``, ``tcp://0.0.0.0``), interface
    names, other addresses and other host names are not.

    Examples
    --------
    >>> is_loopback_url("tcp://127.0.0.1:*"), is_loopback_url("tcp://*:5555")
    (True, False)

    .. versionadded:: 0.1
    """
    transport, sep, address = url.strip().partition("://")
    transport = transport.lower() if sep else ""
    if transport in _LOCAL_TRANSPORTS:
        return True
    if transport != "tcp":
        return False
    address = address.rpartition(";")[2]  # "source;destination" names a peer: check it
    if address.startswith("["):
        host = address[1 : address.find("]")]
    elif address.count(":") == 1:
        host = address.partition(":")[0]
    else:
        host = address
    host = host.lower()
    try:
        ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def bind(
    socket: zmq.Socket[object], url: str, *, curve: bool | None = None, insecure: bool = False
) -> str:
    """Bind ``socket`` to ``url`` and return the url actually bound.

    A port of ``*`` or ``0`` picks a free port; the returned url names it (and
    ``tcp://*:*`` comes back as ``tcp://0.0.0.0:<port>``).

    Parameters
    ----------
    socket : zmq.Socket
        The socket; configure it (:meth:`CurveServer.configure`) before binding.
    url : str
        A zmq url, e.g. ``tcp://127.0.0.1:*``.
    curve : bool, optional
        Whether the socket is encrypted. ``None`` reads ``socket.curve_server``;
        ``True`` insists on it; ``False`` treats the socket as unencrypted.
    insecure : bool
        Allow an unencrypted bind to a non-loopback url (a trusted network only).

    Raises
    ------
    InsecureBindError
        When ``url`` is reachable from other hosts, the socket is not a Curve server and
        ``insecure`` is false; or when ``curve=True`` and it is not a Curve server.

    Examples
    --------
    >>> ctx = zmq.Context()
    >>> s = ctx.socket(zmq.PULL)
    >>> bind(s, "tcp://127.0.0.1:*").startswith("tcp://127.0.0.1:")
    True
    >>> s.close(linger=0); ctx.term()

    .. versionadded:: 0.1
    """
    is_curve_server = bool(socket.curve_server)
    if curve and not is_curve_server:
        raise InsecureBindError(
            f"bind({url!r}, curve=True): the socket is not a Curve server",
            hint="call CurveServer.configure(socket) before bind",
        )
    encrypted = is_curve_server if curve is None else curve
    if not (encrypted or insecure or is_loopback_url(url)):
        raise InsecureBindError(
            f"refusing to bind {url!r} without CurveZMQ encryption: other hosts can reach"
            " it and read or send unencrypted traffic",
            hint="call CurveServer.configure(socket) before bind, bind a loopback url"
            " such as tcp://127.0.0.1:*, or pass insecure=True on a trusted network",
        )
    socket.bind(url)
    endpoint = socket.last_endpoint
    return endpoint.decode("utf-8") if isinstance(endpoint, bytes) else str(endpoint)
