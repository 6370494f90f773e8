"""The engine as a hub member: registration, hub liveness, log publishing.

The test plays the hub with real zmq sockets and a real engine process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from shoal.wire import (
    Codec,
    ConnectionInfo,
    Message,
    generate_key,
    new_header,
    write_connection_file,
)

pytestmark = pytest.mark.timeout(60)


class FakeHub:
    """Bound ROUTERs on loopback, a connection file, and the engine processes started."""

    def __init__(self, folder: Path) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.key = generate_key()
        self.codec = Codec(self.key)
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        urls = {}
        for name in ("shell", "control", "heartbeat"):
            sock = self.ctx.socket(zmq.ROUTER)
            sock.linger = 0
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            urls[name] = f"tcp://127.0.0.1:{port}"
            self.sockets[name] = sock
        self.path = str(folder / "engine.json")
        write_connection_file(self.path, ConnectionInfo(urls=urls, key=self.key))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_engine(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "shoal.engine", "--connection-file", self.path, *args]
        proc = subprocess.Popen(cmd)
        self.procs.append(proc)
        return proc

    def recv(self, channel: str, timeout: float = 20.0) -> tuple[bytes, Message]:
        sock = self.sockets[channel]
        assert sock.poll(int(timeout * 1000)), f"nothing on {channel} within {timeout} s"
        ident, *frames = sock.recv_multipart()
        return ident, self.codec.decode(frames)

    def send(
        self, channel: str, ident: bytes, msg_type: str, content: Any, parent: Message | None = None
    ) -> Message:
        msg = Message(
            new_header(msg_type, "hub"), None if parent is None else parent.header, {}, content
        )
        self.sockets[channel].send_multipart([ident, *self.codec.encode(msg)])
        return msg

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    h = FakeHub(tmp_path)
    try:
        yield h
    finally:
        h.close()


def _register(hub: FakeHub, engine_id: int, hub_timeout: float | None) -> bytes:
    ident, request = hub.recv("control")
    assert request.msg_type == "register_request"
    assert request.content["pid"] == hub.procs[-1].pid
    reply = {"status": "ok", "engine_id": engine_id, "hub_timeout": hub_timeout}
    hub.send("control", ident, "register_reply", reply, parent=request)
    return ident


def test_registered_engine_takes_its_id_and_serves(hub: FakeHub) -> None:
    """The engine id the hub gives shows in the hello and in replies; identities route back."""
    hub.start_engine("--register")
    ident = _register(hub, 7, None)
    _, hello = hub.recv("shell")
    assert hello.msg_type == "engine_ready"
    assert hello.content["engine_id"] == 7
    # A relayed request carries the client's identity first; the reply must carry it back.
    msg = Message(
        new_header("apply_request", "c"), None, {}, {"f": os.getpid, "args": (), "kwargs": {}}
    )
    hub.sockets["shell"].send_multipart([ident, b"client-1", *hub.codec.encode(msg)])
    sock = hub.sockets["shell"]
    assert sock.poll(20_000)
    frames = sock.recv_multipart()
    assert frames[:2] == [ident, b"client-1"]
    reply = hub.codec.decode(frames[1:])
    assert reply.content["result"] == hub.procs[-1].pid
    assert reply.metadata["engine_id"] == 7


def test_refused_registration_exits(hub: FakeHub) -> None:
    proc = hub.start_engine("--register")
    ident, request = hub.recv("control")
    hub.send(
        "control", ident, "register_reply", {"status": "error", "evalue": "full"}, parent=request
    )
    assert proc.wait(20) == 2


def test_engine_exits_when_hub_stops_pinging(hub: FakeHub) -> None:
    """Pinged, the engine stays; when pings stop, it exits after hub_timeout."""
    proc = hub.start_engine("--register")
    ident = _register(hub, 0, 1.0)
    heart = hub.sockets["heartbeat"]
    hub.recv("shell")  # hello: the engine is up and its heartbeat device runs
    end = time.monotonic() + 2.5  # more than twice the timeout
    while time.monotonic() < end:
        heart.send_multipart([ident, b"ping"])
        time.sleep(0.2)
        assert proc.poll() is None, "the engine left although it was pinged"
    stopped = time.monotonic()
    assert proc.wait(20) == 1
    assert time.monotonic() - stopped < 10  # about 1 s; generous for a loaded machine


def test_logs_published(hub: FakeHub) -> None:
    """--log-url publishes records under engine.<id>.<LEVEL>."""
    sub = hub.ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"engine.")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    try:
        hub.start_engine(
            "--register", "--log-url", f"tcp://127.0.0.1:{port}", "--log-level", "INFO"
        )
        ident = _register(hub, 3, None)
        hub.recv("shell")
        code = (
            "import logging, time\n"
            "for _ in range(50):\n"
            "    logging.getLogger('user').warning('hi there')\n"
            "    time.sleep(0.05)"
        )
        msg = Message(new_header("execute_request", "c"), None, {}, {"code": code})
        hub.sockets["shell"].send_multipart([ident, *hub.codec.encode(msg)])
        assert sub.poll(20_000), "no log record published"
        topic, text = sub.recv_multipart()[:2]
        assert topic == b"engine.3.WARNING"
        assert b"hi there" in text
    finally:
        sub.close(linger=0)


def test_urls_and_key_file_instead_of_a_connection_file(hub: FakeHub, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(hub.key)
    key_file.chmod(0o600)
    urls = {name: sock.getsockopt_string(zmq.LAST_ENDPOINT) for name, sock in hub.sockets.items()}
    cmd = [sys.executable, "-m", "shoal.engine", "--key-file", str(key_file), "--engine-id", "4"]
    for name, url in urls.items():
        cmd += [f"--{name}", url]
    proc = subprocess.Popen(cmd)
    hub.procs.append(proc)
    _, hello = hub.recv("shell")
    assert hello.content["engine_id"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "shoal.engine", "--shell", urls["shell"]],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "--key-file" in bad.stderr


def test_a_request_that_waited_long_still_runs_and_a_replay_does_not(hub: FakeHub) -> None:
    """A request read an hour after it was sent (queued behind a long task) is served;
    the same frames sent again are dropped."""
    hub.start_engine("--engine-id", "0")
    ident, _ = hub.recv("control")  # the hello on control
    hub.recv("shell")
    old = new_header("apply_request", "c")._replace(date=time.time() - 3600)
    frames = hub.codec.encode(Message(old, None, {}, {"f": len, "args": ("abc",), "kwargs": {}}))
    shell = hub.sockets["shell"]
    shell.send_multipart([ident, *frames])
    _, reply = hub.recv("shell")
    assert reply.content["result"] == 3
    shell.send_multipart([ident, *frames])  # a replay
    if shell.poll(1500):
        _, again = hub.recv("shell")
        pytest.fail(f"a replayed request was answered: {again.msg_type} {again.content}")


def _control(hub: FakeHub, ident: bytes, msg_type: str, content: Any) -> dict[str, Any]:
    """Send a control request; its reply's content (other messages on control skipped)."""
    request = hub.send("control", ident, msg_type, content)
    while True:
        _, reply = hub.recv("control")
        if reply.parent_header is not None and reply.parent_header.msg_id == request.header.msg_id:
            return dict(reply.content)


def test_targeted_interrupt_stops_only_the_requests_named(hub: FakeHub) -> None:
    """interrupt_request with msg_ids interrupts the running request only when it is one
    of them; without msg_ids, whatever runs."""
    hub.start_engine("--engine-id", "0")
    ident, _ = hub.recv("control")  # the hello on control
    hub.recv("shell")
    shell = hub.sockets["shell"]

    def start_sleep() -> Message:
        msg = Message(
            new_header("apply_request", "c"),
            None,
            {},
            {"f": time.sleep, "args": (60,), "kwargs": {}},
        )
        shell.send_multipart([ident, *hub.codec.encode(msg)])
        end = time.monotonic() + 20
        while not _control(hub, ident, "status_request", {})["busy"]:
            assert time.monotonic() < end, "the engine did not start the request"
            time.sleep(0.02)
        return msg

    assert _control(hub, ident, "interrupt_request", {"msg_ids": ["x"]})["interrupted"] is False
    running = start_sleep()
    other = _control(hub, ident, "interrupt_request", {"msg_ids": ["not-this-one"]})
    assert other == {"status": "ok", "interrupted": False}
    assert not shell.poll(300), "a targeted interrupt for another request stopped this one"
    assert _control(hub, ident, "status_request", {})["busy"] is True
    hit = _control(hub, ident, "interrupt_request", {"msg_ids": ["a", running.header.msg_id]})
    assert hit == {"status": "ok", "interrupted": True}
    _, reply = hub.recv("shell")
    assert reply.parent_header is not None
    assert reply.parent_header.msg_id == running.header.msg_id
    assert reply.content["ename"] == "KeyboardInterrupt"
    start_sleep()  # untargeted: as before
    assert _control(hub, ident, "interrupt_request", {})["interrupted"] is True
    _, reply = hub.recv("shell")
    assert reply.content["ename"] == "KeyboardInterrupt"
    bad = _control(hub, ident, "interrupt_request", {"msg_ids": "abc"})
    assert bad["status"] == "error"
    assert "msg_ids" in bad["evalue"]
