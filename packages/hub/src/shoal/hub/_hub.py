"""The hub process: engines register with it; clients reach engines through it.

Theory of operation
-------------------
One thread, one ``zmq.Poller`` over five sockets, all bound on loopback by default:

* ``client`` (ROUTER): every client connects two DEALERs, ``s<token>`` to send requests
  (used by the client's calling threads) and ``r<token>`` to receive (its I/O thread).
  The hub answers a message from ``s<token>`` to ``r<token>``.
* ``shell``, ``control``, ``heartbeat`` (ROUTERs): every engine's three DEALERs.

A client message is ``[route, head, *buffers]``; ``route`` says where it goes:
``e<id>`` (an engine's shell), ``c<id>`` (its control), ``lb`` (the load-balanced
scheduler), ``hub`` (a request to the hub itself) or ``ping`` (answered ``pong``).
The hub forwards ``[engine, client, head, *buffers]``; the engine answers with the
client's identity in front, and the hub passes ``[client, e<id>, head, *buffers]`` on.
Relayed messages are never loaded nor verified here (their destination verifies them):
the hub reads only their envelope (:func:`shoal.wire.peek`) to keep its books --
who waits for what, on which engine -- and it holds a request's frames (references, not
copies) only while the request is outstanding, for retries. Hub requests and engine
registrations are verified in full.

Liveness: the hub pings every engine each ``period`` seconds; an engine that has not
echoed for ``timeout`` seconds, whose socket is gone (``ROUTER_MANDATORY`` makes a send
to it fail) or whose process (when the hub started it) ended is declared dead. Its
outstanding requests are answered with ``EngineDiedError`` naming the engine and the
cause, or -- load-balanced tasks with retries left -- run elsewhere. A late reply from
an engine declared dead is dropped, and that engine is told to shut down.
"""

from __future__ import annotations

import argparse
import array
import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import zmq

from shoal.wire import (
    Codec,
    ConnectionInfo,
    Header,
    Message,
    RemoteInputError,
    generate_key,
    new_header,
    peek,
    sweep_shared_memory,
    write_connection_file,
)

from ._profile import CLIENT_FILE, ENGINE_FILE, profile_dir
from ._store import HistoryStore

__all__ = ["Hub", "main"]

log = logging.getLogger("shoal.hub")

HUB = b"hub"
LB = b"lb"
LB_BATCH = b"lbs"  # [lbs, frame counts (uint32 each), task 1's frames, task 2's, ...]
PING = b"ping"
PONG = b"pong"


def engine_route(engine_id: int) -> bytes:
    return b"e%d" % engine_id


def control_route(engine_id: int) -> bytes:
    return b"c%d" % engine_id


def _send(sock: zmq.Socket[Any], to: bytes, frames: list[Any]) -> None:
    """``[to, *frames]`` as one message; frames go without a copy. A loop of ``send``
    calls costs half of ``send_multipart``."""
    send = sock.send
    send(to, _SNDMORE)
    for frame in frames[:-1]:
        send(frame, _SNDMORE, copy=False)
    send(frames[-1], 0, copy=False)


_SNDMORE = int(zmq.SNDMORE)


_Record = tuple[int | None, str, float, float | None, float | None]


def _as_dict(msg_id: str, record: _Record) -> dict[str, Any]:
    engine_id, status, submitted, started, completed = record
    return {
        "msg_id": msg_id,
        "engine_id": engine_id,
        "status": status,
        "submitted": submitted,
        "started": started,
        "completed": completed,
    }


class _Task:
    """A request in flight or waiting: its frames and what the hub knows about it.

    The head frame is kept as a copy: a received zmq frame can pin the whole receive
    buffer it was decoded from, which multiplies the memory of a long queue.
    """

    __slots__ = (
        "after",
        "client",
        "engine",
        "excluded",
        "follow",
        "frames",
        "lb",
        "msg_id",
        "retries",
        "submitted",
        "targets",
    )

    def __init__(self, client: bytes, frames: list[Any], msg_id: str, lb: bool) -> None:
        self.client = client
        self.frames = [frames[0].bytes, *frames[1:]]  # head copied; buffers referenced
        self.msg_id = msg_id
        self.lb = lb
        self.engine: int | None = None
        self.submitted = time.time()
        self.retries = 0
        self.targets: set[int] | None = None
        self.after: list[str] = []
        self.follow: list[str] = []
        self.excluded: set[int] = set()

    @property
    def header(self) -> list[Any]:
        """The request's header, read again from its head (needed only to answer it)."""
        return peek(self.frames[0])[0]


class _Engine:
    __slots__ = (
        "direct_url",
        "hostname",
        "id",
        "ident",
        "last_beat",
        "outstanding",
        "pid",
        "proc",
        "ready",
    )

    def __init__(self, engine_id: int, ident: bytes, pid: int, hostname: str) -> None:
        self.id = engine_id
        self.ident = ident
        self.pid = pid
        self.hostname = hostname
        self.proc: subprocess.Popen[bytes] | None = None
        self.direct_url: str | None = None
        self.outstanding: dict[str, _Task] = {}
        self.last_beat = time.monotonic()
        self.ready = False


class Hub:
    """The hub: registration, routing, load balancing, liveness and task history.

    Parameters
    ----------
    folder : str
        Where the connection files go (``hub-client.json``, ``hub-engine.json``, 0600).
    ip : str
        Interface to bind; loopback by default.
    period, timeout : float
        Heartbeat period, and how long an engine may stay silent before it is declared
        dead (an engine busy in C code still answers: its echo runs without the GIL).
    hwm : int
        Load-balanced tasks an engine may hold at once (running and queued).
    history : int
        How many finished tasks' metadata are remembered.
    parent_pid : int, optional
        Shut down when this process is no longer the hub's parent.
    store : {"sqlite"}, optional
        Also keep the task history in ``<folder>/history.sqlite``, across hub restarts.
    client_timeout : float
        A client's lease: when it has not pinged for this long (it died, or lost its
        connection), every engine frees the objects it held.
    """

    def __init__(
        self,
        folder: str,
        *,
        ip: str = "127.0.0.1",
        period: float = 0.2,
        timeout: float = 2.0,
        hwm: int = 2,
        history: int = 100_000,
        parent_pid: int | None = None,
        engine_log_level: str = "WARNING",
        store: str | None = None,
        client_timeout: float = 10.0,
    ) -> None:
        if hwm < 1:
            raise ValueError(f"hwm must be at least 1 task per engine, got {hwm}")
        self.folder = folder
        self.period = period
        self.timeout = timeout
        self.client_timeout = client_timeout
        self.hwm = hwm
        self.parent_pid = parent_pid
        self.engine_log_level = engine_log_level
        self.key = generate_key()
        self.codec = Codec(self.key)
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        urls: dict[str, str] = {}
        for name in ("client", "shell", "control", "heartbeat"):
            sock = self.context.socket(zmq.ROUTER)
            sock.linger = 0
            sock.router_mandatory = True  # a send to a gone peer fails, never vanishes
            sock.sndhwm = 0  # never block the hub on a slow reader, never drop
            port = sock.bind_to_random_port(f"tcp://{ip}")
            urls[name] = f"tcp://{ip}:{port}"
            self.sockets[name] = sock
        self.urls = urls
        self.engines: dict[int, _Engine] = {}
        self.by_ident: dict[bytes, _Engine] = {}
        self.routes: dict[bytes, _Engine] = {}  # b"e<id>" -> a ready engine
        self.dead: set[bytes] = set()  # identities of engines declared dead
        self.next_id = 0
        self.clients: dict[bytes, float] = {}  # receive identity -> last heard
        self.pending: collections.deque[_Task] = collections.deque()  # lb, ready to run
        self.waiting: dict[str, _Task] = {}  # lb, dependencies not met yet
        # msg_id -> (engine_id, status, submitted, started, completed): a tuple costs a
        # quarter of a dict, and the history holds up to `history` of them.
        self.history: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self.history_size = history
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # engines this hub started
        self.started = time.time()
        self._stopping = False
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if store not in (None, "sqlite"):
            raise ValueError(f"store must be None or 'sqlite', got {store!r}")
        self.store = None if store is None else HistoryStore(os.path.join(folder, "history.sqlite"))
        extra = {"pid": os.getpid(), "started": self.started}
        self.client_file = os.path.join(folder, CLIENT_FILE)
        self.engine_file = os.path.join(folder, ENGINE_FILE)
        engine_urls = {k: urls[k] for k in ("shell", "control", "heartbeat")}
        write_connection_file(self.engine_file, ConnectionInfo(engine_urls, self.key))
        client_info = ConnectionInfo({"client": urls["client"]}, self.key, extra=extra)
        write_connection_file(self.client_file, client_info)

    # -- engines this hub starts --------------------------------------------------------
    def launch(self, n: int) -> list[int]:
        """Start ``n`` local engine processes; returns their pids (they register later)."""
        pids = []
        for _ in range(n):
            cmd = [
                sys.executable,
                "-m",
                "shoal.engine",
                "--connection-file",
                self.engine_file,
                "--register",
                "--direct",
                "--parent-pid",
                str(os.getpid()),
                "--log-level",
                self.engine_log_level,
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - our module
            self.procs[proc.pid] = proc
            pids.append(proc.pid)
        return pids

    # -- main loop ----------------------------------------------------------------------
    def serve(self) -> int:
        """Route until shut down; returns the exit code."""
        sweep_shared_memory()  # what an earlier cluster's SIGKILLed processes left
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        poller = zmq.Poller()
        handlers = {
            self.sockets["client"]: self._on_client,
            self.sockets["shell"]: self._on_shell,
            self.sockets["control"]: self._on_control,
            self.sockets["heartbeat"]: self._on_heartbeat,
        }
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        # A child engine's death wakes the poll at once (SIGCHLD through a wakeup fd),
        # instead of waiting for the next heartbeat tick.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller.register(wake_r.fileno(), zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stopping:
                wait = max(0.0, next_beat - time.monotonic())
                for sock, _ in poller.poll(int(wait * 1000) + 1):
                    if sock == wake_r.fileno():
                        with contextlib.suppress(BlockingIOError):
                            wake_r.recv(4096)
                        self._check_children()
                        continue
                    handler = handlers[sock]
                    for _ in range(64):  # drain a burst before looking elsewhere
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            handler(frames)
                        except Exception:  # one bad message must not end the hub
                            log.exception("failed to handle a message")
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.period
                    self._beat()
        finally:
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()
            self._shutdown_engines()
            self._close()
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    # -- clients ------------------------------------------------------------------------
    def _on_client(self, frames: list[Any]) -> None:
        if len(frames) < 3:
            if len(frames) == 2 and frames[1].bytes == PING:
                client = self._reply_to(frames[0].bytes)
                self.clients[client] = time.monotonic()  # the lease goes on
                self._to_client(client, [PONG])
            return
        reply_to = self._reply_to(frames[0].bytes)
        route = frames[1].bytes
        msg = frames[2:]
        if route == HUB:
            self._hub_request(reply_to, msg)
            return
        if route == LB_BATCH:
            self._lb_batch(reply_to, msg)
            return
        try:
            header, _parent, metadata = peek(msg[0])
        except RemoteInputError as exc:
            log.warning("dropped a client message: %s", exc)
            return
        engine = self.routes.get(route)
        if engine is not None:  # the hot path: a request for one engine's shell
            task = _Task(reply_to, msg, header[0], lb=False)
            task.engine = engine.id
            engine.outstanding[task.msg_id] = task
            self._to_engine(engine, "shell", [reply_to, *msg])
        elif route == LB:
            self._lb_submit(_Task(reply_to, msg, header[0], lb=True), metadata)
        elif route[:1] == b"c" and route[1:].isdigit() and int(route[1:]) in self.engines:
            self._to_engine(self.engines[int(route[1:])], "control", [reply_to, *msg])
        elif route[:1] in (b"e", b"c") and route[1:].isdigit():
            known = sorted(self.engines)
            why = f"engine {int(route[1:])} is not registered (known: {known})"
            self._fail(reply_to, header, ("EngineDiedError", why), route)
        else:
            self._fail(reply_to, header, ("ValueError", f"unknown route {route!r}"), HUB)

    def _reply_to(self, sender: bytes) -> bytes:
        """The receiving socket of the client whose sending socket is ``sender``."""
        reply_to = b"r" + sender[1:]
        if reply_to not in self.clients:
            self.clients[reply_to] = time.monotonic()
        return reply_to

    def _to_client(self, client: bytes, frames: list[Any]) -> None:
        try:
            _send(self.sockets["client"], client, frames)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
            self.codec.discard(frames)  # its shared memory, which it will never open
            if client in self.clients:
                self._client_gone(client, str(exc))

    def _to_engine(self, engine: _Engine, channel: str, frames: list[Any]) -> bool:
        try:
            _send(self.sockets[channel], engine.ident, frames)
        except zmq.ZMQError as exc:
            self._engine_lost(engine, f"its {channel} connection is gone ({exc.strerror})")
            return False
        return True

    def _send_hub_msg(
        self,
        client: bytes,
        msg_type: str,
        content: Any,
        *,
        parent: list[Any] | None = None,
        route: bytes = HUB,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        header = new_header(msg_type, "hub", "hub")
        parent_header = None if parent is None else Header._make(parent)
        frames = self.codec.encode(Message(header, parent_header, metadata or {}, content))
        self._to_client(client, [route, *frames])

    def _fail(
        self,
        client: bytes,
        request: list[Any],
        error: tuple[str, str],
        route: bytes,
        engine_id: int | None = None,
    ) -> None:
        """Answer a request on the engine's behalf with an error reply."""
        ename, evalue = error
        content = {
            "status": "error",
            "ename": ename,
            "evalue": evalue,
            "traceback": "",
            "engine_id": engine_id,
            "exception": None,
        }
        reply_type = str(request[1]).replace("_request", "_reply")
        meta = {"engine_id": engine_id, "status": "error", "started": None, "completed": None}
        self._send_hub_msg(client, reply_type, content, parent=request, route=route, metadata=meta)
        self._record(str(request[0]), engine_id, "error", time.time())

    # -- load balancing -----------------------------------------------------------------
    def _lb_batch(self, client: bytes, frames: list[Any]) -> None:
        """Load-balanced tasks a client sent together: each is queued as if sent alone."""
        counts = array.array("I", frames[0].bytes)
        if sum(counts) != len(frames) - 1 or 0 in counts:
            log.warning("dropped a task batch whose frame counts do not add up")
            return
        at = 1
        for n in counts:
            task_frames = frames[at : at + n]
            at += n
            try:
                header, _parent, metadata = peek(task_frames[0])
            except RemoteInputError as exc:
                log.warning("dropped a task of a batch: %s", exc)
                continue
            task = _Task(client, task_frames, header[0], lb=True)
            self._lb_submit(task, metadata, dispatch=False)
        self._dispatch()

    def _lb_submit(self, task: _Task, metadata: dict[str, Any], *, dispatch: bool = True) -> None:
        try:
            task.retries = int(metadata.get("retries", 0))
            targets = metadata.get("targets")
            task.targets = None if targets is None else {int(t) for t in targets}
            task.after = [str(m) for m in metadata.get("after", ())]
            task.follow = [str(m) for m in metadata.get("follow", ())]
        except (TypeError, ValueError) as exc:
            self._fail(task.client, task.header, ("ValueError", f"bad task metadata: {exc}"), LB)
            return
        if task.after or task.follow:
            self.waiting[task.msg_id] = task
            self._check_waiting()
        else:
            self.pending.append(task)
        if dispatch:
            self._dispatch()

    def _check_waiting(self) -> None:
        """Move tasks whose dependencies finished to ``pending``; fail impossible ones."""
        for msg_id, task in list(self.waiting.items()):
            verdict = self._dependencies(task)
            if verdict is None:
                continue
            del self.waiting[msg_id]
            if verdict:
                self._fail(task.client, task.header, ("DependencyError", verdict), LB)
            else:
                self.pending.append(task)

    def _dependencies(self, task: _Task) -> str | None:
        """None while a dependency still runs, "" when all met, else why never."""
        where: set[int] = set()
        for dep in (*task.after, *task.follow):
            record = self.history.get(dep)
            if record is None:
                if self._in_flight(dep):
                    return None
                return f"dependency {dep} is not a task this hub knows"
            if record[1] != "ok":
                return f"dependency {dep} did not succeed ({record[1]})"
        for dep in task.follow:
            engine = self.history[dep][0]
            if engine is None:
                return f"follow= names {dep}, which ran on no engine"
            where.add(engine)
        if len(where) > 1:
            return f"follow= names tasks that ran on different engines {sorted(where)}"
        if where:
            (engine_id,) = where
            if engine_id not in self.engines:
                return f"follow= needs engine {engine_id}, which is gone"
            task.targets = {engine_id} if task.targets is None else task.targets & {engine_id}
            if not task.targets:
                return "follow= and targets= leave no engine"
        return ""

    def _in_flight(self, msg_id: str) -> bool:
        if msg_id in self.waiting:
            return True
        if any(t.msg_id == msg_id for t in self.pending):
            return True
        return any(msg_id in e.outstanding for e in self.engines.values())

    def _dispatch(self) -> None:
        """Hand pending tasks to the least loaded engines that may take them."""
        if not self.pending:
            return
        engines = [e for e in self.engines.values() if e.ready]
        if not engines:
            return
        hwm = self.hwm
        skipped: list[_Task] = []
        while self.pending:
            free = [e for e in engines if len(e.outstanding) < hwm]
            if not free:
                break
            task = self.pending.popleft()
            eligible = [
                e
                for e in free
                if (task.targets is None or e.id in task.targets) and e.id not in task.excluded
            ]
            if not eligible:
                if not self._could_run(task, engines):
                    why = "no engine left that may run it"
                    self._fail(task.client, task.header, ("EngineDiedError", why), LB)
                else:
                    skipped.append(task)  # its engines are busy; let others pass
                continue
            engine = min(eligible, key=lambda e: len(e.outstanding))
            task.engine = engine.id
            engine.outstanding[task.msg_id] = task
            self._to_engine(engine, "shell", [task.client, *task.frames])
        self.pending.extendleft(reversed(skipped))

    def _could_run(self, task: _Task, engines: list[_Engine]) -> bool:
        for e in engines:
            if (task.targets is None or e.id in task.targets) and e.id not in task.excluded:
                return True
        return False

    # -- engines ------------------------------------------------------------------------
    def _on_shell(self, frames: list[Any]) -> None:
        ident = frames[0].bytes
        engine = self.by_ident.get(ident)
        if engine is None:
            self._stray(ident)
            return
        if frames[1].bytes[:1] == b"<":  # addressed to the hub: the engine's hello
            try:
                msg = self.codec.decode(frames[1:])
            except RemoteInputError as exc:
                log.warning("dropped an engine message: %s", exc)
                return
            if msg.msg_type == "engine_ready":
                self._engine_ready(engine)
            return
        client = frames[1].bytes
        relayed = frames[2:]
        try:
            header, parent, metadata = peek(relayed[0])
        except RemoteInputError as exc:
            log.warning("dropped an engine message: %s", exc)
            return
        if header[1] != "stream" and parent is not None:
            task = engine.outstanding.pop(parent[0], None)
            status = metadata.get("status")
            if task is not None:
                if task.lb and status == "error" and task.retries > 0:
                    task.retries -= 1  # ipyparallel's retries: run again, elsewhere if possible
                    task.excluded.add(engine.id)
                    if not self._could_run(task, [e for e in self.engines.values() if e.ready]):
                        task.excluded.clear()
                    task.engine = None
                    self.pending.appendleft(task)
                    self._dispatch()
                    return
                self._record(
                    task.msg_id,
                    engine.id,
                    str(status),
                    task.submitted,
                    (metadata.get("started"), metadata.get("completed")),
                )
                if task.lb:
                    self._dispatch()
                if self.waiting:
                    self._check_waiting()
                    self._dispatch()
        self._to_client(client, [engine_route(engine.id), *relayed])

    def _on_control(self, frames: list[Any]) -> None:
        ident = frames[0].bytes
        if frames[1].bytes[:1] != b"<":  # a control reply for a client
            engine = self.by_ident.get(ident)
            if engine is not None:
                self._to_client(frames[1].bytes, [control_route(engine.id), *frames[2:]])
            return
        try:
            msg = self.codec.decode(frames[1:])
        except RemoteInputError as exc:
            log.warning("dropped an engine message: %s", exc)
            return
        if msg.msg_type == "register_request":
            self._register(ident, msg)
        elif msg.msg_type == "history_report":  # requests clients sent the engine directly
            engine = self.by_ident.get(ident)
            tasks = msg.content.get("tasks", ()) if isinstance(msg.content, dict) else ()
            for msg_id, status, submitted, started, completed in tasks:
                engine_id = None if engine is None else engine.id
                self._record(str(msg_id), engine_id, str(status), submitted, (started, completed))

    def _register(self, ident: bytes, msg: Message) -> None:
        content = msg.content if isinstance(msg.content, dict) else {}
        reply: dict[str, Any]
        if ident in self.by_ident or ident in self.dead:
            reply = {"status": "error", "evalue": f"identity {ident!r} is already taken"}
        else:
            engine_id = self.next_id
            self.next_id += 1  # ids are never reused within a hub's life
            engine = _Engine(
                engine_id, ident, int(content.get("pid", 0)), str(content.get("hostname", ""))
            )
            engine.proc = self.procs.get(engine.pid)
            url = content.get("direct_url")
            engine.direct_url = url if isinstance(url, str) else None
            self.engines[engine_id] = engine
            self.by_ident[ident] = engine
            reply = {"status": "ok", "engine_id": engine_id, "hub_timeout": self.timeout + 0.5}
            log.info("engine %d registered (pid %s on %s)", engine_id, engine.pid, engine.hostname)
        header = new_header("register_reply", "hub", "hub")
        frames = self.codec.encode(Message(header, msg.header, {}, reply))
        with contextlib.suppress(zmq.ZMQError):
            self.sockets["control"].send_multipart([ident, *frames])

    def _engine_ready(self, engine: _Engine) -> None:
        if engine.ready:
            return
        engine.ready = True
        engine.last_beat = time.monotonic()
        self.routes[engine_route(engine.id)] = engine
        for client in list(self.clients):
            self._send_hub_msg(client, "engine_registered", self._engine_info(engine))
        self._dispatch()

    def _on_heartbeat(self, frames: list[Any]) -> None:
        engine = self.by_ident.get(frames[0].bytes)
        if engine is not None:
            engine.last_beat = time.monotonic()

    def _beat(self) -> None:
        """Ping every engine; declare dead those that stopped answering or ended."""
        now = time.monotonic()
        heart = self.sockets["heartbeat"]
        self._check_children()
        for engine in list(self.engines.values()):
            if now - engine.last_beat > self.timeout:
                self._engine_lost(
                    engine, f"it did not answer heartbeats for {now - engine.last_beat:.1f} s"
                )
                continue
            try:
                heart.send_multipart([engine.ident, b"ping"])
            except zmq.ZMQError:
                # Its process is ending (the kernel closed its sockets): say how, if ours.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if engine.proc is not None:
                        engine.proc.wait(0.5)
                if engine.proc is not None and engine.proc.returncode is not None:
                    self._check_children()
                else:
                    self._engine_lost(engine, "its heartbeat connection is gone")
        for client, heard in list(self.clients.items()):
            if now - heard > self.client_timeout:
                self._client_gone(client, f"silent for {now - heard:.1f} s")
        for pid, proc in list(self.procs.items()):  # reap engines that never registered
            if proc.poll() is not None and not any(e.pid == pid for e in self.engines.values()):
                del self.procs[pid]
        if self.store is not None:
            self.store.flush()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.error("the process that started the hub is gone: shutting down")
            self._stopping = True

    def _client_gone(self, client: bytes, why: str) -> None:
        """A client's lease ended: every engine frees the objects the client held."""
        self.clients.pop(client, None)
        log.info("client %r is gone (%s): releasing its objects", client, why)
        header = new_header("release_request", "hub", "hub")
        frames = self.codec.encode(Message(header, None, {}, {"owner": client[1:].decode()}))
        for engine in list(self.engines.values()):
            self._to_engine(engine, "control", frames)

    def _check_children(self) -> None:
        """Engines this hub started whose process ended are lost, with the cause."""
        for engine in list(self.engines.values()):
            proc = engine.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                if code < 0:
                    cause = f"it was killed by {signal.Signals(-code).name}"
                else:
                    cause = f"it exited with code {code}"
                self._engine_lost(engine, cause)

    def _engine_lost(self, engine: _Engine, cause: str, *, kill: bool = True) -> None:
        if self.engines.pop(engine.id, None) is None:
            return
        self.by_ident.pop(engine.ident, None)
        self.routes.pop(engine_route(engine.id), None)
        self.dead.add(engine.ident)
        log.warning("engine %d is lost: %s", engine.id, cause)
        if kill and engine.proc is not None:
            if engine.proc.poll() is None:
                engine.proc.kill()  # ours, and declared dead (e.g. SIGSTOPped): it must go
            engine.proc.wait()
            self.procs.pop(engine.pid, None)
        note = {"engine_id": engine.id, "cause": cause}
        for client in list(self.clients):  # first: a client that sees the error knows it
            self._send_hub_msg(client, "engine_unregistered", note)
        why = f"engine {engine.id} died while this request was outstanding: {cause}"
        for task in engine.outstanding.values():
            if task.lb and task.retries > 0:
                task.retries -= 1
                task.excluded.add(engine.id)
                task.engine = None
                self.pending.appendleft(task)
            else:
                route = LB if task.lb else engine_route(engine.id)
                self._fail(task.client, task.header, ("EngineDiedError", why), route, engine.id)
        engine.outstanding.clear()
        self._check_waiting()
        self._dispatch()

    def _stray(self, ident: bytes) -> None:
        """A message from an engine declared dead (or unknown): tell it to go."""
        if ident not in self.dead:
            return
        header = new_header("shutdown_request", "hub", "hub")
        frames = self.codec.encode(Message(header, None, {}, {}))
        with contextlib.suppress(zmq.ZMQError):
            self.sockets["control"].send_multipart([ident, *frames])

    # -- history ------------------------------------------------------------------------
    def _record(
        self,
        msg_id: str,
        engine_id: int | None,
        status: str,
        submitted: float,
        ran: tuple[float | None, float | None] = (None, None),
    ) -> None:
        record = (engine_id, status, submitted, *ran)
        self.history[msg_id] = record
        if self.store is not None:
            self.store.add(_as_dict(msg_id, record))
        if len(self.history) > self.history_size:
            self.history.popitem(last=False)

    # -- hub requests -------------------------------------------------------------------
    def _hub_request(self, client: bytes, frames: list[Any]) -> None:
        try:
            msg = self.codec.decode(frames)
        except RemoteInputError as exc:
            log.warning("dropped a hub request: %s", exc)
            return
        kind = msg.msg_type
        content = msg.content if isinstance(msg.content, dict) else {}
        reply: dict[str, Any] = {"status": "ok"}
        try:
            if kind == "connect_request":
                reply["engines"] = self._engine_list()
                reply["hub_pid"] = os.getpid()
            elif kind == "queue_status_request":
                reply.update(self._queue_status())
            elif kind == "history_request":
                reply["history"] = self._history(content.get("msg_ids"))
            elif kind == "add_engines_request":
                reply["pids"] = self.launch(int(content.get("n", 1)))
            elif kind == "remove_engines_request":
                reply["removed"] = self._remove(list(content.get("engine_ids", ())))
            elif kind == "abort_request":
                reply["aborted"] = self._abort(client, list(content.get("msg_ids", ())))
            elif kind == "shutdown_request":
                self._stopping = True
            else:
                raise ValueError(f"unknown hub request {kind!r}")
        except Exception as exc:  # answer, never crash the hub
            reply = {
                "status": "error",
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": "",
                "engine_id": None,
                "exception": None,
            }
        reply_type = kind.replace("_request", "_reply")
        self._send_hub_msg(client, reply_type, reply, parent=msg.header.to_list())

    def _history(self, msg_ids: list[Any] | None) -> list[dict[str, Any] | None]:
        if msg_ids is None:
            if self.store is not None:
                return list(self.store.all(self.history_size))
            return [_as_dict(m, r) for m, r in self.history.items()]
        found = [
            None if (r := self.history.get(str(m))) is None else _as_dict(str(m), r)
            for m in msg_ids
        ]
        if self.store is not None and None in found:
            missing = [str(m) for m, r in zip(msg_ids, found, strict=True) if r is None]
            stored = dict(zip(missing, self.store.get(missing), strict=True))
            found = [
                r if r is not None else stored[str(m)] for m, r in zip(msg_ids, found, strict=True)
            ]
        return found

    def _engine_list(self) -> list[dict[str, Any]]:
        return [self._engine_info(e) for e in self.engines.values() if e.ready]

    @staticmethod
    def _engine_info(e: _Engine) -> dict[str, Any]:
        return {"engine_id": e.id, "pid": e.pid, "hostname": e.hostname, "direct_url": e.direct_url}

    def _queue_status(self) -> dict[str, Any]:
        return {
            "engines": {
                e.id: {"outstanding": len(e.outstanding), "pid": e.pid, "hostname": e.hostname}
                for e in self.engines.values()
            },
            "unassigned": len(self.pending) + len(self.waiting),
            "completed": len(self.history),
            "clients": len(self.clients),
            "uptime": time.time() - self.started,
        }

    def _remove(self, engine_ids: list[int]) -> list[int]:
        removed = []
        for engine_id in engine_ids:
            engine = self.engines.get(int(engine_id))
            if engine is None:
                continue
            header = new_header("shutdown_request", "hub", "hub")
            frames = self.codec.encode(Message(header, None, {}, {}))
            self._to_engine(engine, "control", frames)
            self._engine_lost(engine, "it was removed", kill=False)  # it exits by itself
            removed.append(engine.id)
        return removed

    def _abort(self, client: bytes, msg_ids: list[str]) -> list[str]:
        """Drop tasks not yet on an engine; ask engines to drop the ones they queued."""
        wanted = set(msg_ids)
        aborted = []
        keep: collections.deque[_Task] = collections.deque()
        for task in self.pending:
            if task.msg_id in wanted:
                aborted.append(task)
            else:
                keep.append(task)
        self.pending = keep
        aborted += [self.waiting.pop(m) for m in list(self.waiting) if m in wanted]
        for task in aborted:
            meta = {"engine_id": None, "status": "aborted", "started": None, "completed": None}
            reply_type = str(task.header[1]).replace("_request", "_reply")
            self._send_hub_msg(
                task.client,
                reply_type,
                {"status": "aborted"},
                parent=task.header,
                route=LB,
                metadata=meta,
            )
            self._record(task.msg_id, None, "aborted", task.submitted)
        for engine in self.engines.values():
            queued = [m for m in wanted if m in engine.outstanding]
            if queued:
                header = new_header("abort_request", "hub", "hub")
                frames = self.codec.encode(Message(header, None, {}, {"msg_ids": queued}))
                self._to_engine(engine, "control", frames)
        return [t.msg_id for t in aborted]

    # -- ending -------------------------------------------------------------------------
    def _shutdown_engines(self, grace: float = 2.0) -> None:
        header = new_header("shutdown_request", "hub", "hub")
        for engine in list(self.engines.values()):
            frames = self.codec.encode(Message(header, None, {}, {}))
            with contextlib.suppress(zmq.ZMQError):
                self.sockets["control"].send_multipart([engine.ident, *frames])
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        note = {"cause": "the hub shut down"}
        for client in list(self.clients):
            self._send_hub_msg(client, "hub_shutdown", note)

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
        # Segments of processes that died (a SIGKILLed engine or client) and the free
        # ones kept for reuse: the cluster leaves /dev/shm as it found it.
        sweep_shared_memory(free=True)
        for path in (self.client_file, self.engine_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for sock in self.sockets.values():
            sock.close(linger=50)  # the hub_shutdown notices, local and small
        self.context.term()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.hub [-n ENGINES] [--profile NAME | --profile-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="shoal-hub", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--engines", type=int, default=0, help="local engines to start")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--profile-dir", default=None, help="overrides --profile")
    parser.add_argument("--ip", default="127.0.0.1", help="interface to bind (loopback)")
    parser.add_argument("--hwm", type=int, default=2, help="tasks queued per engine")
    parser.add_argument("--period", type=float, default=0.2, help="heartbeat period, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="silent engine is dead, s")
    parser.add_argument(
        "--client-timeout", type=float, default=10.0, help="silent client's objects are freed, s"
    )
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--engine-log-level", default="WARNING")
    parser.add_argument(
        "--store", choices=["sqlite"], default=None, help="keep task history on disk"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(name)s: %(message)s")
    if args.ip not in ("127.0.0.1", "localhost"):
        parser.error(
            f"--ip {args.ip} would expose the hub without encryption; only loopback is"
            " supported for now"
        )
    folder = args.profile_dir or profile_dir(args.profile)
    hub = Hub(
        folder,
        ip="127.0.0.1" if args.ip == "localhost" else args.ip,
        hwm=args.hwm,
        period=args.period,
        timeout=args.timeout,
        parent_pid=args.parent_pid,
        engine_log_level=args.engine_log_level,
        store=args.store,
        client_timeout=args.client_timeout,
    )
    hub.launch(args.engines)
    print(f"shoal hub ready: {hub.client_file}", flush=True)  # launchers wait for this line
    return hub.serve()


if __name__ == "__main__":
    sys.exit(main())
