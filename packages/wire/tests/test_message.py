"""The sans-I/O codec: golden frames, integrity of every frame, replays, caps, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.wire import (
    AuthenticationError,
    Codec,
    FrameCountError,
    FrameTooLargeError,
    Header,
    HeaderDecodeError,
    InvalidKeyError,
    Link,
    MalformedMessageError,
    Message,
    RawContent,
    RemoteInputError,
    ReplayError,
    ReplayGuard,
    Serializer,
    VersionMismatchError,
    WireError,
    decode,
    encode,
    new_header,
)

KEY = b"k" * 32
GOLDEN_MESSAGE = Message(
    Header("m-1", "ping", "sess", 1700000000.5, "2", "alice"),
    Header("m-0", "req", "sess", 1700000000.0, "2", "bob"),
    {"engine": 3},
    {"n": 1},
    (b"raw",),
    (b"id1",),
)
# The frames of GOLDEN_MESSAGE: the wire format, fixed. Changing it needs a new version.
GOLDEN_FRAMES = [
    b"id1",
    b"<SHOAL|2>"
    b'H\xdd\xf9\xd84pH\x08+aA\xaa\n\\"K\xc1\xf1X\xd1\xbb\xcc\xdf\x10\x17\xa7[\xa3\rP\xb6 '
    b"LLLLLLLLLLLLLLLL\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00@@\xfcT\xd9A"
    b"312c779d39c7e86a6fae8493c0a6a6dc72f5a1fa3aace6a189416993624ad330"
    b"k\x00\x00\x00"
    b'[["m-1","ping","sess",1700000000.5,"2","alice"],'
    b'["m-0","req","sess",1700000000.0,"2","bob"],{"engine":3},1]'
    b"\x80\x05\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01n\x94K\x01s.",
    b"raw",
]
# Where the parts of the head start: delimiter, link MAC, link stamp, signature, body.
MAC_AT, STAMP_AT, SIG_AT, BODY_AT = 9, 41, 73, 137


def head_of(signature: bytes, body: bytes) -> bytes:
    """A head frame built by hand: a valid link stamp over ``signature``, then ``body``."""
    import os
    import struct

    stamp = struct.pack("<16sQd", os.urandom(16), 1, time.time())
    mac = hmac.new(KEY, stamp + signature, hashlib.sha256).digest()
    return b"<SHOAL|2>" + mac + stamp + signature + body


def golden_link(codec: Codec) -> Link:
    """The link that stamped GOLDEN_FRAMES: a fixed id, first message, a fixed time."""
    return Link(codec, link_id=b"L" * 16, clock=lambda: 1700000001.0)


def fresh(msg_type: str = "ping", content: Any = None, **kw: Any) -> Message:
    return Message(new_header(msg_type, "s"), content=content, **kw)


def as_bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(memoryview(f)) for f in frames]


def test_golden_frames_encode() -> None:
    """Encoding the reference message gives exactly the reference frames."""
    codec = Codec(KEY, replay=None)
    assert as_bytes(codec.encode(GOLDEN_MESSAGE, link=golden_link(codec))) == GOLDEN_FRAMES


def test_golden_frames_decode() -> None:
    """Decoding the reference frames gives exactly the reference message."""
    msg = decode(GOLDEN_FRAMES, KEY)
    assert msg.header == GOLDEN_MESSAGE.header
    assert msg.parent_header == GOLDEN_MESSAGE.parent_header
    assert msg.metadata == {"engine": 3}
    assert msg.content == {"n": 1}
    assert [bytes(b) for b in msg.buffers] == [b"raw"]
    assert msg.identities == (b"id1",)


def test_signature_is_hmac_sha256_of_every_frame() -> None:
    """The signature is plain HMAC-SHA256, so other implementations can check it."""
    head = GOLDEN_FRAMES[1]
    body = head[BODY_AT:]
    mac = hmac.new(KEY, body, hashlib.sha256)
    mac.update(len(b"raw").to_bytes(8, "little") + b"raw")
    assert head[SIG_AT:BODY_AT] == mac.hexdigest().encode()


def test_link_mac_is_hmac_sha256_of_stamp_and_signature() -> None:
    """The link stamp's MAC is plain HMAC-SHA256 (raw) over the stamp and the signature."""
    head = GOLDEN_FRAMES[1]
    mac = hmac.new(KEY, head[STAMP_AT:BODY_AT], hashlib.sha256).digest()
    assert head[MAC_AT:STAMP_AT] == mac


def test_restamped_message_verifies_and_keeps_its_signature() -> None:
    """A router's stamp replaces the link stamp only; the message's signature is kept."""
    sender, router, receiver = Codec(KEY), Codec(KEY), Codec(KEY)
    frames = as_bytes(sender.encode(fresh(content="x", buffers=(b"b" * 100,))))
    router.verify(frames)
    forwarded = [router.link().stamp(frames[0]), *frames[1:]]
    assert forwarded[0][SIG_AT:] == frames[0][SIG_AT:]
    assert receiver.decode(forwarded).content == "x"


def test_tampered_link_stamp_refused() -> None:
    """Changing the link id or sequence number under the MAC fails authentication."""
    frames = as_bytes(encode(fresh(), KEY))
    for at in (STAMP_AT, STAMP_AT + 16):
        bad = bytearray(frames[0])
        bad[at] ^= 1
        with pytest.raises(AuthenticationError, match="link stamp"):
            decode([bytes(bad)], KEY)


def test_roundtrip_with_array_buffers() -> None:
    """Content with a large array and extra buffers survives, the array out of band."""
    array = np.arange(1 << 18, dtype=np.float32)
    frames = encode(fresh(content={"a": array}, buffers=(b"x" * 10,)), KEY)
    assert len(frames) == 3  # head, array, extra buffer
    msg = decode(frames, KEY)
    np.testing.assert_array_equal(msg.content["a"], array)
    assert bytes(msg.buffers[0]) == b"x" * 10


def test_tampered_head_refused() -> None:
    """Changing one byte of the head makes the signature fail."""
    frames = as_bytes(encode(fresh(content={"n": 1}), KEY))
    bad = bytearray(frames[0])
    bad[-3] ^= 1
    with pytest.raises(AuthenticationError):
        decode([bytes(bad)], KEY)


@pytest.mark.parametrize("size", [100, 200_000, 3 << 20], ids=["small", "mid", "bulk"])
def test_swapped_buffer_refused(size: int) -> None:
    """A buffer swapped under a valid signature is refused (the peers accept it)."""
    frames = as_bytes(encode(fresh(content=None, buffers=(b"a" * size,)), KEY))
    frames[-1] = b"b" + frames[-1][1:]
    with pytest.raises(AuthenticationError):
        decode(frames, KEY)


def test_resplit_buffers_refused() -> None:
    """Moving bytes from one buffer frame to the next breaks the signature."""
    frames = as_bytes(encode(fresh(buffers=(b"abcd", b"efgh")), KEY))
    frames[-2], frames[-1] = b"abc", b"defgh"
    with pytest.raises(AuthenticationError):
        decode(frames, KEY)


def test_wrong_key_refused() -> None:
    """A message signed with another key fails authentication."""
    frames = encode(fresh(), b"x" * 32)
    with pytest.raises(AuthenticationError, match="does not match the key"):
        decode(frames, KEY)


def test_content_not_loaded_before_verification() -> None:
    """A forged pickle that would run code is refused before any unpickling."""

    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("unpickled before verification",))

    frames = as_bytes(encode(fresh(content=Boom()), b"x" * 32))
    with pytest.raises(AuthenticationError):
        decode(frames, KEY)


def test_replay_refused_by_codec() -> None:
    """The same frames decoded twice by one Codec: the second time is a replay."""
    codec = Codec(KEY)
    frames = codec.encode(fresh())
    codec.decode(frames)
    with pytest.raises(ReplayError, match="replay"):
        codec.decode(frames)


def test_forged_copy_does_not_poison_history() -> None:
    """A forgery carrying a sniffed signature fails and the genuine message still passes."""
    codec = Codec(KEY)
    genuine = as_bytes(codec.encode(fresh(content="genuine")))
    forged = list(genuine)
    forged[0] = forged[0][:-5] + b"XXXXX"
    with pytest.raises(AuthenticationError):
        codec.decode(forged)
    assert codec.decode(genuine).content == "genuine"


def test_unknown_link_stamped_before_the_receiver_started_is_refused() -> None:
    """A message captured before the receiver existed cannot be replayed to it."""
    sender = Codec(KEY)
    old = sender.encode(fresh(), link=Link(sender, clock=lambda: time.time() - 3600))
    with pytest.raises(ReplayError, match="before this receiver started"):
        Codec(KEY).decode(old)


def test_header_date_is_not_a_replay_rule() -> None:
    """A request created long ago (it waited in a queue) is accepted: only links count."""
    codec = Codec(KEY)
    old = Message(Header("id", "t", "s", time.time() - 30 * 24 * 3600, "2", ""))
    assert codec.decode(Codec(KEY).encode(old)).header.msg_id == "id"


def test_a_flood_never_gets_honest_traffic_refused() -> None:
    """Finding 5: a message encoded early (or dated just inside the old window) and
    delivered after 300,000 others is accepted; replays of either are still refused."""
    receiver = Codec(KEY)
    early, old_dated = Codec(KEY), Codec(KEY)
    waited = early.encode(fresh("waited"))
    edge = old_dated.encode(Message(Header("edge", "t", "s", time.time() - 590, "2", "")))
    receiver.decode(edge)
    flood = Codec(KEY)
    frames = flood.encode(fresh())
    for _ in range(300_000):
        receiver.verify(flood.encode(fresh()))
    assert receiver.decode(waited).msg_type == "waited"
    assert receiver.decode(old_dated.encode(fresh("later"))).msg_type == "later"
    for replay in (waited, edge, frames):
        with pytest.raises(ReplayError):
            receiver.decode(replay)


def test_links_remembered_are_bounded() -> None:
    """The guard keeps at most max_links links, forgetting the least recently used."""
    guard = ReplayGuard(window=60, max_links=3, clock=lambda: 1000.0)
    for link in (b"a", b"b", b"c"):
        guard.record(link, 1)
    guard.record(b"a", 2)  # a is now the most recently used
    guard.record(b"d", 1)
    assert len(guard) == 3
    with pytest.raises(ReplayError):
        guard.check(b"a", 2, 1000.0)
    guard.check(b"b", 1, 1000.0)  # forgotten: a new link again, stamped in time


def test_a_link_out_of_order_is_refused() -> None:
    """Within one link, a message not after the last accepted one is refused."""
    sender, receiver = Codec(KEY), Codec(KEY)
    link = sender.link()
    first = sender.encode(fresh(), link=link)
    second = sender.encode(fresh(), link=link)
    receiver.decode(second)
    with pytest.raises(ReplayError, match="not after"):
        receiver.decode(first)


def test_version_mismatch_names_both() -> None:
    """A peer speaking protocol 2 is told apart from a bad signature, with both versions."""
    frames = as_bytes(encode(fresh(), KEY))
    frames[0] = frames[0].replace(b"<SHOAL|2>", b"<SHOAL|3>", 1)
    with pytest.raises(VersionMismatchError, match=r"'3'.*'2'"):
        decode(frames, KEY)


def test_header_version_mismatch() -> None:
    """A signed header claiming another version is refused by name."""
    msg = Message(Header("i", "t", "s", time.time(), version="9"))
    with pytest.raises(VersionMismatchError, match="'9'"):
        decode(encode(msg, KEY), KEY)


@pytest.mark.parametrize("bad_key", [b"", b"short", "a str key" * 4])
def test_weak_keys_refused(bad_key: Any) -> None:
    """Empty, short and non-bytes keys are refused with a hint."""
    with pytest.raises(InvalidKeyError):
        Codec(bad_key)


def test_frame_count_cap() -> None:
    """More frames than max_frames are refused before any work."""
    codec = Codec(KEY, max_frames=4)
    with pytest.raises(FrameCountError, match="max_frames=4"):
        codec.decode([b"x"] * 5)


def test_frame_size_cap() -> None:
    """A frame over max_frame_size is refused."""
    codec = Codec(KEY, max_frame_size=100)
    frames = codec.encode(fresh(buffers=(b"y" * 101,)))
    with pytest.raises(FrameTooLargeError, match="max_frame_size=100"):
        codec.decode(frames)


def test_no_delimiter() -> None:
    """Frames with no head are malformed."""
    with pytest.raises(MalformedMessageError, match="delimiter"):
        decode([b"a", b"b"], KEY)


def test_signed_garbage_envelope() -> None:
    """A correctly signed but undecodable envelope raises HeaderDecodeError."""
    body = (5).to_bytes(4, "little") + b"[1,2]" + b"x"
    sig = hmac.new(KEY, body, hashlib.sha256).hexdigest().encode()
    with pytest.raises(HeaderDecodeError):
        decode([head_of(sig, body)], KEY)


def test_signed_nbuf_lie() -> None:
    """A signed envelope claiming more buffers than arrived is refused."""
    msg = fresh(buffers=(b"a",))
    frames = as_bytes(encode(msg, KEY))
    head = frames[0]
    body = head[BODY_AT:].replace(b"},1]", b"},7]")
    sig = hmac.new(KEY, body, hashlib.sha256)
    sig.update((1).to_bytes(8, "little") + b"a")
    with pytest.raises(HeaderDecodeError, match="nbuf"):
        decode([head_of(sig.hexdigest().encode(), body), b"a"], KEY)


def test_raw_content_forwarding() -> None:
    """A router can decode without loading content and forward it re-signed."""
    array = np.arange(100_000)
    frames = encode(fresh(content={"a": array}), KEY)
    routed = decode(frames, KEY, content=False)
    assert isinstance(routed.content, RawContent)
    onward = Message(routed.header, content=routed.content)
    out = decode(encode(onward, b"z" * 32), b"z" * 32)
    np.testing.assert_array_equal(out.content["a"], array)


def test_errors_are_wire_errors_and_builtins() -> None:
    """Every remote-input error is a WireError and a ValueError; the bases are abstract."""
    assert issubclass(AuthenticationError, WireError)
    assert issubclass(ReplayError, ValueError)
    with pytest.raises(TypeError, match="base class"):
        WireError("x")
    with pytest.raises(TypeError, match="base class"):
        RemoteInputError("x")


frame = st.one_of(
    st.binary(max_size=200),
    st.just(b"<SHOAL|2>"),
    st.builds(lambda tail: b"<SHOAL|2>" + tail, st.binary(max_size=200)),
    st.builds(lambda tail: b"<SHOAL|" + tail, st.binary(max_size=20)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(frame, max_size=8))
def test_decoder_raises_only_wire_errors(frames: list[bytes]) -> None:
    """Arbitrary frame lists never escape as anything but a RemoteInputError."""
    codec = Codec(KEY)
    with contextlib.suppress(RemoteInputError):
        codec.decode(frames)


# Fixed frames, so that every example draws from the same shape.
MUTATION_BASE = as_bytes(
    encode(
        Message(Header("m", "t", "s", time.time() + 60), content={"k": [1, 2]}, buffers=(b"b",)),
        KEY,
    )
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_signed_mutations_raise_only_wire_errors(data: st.DataObject) -> None:
    """Mutating a valid message anywhere is refused with a RemoteInputError."""
    frames = list(MUTATION_BASE)
    i = data.draw(st.integers(0, len(frames) - 1))
    target = bytearray(frames[i])
    pos = data.draw(st.integers(0, len(target) - 1))
    target[pos] ^= data.draw(st.integers(1, 255))
    frames[i] = bytes(target)
    with pytest.raises(RemoteInputError):
        Codec(KEY).decode(frames)


def test_serializer_is_pluggable() -> None:
    """A codec uses the serializer it is given."""
    s = Serializer(threshold=0)
    frames = Codec(KEY, serializer=s).encode(fresh(content=np.arange(3)))
    assert len(frames) == 2


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(envelope=json_value, nbuffers=st.integers(0, 3))
def test_signed_arbitrary_envelopes_raise_only_wire_errors(envelope: Any, nbuffers: int) -> None:
    """A correctly signed but arbitrary envelope is refused with a RemoteInputError."""
    import orjson

    env = orjson.dumps(envelope)
    body = len(env).to_bytes(4, "little") + env + pickle_none()
    buffers = [b"b%d" % i for i in range(nbuffers)]
    mac = hmac.new(KEY, body, hashlib.sha256)
    for buf in buffers:
        mac.update(len(buf).to_bytes(8, "little") + buf)
    frames = [head_of(mac.hexdigest().encode(), body), *buffers]
    with contextlib.suppress(RemoteInputError):
        Codec(KEY).decode(frames)


def pickle_none() -> bytes:
    import pickle

    return pickle.dumps(None, 5)


def test_a_guard_given_to_the_codec_is_used() -> None:
    """A fresh ReplayGuard passed in (empty, so len() == 0) still refuses replays."""
    codec = Codec(KEY, replay=ReplayGuard(window=60.0, max_links=16))
    frames = Codec(KEY).encode(Message(new_header("ping", "s"), None, {}, {}))
    codec.decode(frames)
    with pytest.raises(ReplayError):
        codec.decode(frames)
