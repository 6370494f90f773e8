"""Sessions: send and receive :class:`Message` objects over zmq sockets, sync or asyncio.

Theory of operation
-------------------
A session wraps one zmq socket and one :class:`Codec`. Sending encodes and hands the
frames to zmq with ``copy=False``: pyzmq copies small frames and references large ones.
Because a referenced buffer is signed before zmq reads it, a sender that changed an
array right after ``send`` returned would have its message refused; so when a large
buffer went without a copy, ``send`` waits until zmq is done with it.

Every message a session sends is stamped by the session's own :class:`Link` just
before it goes to the socket, so the receiver's per-link replay check sees the link's
messages in order. A router relays with :meth:`Session.recv_envelope` (verified in full,
content not loaded) and :meth:`Session.forward` (stamped again by the forwarding
session): each hop signs what it forwards.

Receiving never answers a bad message. Frames are read one at a time and counted: a
message with more frames or bytes than the codec's caps is read to its end without
keeping any of it (no per-frame work beyond zmq's) and dropped. A message that fails
verification (link stamp, signature, replay, malformed frames, version) is dropped too.
Drops are counted per reason in :meth:`statistics` and logged at most once a second per
peer (a peer's routing identity is shown as hex: identities are opaque bytes); the
receive call then goes on to the next message, so a flood of garbage cannot stop honest
traffic or crash the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

import zmq

if TYPE_CHECKING:
    import zmq.asyncio

from ._errors import (
    FrameCountError,
    FrameTooLargeError,
    MalformedMessageError,
    RemoteInputError,
    SharedMemoryLost,
)
from ._message import Codec, Envelope, Header, Message, _Frame, new_header
from ._serialize import Buffer, Serializer

__all__ = ["AsyncSession", "Received", "Session", "SessionStatistics"]

log = logging.getLogger("shoal.wire.session")
_LOG_INTERVAL = 1.0
_SNDMORE = int(zmq.SNDMORE)
_MAX_TRACKED_PEERS = 4096
#: The socket a session wraps: a blocking one (:class:`Session`) or an asyncio one
#: (:class:`AsyncSession`).
_S = TypeVar("_S", bound="zmq.Socket[object]")


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStatistics:
    """Counts of a session's traffic; ``dropped`` maps an error type name to a count."""

    sent: int
    received: int
    dropped: Mapping[str, int]

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class Received(NamedTuple):
    """A verified message as it arrived, its content not loaded: what a router forwards.

    ``frames`` are the zmq frames as received (no copy): ``frames[:envelope.at]`` the
    routing identities, ``frames[envelope.at]`` the head, then the buffers.

    .. versionadded:: 0.2
    """

    envelope: Envelope
    frames: Sequence[_Frame]

    @property
    def identities(self) -> list[bytes]:
        # A zmq.Frame has the buffer protocol; pyzmq's stubs do not say so (see _Frame).
        return [bytes(f) for f in self.frames[: self.envelope.at]]  # type: ignore[arg-type]

    @property
    def message_frames(self) -> Sequence[_Frame]:
        """The head and the buffers: what :meth:`Session.forward` sends on."""
        return self.frames[self.envelope.at :]


class _SessionCore(Generic[_S]):
    """What sync and async sessions share: building, encoding and vetting messages."""

    def __init__(
        self,
        socket: _S,
        key: bytes | Codec,
        *,
        session_id: str | None = None,
        sender: str = "",
        serializer: Serializer | None = None,
    ) -> None:
        self.socket = socket
        self.codec = key if isinstance(key, Codec) else Codec(key, serializer=serializer)
        #: This session's sender stream: every message it sends or forwards is stamped here.
        self.link = self.codec.link()
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
        content: object = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, object] | None = None,
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

    def decode_or_drop(self, frames: Sequence[_Frame], *, content: bool = True) -> Message | None:
        """Decode ``frames`` (from :meth:`recv_frames_nowait`), or count, log
        (rate-limited) and drop them: None.

        Raises
        ------
        SharedMemoryLost
            For an authentic message whose shared memory is gone (counted as a drop): it
            names the message, so the receiver can answer it with an error.

        .. versionadded:: 0.2
        """
        try:
            msg = self.codec.decode(frames, content=content)
        except SharedMemoryLost as exc:
            self._drop(frames, exc)
            raise
        except RemoteInputError as exc:
            self._drop(frames, exc)
            return None
        self._received += 1
        return msg

    def verify_or_drop(self, frames: Sequence[_Frame]) -> Received | None:
        """Verify ``frames`` without loading them, or count, log and drop them: None.

        .. versionadded:: 0.2
        """
        try:
            envelope = self.codec.verify(frames)
        except RemoteInputError as exc:
            self._drop(frames, exc)
            return None
        self._received += 1
        return Received(envelope, frames)

    def refuse(self, frames: Sequence[_Frame], why: str) -> None:
        """Count and log (rate-limited) a message the caller will not act on, e.g. one
        whose routing is wrong; ``frames`` need only hold its routing identity.

        .. versionadded:: 0.2
        """
        self._drop(frames, MalformedMessageError(why))

    def recv_frames_nowait(self) -> list[zmq.Frame] | None:
        """The frames of the message waiting on the socket, within the codec's caps and
        not verified yet (:meth:`decode_or_drop`, :meth:`verify_or_drop`); None when it
        was over the caps (read to its end, kept nowhere, counted as a drop).

        Raises
        ------
        zmq.Again
            When no message is waiting.

        .. versionadded:: 0.2
        """
        return self._read(zmq.NOBLOCK)

    def _vet(self, frames: Sequence[_Frame], content: bool) -> Message | None:
        try:
            return self.decode_or_drop(frames, content=content)
        except SharedMemoryLost:
            return None

    def _vet_envelope(self, frames: Sequence[_Frame]) -> Received | None:
        return self.verify_or_drop(frames)

    def _read(self, flags: int = 0) -> list[zmq.Frame] | None:
        """The frames of the next message, counted as they come: None (the message read
        to its end, kept nowhere, counted as a drop) when it is over the codec's caps.

        Raises ``zmq.Again`` with ``flags=zmq.NOBLOCK`` when no message is waiting.
        """
        recv = self.socket.recv
        frame = recv(flags, copy=False)
        frames = [frame]
        codec = self.codec
        max_frames, max_size = codec.max_frames, codec.max_message_size
        size = len(frame)
        while frame.more:  # read from the frame: no getsockopt call per part
            frame = recv(copy=False)
            size += len(frame)
            frames.append(frame)
            if len(frames) > max_frames or size > max_size:
                break
        else:
            return frames
        peer = frames[0]
        while frame.more:  # the rest of the message, read and let go
            frame = recv(copy=False)
            size += len(frame)
            if len(frames) <= max_frames:
                frames.append(frame)
        error: RemoteInputError
        if len(frames) > max_frames:
            error = FrameCountError(f"message has more than max_frames={max_frames} frames")
        else:
            error = FrameTooLargeError(
                f"message has {size} bytes, more than max_message_size={max_size}"
            )
        self._drop([peer], error)
        return None

    def _drop(self, frames: Sequence[_Frame], exc: RemoteInputError) -> None:
        self._dropped[type(exc).__name__] += 1
        # A zmq.Frame has the buffer protocol; pyzmq's stubs do not say so (see _Frame).
        first = frames[0] if frames and self._is_router else b""
        peer = bytes(first)[:64]  # type: ignore[arg-type]
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

    def stamp(self, frames: list[Buffer], at: int = 0) -> list[Buffer]:
        """``frames`` (encoded ahead of sending, their head at ``at``) stamped in place by
        this session's link: call it just before the frames go to the socket.

        .. versionadded:: 0.2
        """
        frames[at] = self.link.stamp(frames[at])
        return frames

    def _frames(self, msg: Message) -> tuple[list[Buffer], bool]:
        frames = self.codec.encode(msg, link=self.link)
        threshold = self._copy_threshold
        # Only buffer frames can be user memory; the head is a fresh bytes object.
        nhead = len(msg.identities) + 1
        big = len(frames) > nhead and any(memoryview(f).nbytes >= threshold for f in frames[nhead:])
        return frames, big


class Session(_SessionCore["zmq.SyncSocket"]):
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
        content: object = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, object] | None = None,
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
        while True:
            self._wait(deadline, timeout)
            frames = self._read()
            if frames is None:
                continue
            msg = self._vet(frames, content)
            if msg is not None:
                return msg

    def recv_envelope(self, *, timeout: float | None = None) -> Received | None:
        """Receive the next valid message, verified in full but not loaded: what a router
        needs to book and forward it. ``timeout=0`` takes only what is waiting now.

        Returns None when no valid message arrived within ``timeout`` seconds.

        .. versionadded:: 0.2
        """
        if timeout == 0:
            while True:
                try:
                    frames = self._read(zmq.NOBLOCK)
                except zmq.Again:
                    return None
                if frames is not None and (received := self._vet_envelope(frames)) is not None:
                    return received
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._wait(deadline, timeout)
            except TimeoutError:
                return None
            frames = self._read()
            if frames is not None and (received := self._vet_envelope(frames)) is not None:
                return received

    def forward(self, frames: Sequence[_Frame], identities: Sequence[bytes] = ()) -> None:
        """Send a verified message on (``frames``: its head and buffers, e.g.
        :attr:`Received.message_frames`), stamped by this session's link; buffers are
        referenced, not copied.

        .. versionadded:: 0.2
        """
        send = self.socket.send
        for ident in identities:
            send(ident, _SNDMORE)
        head = self.link.stamp(frames[0])
        if len(frames) == 1:
            send(head)
        else:
            send(head, _SNDMORE)
            for frame in frames[1:-1]:
                send(frame, _SNDMORE, copy=False)
            send(frames[-1], 0, copy=False)
        self._sent += 1

    def _wait(self, deadline: float | None, timeout: float | None) -> None:
        if deadline is not None:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.socket.poll(remaining_ms):  # timeout=0: look once, don't wait
                raise TimeoutError(f"no message arrived within {timeout} s")


class AsyncSession(_SessionCore["zmq.asyncio.Socket"]):
    """:class:`Session` for ``zmq.asyncio`` sockets: ``await send(...)``, ``await recv()``.

    .. versionadded:: 0.1
    """

    async def send(
        self,
        msg_type: str,
        content: object = None,
        *,
        parent: Header | Message | None = None,
        metadata: Mapping[str, object] | None = None,
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
            import asyncio  # noqa: PLC0415 - ~100 ms that sync users never pay

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
        import asyncio  # noqa: PLC0415 - ~100 ms that sync users never pay

        try:
            return await asyncio.wait_for(next_valid(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no message arrived within {timeout} s") from None
