"""The hub against hostile traffic, poison tasks and dying engines: real processes, raw
zmq sockets that speak the wire format with a wrong key (or none), a fuzz of the receive
path and a bounded chaos run. Each finding of the trust review is one test here."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import shoal.hub
from shoal.hub import Client, EngineDiedError, Hub, HubLost
from shoal.hub.testing import ClusterStarter, process_alive, wait_until
from shoal.wire import (
    InsecureBindError,
    Message,
    encode,
    generate_key,
    new_header,
    read_connection_file,
)

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20
#: How far above its baseline the hub's resident memory may stay once hostile traffic
#: is dealt with.
RSS_SLACK = 100 * MB
#: How long the hub has to give that memory back.
RSS_SETTLE = 5.0


# -- helpers ------------------------------------------------------------------------------
def _rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _hub_log(folder: Path, tail: int = 3000) -> str:
    text = (folder / "hub.log").read_text(encoding="utf-8", errors="replace")
    return text[-tail:]


def _check_hub_alive(proc: subprocess.Popen[bytes], folder: Path) -> None:
    code = proc.poll()
    assert code is None, f"the hub exited with {code}; its log ends with:\n{_hub_log(folder)}"


def _outstanding(client: Client) -> int:
    """Requests the hub has booked on engines or still queues."""
    status: dict[Any, Any] = client.queue_status()
    booked = sum(int(v["outstanding"]) for k, v in status.items() if isinstance(k, int))
    return booked + int(status["unassigned"])


def _remote() -> dict[str, Callable[..., Any]]:
    """Functions for the engines, defined in a function body so that they travel by
    value (the engines cannot import this test module)."""

    def square(x: int) -> int:
        return x * x

    def pid() -> int:
        import os

        return os.getpid()

    def segfault() -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)

    def exit_now() -> None:
        import os

        os._exit(1)

    def marked(task_id: int, x: int, path: str, work: float) -> int:
        """``x * x`` after ``work`` seconds; its id goes to ``path`` at the very end."""
        import time

        end = time.monotonic() + work
        while time.monotonic() < end:
            pass
        with open(path, "a", encoding="ascii") as f:
            f.write(f"{task_id}\n")
        return x * x

    return {
        "square": square,
        "pid": pid,
        "segfault": segfault,
        "exit_now": exit_now,
        "marked": marked,
    }


REMOTE = _remote()


class Attacker:
    """Raw zmq sockets on a hub's ports, speaking its wire format: with the right key,
    a wrong one, or garbage. Every socket closes (linger 0) when the block ends."""

    def __init__(self, folder: Path) -> None:
        client_info = read_connection_file(str(folder / "hub-client.json"))
        engine_info = read_connection_file(str(folder / "hub-engine.json"))
        self.key = client_info.key
        self.urls = {**client_info.urls, **engine_info.urls}
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        self.session = uuid.uuid4().hex

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, linger: int = 0) -> None:
        """Close every socket; with ``linger`` (ms), what they queued goes out first."""
        for sock in self.sockets:
            sock.close(linger=linger)
        self.sockets.clear()
        self.context.term()

    def dealer(self, port: str, identity: bytes | None = None) -> zmq.Socket[Any]:
        """A DEALER on one of the hub's ports; zmq's default identity when ``None``."""
        sock: zmq.Socket[Any] = self.context.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 0
        if identity is not None:
            sock.identity = identity
        sock.connect(self.urls[port])
        self.sockets.append(sock)
        return sock

    def client_pair(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """A client's two sockets (``s<token>`` sends, ``r<token>`` receives)."""
        token = uuid.uuid4().hex[:16].encode()
        receiver = self.dealer("client", b"r" + token)
        sender = self.dealer("client", b"s" + token)
        return sender, receiver

    def ping(
        self,
        sender: zmq.Socket[Any],
        receiver: zmq.Socket[Any],
        timeout: float,
        check: Callable[[], None] | None = None,
    ) -> None:
        """A ping through ``sender`` answered on ``receiver``: the hub has read everything
        ``sender`` sent before (one connection keeps its order). ``check`` runs while
        waiting (e.g. that the hub is alive)."""
        sender.send(b"ping")
        deadline = time.monotonic() + timeout
        while True:
            if check is not None:
                check()
            assert time.monotonic() < deadline, f"the hub did not answer a ping within {timeout} s"
            if receiver.poll(100) and receiver.recv_multipart()[-1] == b"pong":
                return

    def request(
        self,
        key: bytes,
        *,
        msg_type: str = "apply_request",
        buffers: tuple[Any, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> list[Any]:
        """The frames of a request (head and buffers) signed with ``key``."""
        header = new_header(msg_type, self.session, "client")
        msg = Message(header, None, metadata or {}, {"fuzz": True}, buffers)
        return list(encode(msg, key))


@dataclass
class _Honest:
    """A client's honest traffic while something else goes on: every request checked."""

    client: Client
    done: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def once(self, i: int) -> None:
        """One load-balanced and one direct task, both checked."""
        try:
            ids = self.client.ids
            if not ids:
                self.errors.append(f"task {i}: no engine is registered (all lost)")
                return
            views = [self.client.load_balanced_view(), self.client[ids[i % len(ids)]]]
        except Exception as exc:  # recorded: the test fails on any
            self.errors.append(f"task {i}: {type(exc).__name__}: {exc}")
            return
        for view in views:
            try:
                value = view.apply_async(REMOTE["square"], i).get(timeout=30)
            except Exception as exc:  # recorded: the test fails on any
                self.errors.append(f"task {i} on {view!r}: {type(exc).__name__}: {exc}")
                continue
            if value != i * i:
                self.errors.append(f"task {i} on {view!r}: {value} instead of {i * i}")
            else:
                self.done += 1

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and not self.errors:  # the first error says it all
            self.once(i)
            i += 1


@contextlib.contextmanager
def _honest_traffic(client: Client) -> Iterator[_Honest]:
    """Honest tasks in a thread for the block's duration; the thread ends with it."""
    honest = _Honest(client)
    thread = threading.Thread(target=honest.run, name="honest-client", daemon=True)
    thread.start()
    try:
        yield honest
    finally:
        honest.stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the honest client's thread hung"


# -- 1. the hub acts on unverified envelopes ----------------------------------------------
def test_wrong_key_lb_requests_do_not_block_load_balancing(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """Load-balanced requests signed with a wrong key never hold up honest tasks."""
    with (
        hub(tmp_path, 2, "--timeout", "2.0") as (proc, client),
        Attacker(tmp_path) as attacker,
    ):
        sender, receiver = attacker.client_pair()
        wrong = generate_key()
        for _ in range(8):
            sender.send_multipart([b"lb", *attacker.request(wrong)])
        attacker.ping(sender, receiver, 30, lambda: _check_hub_alive(proc, tmp_path))
        lb = client.load_balanced_view()
        assert lb.apply_async(REMOTE["square"], 7).get(timeout=30) == 49
        wait_until(
            lambda: _outstanding(client) == 0,
            15,
            message=lambda: f"requests still outstanding: {client.queue_status()}",
        )
        _check_hub_alive(proc, tmp_path)


@pytest.mark.timeout(180)
def test_wrong_key_large_requests_are_not_kept(tmp_path: Path, hub: ClusterStarter) -> None:
    """Wrong-key requests with 256 MiB buffers leave the hub's memory where it was."""
    with (
        hub(tmp_path, 2, "--timeout", "2.0") as (proc, client),
        Attacker(tmp_path) as attacker,
    ):
        assert client.load_balanced_view().apply_async(REMOTE["square"], 2).get(30) == 4
        baseline = _rss(proc.pid)
        sender, receiver = attacker.client_pair()
        wrong = generate_key()
        big = bytearray(256 * MB)
        for _ in range(4):
            frames = attacker.request(wrong, buffers=(big,))
            sender.send_multipart([b"lb", *frames], copy=False)
        del frames, big  # zmq holds the buffer until it is sent
        attacker.ping(sender, receiver, 60, lambda: _check_hub_alive(proc, tmp_path))
        gc.collect()
        wait_until(
            lambda: _rss(proc.pid) <= baseline + RSS_SLACK,
            RSS_SETTLE,
            message=lambda: (
                f"the hub holds {_rss(proc.pid) // MB} MB, baseline {baseline // MB} MB"
            ),
        )
        _check_hub_alive(proc, tmp_path)


# -- 2. a binary identity kills the hub ---------------------------------------------------
@pytest.mark.parametrize(
    "identity", [None, b"\x00\xff\xfe\xfd\xfc"], ids=["zmq-default", "invalid-utf8"]
)
def test_binary_identity_does_not_kill_the_hub(
    tmp_path: Path, hub: ClusterStarter, identity: bytes | None
) -> None:
    """A sender whose identity is not text outlives its lease without ending the hub."""
    lease = 1.0
    with (
        hub(tmp_path, 2, "--timeout", "2.0", "--client-timeout", str(lease)) as (proc, client),
        Attacker(tmp_path) as attacker,
    ):
        attacker.dealer("client", identity).send_multipart([b"\xde\xad", b"\xbe\xef"])
        lb = client.load_balanced_view()
        ids = client.ids
        # Past twice the lease and the engines' heartbeat timeout: tasks keep running.
        end = time.monotonic() + 2 * lease + 3.0
        i = 0
        while time.monotonic() < end:
            _check_hub_alive(proc, tmp_path)
            try:
                value = lb.apply_async(REMOTE["square"], i).get(timeout=30)
            except HubLost as exc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)  # its traceback is written as it exits
                pytest.fail(f"HubLost: {exc}; the hub's log ends with:\n{_hub_log(tmp_path)}")
            assert value == i * i
            i += 1
        _check_hub_alive(proc, tmp_path)
        assert client.ids == ids


# -- 3. a many-frame message stalls the hub -----------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("port", ["client", "shell", "control", "heartbeat", "beat"])
def test_many_frame_message_does_not_stall_the_hub(
    tmp_path: Path, hub: ClusterStarter, port: str
) -> None:
    """One message of 10**6 tiny frames, on any of the hub's ports, costs no engine and
    no client its connection."""
    with (
        hub(tmp_path, 2, "--timeout", "2.0") as (proc, client),
        Attacker(tmp_path) as attacker,
    ):
        ids = client.ids
        if port == "client":
            sender, receiver = attacker.client_pair()
        else:
            sender = attacker.dealer(port, b"engine-" + uuid.uuid4().hex[:12].encode())
        for _ in range(10**6 - 1):
            sender.send(b"x", zmq.SNDMORE)
        sender.send(b"x")
        if port == "client":
            attacker.ping(sender, receiver, 60, lambda: _check_hub_alive(proc, tmp_path))
        honest = _Honest(client)
        end = time.monotonic() + 8.0  # several heartbeat timeouts
        i = 0
        while time.monotonic() < end and not honest.errors:
            honest.once(i)
            i += 1
        assert honest.errors == [], honest.errors[:3]
        _check_hub_alive(proc, tmp_path)
        assert client.ids == ids
        assert honest.done == 2 * i


# -- 4. a poison task takes the whole cluster ---------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("poison", ["segfault", "exit_now"])
def test_poison_task_kills_at_most_three_engines(
    tmp_path: Path, hub: ClusterStarter, poison: str
) -> None:
    """A task that kills every engine it runs on is given up after 3, whatever its retries."""
    with hub(tmp_path, 4, "--timeout", "2.0") as (proc, client):
        lb = client.load_balanced_view()
        lb.set_flags(retries=10)
        ar = lb.apply_async(REMOTE[poison])
        try:
            ar.get(timeout=60)
        except TimeoutError as exc:
            pytest.fail(f"{exc}; engines left: {client.ids}")
        except EngineDiedError as exc:
            err = exc
        else:
            pytest.fail(f"the {poison} task succeeded")
        killed_type = getattr(shoal.hub, "KilledEngineError", None)  # added by the fix
        assert killed_type is not None, f"no shoal.hub.KilledEngineError; got {err!r}"
        assert issubclass(killed_type, EngineDiedError)
        assert isinstance(err, killed_type), f"{type(err).__name__}: {err}"
        engine_ids = getattr(err, "engine_ids", None)
        assert isinstance(engine_ids, list), engine_ids
        assert len(engine_ids) == 3
        assert len(set(engine_ids)) == 3
        assert re.search(r"\b3 engines\b", str(err)), str(err)
        assert "retr" in str(err).lower(), str(err)
        _check_hub_alive(proc, tmp_path)
        wait_until(lambda: len(client.ids) == 1, 15, message=lambda: f"engines {client.ids}")
        assert not set(client.ids) & set(engine_ids)
        lb.set_flags(retries=0)
        assert lb.apply_async(REMOTE["square"], 3).get(timeout=30) == 9


def test_waiting_clients_are_told_no_engine_is_left(
    tmp_path: Path, hub: ClusterStarter, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that waits with no engine left is logged and shown; a new engine runs it."""
    caplog.set_level(logging.WARNING, logger="shoal.hub")
    with hub(tmp_path, 1, "--timeout", "2.0") as (proc, client):
        (engine_id,) = client.ids
        pid = client[engine_id].apply_async(REMOTE["pid"]).get(timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: client.ids == [], 30, message=lambda: f"engines {client.ids}")
        ar = client.load_balanced_view().apply_async(REMOTE["square"], 5)

        def told() -> bool:
            return any(
                r.name.startswith("shoal.hub")
                and r.levelno >= logging.WARNING
                and "no engine" in r.getMessage().lower()
                for r in list(caplog.records)
            )

        wait_until(told, 15, message=lambda: f"no warning says so; logged: {caplog.messages}")
        status: dict[Any, Any] = client.queue_status()
        assert status.get("no_engines") is True, status
        assert not ar.done()
        client.add_engines(1)
        assert ar.get(timeout=60) == 25
        _check_hub_alive(proc, tmp_path)


# -- 6. two rules for one thing -----------------------------------------------------------
# -- 5: the replay guard refuses honest traffic ------------------------------------------
@pytest.mark.timeout(300)
def test_requests_that_waited_behind_a_flood_still_run(tmp_path: Path, hub: ClusterStarter) -> None:
    """Finding 5: load-balanced tasks made first wait in the hub (after= a held task)
    while 70,000 direct requests pass through their engine; then they run, all of them
    (protocol 1's full signature history refused them as older than its floor)."""
    with hub(tmp_path, 2) as (_, rc):
        first, second = rc.ids
        flag = tmp_path / "release"
        lb = rc.load_balanced_view()

        def held(path: str) -> int:
            import os as _os
            import time as _time

            while not _os.path.exists(path):
                _time.sleep(0.01)
            return 1

        lb.set_flags(targets=[second])
        gate = lb.apply_async(held, str(flag))
        lb.set_flags(targets=[first], after=gate.msg_ids)
        waited = [lb.apply_async(pow, i, 2) for i in range(20)]
        lb.set_flags(after=[])
        direct = rc[first]
        n = 70_000
        for _ in range(n // 10_000):
            flood = [direct.apply_async(len, "x") for _ in range(10_000)]
            for ar in flood:
                assert ar.get(120) == 1
        flag.touch()
        assert gate.get(60) == 1
        assert [ar.get(60) for ar in waited] == [i**2 for i in range(20)]
        assert rc.hub_statistics()["shell"]["dropped"] == {}


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - refused without Curve unless insecure=True


def test_hub_refuses_all_interfaces_without_curve_or_insecure(tmp_path: Path) -> None:
    """``Hub(ip="0.0.0.0", curve=False)`` is refused like the command line refuses it."""
    made: list[Hub] = []
    try:
        with pytest.raises(InsecureBindError, match=r"(?i)insecure"):
            made.append(Hub(str(tmp_path / "hub"), ip=ALL_INTERFACES, curve=False))
    finally:
        for bound in made:  # it bound: close its sockets before failing
            bound.close()


def test_hub_on_all_interfaces_turns_curve_on(tmp_path: Path) -> None:
    """Beyond loopback, every connection file carries Curve keys, and each admits its
    holder only: the engines' and the clients' keypairs differ, the hub's secret stays."""
    hub = Hub(str(tmp_path / "hub"), ip=ALL_INTERFACES)
    try:
        assert hub.curve is not None
        engine = read_connection_file(hub.engine_file)
        client = read_connection_file(hub.client_file)
        assert engine.curve is not None
        assert client.curve is not None
        assert engine.curve.server_public == client.curve.server_public == hub.curve.public_key
        assert engine.curve.client_public != client.curve.client_public
        assert hub.curve.allowed == {engine.curve.client_public, client.curve.client_public}
        for path in (hub.engine_file, hub.client_file):
            text = Path(path).read_text()
            assert hub.curve.secret_key.decode() not in text
            assert os.stat(path).st_mode & 0o777 == 0o600
        assert engine.curve.client_secret.decode() not in Path(hub.client_file).read_text()
        assert client.curve.client_secret.decode() not in Path(hub.engine_file).read_text()
    finally:
        hub.close()


def test_cli_refusal_names_insecure(tmp_path: Path) -> None:
    """``shoal hub --ip 0.0.0.0 --no-curve`` exits non-zero and says how to allow it:
    ``--insecure``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.hub",
            "--ip",
            ALL_INTERFACES,
            "--no-curve",
            "--profile-dir",
            str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode != 0, text
    assert "--insecure" in text, text


def test_a_client_on_loopback_with_curve_reaches_engines_directly(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """``--curve`` on loopback: tasks run, and the engines' own sockets (Curve servers
    with the engines' keypair) take the client's requests directly."""
    with hub(tmp_path, 2, "--curve") as (_, rc):
        assert read_connection_file(rc.url_file).curve is not None
        assert rc[:].apply_sync(os.getpid) == [rc._engines[i]["pid"] for i in rc.ids]
        wait_until(lambda: rc.direct_url(rc.ids[0]) is not None and _direct_open(rc), timeout=30)
        before = rc.hub_statistics()["shell"]["received"]
        for _ in range(20):
            rc[0].apply_sync(os.getpid)
        assert rc.hub_statistics()["shell"]["received"] == before  # none went through the hub


def _direct_open(rc: Client) -> bool:
    rc[0].apply_sync(os.getpid)
    return bool(rc._transport._direct_senders)


# -- fuzz of the hub's receive path -------------------------------------------------------
FUZZ_SEED = int(os.environ.get("SHOAL_FUZZ_SEED", "20261205"))
_ROUTES = [b"lb", b"lbs", b"hub", b"ping", b"e0", b"e1", b"c0", b"c1", b"e99", b""]


class _Fuzz:
    """Hostile messages for the hub's four ports, from a seeded generator."""

    PORTS = ("client", "shell", "control", "heartbeat")

    def __init__(self, rng: random.Random, attacker: Attacker) -> None:
        self.rng = rng
        self.attacker = attacker
        self.wrong = generate_key()

    def identity(self) -> bytes | None:
        """zmq's default (``None``), zero-leading, client-like or any random bytes."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.2:
            return None  # zmq's: a zero byte and 4 random bytes
        raw = rng.randbytes(rng.randint(2, 32))
        if kind < 0.4:
            return b"\x00" + raw[1:]
        if kind < 0.7:
            return b"s" + raw  # looks like a client's sending socket
        return raw if raw[0] else b"\x01" + raw[1:]

    def junk(self, max_size: int = 256) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def mangled(self) -> list[Any]:
        """A real message signed with the right key, broken so that it cannot verify."""
        rng = self.rng
        sizes = [rng.choice([8, 64, 2 * MB]) for _ in range(rng.randint(1, 3))]
        buffers = tuple(rng.randbytes(n) for n in sizes)  # random: all distinct
        meta = {"retries": rng.randint(0, 2)}
        head, *bufs = self.attacker.request(self.attacker.key, buffers=buffers, metadata=meta)
        how = rng.randrange(6)
        if how == 0:  # the valid head on wrong buffers
            return [head, *(rng.randbytes(len(b)) for b in bufs)]
        if how == 1:  # a buffer missing
            return [head, *bufs[:-1]]
        if how == 2:  # a buffer too many
            return [head, *bufs, self.junk()]
        if how == 3:  # the head truncated
            return [head[: rng.randint(0, len(head) - 1)], *bufs]
        if how == 4:  # the buffers before the head
            return [*bufs, head]
        if len(bufs) > 1:  # first and last buffers swapped
            return [head, bufs[-1], *bufs[1:-1], bufs[0]]
        return [head, bufs[0][:-1]]

    def batch(self) -> list[Any]:
        """A batch of forged tasks, whose frame counts may lie."""
        rng = self.rng
        tasks = [self.attacker.request(self.wrong) for _ in range(rng.randint(1, 4))]
        counts = np.array([len(t) for t in tasks], dtype=np.uint32)
        if rng.random() < 0.5:
            counts[rng.randrange(len(counts))] = rng.choice([0, 1 << 31, 7])
        return [b"lbs", counts.tobytes(), *(f for t in tasks for f in t)]

    def small(self) -> tuple[str, bytes | None, list[Any]]:
        rng = self.rng
        port = rng.choice(self.PORTS)
        kind = rng.randrange(6)
        if kind == 0:
            frames = [self.junk() for _ in range(rng.randint(1, 8))]
        elif kind == 1:  # a garbage head after the delimiter
            frames = [b"<SHOAL|1>" + self.junk(400)]
            frames += [self.junk() for _ in range(rng.randint(0, 3))]
        elif kind == 2:
            frames = self.mangled()
        elif kind == 3:  # the right layout, a wrong key
            frames = self.attacker.request(self.wrong, buffers=(self.junk(),) * rng.randint(0, 2))
        elif kind == 4:
            return "client", self.identity(), self.batch()
        else:
            frames = [b"x"] * rng.randint(1, 5000)
        if port == "client" and rng.random() < 0.8:
            frames = [rng.choice(_ROUTES), *frames]
        return port, self.identity(), frames

    def messages(self, n: int) -> Iterator[tuple[str, bytes | None, list[Any]]]:
        """(port, identity, frames): ``n`` small messages, then the big ones."""
        rng = self.rng
        for _ in range(n):
            yield self.small()
        yield rng.choice(self.PORTS), self.identity(), [b"x"] * 10**6
        yield rng.choice(self.PORTS), self.identity(), [b"y"] * 10**5
        head = self.attacker.request(self.attacker.key, buffers=(rng.randbytes(64),))[0]
        sender = b"s" + uuid.uuid4().hex[:16].encode()
        yield "client", sender, [b"lb", head, bytearray(256 * MB)]  # valid head, wrong buffer
        yield rng.choice(self.PORTS[1:]), self.identity(), [b"<SHOAL|1>", bytearray(64 * MB)]


@pytest.mark.timeout(180)
def test_fuzz_the_hub_receive_path(tmp_path: Path, hub: ClusterStarter) -> None:
    """Hostile frames on every port of the hub end no process and delay no honest task."""
    rng = random.Random(FUZZ_SEED)
    with hub(tmp_path, 2, "--timeout", "2.0") as (proc, client):
        ids = client.ids
        engine_pids = [v["pid"] for k, v in client.queue_status().items() if isinstance(k, int)]
        assert client.load_balanced_view().apply_async(REMOTE["square"], 1).get(30) == 1
        baseline = _rss(proc.pid)
        attacker = Attacker(tmp_path)
        try:
            with _honest_traffic(client) as honest:
                sockets: dict[tuple[str, bytes | None], zmq.Socket[Any]] = {}
                sent = 0
                start = time.monotonic()
                for port, ident, frames in _Fuzz(rng, attacker).messages(240):
                    sock = sockets.get((port, ident)) if ident is not None else None
                    if sock is None:
                        sock = attacker.dealer(port, ident)
                        if ident is not None:
                            sockets[port, ident] = sock
                    if len(frames) > 1000:
                        for frame in frames[:-1]:
                            sock.send(frame, zmq.SNDMORE, copy=len(frame) < MB)
                        sock.send(frames[-1], copy=len(frames[-1]) < MB)
                    else:
                        sock.send_multipart(frames)
                    sent += 1
                del frames
                sending = time.monotonic() - start
                # Everything queued reaches the hub (bounded), then it answers a ping.
                attacker.close(linger=60_000)
                attacker = Attacker(tmp_path)
                sender, receiver = attacker.client_pair()
                attacker.ping(sender, receiver, 60, lambda: _check_hub_alive(proc, tmp_path))
                gc.collect()
                # Honest traffic goes on a while after the fuzz: the hub still serves.
                before = honest.done
                wait_until(
                    lambda: honest.done >= before + 10 or bool(honest.errors),
                    60,
                    message=lambda: f"honest tasks stalled at {honest.done}",
                )
            took = time.monotonic() - start
            print(
                f"fuzz seed {FUZZ_SEED}: {sent} messages sent in {sending:.1f} s, read in"
                f" {took:.1f} s; {honest.done} honest tasks meanwhile; the hub's drops:"
                f" {client.hub_statistics()}"
            )
            assert honest.errors == [], honest.errors[:5]
            _check_hub_alive(proc, tmp_path)
            drops = client.hub_statistics()
            refused = sum(sum(s["dropped"].values()) for s in drops.values())
            assert refused >= sent // 2, f"only {refused} of {sent} messages counted: {drops}"
            assert client.ids == ids
            assert all(process_alive(p) for p in engine_pids)
            wait_until(
                lambda: _rss(proc.pid) <= baseline + RSS_SLACK,
                RSS_SETTLE,
                message=lambda: (
                    f"the hub holds {_rss(proc.pid) // MB} MB, baseline {baseline // MB} MB"
                ),
            )
            wait_until(
                lambda: _outstanding(client) == 0,
                15,
                message=lambda: f"requests still outstanding: {client.queue_status()}",
            )
        finally:
            attacker.close()


# -- chaos --------------------------------------------------------------------------------
CHAOS_SECONDS = 30.0


@dataclass
class _Chaos:
    """What a chaos run saw."""

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0  # with a clear error naming the engine
    kills: int = 0
    hung: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    # task id -> msg_id of the tasks without retries that failed
    failed_without_retries: dict[int, str] = field(default_factory=dict)
    succeeded_tasks: dict[int, int] = field(default_factory=dict)  # task id -> its retries

    def summary(self, twice: int, completed_yet_failed: int) -> str:
        return (
            f"chaos: {self.submitted} submitted, {self.succeeded} succeeded,"
            f" {self.failed} failed with a clear error, {len(self.hung)} hung,"
            f" {len(self.wrong)} wrong, {twice} run too often, {completed_yet_failed} completed"
            f" yet reported failed without retries; {self.kills} engines killed"
        )


def _engine_process(pid: int) -> bool:
    """Whether ``pid`` is a live shoal engine (so that a reused pid is never killed)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"shoal.engine" in f.read() and process_alive(pid)
    except FileNotFoundError:
        return False


def _clear(exc: BaseException) -> bool:
    """An engine death told as such, naming the engine."""
    return isinstance(exc, EngineDiedError) and re.search(r"\bengines? \[?\d", str(exc)) is not None


class _ChaosRun:
    """Small load-balanced tasks and 8 MiB pushes while a thread SIGKILLs engines and
    asks the hub for replacements; every outcome sorted."""

    def __init__(self, client: Client, markers: Path, seed: int) -> None:
        self.client = client
        self.markers = markers
        self.rng = random.Random(seed)
        self.kill_rng = random.Random(seed + 1)  # the killer's own: runs stay reproducible
        self.chaos = _Chaos()
        self.stop = threading.Event()
        self.kill_errors: list[str] = []
        self.lb = {0: client.load_balanced_view(), 2: client.load_balanced_view()}
        self.lb[2].set_flags(retries=2)
        self.end = 0.0  # when the run ends, also for the killer

    def killer(self) -> None:
        """SIGKILL a random engine every 0.5-1.5 s, and ask for a replacement."""
        client = self.client
        while not self.stop.wait(self.kill_rng.uniform(0.5, 1.5)) and time.monotonic() < self.end:
            ids = client.ids
            if len(ids) < 2:
                continue
            victim = self.kill_rng.choice(ids)
            try:
                pid = client[victim].apply_async(REMOTE["pid"]).get(timeout=30)
            except (EngineDiedError, IndexError, TimeoutError):
                continue
            if not _engine_process(pid):
                continue
            os.kill(pid, signal.SIGKILL)
            self.chaos.kills += 1
            try:
                client.add_engines(1)
            except Exception as exc:  # recorded: the test fails on it
                self.kill_errors.append(f"add_engines: {type(exc).__name__}: {exc}")

    def settle(self, task_id: int, ar: Any, x: int, retries: int, deadline: float) -> None:
        chaos = self.chaos
        try:
            value = ar.get(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError as exc:
            chaos.hung.append(f"task {task_id} (retries={retries}): {exc}; {self.books(ar)}")
        except Exception as exc:
            if not _clear(exc):
                chaos.wrong.append(f"task {task_id}: {type(exc).__name__}: {exc}")
                return
            chaos.failed += 1
            if retries == 0:
                chaos.failed_without_retries[task_id] = ar.msg_ids[0]
        else:
            if value != x * x:
                chaos.wrong.append(f"task {task_id}: {value!r} instead of {x * x}")
                return
            chaos.succeeded += 1
            chaos.succeeded_tasks[task_id] = retries

    def books(self, ar: Any) -> str:
        """What the hub knows of a hung request, for the failure message."""
        try:
            return f"hub history {self.client.history(ar.msg_ids)}, {self.client.queue_status()}"
        except Exception as exc:
            return f"the hub does not say ({type(exc).__name__}: {exc})"

    def push_pull(self, n: int) -> None:
        """8 MiB to one engine and back, checked."""
        chaos = self.chaos
        a = np.full(MB, float(n))
        chaos.submitted += 1
        try:
            view = self.client[self.rng.choice(self.client.ids)]
            view.push({"a": a}).get(timeout=60)
            got = view.pull("a").get(timeout=60)
        except TimeoutError as exc:
            chaos.hung.append(f"push {n}: {exc}")
        except Exception as exc:
            if _clear(exc) or isinstance(exc, IndexError):  # IndexError: no engine now
                chaos.failed += 1
            else:
                chaos.wrong.append(f"push {n}: {type(exc).__name__}: {exc}")
        else:
            if np.array_equal(got, a):
                chaos.succeeded += 1
            else:
                chaos.wrong.append(f"push {n}: pulled something else")

    def run(self, seconds: float) -> None:
        """Batches of 8 tasks (30 % with retries=2), a push now and then, for ``seconds``."""
        rng = self.rng
        self.end = time.monotonic() + seconds
        thread = threading.Thread(target=self.killer, name="chaos-killer", daemon=True)
        thread.start()
        try:
            task_id = 0
            while time.monotonic() < self.end:
                batch = []
                for _ in range(8):
                    retries = 2 if rng.random() < 0.3 else 0
                    x = rng.randint(0, 1000)
                    work = rng.uniform(0.01, 0.05)
                    ar = self.lb[retries].apply_async(
                        REMOTE["marked"], task_id, x, str(self.markers), work
                    )
                    batch.append((task_id, ar, x, retries))
                    self.chaos.submitted += 1
                    task_id += 1
                if rng.random() < 0.3:
                    self.push_pull(task_id)
                deadline = time.monotonic() + 60
                for args in batch:
                    self.settle(*args, deadline)
                if self.chaos.hung:
                    break  # it is said; the rest would only wait out more timeouts
        finally:
            self.stop.set()
            thread.join(60)
        assert not thread.is_alive(), "the killer thread hung"


@pytest.mark.timeout(180)
def test_chaos_engines_killed_under_load(tmp_path: Path, hub: ClusterStarter) -> None:
    """Engines SIGKILLed at random under load: nothing hangs, is wrong or runs more often
    than its retries allow (once without retries)."""
    markers = tmp_path / "markers.txt"
    markers.touch()
    folder = tmp_path / "cluster"
    with hub(folder, 4, "--timeout", "2.0") as (proc, client):
        run = _ChaosRun(client, markers, FUZZ_SEED + 1)
        run.run(CHAOS_SECONDS)
        chaos = run.chaos
        counts: dict[int, int] = {}
        for line in markers.read_text(encoding="ascii").split():
            counts[int(line)] = counts.get(int(line), 0) + 1
        # A task with retries runs again when its engine died under it, which may be after
        # it wrote its marker and before it replied; one without retries never runs twice.
        twice = sorted(t for t, r in chaos.succeeded_tasks.items() if counts.get(t, 0) > 1 + r)
        # A task that ran (its marker is there) and failed: its engine may have died after
        # the marker and before the reply (fine), but the hub must not have booked a reply.
        ran = {t: m for t, m in chaos.failed_without_retries.items() if t in counts}
        books = dict(zip(ran, client.history(list(ran.values())), strict=True))
        completed_yet_failed = sorted(
            t for t, record in books.items() if record is not None and record["status"] == "ok"
        )
        print(chaos.summary(len(twice), len(completed_yet_failed)))
        assert run.kill_errors == []
        assert chaos.hung == [], chaos.hung[:5]
        assert chaos.wrong == [], chaos.wrong[:5]
        assert twice == [], twice[:10]
        assert completed_yet_failed == [], completed_yet_failed[:10]
        assert chaos.submitted == chaos.succeeded + chaos.failed
        assert chaos.kills > 0
        _check_hub_alive(proc, folder)
