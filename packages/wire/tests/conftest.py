"""Fixtures for the wire tests: tracked zmq contexts and sockets, always closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from shoal.wire import generate_key


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A private zmq context whose sockets are closed with linger=0 at teardown."""
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def key() -> bytes:
    """A fresh signing key."""
    return generate_key()


@pytest.fixture
def bound_pair(
    context: zmq.Context[Any],
) -> Iterator[Callable[..., tuple[zmq.Socket[Any], zmq.Socket[Any]]]]:
    """Make (bound, connected) sockets of the given types on a random loopback port."""
    made: list[zmq.Socket[Any]] = []

    def make(
        bind_type: int = zmq.ROUTER, connect_type: int = zmq.DEALER, transport: str = "tcp"
    ) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        a = context.socket(bind_type)
        b = context.socket(connect_type)
        a.linger = b.linger = 0
        if transport == "tcp":
            port = a.bind_to_random_port("tcp://127.0.0.1")
            b.connect(f"tcp://127.0.0.1:{port}")
        else:
            url = f"inproc://pair-{id(a)}"
            a.bind(url)
            b.connect(url)
        made.extend((a, b))
        return a, b

    yield make
    for sock in made:
        sock.close(linger=0)
