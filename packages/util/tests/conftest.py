"""zmq fixtures: every context and socket is closed with linger=0 when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

#: Generous bound for any one receive in a test: a hung socket fails, it never blocks.
RECV_TIMEOUT_MS = 10_000


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A fresh zmq context, destroyed (sockets closed with linger=0) after the test."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def make_socket(context: zmq.Context[Any]) -> Iterator[Callable[[int], zmq.Socket[Any]]]:
    """A factory of sockets in ``context``; each one is closed with linger=0 afterwards."""
    made: list[zmq.Socket[Any]] = []

    def make(socket_type: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context.socket(socket_type)
        sock.linger = 0
        made.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close(linger=0)


def _recv_multipart(sock: zmq.Socket[Any], timeout_ms: int = RECV_TIMEOUT_MS) -> list[bytes]:
    if not sock.poll(timeout_ms, zmq.POLLIN):
        pytest.fail(f"no message within {timeout_ms} ms")
    frames: list[bytes] = sock.recv_multipart()
    return frames


@pytest.fixture
def recv() -> Callable[..., list[bytes]]:
    """``recv(sock, timeout_ms=...)``: one multipart message, or fail after the timeout."""
    return _recv_multipart
