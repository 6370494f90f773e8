"""Messages and their sans-I/O codec: ``encode(msg, key) -> frames``, ``decode(frames, key)``.

Theory of operation
-------------------
A message on the wire is a list of frames::

    [*identities, head, *buffers]
    head = b"<SHOAL|2>" + link stamp + signature + envelope_length (4 bytes LE)
           + envelope + content
    link stamp = link MAC (32 bytes) + link id (16 bytes) + sequence number (8 bytes LE)
                 + send time (8 bytes, a little-endian double)

* ``identities`` are routing prefixes added by ROUTER sockets; they are not signed,
  because every hop may change them. They are opaque bytes: nothing here decodes them.
* The head starts with the delimiter, which carries the protocol version, so a peer of
  another version is told so (:class:`VersionMismatchError` naming both) instead of
  failing a signature check. Everything small travels in this one frame: each extra
  zmq frame costs more than the whole codec.
* The signature is HMAC-SHA256, hex, over the rest of the head after it and then the
  length and bytes of *every* buffer frame: a swapped or re-split buffer under a valid
  signature is refused. A buffer of 1 MiB or more enters the HMAC as its BLAKE3 digest,
  hashed on all cores, because hashing is what limits bandwidth (SHA-256 runs at about
  1 GB/s per core here, BLAKE3 at 5 GB/s; see the package README).
* The **link stamp** says which sender stream (a :class:`Link`: one per sending socket)
  sent the message, its place in that stream and when; its MAC (HMAC-SHA256, raw) covers
  the stamp and the signature. A router that forwards a message verifies it, then
  stamps it again with its own link (:meth:`Link.stamp`, a copy of the head only): each
  hop signs what it forwards, and the message's own signature travels unchanged.
* Receiving checks, in this order, and nothing is parsed, booked or kept before all of
  them pass: caps on the number and size of frames; the delimiter; the link MAC (cheap:
  it rejects garbage before any buffer is hashed); replay (below); the signature over
  the head and every buffer; the envelope's shape; the version.
* **Replay protection** (:class:`ReplayGuard`) is per link: a zmq connection delivers a
  link's messages in the order they were sent, so a receiver accepts a link's message
  only if its sequence number is above the last one it accepted from that link. That
  never refuses honest traffic, however long a message waited in a queue or how much
  traffic passed meanwhile, and costs one integer per link. A link the receiver has not
  seen is accepted if it was stamped no earlier than ``window`` seconds before the
  receiver started (a message captured before the receiver existed cannot be replayed to
  it); the number of links remembered is bounded (least recently used go first).
* ``envelope`` is a compact JSON array ``[header, parent, metadata, nbuf]``; ``content``
  is the :class:`~shoal.wire.Serializer` stream. The buffer frames are the stream's
  out-of-band buffers followed by the message's own ``nbuf`` extra ``buffers``.

Nothing here touches a socket: :mod:`shoal.wire` sessions and any other transport use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import os
import struct
import time
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import blake3
import orjson

from ._errors import (
    AuthenticationError,
    FrameCountError,
    FrameTooLargeError,
    HeaderDecodeError,
    InvalidKeyError,
    MalformedMessageError,
    ReplayError,
    SharedMemoryLost,
    VersionMismatchError,
)
from ._serialize import Buffer, Serializer
from ._shm import SharedHandle, SharedMemory, default_shared_memory

if TYPE_CHECKING:
    import zmq
    from typing_extensions import Buffer as BufferProtocol

__all__ = [
    "DELIMITER",
    "PROTOCOL_VERSION",
    "Codec",
    "Envelope",
    "Header",
    "Link",
    "Message",
    "RawContent",
    "ReplayGuard",
    "decode",
    "encode",
    "new_header",
]

#: The version of the frame layout and header fields; both ends must agree.
PROTOCOL_VERSION: Final = "2"
_DELIM_PREFIX: Final = b"<SHOAL|"
#: The frame that separates routing identities from the message.
DELIMITER: Final = _DELIM_PREFIX + PROTOCOL_VERSION.encode() + b">"
_PREFIX_LEN: Final = len(_DELIM_PREFIX)
_MAC_AT: Final = len(DELIMITER)
_STAMP_AT: Final = _MAC_AT + 32  # raw HMAC-SHA256 of the stamp and the signature
_LINK_ID_LEN: Final = 16
_STAMP = struct.Struct("<16sQd")  # link id, sequence number, send time
_SIG_AT: Final = _STAMP_AT + _STAMP.size
_BODY_AT: Final = _SIG_AT + 64  # hex HMAC-SHA256
_UNSTAMPED: Final = DELIMITER + bytes(_SIG_AT - _MAC_AT)  # Codec.encode(stamped=False)
_DEFAULT_MAX_FRAMES: Final = 64 + 1 + 4096
_BULK: Final = 1 << 20  # frames this large enter the HMAC as their BLAKE3 digest
_BLOCK: Final = 64  # SHA-256 block size, for HMAC's key padding
_DEFAULT_MAX_FRAME_SIZE: Final = 1 << 40
# orjson: a header codec ~10x faster than the stdlib's json here (package README).
_json_dumps = orjson.dumps
_json_loads = orjson.loads


_NO_METADATA: Final[Mapping[str, Any]] = types.MappingProxyType({})

#: A frame as received or sent: anything with the buffer protocol, or a ``zmq.Frame``
#: (which has it too, though pyzmq's type stubs do not say so: where a frame's bytes are
#: read, a ``type: ignore[arg-type]`` marks that gap in the stubs).
_Frame: TypeAlias = "BufferProtocol | zmq.Frame"


class Header(NamedTuple):
    """Who sent a message, when, and what it is.

    ``date`` is seconds since the epoch (``time.time()``) on the sender's clock.
    A named tuple rather than a dataclass: it is built for every message, and a tuple is
    built several times faster.
    """

    msg_id: str
    msg_type: str
    session: str
    date: float
    version: str = PROTOCOL_VERSION
    sender: str = ""

    def to_list(self) -> list[str | float]:
        """The header as the JSON array that travels: fields in declaration order."""
        return list(self)

    @classmethod
    def from_list(cls, fields: object) -> Header:
        """Rebuild a header from :meth:`to_list` output, checking every field's type."""
        if type(fields) is not list or len(fields) != 6:
            raise HeaderDecodeError(
                f"a header must be a JSON array of 6 fields, got {fields!r:.200}"
            )
        msg_id, msg_type, session, date, version, sender = fields
        if not (
            type(msg_id) is str
            and type(msg_type) is str
            and type(session) is str
            and type(date) in (float, int)
            and type(version) is str
            and type(sender) is str
        ):
            raise HeaderDecodeError(f"a header field has the wrong type: {fields!r:.200}")
        return cls._make(fields)


_counter = itertools.count()
_process_tag = uuid.uuid4().hex[:12]


def new_header(msg_type: str, session: str, sender: str = "") -> Header:
    """A header with a fresh, unique ``msg_id`` and the current time."""
    msg_id = f"{_process_tag}-{next(_counter)}"
    return Header._make((msg_id, msg_type, session, time.time(), PROTOCOL_VERSION, sender))


@dataclasses.dataclass(frozen=True, slots=True)
class RawContent:
    """Content left serialized: the stream and its buffers, as received.

    What a router gets from ``decode(..., content=False)``: it can forward the frames
    without paying for (or trusting) a deserialization. ``load(serializer)`` rebuilds it.
    """

    frames: tuple[Buffer, ...]

    def load(self, serializer: Serializer) -> object:
        """The content, deserialized by ``serializer``."""
        return serializer.loads(self.frames)


class Message(NamedTuple):
    """One shoal message.

    A named tuple, like :class:`Header`: immutable, and built for every message sent
    or received, where a frozen dataclass would cost three times as much.

    Parameters
    ----------
    header : Header
        Identity and type of the message.
    parent_header : Header or None
        The header of the request this message answers.
    metadata : mapping
        JSON-able data about the message (engine id, timings, ...).
    content : object
        Any serializable Python object (usually a dict).
    buffers : tuple of buffers
        Extra raw buffers sent as their own frames, outside ``content``.
    identities : tuple of bytes
        ROUTER routing prefixes (not signed).

    .. versionadded:: 0.1
    """

    header: Header
    parent_header: Header | None = None
    metadata: Mapping[str, Any] = _NO_METADATA
    content: Any = None
    buffers: tuple[Buffer, ...] = ()
    identities: tuple[bytes, ...] = ()

    @property
    def msg_type(self) -> str:
        return self.header.msg_type


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise InvalidKeyError(f"key must be bytes, got {type(key).__name__}")
    if len(key) < 16:
        raise InvalidKeyError(
            f"key must be at least 16 bytes, got {len(key)}"
            " (an empty key would leave messages unauthenticated)",
            hint="make one with shoal.wire.generate_key()",
        )
    return bytes(key)


class _Signer:
    """HMAC-SHA256 (RFC 2104) over (length, bytes) of each frame.

    Built from two precomputed hashlib states, copied per message: about half the cost
    of ``hmac.new`` for small messages. Large frames enter as their BLAKE3 digest.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        key = _check_key(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(k ^ 0x36 for k in key))
        self._outer = hashlib.sha256(bytes(k ^ 0x5C for k in key))

    def sign(self, body: Any, buffers: Sequence[Any]) -> bytes:
        inner = self._inner.copy()
        inner.update(body)
        for frame in buffers:
            view = memoryview(frame)
            n = view.nbytes
            inner.update(n.to_bytes(8, "little"))
            if n >= _BULK:
                inner.update(blake3.blake3(view, max_threads=blake3.blake3.AUTO).digest())
            else:
                inner.update(view)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")

    def mac(self, stamp: Any, signature: Any) -> bytes:
        """HMAC-SHA256 of ``stamp`` then ``signature``, raw (32 bytes): the link MAC."""
        inner = self._inner.copy()
        inner.update(stamp)
        inner.update(signature)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Link:
    """One sender's stream of messages: stamps each head with the link's id, the next
    sequence number and the time, under a MAC.

    Make one per sending socket (:meth:`Codec.link`), and stamp a message just before it
    goes to the socket, in the order messages go out: the receiver refuses a sequence
    number that is not above the last one it accepted from this link. A router stamps
    what it forwards with its own link.

    Parameters
    ----------
    codec : Codec
        Whose key signs the stamps.
    link_id : bytes, optional
        16 bytes naming the stream; random if omitted.
    clock : callable, optional
        The send time (``time.time`` by default).

    .. versionadded:: 0.2
    """

    __slots__ = ("_clock", "_mac", "_next", "id")

    def __init__(
        self,
        codec: Codec,
        *,
        link_id: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        link_id = os.urandom(_LINK_ID_LEN) if link_id is None else bytes(link_id)
        if len(link_id) != _LINK_ID_LEN:
            raise ValueError(f"link_id must be {_LINK_ID_LEN} bytes, got {len(link_id)}")
        self.id = link_id
        self._mac = codec._signer.mac
        self._next = itertools.count(1).__next__
        self._clock = clock

    def stamp(self, head: _Frame) -> bytes:
        """``head`` (a head frame, signed) stamped as this link's next message."""
        view = memoryview(head)  # type: ignore[arg-type]  # a zmq.Frame (see _Frame)
        stamp = _STAMP.pack(self.id, self._next(), self._clock())
        tail = view[_SIG_AT:]
        return b"".join((DELIMITER, self._mac(stamp, tail[:64]), stamp, tail))


class ReplayGuard:
    """Refuses a message that is not newer than the last one accepted from its link.

    Parameters
    ----------
    window : float
        A link seen for the first time is accepted only if its message was stamped no
        earlier than ``window`` seconds before this guard was made (allowing for clocks
        of other hosts that run behind): a message captured before the receiver existed
        cannot be replayed to it.
    max_links : int
        How many links are remembered; the least recently used are forgotten first.

    .. versionchanged:: 0.2
       Per-link sequence numbers instead of a bounded history of signatures: honest
       traffic is never refused, however long it waited or how much passed meanwhile.
    """

    def __init__(
        self,
        window: float = 600.0,
        max_links: int = 1 << 16,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0 or max_links <= 0:
            raise ValueError(f"window and max_links must be positive, got {window}, {max_links}")
        self.window = window
        self.max_links = max_links
        self.started = clock()
        self._last: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def check(self, link_id: bytes, seq: int, stamped: float) -> None:
        """Raise :class:`ReplayError` unless ``seq`` is new on ``link_id``; remembers
        nothing (:meth:`record` does, once the whole message verified)."""
        last = self._last.get(link_id)
        if last is None:
            if stamped < self.started - self.window:
                raise ReplayError(
                    f"message stamped at {stamped:.3f}, {self.started - stamped:.0f} s before"
                    f" this receiver started, on a link it has not seen: a replay",
                    hint="check that the hosts' clocks agree",
                )
        elif seq <= last:
            raise ReplayError(
                f"message {seq} of link {link_id.hex()} is not after {last}, the last one"
                " accepted from that link: a replay"
            )

    def record(self, link_id: bytes, seq: int) -> None:
        """Remember ``seq`` as the last message accepted from ``link_id``."""
        last = self._last
        if last.pop(link_id, None) is None and len(last) >= self.max_links:
            del last[next(iter(last))]  # the least recently used link
        last[link_id] = seq


def encode(msg: Message, key: bytes, *, serializer: Serializer | None = None) -> list[Buffer]:
    """Frames for ``msg``, signed with ``key`` and stamped by a one-message link.
    Buffers are referenced, not copied.

    ``msg.content`` may be a :class:`RawContent` (forwarding without re-serializing).
    """
    return Codec(key, serializer=serializer, replay=None).encode(msg)


def decode(
    frames: Sequence[Buffer],
    key: bytes,
    *,
    serializer: Serializer | None = None,
    content: bool = True,
) -> Message:
    """Verify and parse ``frames``; stateless, so with no replay protection.

    Use a :class:`Codec` (which has a :class:`ReplayGuard`) on live connections.
    """
    return Codec(key, serializer=serializer, replay=None).decode(frames, content=content)


class Envelope(NamedTuple):
    """What :meth:`Codec.verify` found in a verified message, its content not loaded.

    ``at`` is the index of the head frame in the frames given (the identities come
    before it, the buffers after it).

    .. versionadded:: 0.2
    """

    header: Header
    parent_header: Header | None
    metadata: dict[str, object]
    at: int

    @property
    def msg_type(self) -> str:
        return self.header.msg_type


class Codec:
    """Encodes and decodes messages for one key, with replay protection and caps.

    Parameters
    ----------
    key : bytes
        The shared signing key (at least 16 bytes).
    serializer : Serializer, optional
        How content is serialized; a default :class:`Serializer` if omitted.
    replay : ReplayGuard or None
        Replay protection for received messages; a default guard if omitted, or
        ``None`` to disable it (stateless decoding).
    max_frames, max_frame_size, max_message_size : int
        Caps on received messages: frames per message (:class:`FrameCountError`), bytes
        per frame and bytes per message (:class:`FrameTooLargeError`).
    shm : SharedMemory or None
        Send buffers of ``shm.threshold`` bytes or more through shared memory (for a peer
        on this host; see :mod:`shoal.wire._shm`). Received handles are always opened.
    """

    def __init__(
        self,
        key: bytes,
        *,
        serializer: Serializer | None = None,
        replay: ReplayGuard | bool | None = True,
        max_frames: int = _DEFAULT_MAX_FRAMES,
        max_frame_size: int = _DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = _DEFAULT_MAX_FRAME_SIZE,
        shm: SharedMemory | None = None,
    ) -> None:
        self._signer = _Signer(key)
        self.serializer = serializer if serializer is not None else Serializer()
        # Not `replay or None`: an empty guard has len() 0 and would read as false.
        self.replay: ReplayGuard | None = (
            replay if isinstance(replay, ReplayGuard) else ReplayGuard() if replay else None
        )
        self.max_frames = max_frames
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.shm = shm
        #: Bytes of the messages decoded so far (head and buffers, shared memory included).
        self.bytes_received = 0
        self._link = Link(self)

    def link(self) -> Link:
        """A new sender stream signed with this codec's key: one per sending socket."""
        return Link(self)

    # -- sending ------------------------------------------------------------------------
    def encode(
        self,
        msg: Message,
        *,
        shm: bool = True,
        link: Link | None = None,
        stamped: bool = True,
    ) -> list[Buffer]:
        """Frames for ``msg``: its identities, the signed and stamped head, then its buffers.

        ``shm=False``: the receiver is on another host; large buffers go as frames.
        ``link``: the stream that stamps it (this codec's own if omitted).
        ``stamped=False``: leave the link stamp empty; a sender that encodes ahead of its
        send lock stamps the head with :meth:`Link.stamp` when it sends.
        """
        parent = msg.parent_header
        envelope = _json_dumps(
            [
                msg.header.to_list(),
                None if parent is None else parent.to_list(),
                msg.metadata if type(msg.metadata) is dict else dict(msg.metadata),
                len(msg.buffers),
            ]
        )
        content = msg.content
        if isinstance(content, RawContent):
            stream, *oob = content.frames
        else:
            stream, *oob = self.serializer.dumps(content)
        buffers = [*oob, *msg.buffers]
        pool = self.shm if shm else None
        if pool is None and any(type(b) is SharedHandle for b in buffers):
            raise ValueError("a message holding a shared memory handle cannot leave this host")
        if pool is not None:
            moved = [
                i
                for i, b in enumerate(buffers)
                if type(b) is SharedHandle or memoryview(b).nbytes >= pool.threshold
            ]
            if moved:
                for i in moved:
                    if type(buffers[i]) is not SharedHandle:  # else: shared already
                        buffers[i] = pool.export(buffers[i])
                envelope = envelope[:-1] + b"," + _json_dumps(moved) + b"]"
        body = b"".join((len(envelope).to_bytes(4, "little"), envelope, stream))
        signer = self._signer
        signature = signer.sign(body, buffers)
        if not stamped:
            return [*msg.identities, b"".join((_UNSTAMPED, signature, body)), *buffers]
        link = self._link if link is None else link
        stamp = _STAMP.pack(link.id, link._next(), link._clock())
        mac = signer.mac(stamp, signature)
        return [*msg.identities, b"".join((DELIMITER, mac, stamp, signature, body)), *buffers]

    # -- receiving ----------------------------------------------------------------------
    def verify(self, frames: Sequence[_Frame]) -> Envelope:
        """Verify ``frames`` in full (caps, link stamp, replay, signature over the head and
        every buffer, envelope) and parse the envelope; the content is not loaded and
        shared memory is not opened. What a router calls before it books or forwards a
        message.

        Raises only :class:`~shoal.wire.RemoteInputError` subclasses for bad input.
        """
        views = self._views(frames)
        at = _find_head(views)
        header, parent, metadata, _nbuf, _in_shm, _env_len = self._check(views, at)
        return Envelope(header, parent, metadata, at)

    def decode(self, frames: Sequence[_Frame], *, content: bool = True) -> Message:
        """Verify and parse ``frames`` into a :class:`Message`.

        Raises only :class:`~shoal.wire.RemoteInputError` subclasses for bad input:
        nothing is parsed before the link stamp and the signature verified.
        """
        views = self._views(frames)
        at = _find_head(views)
        header, parent, metadata, nbuf, in_shm, env_len = self._check(views, at)
        head = views[at]
        buffers = views[at + 1 :]
        if in_shm:
            try:
                buffers = self._open_shm(buffers, in_shm[0])
            except SharedMemoryLost as exc:
                exc.header = header
                exc.parent_header = parent
                exc.identities = tuple(bytes(v) for v in views[:at])
                raise
        self.bytes_received += head.nbytes + sum(b.nbytes for b in buffers)
        split = len(buffers) - nbuf
        content_frames = (head[_BODY_AT + 4 + env_len :], *buffers[:split])
        if content:
            try:
                value = self.serializer.loads(content_frames)
            except Exception as exc:  # authenticated, yet unloadable here
                raise MalformedMessageError(
                    f"content of a {header.msg_type!r} message cannot be deserialized"
                    f" here: {type(exc).__name__}: {exc}"
                ) from exc
        else:
            value = RawContent(content_frames)
        identities = (bytes(views[0]),) if at == 1 else tuple(bytes(v) for v in views[:at])
        return Message._make((header, parent, metadata, value, tuple(buffers[split:]), identities))

    def _check(
        self, views: list[memoryview], at: int
    ) -> tuple[Header, Header | None, dict[str, Any], int, list[Any], int]:
        """Everything that must hold before a message is acted on, cheapest first."""
        head = views[at]
        if head.nbytes < _BODY_AT + 4:
            raise MalformedMessageError(f"head frame has only {head.nbytes} bytes")
        signer = self._signer
        stamp = head[_STAMP_AT:_SIG_AT]
        signature = bytes(head[_SIG_AT:_BODY_AT])
        if not hmac.compare_digest(head[_MAC_AT:_STAMP_AT], signer.mac(stamp, signature)):
            raise AuthenticationError("message link stamp does not match the key")
        link_id, seq, stamped = _STAMP.unpack(stamp)
        replay = self.replay
        if replay is not None:
            replay.check(link_id, seq, stamped)  # before hashing buffers a replay may carry
        body = head[_BODY_AT:]
        buffers = views[at + 1 :]
        if not hmac.compare_digest(signature, signer.sign(body, buffers)):
            raise AuthenticationError("message signature does not match the key")
        env_len = int.from_bytes(body[:4], "little")
        if env_len > body.nbytes - 4:
            raise HeaderDecodeError(f"envelope length {env_len} overruns the head frame")
        try:
            header_doc, parent_doc, metadata, nbuf, *in_shm = _json_loads(body[4 : 4 + env_len])
        except (ValueError, TypeError) as exc:
            raise HeaderDecodeError(
                f"envelope is not a JSON array [header, parent, metadata, nbuf]: {exc}"
            ) from exc
        header = Header.from_list(header_doc)
        if header.version != PROTOCOL_VERSION:
            raise VersionMismatchError(
                f"header says protocol version {header.version!r}, this side speaks"
                f" {PROTOCOL_VERSION!r}"
            )
        parent = None if parent_doc is None else Header.from_list(parent_doc)
        if type(metadata) is not dict:
            raise HeaderDecodeError(f"metadata must be a JSON object, got {metadata!r:.100}")
        if type(nbuf) is not int or not 0 <= nbuf <= len(buffers):
            raise HeaderDecodeError(
                f"envelope says nbuf={nbuf!r}, but {len(buffers)} buffer frames came"
            )
        if in_shm and (
            type(in_shm[0]) is not list
            or not all(type(i) is int and 0 <= i < len(buffers) for i in in_shm[0])
        ):
            raise HeaderDecodeError(f"envelope's shared memory list is {in_shm[0]!r:.100}")
        if replay is not None:
            replay.record(link_id, seq)
        return header, parent, metadata, nbuf, in_shm, env_len

    def _views(self, frames: Sequence[_Frame]) -> list[memoryview]:
        """A memoryview of each frame, within the caps on their number and size."""
        nframes = len(frames)
        if nframes > self.max_frames:
            raise FrameCountError(
                f"message has {nframes} frames, more than max_frames={self.max_frames}"
            )
        views = []
        limit = self.max_frame_size
        total = 0
        for i, frame in enumerate(frames):
            try:
                # A zmq.Frame has the buffer protocol; pyzmq's stubs do not say so (_Frame).
                view = memoryview(frame)  # type: ignore[arg-type]
            except TypeError as exc:
                raise MalformedMessageError(
                    f"frame {i} is a {type(frame).__name__}, not a buffer"
                ) from exc
            if view.nbytes > limit:
                raise FrameTooLargeError(
                    f"frame {i} has {view.nbytes} bytes, more than max_frame_size={limit}"
                )
            total += view.nbytes
            views.append(view)
        if total > self.max_message_size:
            raise FrameTooLargeError(
                f"message has {total} bytes, more than max_message_size={self.max_message_size}"
            )
        return views

    def discard(self, frames: Sequence[_Frame]) -> int:
        """Give back the shared memory segments of encoded ``frames`` that will never be
        delivered (their peer is gone: nobody else will open them); how many.

        For this side's own frames only: they are not verified.
        """
        views = [memoryview(f) for f in frames]  # type: ignore[arg-type]  # zmq.Frames (_Frame)
        try:
            at = _find_head(views)
            body = views[at][_BODY_AT:]
            env_len = int.from_bytes(body[:4], "little")
            _, _, _, _, *in_shm = _json_loads(body[4 : 4 + env_len])
        except (ValueError, TypeError, MalformedMessageError):
            return 0
        if not in_shm:
            return 0
        shm = self.shm or default_shared_memory()
        buffers = views[at + 1 :]
        return sum(shm.discard(buffers[i]) for i in in_shm[0] if 0 <= i < len(buffers))

    def _open_shm(self, buffers: list[memoryview], indices: Any) -> list[memoryview]:
        """``buffers`` with the shared memory handles at ``indices`` (checked) opened."""
        shm = self.shm or default_shared_memory()
        out = list(buffers)
        for i in indices:
            try:
                out[i] = shm.open(buffers[i])
            except (OSError, ValueError) as exc:
                raise SharedMemoryLost(
                    f"buffer {i} is in shared memory that cannot be opened here: {exc}"
                ) from exc
        return out


def _find_head(views: Sequence[memoryview]) -> int:
    """Index of the head frame: the first one that starts with ``<SHOAL|``."""
    for i, view in enumerate(views):
        if (
            view.nbytes >= _PREFIX_LEN
            and view[0] == 60  # ord("<"): rejects routing identities before any copy
            and bytes(view[:_PREFIX_LEN]) == _DELIM_PREFIX
        ):
            if view[: len(DELIMITER)].tobytes() != DELIMITER:
                theirs = bytes(view[_PREFIX_LEN : _PREFIX_LEN + 16]).split(b">")[0]
                raise VersionMismatchError(
                    f"peer speaks wire protocol version {theirs.decode('ascii', 'replace')!r},"
                    f" this side speaks {PROTOCOL_VERSION!r}"
                )
            return i
    raise MalformedMessageError("no frame starts with the <SHOAL|...> delimiter")
