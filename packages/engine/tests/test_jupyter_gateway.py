"""The engine's Jupyter gateway without a hub: a KernelManager's engine opens it on a
``jupyter_gateway_request``, and jupyter_client (not shoal's own code) drives it.

The cluster-level tests (and ``jupyter console``) are in the hub's tests/test_attach.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

import zmq  # noqa: E402
from jupyter_client import BlockingKernelClient  # noqa: E402
from jupyter_client.session import Session  # noqa: E402

from shoal.engine import KernelManager  # noqa: E402
from shoal.hub.testing import wait_until  # noqa: E402

_TIMEOUT = 30.0


def _gateway(km: KernelManager, content: dict[str, object]) -> dict[str, Any]:
    """Send ``jupyter_gateway_request`` on control; its reply content."""
    header = km._send("control", "jupyter_gateway_request", content)
    return dict(km._wait_reply(header.msg_id, _TIMEOUT).content)


@pytest.fixture
def km() -> Iterator[KernelManager]:
    """One engine of the test's own, without a hub."""
    with KernelManager() as manager:
        yield manager


@pytest.fixture
def info(km: KernelManager) -> dict[str, Any]:
    """The connection info of ``km``'s engine's gateway."""
    reply = _gateway(km, {})
    assert reply["status"] == "ok", reply
    return reply


def _client(info: dict[str, Any]) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_info({k: v for k, v in info.items() if k not in ("status", "engine_id")})
    kc.start_channels()
    kc.wait_for_ready(timeout=_TIMEOUT)
    return kc


def test_reply_is_a_loopback_connection_with_a_fresh_key(km: KernelManager) -> None:
    """The reply has every field of a Jupyter connection file; asking again while it is
    open gives the same gateway; another engine's gateway has another key."""
    first = _gateway(km, {})
    assert first["ip"] == "127.0.0.1"
    assert first["signature_scheme"] == "hmac-sha256"
    assert first["transport"] == "tcp"
    assert first["kernel_name"] == "shoal"
    assert _gateway(km, {"ip": "127.0.0.1"}) == first
    with KernelManager() as other:
        assert _gateway(other, {})["key"] != first["key"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"port": 1}, "unknown fields"),
        ({"ip": ""}, "'ip' must be a non-empty str"),
        ({"insecure": "yes"}, "'insecure' must be a bool"),
        ({"ip": "0.0.0.0"}, "reachable from other hosts"),  # noqa: S104 - refused
    ],
)
def test_bad_requests_get_clear_errors(
    km: KernelManager, content: dict[str, object], match: str
) -> None:
    """Bad content is an error reply naming the field; no gateway opens."""
    reply = _gateway(km, content)
    assert reply["status"] == "error"
    assert match in str(reply["evalue"])
    assert "jupyter" not in dict(km.status()["messages"])  # type: ignore[call-overload]


def test_execute_through_jupyter_client_shares_the_namespace(
    km: KernelManager, info: dict[str, Any]
) -> None:
    """jupyter_client runs code in the engine's namespace, between the manager's requests."""
    km.push({"shared": 20})
    kc = _client(info)
    try:
        reply = kc.execute_interactive("shared += 1; print('ok')", timeout=_TIMEOUT)
        assert reply["content"]["status"] == "ok"
        assert km.pull("shared") == 21
    finally:
        kc.stop_channels()


def test_signatures_are_hmac_sha256_of_the_four_frames(info: dict[str, Any]) -> None:
    """What the gateway sends is signed as jupyter_client signs; a frame changed after
    signing, a wrong key and a replay are dropped and counted, never answered."""
    key = info["key"].encode()
    ctx = zmq.Context.instance()
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{info['shell_port']}")
    try:
        honest = Session(key=key)
        tampered = honest.serialize(honest.msg("execute_request", {"code": "tampered = 1"}))
        tampered[-1] = json.dumps({"code": "tampered = 2"}).encode()  # content after signing
        sock.send_multipart(tampered)
        Session(key=b"wrong").send(sock, "execute_request", {"code": "forged = 1"})
        again = honest.serialize(honest.msg("kernel_info_request", {}))
        sock.send_multipart(again)
        sock.send_multipart(again)
        last = honest.msg("execute_request", {"code": "'x' in globals()"})
        honest.send(sock, last)
        answered = []
        while True:
            assert sock.poll(int(_TIMEOUT * 1000)), "no reply from the gateway"
            frames = sock.recv_multipart()
            at = frames.index(b"<IDS|MSG>")
            signature, parts = frames[at + 1], frames[at + 2 : at + 6]
            mac = hmac.new(key, digestmod=hashlib.sha256)
            for part in parts:
                mac.update(part)
            assert hmac.compare_digest(signature, mac.hexdigest().encode())
            msg = honest.deserialize(frames[at + 1 :])  # jupyter_client's own check too
            answered.append(msg["parent_header"]["msg_id"])
            if msg["parent_header"]["msg_id"] == last["header"]["msg_id"]:
                break
        assert len(answered) == 2  # the kernel_info once, and the last
    finally:
        sock.close(linger=0)


def test_drops_show_in_status(km: KernelManager, info: dict[str, Any]) -> None:
    """Forged and replayed messages are counted in status_request's messages."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{info['shell_port']}")
    try:
        Session(key=b"wrong").send(sock, "kernel_info_request", {})
        honest = Session(key=info["key"].encode())
        frames = honest.serialize(honest.msg("kernel_info_request", {}))
        sock.send_multipart(frames)
        assert sock.poll(int(_TIMEOUT * 1000))
        sock.recv_multipart()
        sock.send_multipart(frames)  # the replay
        ok = honest.msg("kernel_info_request", {})
        honest.send(sock, ok)
        assert sock.poll(int(_TIMEOUT * 1000))
        sock.recv_multipart()
    finally:
        sock.close(linger=0)
    stats: dict[str, Any] = dict(km.status()["messages"])  # type: ignore[call-overload]
    assert stats["jupyter"]["dropped"] == {"bad signature": 1, "replayed signature": 1}
    assert stats["jupyter"]["received"] == 2


def test_interrupt_from_control_spares_the_engine(km: KernelManager, info: dict[str, Any]) -> None:
    """interrupt_request on the gateway's control stops its ``while True``; the engine
    serves the manager's requests after it."""
    kc = _client(info)
    try:
        msg_id = kc.execute("print('spinning')\nwhile True: pass")
        while True:
            msg = kc.get_iopub_msg(timeout=_TIMEOUT)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        kc.control_channel.send(kc.session.msg("interrupt_request", {}))
        assert kc.get_control_msg(timeout=_TIMEOUT)["content"]["status"] == "ok"
        while True:
            reply = kc.get_shell_msg(timeout=_TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert km.apply(lambda: "served") == "served"
    finally:
        kc.stop_channels()


def test_a_failed_execute_aborts_those_queued_behind_it(
    km: KernelManager, info: dict[str, Any], tmp_path: Any
) -> None:
    """Jupyter's stop_on_error: execute requests queued behind a failing one are
    answered ``aborted`` and never run; one sent after it runs."""
    gate = tmp_path / "gate"
    cell = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n1 / 0"
    stats: Any = km.status()["messages"]
    base = stats["jupyter"]["received"]
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{info['shell_port']}")
    honest = Session(key=info["key"].encode())
    try:
        failing = honest.msg("execute_request", {"code": cell})
        queued = honest.msg("execute_request", {"code": "ran_after = 1"})
        honest.send(sock, failing)
        honest.send(sock, queued)

        def both_received() -> bool:
            now: Any = km.status()["messages"]
            return bool(now["jupyter"]["received"] >= base + 2)

        wait_until(both_received, timeout=_TIMEOUT)
        gate.touch()
        replies = {}
        while len(replies) < 2:
            assert sock.poll(int(_TIMEOUT * 1000)), "no reply from the gateway"
            _, frames = honest.feed_identities(sock.recv_multipart())
            msg = honest.deserialize(frames)
            replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
        assert replies[failing["header"]["msg_id"]] == "error"
        assert replies[queued["header"]["msg_id"]] == "aborted"
        after = honest.msg("execute_request", {"code": "ran_later = 1"})
        honest.send(sock, after)
        assert sock.poll(int(_TIMEOUT * 1000))
        _, frames = honest.feed_identities(sock.recv_multipart())
        assert honest.deserialize(frames)["content"]["status"] == "ok"
    finally:
        sock.close(linger=0)
    assert km.pull(["'ran_after' in globals()", "ran_later"]) == [False, 1]


def test_stream_output_comes_whole_in_few_messages_and_in_time(
    info: dict[str, Any], tmp_path: Any
) -> None:
    """20,000 print()s arrive whole, in order, as a few stream messages; and output of a
    cell that still runs arrives while it runs."""
    kc = _client(info)
    try:
        texts: list[str] = []

        def keep(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])

        reply = kc.execute_interactive(
            "for i in range(20000): print(i)", timeout=_TIMEOUT, output_hook=keep
        )
        assert reply["content"]["status"] == "ok"
        assert "".join(texts) == "".join(f"{i}\n" for i in range(20000))
        assert len(texts) < 100
        gate = tmp_path / "gate"
        code = f"import os, time\nprint('early')\nwhile not os.path.exists({str(gate)!r}):\n"
        msg_id = kc.execute(code + "    time.sleep(0.01)")
        while True:  # the cell waits for the gate, which opens only once 'early' is here
            msg = kc.get_iopub_msg(timeout=_TIMEOUT)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                assert msg["content"]["text"] == "early\n"
                break
        gate.touch()
        while kc.get_shell_msg(timeout=_TIMEOUT)["parent_header"].get("msg_id") != msg_id:
            pass
    finally:
        kc.stop_channels()
