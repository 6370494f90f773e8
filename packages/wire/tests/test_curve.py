"""CurveZMQ with a ZAP allow-list, and the refusal of insecure binds, over real sockets."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from shoal.wire import (
    CurveKeys,
    CurveServer,
    CurveSetupError,
    InsecureBindError,
    InvalidKeyError,
    bind,
    configure_curve_client,
    curve_keypair,
    is_loopback_url,
)

LOOPBACK = "tcp://127.0.0.1:*"
#: How long a refused client's message is given to (not) arrive.
QUIET = 750
#: Generous bound on a handshake over loopback; only reached when a test fails.
HANDSHAKE_MS = 10_000

SocketFactory = Callable[[int], "zmq.Socket[Any]"]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A fresh context, terminated (with a timeout) after its sockets are closed."""
    context: zmq.Context[Any] = zmq.Context()
    yield context
    term = threading.Thread(target=context.term, daemon=True)
    term.start()
    term.join(10)
    assert not term.is_alive(), "context.term() hung: a socket was left open"


@pytest.fixture
def make_socket(ctx: zmq.Context[Any]) -> Iterator[SocketFactory]:
    """A factory of sockets in ``ctx``, each closed with linger=0 after the test."""
    made: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(kind)
        sock.linger = 0
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def server(ctx: zmq.Context[Any]) -> Iterator[CurveServer]:
    """A running CurveServer for ``ctx`` with an empty allow-list, stopped after the test."""
    with CurveServer(ctx) as srv:
        yield srv
    assert not srv.running


@pytest.fixture
def router(server: CurveServer, make_socket: SocketFactory) -> tuple[zmq.Socket[Any], str]:
    """A Curve server ROUTER bound to a random loopback port, and its url."""
    sock = make_socket(zmq.ROUTER)
    server.configure(sock)
    return sock, bind(sock, LOOPBACK)


def monitored_dealer(
    make_socket: SocketFactory, keys: CurveKeys | None
) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A DEALER (a Curve client when ``keys`` is given) and a monitor of its handshakes."""
    dealer = make_socket(zmq.DEALER)
    if keys is not None:
        configure_curve_client(dealer, keys)
    monitor = make_socket(zmq.PAIR)
    url = f"inproc://monitor-{id(dealer)}"
    dealer.monitor(url, zmq.EVENT_ALL)
    monitor.connect(url)
    return dealer, monitor


def wait_handshake(monitor: zmq.Socket[Any]) -> int:
    """Return the first handshake outcome event seen on ``monitor``."""
    outcomes = {
        zmq.EVENT_HANDSHAKE_SUCCEEDED,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    }
    while monitor.poll(HANDSHAKE_MS):
        event = int(recv_monitor_message(monitor)["event"])
        if event in outcomes:
            return event
    pytest.fail("no handshake outcome within the timeout")


def test_keypair_is_z85_and_fresh() -> None:
    """curve_keypair returns distinct 40-character Z85 keys."""
    (pub1, sec1), (pub2, _) = curve_keypair(), curve_keypair()
    assert len(pub1) == len(sec1) == 40
    assert pub1 != pub2
    assert pub1 != sec1


def test_allowed_client_exchanges_messages(
    server: CurveServer,
    router: tuple[zmq.Socket[Any], str],
    make_socket: SocketFactory,
) -> None:
    """An allowed client talks both ways and its key arrives as the User-Id."""
    sock, url = router
    keys = server.new_client()
    dealer, monitor = monitored_dealer(make_socket, keys)
    dealer.connect(url)
    dealer.send(b"ping")
    assert sock.poll(HANDSHAKE_MS), "the allowed client's message never arrived"
    ident, frame = sock.recv_multipart(copy=False)
    assert frame.bytes == b"ping"
    assert frame.get("User-Id") == keys.client_public.decode()
    sock.send_multipart([ident, b"pong"])
    assert dealer.poll(HANDSHAKE_MS)
    assert dealer.recv() == b"pong"
    assert wait_handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED


def _offer(sock: zmq.Socket[Any], data: bytes) -> None:
    """Queue ``data`` if zmq takes it now: a refused client may have no pipe, and a
    blocking send would then wait forever."""
    with contextlib.suppress(zmq.Again):
        sock.send(data, zmq.NOBLOCK)


def test_unlisted_keypair_is_refused(
    server: CurveServer,
    router: tuple[zmq.Socket[Any], str],
    make_socket: SocketFactory,
) -> None:
    """A valid keypair that is not on the allow-list gets nothing through."""
    sock, url = router
    server.new_client()  # someone else is allowed; this client is not
    public, secret = curve_keypair()
    keys = CurveKeys(server.public_key, public, secret)
    dealer, monitor = monitored_dealer(make_socket, keys)
    dealer.connect(url)
    _offer(dealer, b"let me in")
    assert wait_handshake(monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert not sock.poll(QUIET)


def test_plain_client_is_refused(
    router: tuple[zmq.Socket[Any], str], make_socket: SocketFactory
) -> None:
    """A client without Curve gets nothing through to a Curve server."""
    sock, url = router
    dealer, monitor = monitored_dealer(make_socket, None)
    dealer.connect(url)
    _offer(dealer, b"let me in")
    assert wait_handshake(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert not sock.poll(QUIET)


def test_curve_client_with_wrong_server_key_is_refused(
    server: CurveServer,
    router: tuple[zmq.Socket[Any], str],
    make_socket: SocketFactory,
) -> None:
    """An allowed client that expects another server's key gets nothing through."""
    sock, url = router
    keys = server.new_client()
    other_server_public, _ = curve_keypair()
    wrong = CurveKeys(other_server_public, keys.client_public, keys.client_secret)
    dealer, monitor = monitored_dealer(make_socket, wrong)
    dealer.connect(url)
    _offer(dealer, b"hello")
    assert wait_handshake(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert not sock.poll(QUIET)


def test_revoke_shuts_new_connections_out(
    server: CurveServer,
    router: tuple[zmq.Socket[Any], str],
    make_socket: SocketFactory,
) -> None:
    """After revoke, a new connection with that key is refused; an established one stays."""
    sock, url = router
    keys = server.new_client()
    first, first_monitor = monitored_dealer(make_socket, keys)
    first.connect(url)
    first.send(b"one")
    assert sock.poll(HANDSHAKE_MS)
    assert sock.recv_multipart()[1] == b"one"
    assert wait_handshake(first_monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED

    server.revoke(keys.client_public)
    assert not server.is_allowed(keys.client_public)
    assert keys.client_public not in server.allowed

    second, second_monitor = monitored_dealer(make_socket, keys)
    second.connect(url)
    _offer(second, b"two")
    assert wait_handshake(second_monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert not sock.poll(QUIET)

    first.send(b"three")
    assert sock.poll(HANDSHAKE_MS), "revoke must not cut established connections"
    assert sock.recv_multipart()[1] == b"three"


def test_allow_at_runtime_lets_a_new_client_in(
    server: CurveServer,
    router: tuple[zmq.Socket[Any], str],
    make_socket: SocketFactory,
) -> None:
    """A key allowed after the server started is admitted on its next handshake."""
    sock, url = router
    public, secret = curve_keypair()
    assert not server.is_allowed(public)
    server.allow(public.decode())  # str keys are accepted too
    assert public in server.allowed
    dealer, _ = monitored_dealer(make_socket, CurveKeys(server.public_key, public, secret))
    dealer.connect(url)
    dealer.send(b"late")
    assert sock.poll(HANDSHAKE_MS)
    assert sock.recv_multipart()[1] == b"late"


@pytest.mark.parametrize(
    "bad",
    [b"", b"short", b"x" * 39 + b"\x00", "é" * 40, b"0" * 41, b"~" * 40],
    ids=["empty", "short", "nul", "non-ascii", "long", "not-z85"],
)
def test_malformed_keys_are_refused(server: CurveServer, bad: bytes | str) -> None:
    """allow() and configure_curve_client() reject keys that are not 40-char Z85."""
    with pytest.raises(InvalidKeyError, match="Z85"):
        server.allow(bad)
    raw = bad.encode() if isinstance(bad, str) else bad
    keys = CurveKeys(server.public_key, raw, server.secret_key)
    with pytest.raises(InvalidKeyError, match=r"keys\.client_public"):
        configure_curve_client(cast("zmq.Socket[Any]", _NoSocket()), keys)
    assert server.allowed == frozenset()


class _NoSocket:
    """Stands in for a socket where validation must fail before any option is set."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AssertionError(f"option {name} set despite an invalid key")


def test_half_a_keypair_is_refused(ctx: zmq.Context[Any]) -> None:
    """CurveServer needs both halves of its keypair, or neither."""
    public, _ = curve_keypair()
    with pytest.raises(InvalidKeyError, match="both"):
        CurveServer(ctx, public_key=public)


def test_socket_from_another_context_is_refused(server: CurveServer) -> None:
    """configure() refuses a socket whose context has no ZAP handler of this server."""
    other = zmq.Context()
    sock = other.socket(zmq.ROUTER)
    try:
        with pytest.raises(CurveSetupError, match="another zmq context"):
            server.configure(sock)
        assert not sock.curve_server
    finally:
        sock.close(linger=0)
        other.term()


def test_second_handler_in_one_context_is_refused(
    ctx: zmq.Context[Any], server: CurveServer
) -> None:
    """Only one CurveServer can serve ZAP in a context; the second says so."""
    second = CurveServer(ctx)
    with pytest.raises(CurveSetupError, match="one CurveServer per context"):
        second.start()
    assert not second.running
    assert server.running


def test_start_stop_leaves_no_thread(ctx: zmq.Context[Any]) -> None:
    """stop() ends the handler thread and closes its sockets; both are idempotent."""
    before = set(threading.enumerate())
    srv = CurveServer(ctx)
    srv.start()
    srv.start()
    assert srv.running
    assert set(threading.enumerate()) - before
    srv.stop()
    srv.stop()
    assert not srv.running
    assert set(threading.enumerate()) - before == set()
    srv.start()  # a stopped server can serve again (its ZAP endpoint was released)
    assert srv.running
    srv.stop()


@pytest.mark.parametrize("url", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://*:0"])
def test_bind_refuses_public_url_without_curve(make_socket: SocketFactory, url: str) -> None:
    """bind() refuses a non-loopback url on a plain socket and names the url."""
    sock = make_socket(zmq.PULL)
    with pytest.raises(InsecureBindError) as info:
        bind(sock, url)
    assert url in str(info.value)
    assert "insecure=True" in str(info.value)
    assert sock.last_endpoint in (b"", None)


@pytest.mark.parametrize("url", ["tcp://0.0.0.0:*", "tcp://*:*"])
def test_bind_public_url_with_insecure(make_socket: SocketFactory, url: str) -> None:
    """bind(insecure=True) binds a non-loopback url and returns the real port."""
    sock = make_socket(zmq.PULL)
    bound = bind(sock, url, insecure=True)
    assert bound.startswith("tcp://0.0.0.0:")
    assert int(bound.rsplit(":", 1)[1]) > 0


def test_bind_public_url_with_curve_server(server: CurveServer, make_socket: SocketFactory) -> None:
    """A Curve server socket may bind a non-loopback url, and clients still get in."""
    sock = make_socket(zmq.ROUTER)
    server.configure(sock)
    bound = bind(sock, "tcp://0.0.0.0:*", curve=True)
    port = bound.rsplit(":", 1)[1]
    dealer = make_socket(zmq.DEALER)
    configure_curve_client(dealer, server.new_client())
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hi")
    assert sock.poll(HANDSHAKE_MS)
    assert sock.recv_multipart()[1] == b"hi"


def test_bind_curve_true_on_plain_socket_is_refused(make_socket: SocketFactory) -> None:
    """bind(curve=True) refuses a socket that is not a Curve server, even on loopback."""
    sock = make_socket(zmq.PULL)
    with pytest.raises(InsecureBindError, match="not a Curve server"):
        bind(sock, LOOPBACK, curve=True)


def test_bind_curve_false_overrides_socket(server: CurveServer, make_socket: SocketFactory) -> None:
    """bind(curve=False) treats even a Curve server socket as unencrypted."""
    sock = make_socket(zmq.ROUTER)
    server.configure(sock)
    with pytest.raises(InsecureBindError):
        bind(sock, "tcp://*:*", curve=False)


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "tcp://localhost:*"])
def test_bind_loopback_random_port(make_socket: SocketFactory, url: str) -> None:
    """A loopback url with port * or 0 binds a free port, returned in the url."""
    pull = make_socket(zmq.PULL)
    bound = bind(pull, url)
    host, port = bound.removeprefix("tcp://").rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    push = make_socket(zmq.PUSH)
    push.connect(bound)
    push.send(b"here")
    assert pull.poll(HANDSHAKE_MS)
    assert pull.recv() == b"here"


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.1.2.3:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://LOCALHOST", True),
        ("tcp://[::1]:5555", True),
        ("tcp://::1", True),
        ("tcp://[::ffff:127.0.0.1]:1", True),
        ("ipc:///tmp/shoal.sock", True),
        ("inproc://anything", True),
        ("tcp://*:5555", False),
        ("tcp://*:*", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://192.168.1.10:5555", False),
        ("tcp://10.0.0.1:*", False),
        ("tcp://example.com:5555", False),
        ("tcp://localhost.example.com:1", False),
        ("tcp://eth0:5555", False),
        ("tcp://127.0.0.1:1;192.168.1.1:5555", False),
        ("ws://127.0.0.1:80", False),
        ("pgm://eth0;239.192.1.1:5555", False),
        ("127.0.0.1:5555", False),
        ("", False),
    ],
)
def test_is_loopback_url(url: str, local: bool) -> None:
    """is_loopback_url accepts only urls that cannot leave this machine."""
    assert is_loopback_url(url) is local
