"""Sessions: send and receive :class:`Message` objects over zmq sockets, sync or asyncio.

Theory of operation
-------------------
A session wraps one zmq socket and one :class:`Codec`. Sending encodes and hands the
frames to zmq with ``copy=False``: pyzmq copies small frames and references large ones.
Because a referenced buffer is signed before zmq reads it, a sender that changed an
array right after ``send`` returned would have its message refused; so when a large
buffer went without a copy, ``send`` waits until zmq is done with it.

Receiving never answers a bad message. A message that fails verification (signature,
replay, malformed frames, version) is dropped, counted per error type in
:meth:`statistics`, and logged at most once a second per peer; the receive call then
waits for the next message, so a flood of garbage cannot stop honest traffic or crash
the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio

from ._errors import RemoteInputError
from ._message import Codec, Header, Message, new_header
from ._serialize import Buffer, Serializer

__all__ = ["AsyncSession", "Session", "SessionStatistics"]

log = logging.getLogger("shoal.wire.session")
_LOG_INTERVAL = 1.0
_SNDMORE = int(zmq.SNDMORE)
_MAX_TRACKED_PEERS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStatistics:
    """Counts of a session's traffic; ``dropped`` maps an error type name to a count."""

    sent: int
    received: int
    dropped: Mapping[str, int]

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class _SessionCore:
    """What sync and async sessions share: building, encoding and vetting messages."""

    def __init__(
        self,
        socket: zmq.Socket[Any],
        key: bytes | Codec,
        *,
        session_id: str | None = None,
        sender: str = "",
        serializer: Serializer | None = None,
    ) -> None:
        self.socket = socket
        self.codec = key if isinstance(key, Codec) else Codec(key, serializer=serializer)
        self.session_id = session_id or uuid.uuid4().hex
        self.sender = sender
        self._sent = 0
        self._received = 0
        self._dropped: Counter[str] = Counter()
        self._last_log: dict[bytes, float] = {}
        # Read once: socket options are system calls, and these are on the hot path.
        self._is_router = socket.type == zmq.ROUTER
        self._copy_threshold = socket.copy_threshold
        if self.codec.max_frame_size < 1 << 62:
            # zmq disconnects a peer that sends a bigger frame (new connections only).
            socket.setsockopt(zmq.MAXMSGSIZE, self.codec.max_frame_size)

    def message(
        self,
        msg_type: str,
        content: Any = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, Any] | None = None,
        buffers: Sequence[Buffer] = (),
        identities: Sequence[bytes] = (),
    ) -> Message:
        """Build a message from this session (fresh header, ``parent`` as its parent)."""
        if isinstance(parent, Message):
            parent = parent.header
        return Message(
            header=new_header(msg_type, self.session_id, self.sender),
            parent_header=parent,
            metadata=metadata or {},
            content=content,
            buffers=tuple(buffers),
            identities=tuple(identities),
        )

    def statistics(self) -> SessionStatistics:
        """Messages sent, received, and dropped by reason."""
        return SessionStatistics(self._sent, self._received, dict(self._dropped))

    def _vet(self, frames: Sequence[Any], content: bool) -> Message | None:
        """Decode ``frames``, or count, log (rate-limited) and drop them."""
        try:
            msg = self.codec.decode(frames, content=content)
        except RemoteInputError as exc:
            self._drop(frames, exc)
            return None
        self._received += 1
        return msg

    def _drop(self, frames: Sequence[Any], exc: RemoteInputError) -> None:
        self._dropped[type(exc).__name__] += 1
        peer = bytes(frames[0]) if frames and self._is_router else b""
        now = time.monotonic()
        if now - self._last_log.get(peer, 0.0) >= _LOG_INTERVAL:
            if len(self._last_log) > _MAX_TRACKED_PEERS:
                self._last_log.clear()
            self._last_log[peer] = now
            log.warning(
                "dropped a message from %s: %s (%d dropped so far)",
                f"peer 0x{peer.hex()}" if peer else "the peer",
                exc,
                sum(self._dropped.values()),
            )

    def _frames(self, msg: Message) -> tuple[list[Buffer], bool]:
        frames = self.codec.encode(msg)
        threshold = self._copy_threshold
        # Only buffer frames can be user memory; the head is a fresh bytes object.
        nhead = len(msg.identities) + 1
        big = len(frames) > nhead and any(memoryview(f).nbytes >= threshold for f in frames[nhead:])
        return frames, big


class Session(_SessionCore):
    """Send and receive signed messages over a (blocking) zmq socket.

    Parameters
    ----------
    socket : zmq.Socket
        Any socket type; for ROUTER sockets pass ``identities`` when sending, and read
        ``msg.identities`` when receiving.
    key : bytes or Codec
        The signing key (or a configured :class:`Codec`).
    session_id, sender : str
        Stamped into every header this session sends.

    Examples
    --------
    >>> import zmq
    >>> from shoal.wire import Session, generate_key
    >>> ctx = zmq.Context.instance()
    >>> key = generate_key()
    >>> a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    >>> a.bind("inproc://doc-session"); b.connect("inproc://doc-session")
    >>> _ = Session(a, key).send("ping", {"n": 1})
    >>> Session(b, key).recv(timeout=5).content
    {'n': 1}
    >>> a.close(); b.close()

    .. versionadded:: 0.1
    """

    def send(
        self,
        msg_type: str,
        content: Any = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, Any] | None = None,
        buffers: Sequence[Buffer] = (),
        identities: Sequence[bytes] = (),
    ) -> Message:
        """Build, sign and send a message; returns it (its header identifies replies)."""
        msg = self.message(
            msg_type,
            content,
            parent=parent,
            metadata=metadata,
            buffers=buffers,
            identities=identities,
        )
        self.send_message(msg)
        return msg

    def send_message(self, msg: Message) -> None:
        """Sign and send a prepared message."""
        frames, big = self._frames(msg)
        send = self.socket.send
        # A loop of send() calls: pyzmq's send_multipart costs twice as much per frame.
        for frame in frames[:-1]:
            send(frame, _SNDMORE, copy=not big)
        if big:
            tracker = send(frames[-1], 0, copy=False, track=True)
            tracker.wait()  # the buffers must not change before zmq has read them
        else:
            send(frames[-1])
        self._sent += 1

    def recv(self, *, timeout: float | None = None, content: bool = True) -> Message:
        """Receive the next valid message, dropping invalid ones on the way.

        Raises
        ------
        TimeoutError
            When no valid message arrived within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        recv = self.socket.recv
        while True:
            if deadline is not None:
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if not self.socket.poll(remaining_ms):  # timeout=0: look once, don't wait
                    raise TimeoutError(f"no message arrived within {timeout} s")
            frame = recv(copy=False)
            frames = [frame]
            while frame.more:  # read from the frame: no getsockopt call per part
                frame = recv(copy=False)
                frames.append(frame)
            msg = self._vet(frames, content)
            if msg is not None:
                return msg


class AsyncSession(_SessionCore):
    """:class:`Session` for ``zmq.asyncio`` sockets: ``await send(...)``, ``await recv()``.

    .. versionadded:: 0.1
    """

    socket: zmq.asyncio.Socket

    async def send(
        self,
        msg_type: str,
        content: Any = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, Any] | None = None,
        buffers: Sequence[Buffer] = (),
        identities: Sequence[bytes] = (),
    ) -> Message:
        """Build, sign and send a message; returns it."""
        msg = self.message(
            msg_type,
            content,
            parent=parent,
            metadata=metadata,
            buffers=buffers,
            identities=identities,
        )
        await self.send_message(msg)
        return msg

    async def send_message(self, msg: Message) -> None:
        """Sign and send a prepared message."""
        frames, big = self._frames(msg)
        if big:
            tracker = await self.socket.send_multipart(frames, copy=False, track=True)
            assert tracker is not None  # noqa: S101 - track=True always returns one
            while not tracker.done:  # zmq has no awaitable tracker: poll gently
                await asyncio.sleep(0.0005)
        else:
            await self.socket.send_multipart(frames)
        self._sent += 1

    async def recv(self, *, timeout: float | None = None, content: bool = True) -> Message:
        """Receive the next valid message, dropping invalid ones on the way."""

        async def next_valid() -> Message:
            while True:
                frames = await self.socket.recv_multipart(copy=False)
                msg = self._vet(frames, content)
                if msg is not None:
                    return msg

        if timeout is None:
            return await next_valid()
        try:
            return await asyncio.wait_for(next_valid(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no message arrived within {timeout} s") from None
