"""The multiprocess.connection API over zmq: real sockets, real processes, real kills."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from shoal.wire import AuthenticationError as WireAuthenticationError
from shoal.wire import InsecureBindError, InvalidKeyError, generate_key
from shoal.wire._connection import (
    HEARTBEAT_TIMEOUT,
    Address,
    Client,
    Connection,
    HandshakeError,
    Listener,
    Pipe,
    wait,
)

TESTS = Path(__file__).parent
# Generous bounds: a dead peer must be noticed within seconds, never "eventually".
DEATH_NOTICED_WITHIN = 3 * HEARTBEAT_TIMEOUT + 5
FORK_THREADS = pytest.mark.filterwarnings(
    # Python >= 3.12 warns that forking a process with threads (zmq's I/O threads) may
    # deadlock; shoal's fork child never touches the inherited context, only new ones.
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The child targets module, importable by spawn children; kills leftovers at teardown."""
    monkeypatch.syspath_prepend(str(TESTS))
    import conn_children

    started: list[Any] = []
    conn_children.started = started  # type: ignore[attr-defined]
    yield conn_children
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


@pytest.fixture
def popen() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start unrelated processes; each is killed (by PID) and reaped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _start(mod: ModuleType, method: str, target: Callable[..., Any], *args: Any) -> Any:
    context: Any = multiprocessing.get_context(method)
    proc = context.Process(target=target, args=args, daemon=True)
    mod.started.append(proc)
    proc.start()
    return proc


def _connect_in_thread(listener: Listener, authkey: bytes) -> tuple[Connection, Connection]:
    """(client end, server end) of a Listener/Client connection within this process."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(Client, listener.address, authkey=authkey)
        if wait([listener], timeout=30) != [listener]:
            future.result(timeout=30)  # raises what went wrong in the client
            pytest.fail("the client did not connect")
        server = listener.accept()
        return future.result(timeout=30), server


def _recv(conn: Connection, timeout: float = 30) -> Any:
    assert conn.poll(timeout), f"nothing arrived on {conn} within {timeout} s"
    return conn.recv()


# -- one process ------------------------------------------------------------------------
@pytest.fixture(params=["pipe", "listener"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Connection, Connection]]:
    """Two connected duplex ends: a Pipe, or a Listener/Client connection."""
    if request.param == "pipe":
        a, b = Pipe()
    else:
        key = generate_key()
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            a, b = _connect_in_thread(listener, key)
    yield a, b
    a.close()
    b.close()


def test_send_recv_objects(pair: tuple[Connection, Connection]) -> None:
    """Plain data, a lambda and a numpy array cross both ways and come out equal."""
    a, b = pair
    a.send({"x": [1, 2.5, "three"], "t": (None, True)})
    assert _recv(b) == {"x": [1, 2.5, "three"], "t": (None, True)}
    a.send(lambda x: x * 7)
    assert _recv(b)(6) == 42
    array = np.random.default_rng(1).random((300, 200))
    b.send(array)
    np.testing.assert_array_equal(_recv(a), array)


def test_send_bytes_offset_and_size(pair: tuple[Connection, Connection]) -> None:
    """send_bytes honours offset and size, like multiprocessing; bad ranges are refused."""
    a, b = pair
    a.send_bytes(b"0123456789")
    a.send_bytes(b"0123456789", 3)
    a.send_bytes(bytearray(b"0123456789"), 2, 4)
    a.send_bytes(np.arange(4, dtype=np.int32).data, 4, 4)
    a.send_bytes(b"")
    b.poll(30)
    assert [b.recv_bytes() for _ in range(5)] == [
        b"0123456789",
        b"3456789",
        b"2345",
        np.int32(1).tobytes(),
        b"",
    ]
    for offset, size in [(-1, None), (11, None), (0, -1), (5, 6)]:
        with pytest.raises(ValueError, match=r"offset|size"):
            a.send_bytes(b"0123456789", offset, size)


def test_recv_bytes_maxlength(pair: tuple[Connection, Connection]) -> None:
    """A message longer than maxlength raises OSError; the connection stays usable."""
    a, b = pair
    a.send_bytes(b"x" * 100)
    a.send_bytes(b"short")
    with pytest.raises(OSError, match="maxlength=10"):
        _ = b.poll(30) and b.recv_bytes(10)
    assert b.recv_bytes(10) == b"short"
    with pytest.raises(ValueError, match="negative"):
        b.recv_bytes(-1)


def test_recv_bytes_into(pair: tuple[Connection, Connection]) -> None:
    """recv_bytes_into fills a buffer at an offset; too short a buffer raises BufferTooShort."""
    a, b = pair
    a.send_bytes(b"abcdef")
    buf = bytearray(10)
    assert b.poll(30)
    assert b.recv_bytes_into(buf, 2) == 6
    assert buf == b"\0\0abcdef\0\0"
    big = bytes(range(200)) * 500
    a.send_bytes(big)
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        _ = b.poll(30) and b.recv_bytes_into(bytearray(1000))
    assert info.value.args[0] == big
    into = np.zeros(len(big), dtype=np.uint8)
    a.send_bytes(big)
    assert b.poll(30)
    assert b.recv_bytes_into(into) == len(big)
    assert into.tobytes() == big


def test_bytes_and_objects_interoperate(pair: tuple[Connection, Connection]) -> None:
    """recv() unpickles send_bytes(pickle), and recv_bytes() returns a loadable pickle."""
    a, b = pair
    a.send_bytes(pickle.dumps({"k": 1}))
    assert _recv(b) == {"k": 1}
    array = np.arange(100_000)
    a.send(array)
    assert b.poll(30)
    np.testing.assert_array_equal(pickle.loads(b.recv_bytes()), array)


def test_poll(pair: tuple[Connection, Connection]) -> None:
    """poll is false with nothing to read (also after a timeout) and true once data came."""
    a, b = pair
    assert b.poll() is False
    started = time.monotonic()
    assert b.poll(0.2) is False
    assert time.monotonic() - started >= 0.15
    a.send("ping")
    assert b.poll(30) is True
    assert b.poll(None) is True  # still there: poll does not consume
    assert b.recv() == "ping"
    assert b.poll() is False


def test_close_gives_eof_and_broken_pipe(pair: tuple[Connection, Connection]) -> None:
    """After the peer closed, what it sent still arrives, then recv raises EOFError."""
    a, b = pair
    a.send(1)
    a.send(2)
    a.close()
    assert a.closed
    assert (_recv(b), _recv(b)) == (1, 2)
    assert b.poll(30)
    with pytest.raises(EOFError, match="closed it or died"):
        b.recv()
    with pytest.raises(BrokenPipeError):
        b.send(3)
    with pytest.raises(OSError, match="is closed"):
        a.send(4)
    with pytest.raises(OSError, match="is closed"):
        a.recv()


def test_one_way_pipe() -> None:
    """Pipe(duplex=False) gives (receive-only, send-only) ends that refuse the other way."""
    r, w = Pipe(duplex=False)
    with r, w:
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
        w.send("one way")
        assert _recv(r) == "one way"
        with pytest.raises(OSError, match="read-only"):
            r.send(1)
        with pytest.raises(OSError, match="write-only"):
            w.recv()
        w.close()
        with pytest.raises(EOFError):
            _ = r.poll(30) and r.recv()
    assert r.closed
    assert w.closed


def test_large_buffer_before_peer_opened() -> None:
    """A big send before the peer end was ever used returns (copied), then arrives."""
    a, b = Pipe()
    with a, b:
        array = np.arange(1 << 20, dtype=np.float64)
        a.send(array)
        array[:] = 0  # the copy was taken at send time
        np.testing.assert_array_equal(_recv(b), np.arange(1 << 20, dtype=np.float64))


def test_fileno_and_repr() -> None:
    """fileno() is an int fd; repr names the pipe and its state."""
    a, b = Pipe()
    with a, b:
        assert "unopened" in repr(a)
        assert isinstance(a.fileno(), int)
        assert "open" in repr(a)
    assert "closed" in repr(a)


# -- keys and addresses -----------------------------------------------------------------
def test_empty_authkey_refused() -> None:
    """An empty authkey is refused with a clear error, on both sides."""
    with pytest.raises(InvalidKeyError, match="empty"):
        Listener(authkey=b"")
    with pytest.raises(InvalidKeyError, match="empty"):
        Client(("127.0.0.1", 1), authkey=b"")
    with pytest.raises(TypeError, match="bytes"):
        Listener(authkey="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("authkey", [b"secret", None], ids=["short", "current_process"])
def test_short_and_default_authkeys(authkey: bytes | None) -> None:
    """A multiprocess-style short key works, and None means current_process().authkey."""
    with Listener(authkey=authkey) as listener:
        client, server = _connect_in_thread(
            listener, authkey or multiprocessing.current_process().authkey
        )
        with client, server:
            client.send("hi")
            assert _recv(server) == "hi"


@pytest.mark.parametrize("form", ["tuple", "url", "path", "default", "unix"])
def test_address_forms(form: str, tmp_path: Path) -> None:
    """Listener.address reports a connectable address in the form it was given."""
    given: Any = {
        "tuple": ("127.0.0.1", 0),
        "url": "tcp://127.0.0.1:*",
        "path": str(tmp_path / "listener.sock"),
        "default": None,
        "unix": None,
    }[form]
    key = generate_key()
    with Listener(given, family="AF_UNIX" if form == "unix" else None, authkey=key) as listener:
        address: Address = listener.address
        if form in ("tuple", "default"):
            assert isinstance(address, tuple)
            assert address[0] == "127.0.0.1"
            assert address[1] > 0
        elif form == "url":
            assert isinstance(address, str)
            assert address.startswith("tcp://127.0.0.1:")
            assert not address.endswith("*")
        else:
            assert isinstance(address, str)
            assert "://" not in address
            assert form == "unix" or address == given
        client, server = _connect_in_thread(listener, key)
        with client, server:
            server.send(form)
            assert _recv(client) == form
            tcp = form in ("tuple", "url", "default")
            assert listener.last_accepted == ("127.0.0.1" if tcp else None)


def test_non_loopback_bind_refused() -> None:
    """Binding an address other hosts can reach needs insecure=True."""
    with pytest.raises(InsecureBindError, match="insecure=True"):
        Listener(("0.0.0.0", 0), authkey=generate_key())  # noqa: S104
    with Listener(("0.0.0.0", 0), authkey=generate_key(), insecure=True) as listener:  # noqa: S104
        address = listener.address
        assert isinstance(address, tuple)
        assert address[1] > 0


def test_wrong_authkey_gets_nothing_through() -> None:
    """A client with the wrong key is never answered and gives up within its timeout."""
    key = generate_key()
    with Listener(authkey=key) as listener:
        started = time.monotonic()
        with pytest.raises(HandshakeError, match=r"no authenticated answer from .* within 1 s"):
            Client(listener.address, authkey=generate_key(), timeout=1)
        assert time.monotonic() - started < 10
        assert wait([listener], timeout=0.2) == []  # the request was dropped
        # ... and the listener still serves clients with the right key.
        client, server = _connect_in_thread(listener, key)
        with client, server:
            client.send("right key")
            assert _recv(server) == "right key"


def test_handshake_error_is_catchable_as_authentication_errors() -> None:
    """HandshakeError is both shoal's and multiprocessing's AuthenticationError."""
    assert issubclass(HandshakeError, WireAuthenticationError)
    assert issubclass(HandshakeError, multiprocessing.AuthenticationError)
    with Listener(authkey=b"one") as listener, pytest.raises(multiprocessing.AuthenticationError):
        Client(listener.address, authkey=b"two", timeout=0.5)


def test_listener_connection_not_picklable() -> None:
    """Listener/Client connections refuse to be pickled; closed ones too."""
    key = generate_key()
    with Listener(authkey=key) as listener:
        client, server = _connect_in_thread(listener, key)
        with client, server, pytest.raises(TypeError, match="Pipe"):
            pickle.dumps(client)
    a, b = Pipe()
    b.close()
    with pytest.raises(OSError, match="closed"):
        pickle.dumps(b)
    a.close()


# -- other processes --------------------------------------------------------------------
@pytest.mark.parametrize("form", ["tuple", "url"])
def test_unrelated_processes(form: str, popen: Callable[..., subprocess.Popen[bytes]]) -> None:
    """An unrelated process connects with the authkey from its environment and echoes."""
    key = os.urandom(32)
    given: Any = ("127.0.0.1", 0) if form == "tuple" else "tcp://127.0.0.1:*"
    with Listener(given, authkey=key) as listener:
        address = listener.address
        text = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        env = {"SHOAL_TEST_AUTHKEY": key.hex()}
        proc = popen(str(TESTS / "conn_peer.py"), "echo", text, env=env)
        assert wait([listener], timeout=60) == [listener], "the peer did not connect"
        with listener.accept() as conn:
            array = np.random.default_rng(2).random(50_000)
            for obj in ("text", {"n": 1}, array):
                conn.send(obj)
                np.testing.assert_array_equal(_recv(conn), obj)
        assert proc.wait(30) == 0  # it saw EOF after our close


@pytest.mark.parametrize("method", ["spawn", pytest.param("fork", marks=FORK_THREADS)])
def test_pipe_with_child(method: str, children: ModuleType) -> None:
    """A Pipe end passed to a child as a Process argument works both ways; exit flushes."""
    parent, child = Pipe()
    with parent:
        proc = _start(children, method, children.reply_and_exit, child)
        child.close()  # the parent's copy; the child's is its own
        parent.send(lambda: "made in the parent")
        tag, fn, pid = _recv(parent, 60)
        assert (tag, fn(), pid) == ("got", "made in the parent", proc.pid)
        proc.join(30)
        assert proc.exitcode == 0
        with pytest.raises(EOFError):
            _ = parent.poll(30) and parent.recv()


@pytest.mark.parametrize("method", ["spawn", pytest.param("fork", marks=FORK_THREADS)])
def test_one_way_pipe_child_reads(method: str, children: ModuleType) -> None:
    """The child gets the reading end of Pipe(duplex=False); the parent writes first."""
    r, w = Pipe(duplex=False)
    back_r, back_w = Pipe(duplex=False)
    with r, w, back_r, back_w:
        w.send("sent before the child started")
        proc = _start(children, method, children.echo_one_way, r, back_w)
        assert _recv(back_r, 60) == "sent before the child started"
        w.close()
        proc.join(30)
        assert proc.exitcode == 0


def test_64mib_array_round_trip(children: ModuleType) -> None:
    """A 64 MiB numpy array goes to a spawn child and comes back intact."""
    parent, child = Pipe()
    with parent:
        proc = _start(children, "spawn", children.echo, child)
        child.close()
        array = np.random.default_rng(3).integers(0, 1 << 62, size=8 << 20)
        assert array.nbytes == 64 << 20
        parent.send(array)
        back = _recv(parent, 60)
        np.testing.assert_array_equal(back, array)
        parent.close()
        proc.join(30)
        assert proc.exitcode == 0


def test_wait_connections_listener_and_sentinel(children: ModuleType) -> None:
    """wait() returns the ready connections, a listener with a client, and a sentinel."""
    pipes = [Pipe() for _ in range(3)]
    ends = [a for a, _ in pipes]
    key = generate_key()
    with Listener(authkey=key) as listener:
        assert wait([*ends, listener], timeout=0.1) == []
        pipes[1][1].send("x")
        assert wait([*ends, listener], timeout=30) == [ends[1]]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(Client, listener.address, authkey=key)
            assert wait([ends[0], ends[2], listener], timeout=30) == [listener]
            with listener.accept(), future.result(30):
                pass
        proc = _start(children, "spawn", children.exit_now)
        assert wait([ends[0], ends[2], proc.sentinel], timeout=60) == [proc.sentinel]
        assert pipes[2][1].poll() is False  # opens it: closing an unused end signals nothing
        pipes[2][1].close()
        assert wait([ends[0], ends[2]], timeout=30) == [ends[2]]  # EOF counts as ready
    for a, b in pipes:
        a.close()
        b.close()


def test_killed_client_process_gives_eof(popen: Callable[..., subprocess.Popen[bytes]]) -> None:
    """recv raises EOFError within seconds after an unrelated peer is SIGKILLed."""
    key = os.urandom(32)
    with Listener("tcp://127.0.0.1:*", authkey=key) as listener:
        assert isinstance(listener.address, str)
        env = {"SHOAL_TEST_AUTHKEY": key.hex()}
        proc = popen(str(TESTS / "conn_peer.py"), "block", listener.address, env=env)
        assert wait([listener], timeout=60) == [listener], "the peer did not connect"
        with listener.accept() as conn:
            assert _recv(conn) == "ready"
            assert conn.poll(0.1) is False
            proc.kill()
            started = time.monotonic()
            assert conn.poll(DEATH_NOTICED_WITHIN)
            with pytest.raises(EOFError):
                conn.recv()
            assert time.monotonic() - started < DEATH_NOTICED_WITHIN
            with pytest.raises(BrokenPipeError):
                conn.send("anyone?")


def test_killed_pipe_child_gives_eof(children: ModuleType) -> None:
    """recv on a Pipe raises EOFError within seconds after the child is SIGKILLed."""
    parent, child = Pipe()
    with parent:
        proc = _start(children, "spawn", children.ready_then_block, child)
        child.close()
        assert _recv(parent, 60) == "ready"
        proc.kill()
        started = time.monotonic()
        with pytest.raises(EOFError):
            _ = parent.poll(DEATH_NOTICED_WITHIN) and parent.recv()
        assert time.monotonic() - started < DEATH_NOTICED_WITHIN
