"""Connections inherited through ``fork``: what a child sends arrives, even after ``os._exit``.

Each test forks real children; every child is reaped (``waitpid``) before its test ends,
and one left running by a failed test is killed first.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.wire import generate_key
from shoal.wire._connection import Client, Connection, Listener, Pipe

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python >= 3.12 warns that forking a process with threads (zmq's I/O threads) may
    # deadlock; shoal's fork child never touches the inherited context.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

#: Seconds to wait for anything a child should do at once (generous: a loaded machine).
PATIENCE = 60

Forker = Callable[[Callable[[], Any]], int]


@pytest.fixture
def fork() -> Iterator[Forker]:
    """Run a function in a forked child that ends with ``os._exit`` (0 if it returned)."""
    pids: list[int] = []

    def start(body: Callable[[], Any]) -> int:
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                body()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
        return pid

    yield start
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _exit_code(pid: int) -> int:
    """Reap the forked child ``pid`` and return its exit code."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _recv(conn: Connection, timeout: float = PATIENCE) -> Any:
    assert conn.poll(timeout), f"nothing arrived on {conn!r} within {timeout} s"
    return conn.recv()


def _send_range(conn: Connection, n: int) -> Callable[[], None]:
    def body() -> None:
        for i in range(n):
            conn.send(i)

    return body


def _connected(key: bytes) -> tuple[Listener, Connection, Connection]:
    """A listener, its accepted end and the client end, all in this process."""
    listener = Listener(authkey=key)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = pool.submit(Client, listener.address, authkey=key)
        server = listener.accept()
        return listener, server, client.result(PATIENCE)


def test_pipe_end_sent_on_by_forked_child_delivers_all(fork: Forker) -> None:
    """A forked child sends 100 objects on an unused Pipe end and _exits: all 100 arrive."""
    parent_end, child_end = Pipe()
    with parent_end:
        pid = fork(_send_range(child_end, 100))
        assert [_recv(parent_end) for _ in range(100)] == list(range(100))
        assert _exit_code(pid) == 0
        child_end.close()


def test_client_sent_on_by_forked_child_delivers_all(fork: Forker) -> None:
    """A forked child sends 50 objects on an inherited Client and _exits: all 50 arrive."""
    listener, server, client = _connected(generate_key())
    with listener, server, client:
        pid = fork(_send_range(client, 50))
        assert [_recv(server) for _ in range(50)] == list(range(50))
        assert _exit_code(pid) == 0
        client.send("the parent's copy still works")
        assert _recv(server) == "the parent's copy still works"


def test_pipe_delivers_all_before_the_parent_reads(fork: Forker) -> None:
    """The parent reaps the child first, then reads: the child's 100 objects are there."""
    parent_end, child_end = Pipe()
    with parent_end:
        pid = fork(_send_range(child_end, 100))
        child_end.close()  # the parent's copy, as multiprocess users do
        assert _exit_code(pid) == 0
        assert [_recv(parent_end) for _ in range(100)] == list(range(100))


def test_one_way_pipe_write_end_in_forked_child(fork: Forker) -> None:
    """A forked child writes 100 objects to a Pipe(duplex=False) end the parent had used."""
    r, w = Pipe(duplex=False)
    with r, w:
        w.send("from the parent")
        pid = fork(_send_range(w, 100))
        got = [_recv(r) for _ in range(101)]  # the two processes' messages interleave
        got.remove("from the parent")
        assert got == list(range(100))
        assert _exit_code(pid) == 0


def test_forked_child_receives_and_replies(fork: Forker) -> None:
    """A forked child receives on its inherited end and its reply survives os._exit."""
    parent_end, child_end = Pipe()
    with parent_end:
        parent_end.send("sent before the fork")

        def body() -> None:
            child_end.send(("got", child_end.recv(), os.getpid()))

        pid = fork(body)
        child_end.close()
        assert _recv(parent_end) == ("got", "sent before the fork", pid)
        assert _exit_code(pid) == 0


def _send_and_exit(conn: Connection, n: int) -> None:
    """A multiprocessing target that sends ``n`` objects and leaves without cleanup."""
    for i in range(n):
        conn.send(i)
    os._exit(0)


def test_multiprocessing_fork_child_delivers_all() -> None:
    """A multiprocessing 'fork' child that _exits after sending delivers all 100 objects."""
    parent_end, child_end = Pipe()
    proc: Any = multiprocessing.get_context("fork").Process(
        target=_send_and_exit, args=(child_end, 100), daemon=True
    )
    with parent_end:
        proc.start()
        try:
            child_end.close()
            assert [_recv(parent_end) for _ in range(100)] == list(range(100))
            proc.join(PATIENCE)
            assert proc.exitcode == 0
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(PATIENCE)


def test_forked_client_cannot_receive_or_be_accepted_side(fork: Forker) -> None:
    """In a forked child, recv on a Client and send on an accepted end raise clear errors."""
    listener, server, client = _connected(generate_key())
    errors = multiprocessing.get_context("fork").SimpleQueue()

    def body() -> None:
        for attempt in (client.recv, lambda: server.send("x")):
            try:
                attempt()
            except OSError as exc:
                errors.put(str(exc))

    with listener, server, client:
        pid = fork(body)
        assert _exit_code(pid) == 0
        recv_error, send_error = errors.get(), errors.get()
        assert "fork child" in recv_error
        assert "Client()" in recv_error
        assert "fork child" in send_error
        assert "accepted by a Listener" in send_error
