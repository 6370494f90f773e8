"""select_random_ports and set_hwm, on real sockets."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from shoal.util import select_random_ports, set_hwm

SocketFactory = Callable[[int], zmq.Socket[Any]]


@pytest.mark.parametrize("n", [1, 5, 20])
def test_select_random_ports_can_all_be_bound(n: int) -> None:
    """n distinct ports come back, and all of them can be bound at the same time."""
    ports = select_random_ports(n)
    assert len(ports) == n
    assert len(set(ports)) == n
    assert all(1 <= p <= 65535 for p in ports)
    with contextlib.ExitStack() as held:
        for port in ports:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", port))
            sock.listen()


def test_select_random_ports_work_for_zmq(make_socket: SocketFactory) -> None:
    """A zmq socket binds each port as tcp://127.0.0.1:<port>."""
    for port in select_random_ports(3):
        make_socket(zmq.PULL).bind(f"tcp://127.0.0.1:{port}")


def test_select_random_ports_never_repeats_in_a_process() -> None:
    """Ports handed out by earlier calls are not handed out again."""
    first = set(select_random_ports(10))
    second = set(select_random_ports(10))
    assert first.isdisjoint(second)


def test_select_random_ports_zero() -> None:
    """n=0 gives an empty list."""
    assert select_random_ports(0) == []


@pytest.mark.parametrize(
    ("n", "error", "match"),
    [
        (-1, ValueError, "n must be >= 0, got -1"),
        (2.0, TypeError, "float"),
        (True, TypeError, "bool"),
    ],
)
def test_select_random_ports_bad_n(n: Any, error: type[Exception], match: str) -> None:
    """A negative or non-int n raises with a message naming it."""
    with pytest.raises(error, match=match):
        select_random_ports(n)


@pytest.mark.parametrize("socket_type", [zmq.PUB, zmq.SUB, zmq.DEALER, zmq.ROUTER, zmq.PUSH])
@pytest.mark.parametrize("hwm", [0, 1, 1000])
def test_set_hwm_sets_both_directions(
    make_socket: SocketFactory, socket_type: int, hwm: int
) -> None:
    """SNDHWM and RCVHWM both read back as the value set, on pyzmq 27."""
    sock = make_socket(socket_type)
    set_hwm(sock, hwm)
    assert sock.getsockopt(zmq.SNDHWM) == hwm
    assert sock.getsockopt(zmq.RCVHWM) == hwm


def test_set_hwm_defaults_to_unlimited(make_socket: SocketFactory) -> None:
    """Without a value, both marks become 0 (no limit)."""
    sock = make_socket(zmq.DEALER)
    assert sock.getsockopt(zmq.SNDHWM) != 0  # libzmq's default is 1000
    set_hwm(sock)
    assert (sock.getsockopt(zmq.SNDHWM), sock.getsockopt(zmq.RCVHWM)) == (0, 0)


@pytest.mark.parametrize("hwm", [1, 5])
def test_set_hwm_limits_queued_messages(make_socket: SocketFactory, hwm: int) -> None:
    """Over inproc (no kernel buffers) a PUSH queues at most both marks, then blocks."""
    pull = make_socket(zmq.PULL)
    set_hwm(pull, hwm)
    pull.bind("inproc://test-set-hwm")
    push = make_socket(zmq.PUSH)
    set_hwm(push, hwm)
    push.connect("inproc://test-set-hwm")
    sent = 0
    for _ in range(10_000):
        try:
            push.send(b"x", zmq.NOBLOCK)
        except zmq.Again:
            break
        sent += 1
    assert hwm <= sent <= 2 * hwm


def test_set_hwm_negative(make_socket: SocketFactory) -> None:
    """A negative mark raises ValueError naming the value."""
    with pytest.raises(ValueError, match="got -5"):
        set_hwm(make_socket(zmq.PUB), -5)


def test_set_hwm_closed_socket(make_socket: SocketFactory) -> None:
    """libzmq's refusal (a closed socket) comes through as ZMQError."""
    sock = make_socket(zmq.PUB)
    sock.close()
    with pytest.raises(zmq.ZMQError):
        set_hwm(sock, 10)
