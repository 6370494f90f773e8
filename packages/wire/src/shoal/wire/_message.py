"""Messages and their sans-I/O codec: ``encode(msg, key) -> frames``, ``decode(frames, key)``.

Theory of operation
-------------------
A message on the wire is a list of frames::

    [*identities, head, *buffers]
    head = b"<SHOAL|1>" + signature + envelope_length (4 bytes LE) + envelope + content

* ``identities`` are routing prefixes added by ROUTER sockets; they are not signed,
  because every hop may change them.
* The head starts with the delimiter, which carries the protocol version, so a peer of
  another version is told so (:class:`VersionMismatchError` naming both) instead of
  failing a signature check. Everything small travels in this one frame: each extra
  zmq frame costs more than the whole codec.
* The signature is HMAC-SHA256, hex, over the rest of the head and then the length and
  bytes of *every* buffer frame: a swapped or re-split buffer under a valid signature is
  refused. A buffer of 1 MiB or more enters the HMAC as its BLAKE3 digest, hashed on
  all cores, because hashing is what limits bandwidth (SHA-256 runs at about 1 GB/s per
  core here, BLAKE3 at 5 GB/s; see the package README). The signature is compared with
  ``hmac.compare_digest`` before anything is parsed.
* ``envelope`` is a compact JSON array ``[header, parent, metadata, nbuf]``; ``content``
  is the :class:`~shoal.wire.Serializer` stream. The buffer frames are the stream's
  out-of-band buffers followed by the message's own ``nbuf`` extra ``buffers``.
* Only after the signature verified does a :class:`ReplayGuard` record it: a forged
  message carrying a sniffed signature fails verification and cannot get the genuine
  message refused. The guard refuses signatures seen before and messages dated outside
  its window; its memory is bounded.

Nothing here touches a socket: :mod:`shoal.wire` sessions and any other transport use it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import itertools
import time
import types
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

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

__all__ = [
    "DELIMITER",
    "PROTOCOL_VERSION",
    "Codec",
    "Header",
    "Message",
    "RawContent",
    "ReplayGuard",
    "decode",
    "encode",
    "new_header",
]

#: The version of the frame layout and header fields; both ends must agree.
PROTOCOL_VERSION: Final = "1"
_DELIM_PREFIX: Final = b"<SHOAL|"
#: The frame that separates routing identities from the message.
DELIMITER: Final = _DELIM_PREFIX + PROTOCOL_VERSION.encode() + b">"
_PREFIX_LEN: Final = len(_DELIM_PREFIX)
_SIG_AT: Final = len(DELIMITER)
_BODY_AT: Final = _SIG_AT + 64  # hex HMAC-SHA256
_DEFAULT_MAX_FRAMES: Final = 64 + 1 + 4096
_BULK: Final = 1 << 20  # frames this large enter the HMAC as their BLAKE3 digest
_BLOCK: Final = 64  # SHA-256 block size, for HMAC's key padding
_DEFAULT_MAX_FRAME_SIZE: Final = 1 << 40
# orjson: a header codec ~10x faster than the stdlib's json here (package README).
_json_dumps = orjson.dumps
_json_loads = orjson.loads


_NO_METADATA: Final[Mapping[str, Any]] = types.MappingProxyType({})


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

    def to_list(self) -> list[Any]:
        """The header as the JSON array that travels: fields in declaration order."""
        return list(self)

    @classmethod
    def from_list(cls, fields: Any) -> Header:
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

    def load(self, serializer: Serializer) -> Any:
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


class ReplayGuard:
    """Refuses a message whose signature was seen before or whose date is too far off.

    Parameters
    ----------
    window : float
        Messages dated more than ``window`` seconds before (or after) the receiver's
        clock are refused; signatures are remembered for that long.
    max_entries : int
        Bound on remembered signatures. When the bound is hit before the window has
        passed, the oldest is forgotten and messages dated before it are refused from
        then on, so a replay is never accepted.
    """

    def __init__(self, window: float = 600.0, max_entries: int = 1 << 18) -> None:
        if window <= 0 or max_entries <= 0:
            raise ValueError(
                f"window and max_entries must be positive, got {window}, {max_entries}"
            )
        self.window = window
        self.max_entries = max_entries
        self._seen: set[bytes] = set()
        self._order: collections.deque[tuple[float, bytes]] = collections.deque()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, signature: bytes, date: float, now: float | None = None) -> None:
        """Raise :class:`ReplayError` for a replay; otherwise remember ``signature``."""
        now = time.time() if now is None else now
        if not isinstance(date, int | float) or abs(now - date) > self.window:
            raise ReplayError(
                f"message dated {date!r} is outside the {self.window:g} s window around"
                f" the receiver's clock ({now:.3f})",
                hint="check that the hosts' clocks agree",
            )
        if date <= self._floor:
            raise ReplayError(f"message dated {date!r} predates the replay history ({self._floor})")
        if signature in self._seen:
            raise ReplayError("message signature was seen before: a replay")
        order = self._order
        # Forget what the window refuses anyway, then enforce the bound.
        limit = now - self.window
        while order and order[0][0] < limit:
            self._seen.discard(order.popleft()[1])
        while len(order) >= self.max_entries:
            old_date, old_sig = order.popleft()
            self._seen.discard(old_sig)
            self._floor = max(self._floor, old_date)
        self._seen.add(signature)
        order.append((date, signature))


def encode(msg: Message, key: bytes, *, serializer: Serializer | None = None) -> list[Buffer]:
    """Frames for ``msg``, signed with ``key``. Buffers are referenced, not copied.

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
    max_frames, max_frame_size : int
        Caps on received messages (:class:`FrameCountError`, :class:`FrameTooLargeError`).
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
        self.shm = shm
        #: Bytes of the messages decoded so far (head and buffers, shared memory included).
        self.bytes_received = 0

    # -- sending ------------------------------------------------------------------------
    def encode(self, msg: Message, *, shm: bool = True) -> list[Buffer]:
        """Frames for ``msg``: its identities, the signed head, then its buffers.

        ``shm=False``: the receiver is on another host; large buffers go as frames.
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
        signature = self._signer.sign(body, buffers)
        return [*msg.identities, b"".join((DELIMITER, signature, body)), *buffers]

    # -- receiving ----------------------------------------------------------------------
    def decode(self, frames: Sequence[Any], *, content: bool = True) -> Message:
        """Verify and parse ``frames`` into a :class:`Message`.

        Raises only :class:`~shoal.wire.RemoteInputError` subclasses for bad input:
        nothing is parsed before the signature verified.
        """
        views = self._views(frames)
        at = _find_head(views)
        head = views[at]
        if head.nbytes < _BODY_AT + 4:
            raise MalformedMessageError(f"head frame has only {head.nbytes} bytes")
        signature = bytes(head[_SIG_AT:_BODY_AT])
        body = head[_BODY_AT:]
        buffers = views[at + 1 :]
        if not hmac.compare_digest(signature, self._signer.sign(body, buffers)):
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
        if self.replay is not None:
            self.replay.check(signature, header.date)
        parent = None if parent_doc is None else Header.from_list(parent_doc)
        if type(metadata) is not dict:
            raise HeaderDecodeError(f"metadata must be a JSON object, got {metadata!r:.100}")
        if type(nbuf) is not int or not 0 <= nbuf <= len(buffers):
            raise HeaderDecodeError(
                f"envelope says nbuf={nbuf!r}, but {len(buffers)} buffer frames came"
            )
        if in_shm:
            try:
                buffers = self._open_shm(buffers, in_shm[0])
            except SharedMemoryLost as exc:
                exc.header = header
                exc.parent_header = None if parent_doc is None else Header.from_list(parent_doc)
                exc.identities = tuple(bytes(v) for v in views[:at])
                raise
        self.bytes_received += head.nbytes + sum(b.nbytes for b in buffers)
        split = len(buffers) - nbuf
        content_frames = (body[4 + env_len :], *buffers[:split])
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

    def _views(self, frames: Sequence[Any]) -> list[memoryview]:
        """A memoryview of each frame, within the caps on their number and size."""
        nframes = len(frames)
        if nframes > self.max_frames:
            raise FrameCountError(
                f"message has {nframes} frames, more than max_frames={self.max_frames}"
            )
        views = []
        limit = self.max_frame_size
        for i, frame in enumerate(frames):
            try:
                view = memoryview(frame)
            except TypeError as exc:
                raise MalformedMessageError(
                    f"frame {i} is a {type(frame).__name__}, not a buffer"
                ) from exc
            if view.nbytes > limit:
                raise FrameTooLargeError(
                    f"frame {i} has {view.nbytes} bytes, more than max_frame_size={limit}"
                )
            views.append(view)
        return views

    def discard(self, frames: Sequence[Any]) -> int:
        """Give back the shared memory segments of encoded ``frames`` that will never be
        delivered (their peer is gone: nobody else will open them); how many.

        For this side's own frames only: they are not verified.
        """
        views = [memoryview(f) for f in frames]
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
        """``buffers`` with the shared memory handles at ``indices`` opened."""
        if type(indices) is not list or not all(
            type(i) is int and 0 <= i < len(buffers) for i in indices
        ):
            raise HeaderDecodeError(f"envelope's shared memory list is {indices!r:.100}")
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


def peek(head: Buffer) -> tuple[list[Any], list[Any] | None, dict[str, Any]]:
    """The header, parent header (as JSON lists) and metadata of a head frame, unverified.

    For routers, which must route and keep books without loading content or paying for
    the signature check of large buffers: the destination verifies the whole message.
    Never act on what this returns beyond routing.

    Raises
    ------
    MalformedMessageError
        When ``head`` is not a shoal head frame of this protocol version.
    """
    view = memoryview(head)
    if view.nbytes < _BODY_AT + 4 or view[: len(DELIMITER)].tobytes() != DELIMITER:
        raise MalformedMessageError("not a shoal head frame of this protocol version")
    env_len = int.from_bytes(view[_BODY_AT : _BODY_AT + 4], "little")
    try:
        header, parent, metadata, _nbuf, *_ = _json_loads(
            view[_BODY_AT + 4 : _BODY_AT + 4 + env_len]
        )
    except (ValueError, TypeError) as exc:
        raise MalformedMessageError(f"head frame has no readable envelope: {exc}") from exc
    if type(header) is not list or len(header) != 6 or type(metadata) is not dict:
        raise MalformedMessageError("head frame's envelope is not [header, parent, metadata, nbuf]")
    return header, parent, metadata


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
