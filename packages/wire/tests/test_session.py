"""Sessions over real zmq sockets: routing, big buffers, timeouts, floods of bad input."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from shoal.wire import AsyncSession, Codec, Message, Session, generate_key, new_header

Pair = Callable[..., tuple[zmq.Socket[Any], zmq.Socket[Any]]]


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_request_reply_through_router(bound_pair: Pair, key: bytes, transport: str) -> None:
    """A DEALER asks, a ROUTER answers to the right identity, parent header links them."""
    router, dealer = bound_pair(zmq.ROUTER, zmq.DEALER, transport)
    server, client = Session(router, key, sender="hub"), Session(dealer, key, sender="client")
    request = client.send("echo_request", {"x": [1, 2]}, metadata={"tag": "t"})
    got = server.recv(timeout=10)
    assert got.identities
    assert got.content == {"x": [1, 2]}
    assert got.metadata == {"tag": "t"}
    assert got.header.sender == "client"
    server.send("echo_reply", got.content, parent=got, identities=got.identities)
    reply = client.recv(timeout=10)
    assert reply.parent_header == request.header
    assert reply.content == {"x": [1, 2]}
    assert client.statistics().sent == 1
    assert server.statistics().received == 1


def test_large_array_arrives_writable(bound_pair: Pair, key: bytes) -> None:
    """A 32 MiB array crosses tcp intact and arrives writable on the receiving side."""
    a, b = bound_pair(zmq.PAIR, zmq.PAIR)
    array = np.random.default_rng(0).random(4 << 20)
    Session(a, key).send("data", {"array": array})
    got = Session(b, key).recv(timeout=30).content["array"]
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable
    got[0] = -1.0  # the receiver owns this memory


def test_sender_may_change_array_after_send(bound_pair: Pair, key: bytes) -> None:
    """send() returns only once zmq is done with a zero-copy buffer: later edits are safe."""
    a, b = bound_pair(zmq.PAIR, zmq.PAIR)
    array = np.zeros(2 << 20)
    Session(a, key).send("data", array)
    array[:] = 1.0
    got = Session(b, key).recv(timeout=30).content
    assert got.sum() == 0.0


def test_recv_timeout(bound_pair: Pair, key: bytes) -> None:
    """recv(timeout=) raises TimeoutError instead of hanging."""
    _, b = bound_pair(zmq.PAIR, zmq.PAIR)
    with pytest.raises(TimeoutError, match=r"within 0\.05"):
        Session(b, key).recv(timeout=0.05)


def test_flood_of_bad_messages_is_dropped(
    bound_pair: Pair, key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of forged, garbage and replayed messages are dropped, counted, and
    logged about once a second, while every honest message still arrives."""
    router, dealer = bound_pair(zmq.ROUTER, zmq.DEALER)
    server = Session(router, key)
    honest = Session(dealer, key)
    forger = Codec(generate_key())
    replayed = honest.codec.encode(honest.message("once"))
    dealer.send_multipart(replayed)
    n_bad = 3000
    with caplog.at_level(logging.WARNING, logger="shoal.wire.session"):
        for i in range(n_bad):
            kind = i % 3
            if kind == 0:
                dealer.send_multipart(forger.encode(honest.message("forged")))
            elif kind == 1:
                dealer.send_multipart([b"garbage", bytes([i % 256])])
            else:
                dealer.send_multipart(replayed)
            if i % 300 == 0:
                honest.send("honest", i)
        received = [server.recv(timeout=10) for _ in range(1 + n_bad // 300)]
    assert received[0].msg_type == "once"
    assert [m.content for m in received[1:]] == list(range(0, n_bad, 300))
    with pytest.raises(TimeoutError):
        server.recv(timeout=0.2)
    dropped = server.statistics().dropped
    assert dropped == {
        "AuthenticationError": n_bad // 3,
        "MalformedMessageError": n_bad // 3,
        "ReplayError": n_bad // 3,
    }
    warnings = [r for r in caplog.records if r.name == "shoal.wire.session"]
    assert 1 <= len(warnings) <= 10


def test_max_frame_size_sets_maxmsgsize(context: zmq.Context[Any], key: bytes) -> None:
    """The codec's frame cap becomes the socket's MAXMSGSIZE, enforced by zmq itself."""
    sock = context.socket(zmq.PAIR)
    Session(sock, Codec(key, max_frame_size=1 << 20))
    assert sock.getsockopt(zmq.MAXMSGSIZE) == 1 << 20
    sock.close(linger=0)


def test_async_session_roundtrip(key: bytes) -> None:
    """AsyncSession sends and receives with await, including a big array and a timeout."""

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        try:
            router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
            router.linger = dealer.linger = 0
            port = router.bind_to_random_port("tcp://127.0.0.1")
            dealer.connect(f"tcp://127.0.0.1:{port}")
            server, client = AsyncSession(router, key), AsyncSession(dealer, key)
            array = np.arange(1 << 20, dtype=np.int64)
            await client.send("req", {"a": array})
            got = await server.recv(timeout=10)
            np.testing.assert_array_equal(got.content["a"], array)
            await server.send("rep", "ok", parent=got, identities=got.identities)
            assert (await client.recv(timeout=10)).content == "ok"
            with pytest.raises(TimeoutError):
                await client.recv(timeout=0.05)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(main())


def test_many_frames_are_capped_while_receiving(bound_pair: Pair, key: bytes) -> None:
    """A message of 10**6 tiny frames is read to its end, kept nowhere and counted as a
    FrameCountError; the honest message behind it arrives."""
    router, dealer = bound_pair(zmq.ROUTER, zmq.DEALER, "inproc")
    server, honest = Session(router, key), Session(dealer, key)
    dealer.sndhwm = 0
    router.rcvhwm = 0
    for _ in range(10**6 - 1):
        dealer.send(b"x", zmq.SNDMORE)
    dealer.send(b"x")
    honest.send("honest", 1)
    assert server.recv(timeout=60).msg_type == "honest"
    assert server.statistics().dropped == {"FrameCountError": 1}


def test_message_size_cap(bound_pair: Pair, key: bytes) -> None:
    """A message over max_message_size in total is dropped as FrameTooLargeError."""
    a, b = bound_pair(zmq.PAIR, zmq.PAIR)
    receiver = Session(b, Codec(key, max_message_size=1 << 20))
    sender = Session(a, key)
    sender.send("big", None, buffers=[b"x" * (600 << 10), b"y" * (600 << 10)])
    sender.send("small", None)
    assert receiver.recv(timeout=10).msg_type == "small"
    assert receiver.statistics().dropped == {"FrameTooLargeError": 1}


def test_router_forwards_verified_messages_restamped(bound_pair: Pair, key: bytes) -> None:
    """recv_envelope verifies without loading; forward stamps with the router's link, so
    the receiver accepts messages whose senders' links it never saw in order."""
    router_in, client = bound_pair(zmq.ROUTER, zmq.DEALER, "inproc")
    out, engine = bound_pair(zmq.PAIR, zmq.PAIR, "inproc")
    hub_in, hub_out = Session(router_in, key), Session(out, key)
    receiver = Session(engine, key)
    first, second = Codec(key), Codec(key)
    late = first.encode(Message(new_header("late", "s")))  # made first, sent last
    client.send_multipart(second.encode(Message(new_header("early", "s"), content=[1])))
    client.send_multipart(late)
    got = []
    while len(got) < 2:
        received = hub_in.recv_envelope(timeout=10)
        assert received is not None
        got.append(received.envelope.msg_type)
        hub_out.forward(received.message_frames)
    assert got == ["early", "late"]
    assert receiver.recv(timeout=10).content == [1]
    assert receiver.recv(timeout=10).msg_type == "late"
    assert hub_in.recv_envelope(timeout=0) is None
