"""The hub process: engines register with it; clients reach engines through it.

The load balancer's state is ``scheduler.py`` (no sockets), the engines it starts
``launcher.py``, the history on disk ``store.py``, the command line ``main.py``.

Theory of operation
-------------------
Four threads, all sockets bound on loopback by default (another address needs Curve, or
``insecure=True``: :func:`shoal.wire.bind`, the rule the command line uses too):

* The **routing thread** (``serve``), one ``zmq.Poller`` over ``client`` (ROUTER: every
  client connects two DEALERs, ``s<token>`` to send requests, used by the client's calling
  threads, and ``r<token>`` to receive, its I/O thread; the hub answers a message from
  ``s<token>`` to ``r<token>``), ``shell`` and ``control`` (ROUTERs: every engine's
  DEALERs). Each socket is read through its :class:`shoal.wire.Session`: frames are
  counted and capped as they are read, and every message is verified in full (link
  stamp, signature over every buffer, envelope) *before* it is booked, routed or kept.
  Identities are opaque bytes. Drops are counted per socket and reason
  (``statistics_request``) and logged at most once a second per peer.
* The **heart thread** (``heart.py``) pings every engine on ``heartbeat`` each ``period``
  and records their echoes; the routing thread only reads those times. A routing thread busy with a
  huge message therefore never stops the pings that keep engines alive.
* The **beat echo** (``heart.py``): clients ping ``beat`` (a ROUTER), echoed by ``zmq.proxy`` in C
  without the GIL, so a client never thinks a busy hub is gone; a copy of each ping
  (its identity only) tells the routing thread which clients' leases go on.
* The **log thread** (``logs.py``) reads ``log`` (a SUB): the records engines publish with
  :func:`shoal.util.connect_engine_logger` (``[topic, text]``, unsigned), and appends
  them to ``engines.log`` in the hub's folder (``shoal logs`` prints it). Nothing in a
  record is acted on: it is written as text only, cut to :data:`LOG_RECORD_BYTES`, its
  control characters escaped and its further lines indented, so that every line that
  starts at column 0 is one the hub began. Malformed messages are counted and dropped.

A client message is ``[route, head, *buffers]``; ``route`` says where it goes:
``e<id>`` (an engine's shell), ``c<id>`` (its control), ``lb`` (the load-balanced
scheduler), ``hub`` (a request to the hub itself) or ``ping`` (answered ``pong``).
The hub forwards ``[engine, client, head, *buffers]``; the engine answers with the
client's identity in front, and the hub passes ``[client, e<id>, head, *buffers]`` on.
Relayed messages are verified here but not loaded: the hub reads their envelope to keep
its books -- who waits for what, on which engine -- forwards them stamped by its own link
(each hop signs what it forwards: :class:`shoal.wire.Link`), and holds a request's
frames (references, not copies) only while the request is outstanding, for retries.

Liveness: the hub pings every engine each ``period`` seconds; an engine that has not
echoed for ``timeout`` seconds, whose socket is gone (``ROUTER_MANDATORY`` makes a send
to it fail) or whose process (when the hub started it) ended is declared dead. Its
outstanding requests are answered with ``EngineDiedError`` naming the engine and the
cause, or -- load-balanced tasks with retries left -- run elsewhere. A late reply from
an engine declared dead is dropped, and that engine is told to shut down.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

from shoal.engine import HUB_REQUESTS, OUTPUT_NOTICES, PING, PONG, MsgType, reply_type
from shoal.util import integer_loglevel, is_url, set_hwm, validate_url
from shoal.wire import (
    DELIMITER,
    Codec,
    ConnectionInfo,
    CurveKeys,
    CurveServer,
    Header,
    InsecureBindError,
    Message,
    Session,
    SharedMemoryLost,
    bind,
    generate_key,
    is_loopback_url,
    sweep_shared_memory,
    write_connection_file,
)

from .._profile import CLIENT_FILE, ENGINE_FILE, ENGINES_LOG
from .._protocol import (
    HUB,
    LB,
    LB_BATCH,
    SocketStatistics,
    control_route,
    engine_id_of,
    engine_route,
    receiver_of,
)
from .heart import Heart, beat_echo
from .launchers import EngineLauncher, Launch, LocalEngines
from .logs import LOG_FRAME_BYTES, LOG_HWM, LogSink
from .scheduler import (
    Aborted,
    AbortOnEngine,
    Fail,
    Record,
    SchedulerState,
    Send,
    Task,
)
from .store import HistoryStore

__all__ = ["Hub"]

log = logging.getLogger("shoal.hub")
# Plain ints: the enum members cost microseconds per use on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _is_head(frame: Any) -> bool:
    """Whether ``frame`` starts a shoal message (rather than being a routing identity)."""
    return memoryview(frame)[: len(DELIMITER)] == DELIMITER


def _as_dict(msg_id: str, record: Record) -> dict[str, Any]:
    engine_id, status, submitted, started, completed = record
    return {
        "msg_id": msg_id,
        "engine_id": engine_id,
        "status": status,
        "submitted": submitted,
        "started": started,
        "completed": completed,
    }


class _Request:
    """What the hub keeps of a request for an engine's shell while it is in flight (the
    scheduler's :class:`Task` payload): its frames, for retries, and its header, to
    answer it.

    The head frame is kept as a copy: a received zmq frame can pin the whole receive
    buffer it was decoded from, which multiplies the memory of a long queue.
    """

    __slots__ = ("frames", "header")

    def __init__(self, frames: list[Any], header: Header) -> None:
        self.frames = [bytes(frames[0]), *frames[1:]]  # head copied; buffers referenced
        self.header = header


class _Engine:
    __slots__ = (
        "direct_url",
        "hostname",
        "id",
        "ident",
        "last_beat",
        "launch",
        "pid",
        "ready",
    )

    def __init__(self, engine_id: int, ident: bytes, pid: int, hostname: str) -> None:
        self.id = engine_id
        self.ident = ident
        self.pid = pid
        self.hostname = hostname
        self.launch: Launch | None = None  # what carries it, when this hub started it
        self.direct_url: str | None = None
        self.last_beat = time.monotonic()
        self.ready = False


def _bind_url(ip: str) -> str:
    """The url the hub binds for ``--ip``/``ip``, or ``ValueError`` saying what is wrong."""
    if is_url(ip):
        raise ValueError(f"ip must be an address such as 127.0.0.1, not a url: got {ip!r}")
    if ":" in ip:  # the hub's sockets do not enable IPv6
        raise ValueError(f"ip {ip!r}: IPv6 addresses are not supported; give an IPv4 address")
    url = f"tcp://{ip}:*"
    validate_url(url)  # names the part at fault: 'host 'a b' is not ...'
    return url


class Hub:
    """The hub: registration, routing, load balancing, liveness and task history.

    Parameters
    ----------
    folder : str
        Where the connection files go (``hub-client.json``, ``hub-engine.json``, 0600),
        and the engines' log records (``engines.log``).
    ip : str
        Interface to bind; loopback by default. Any other address is refused unless
        ``insecure`` (:func:`shoal.wire.bind`: the same rule as ``shoal hub --ip``).
    insecure : bool
        Allow binding a non-loopback address without encryption (a trusted network only).
    curve : bool, optional
        Encrypt and authenticate every connection with CurveZMQ (:class:`CurveServer`):
        the hub's sockets, the engines' own sockets, and their peers'. Default: on for
        any address but loopback, unless ``insecure``. The hub makes a server keypair,
        one keypair for its engines and one for its clients, admits those two, and
        writes each into its own connection file (0600).
    location : str, optional
        The address or host name peers dial when the bound one is a wildcard
        (``ip="0.0.0.0"``); default: this host's name.
    period, timeout : float
        Heartbeat period, and how long an engine may stay silent before it is declared
        dead (an engine busy in C code still answers: its echo runs without the GIL).
    hwm : int
        Load-balanced tasks an engine may hold at once (running and queued).
    history : int
        How many finished tasks' metadata are remembered.
    parent_pid : int, optional
        Shut down when this process is no longer the hub's parent.
    engine_log_level : str or int
        The level of the engines this hub starts (:func:`shoal.util.integer_loglevel`);
        their records reach ``engines.log`` through the hub's ``log`` socket, whose url
        ``hub-engine.json`` holds (engines started by hand use it too).
    store : {"sqlite"}, optional
        Also keep the task history in ``<folder>/history.sqlite``, across hub restarts.
    client_timeout : float
        A client's lease: when it has not pinged for this long (it died, or lost its
        connection), every engine frees the objects it held.
    allowed_failures : int
        A task that was running on this many engines when each of them died fails with
        ``KilledEngineError`` and is never retried further (Dask's ``KilledWorker``).
    launcher : callable, optional
        Makes the launcher of the engines this hub starts, from the engine connection
        file, the hub's folder and the engines' log level (``launchers/``); default: local
        processes (:class:`LocalEngines`).
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
        engine_log_level: str | int = "WARNING",
        store: str | None = None,
        client_timeout: float = 10.0,
        insecure: bool = False,
        allowed_failures: int = 3,
        curve: bool | None = None,
        location: str | None = None,
        launcher: Callable[[str, str, str], EngineLauncher] | None = None,
    ) -> None:
        bind_url = _bind_url(ip)  # checked before any socket exists
        if curve is None:
            curve = not (insecure or is_loopback_url(bind_url))
        engine_level = integer_loglevel(engine_log_level)
        # Queues, outstanding work, retries, deaths, the poison policy and the history:
        # state with no sockets (_scheduler.py), made first, as it checks its arguments.
        # This class carries out its actions.
        self.scheduler = SchedulerState(
            hwm=hwm,
            history_size=history,
            allowed_failures=allowed_failures,
            on_record=self._store_record,
        )
        self.store: HistoryStore | None = None
        self.folder = folder
        self.period = period
        self.timeout = timeout
        self.client_timeout = client_timeout
        self.hwm = hwm
        self.parent_pid = parent_pid
        self.engine_log_level = str(engine_level)  # a number: any level, in any case
        self.key = generate_key()
        self.codec = Codec(self.key)
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        # Who may connect: holders of the engines' or the clients' keypair, nobody else.
        self.curve: CurveServer | None = None
        engine_keys = client_keys = None
        if curve:
            self.curve = CurveServer(self.context)
            engine_keys, client_keys = self.curve.new_client(), self.curve.new_client()
        self.urls = self._bind(bind_url, insecure)
        # Every socket the routing thread reads or writes has its Session (one message
        # path: caps, verification, drop counts, the link that stamps what it sends).
        self.sessions = {
            name: Session(self.sockets[name], self.codec, session_id="hub", sender="hub")
            for name in ("client", "shell", "control")
        }
        self.heart = Heart(self.sockets.pop("heartbeat"), period)
        self.engines_log = os.path.join(folder, ENGINES_LOG)
        self.engines: dict[int, _Engine] = {}
        self.by_ident: dict[bytes, _Engine] = {}
        self.routes: dict[bytes, _Engine] = {}  # b"e<id>" -> a ready engine
        self.dead: set[bytes] = set()  # identities of engines declared dead
        self.next_id = 0
        self.ids_used: set[int] = set()
        self.clients: dict[bytes, float] = {}  # receive identity -> last heard
        self.started = time.time()
        self._stopping = False
        self._carrying_out = False
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if store not in (None, "sqlite"):
            raise ValueError(f"store must be None or 'sqlite', got {store!r}")
        self.store = None if store is None else HistoryStore(os.path.join(folder, "history.sqlite"))
        self.log_sink = LogSink(self.sockets.pop("log"), self.engines_log, self._pid_of)
        self.client_file = os.path.join(folder, CLIENT_FILE)
        self.engine_file = os.path.join(folder, ENGINE_FILE)
        self._write_connection_files(location or socket.gethostname(), engine_keys, client_keys)
        make_launcher = LocalEngines if launcher is None else launcher
        self.launcher = make_launcher(self.engine_file, folder, self.engine_log_level)
        self._failed_launches: set[str] = set()  # reported already
        self.launch_failures: list[dict[str, Any]] = []  # for clients that connect later

    def _write_connection_files(
        self, location: str, engine_keys: CurveKeys | None, client_keys: CurveKeys | None
    ) -> None:
        """``hub-engine.json`` and ``hub-client.json`` (0600): what each peer needs."""
        urls = self.urls
        # The urls are as bound; a peer turns a wildcard host (``--ip 0.0.0.0``) into
        # loopback on this host, or into ``location`` elsewhere: disambiguate_url.
        shared: dict[str, object] = {"location": location}
        if engine_keys is not None and client_keys is not None:
            # Engines serve their own sockets with the engines' keypair, to the holders
            # of either keypair: each side learns the other's public key, no more.
            shared["curve_peers"] = {
                "engine": engine_keys.client_public.decode("ascii"),
                "client": client_keys.client_public.decode("ascii"),
            }
        extra = {"pid": os.getpid(), "started": self.started, **shared}
        engine_urls = {k: urls[k] for k in ("shell", "control", "heartbeat", "log")}
        engine_info = ConnectionInfo(engine_urls, self.key, curve=engine_keys, extra=shared)
        write_connection_file(self.engine_file, engine_info)
        client_urls = {"client": urls["client"], "beat": urls["beat"]}
        client_info = ConnectionInfo(client_urls, self.key, curve=client_keys, extra=extra)
        write_connection_file(self.client_file, client_info)

    def _bind(self, url: str, insecure: bool) -> dict[str, str]:
        """Bind the hub's ROUTERs and its log SUB on random ports (``url``), by
        :func:`shoal.wire.bind`'s rule (a non-loopback address needs Curve, or
        ``insecure``); their urls."""
        urls: dict[str, str] = {}
        try:
            for name in ("client", "shell", "control", "heartbeat", "beat"):
                sock = self.context.socket(zmq.ROUTER)
                sock.linger = 0
                sock.router_mandatory = True  # a send to a gone peer fails, never vanishes
                sock.sndhwm = 0  # never block the hub on a slow reader, never drop
                if self.curve is not None:
                    self.curve.configure(sock)
                self.sockets[name] = sock
                urls[name] = bind(sock, url, insecure=insecure)
            # Engines' log records: unsigned, so bounded before they are read at all.
            sub = self.context.socket(zmq.SUB)
            sub.linger = 0
            sub.maxmsgsize = LOG_FRAME_BYTES
            set_hwm(sub, LOG_HWM)
            sub.subscribe(b"")
            if self.curve is not None:
                self.curve.configure(sub)
            self.sockets["log"] = sub
            urls["log"] = bind(sub, url, insecure=insecure)
        except (InsecureBindError, zmq.ZMQError):
            for sock in self.sockets.values():
                sock.close(linger=0)
            if self.curve is not None:
                self.curve.stop()
            self.context.term()
            raise
        return urls

    def _pid_of(self, engine_id: int) -> int | None:
        """The pid engine ``engine_id`` registered with (None if it is not registered);
        for the log thread (a dict lookup: atomic)."""
        engine = self.engines.get(engine_id)
        return None if engine is None else engine.pid

    # -- engines this hub starts --------------------------------------------------------
    def launch(self, n: int) -> list[int]:
        """Start ``n`` engines with the launcher; returns the pids of the local processes
        that carry them (the engines, or the ssh or mpiexec commands; they register
        later)."""
        if n <= 0:
            return []
        launches = self.launcher.start(n, self.next_id)
        log.info("started %d engines: %s", n, self.launcher.describe())
        return [launch.proc.pid for launch in launches if launch.proc is not None]

    # -- main loop ----------------------------------------------------------------------
    def serve(self) -> int:
        """Route until shut down; returns the exit code."""
        sweep_shared_memory()  # what an earlier cluster's SIGKILLed processes left
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.heart.start()
        self.log_sink.start()
        echo, beats, steer = self._start_beat_echo()
        poller = zmq.Poller()
        handlers = {
            self.sockets["client"]: (self.sessions["client"], self._on_client),
            self.sockets["shell"]: (self.sessions["shell"], self._on_shell),
            self.sockets["control"]: (self.sessions["control"], self._on_control),
        }
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        poller.register(beats, zmq.POLLIN)
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
                    if sock is beats:
                        self._on_beats(beats)
                        continue
                    self._drain(*handlers[sock])
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.period
                    try:
                        self._beat()
                    except Exception:  # a periodic path must not end the hub either
                        log.exception("failed in the hub's periodic checks")
        finally:
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()
            self._shutdown_engines()
            self.heart.stop()
            self.log_sink.stop()  # after the engines: their last words are written
            with contextlib.suppress(zmq.ZMQError):
                steer.send(b"TERMINATE")
            echo.join(timeout=2)
            for sock in (steer, beats):
                sock.close(linger=0)
            self._close()
        return 0

    @staticmethod
    def _drain(session: Session, handler: Callable[[list[Any]], None]) -> None:
        """Handle a burst of what waits on ``session``'s socket, then look elsewhere."""
        for _ in range(64):
            try:
                frames = session.recv_frames_nowait()
            except zmq.Again:
                return
            if frames is None:  # over the caps: read, dropped, counted
                continue
            try:
                handler(frames)
            except Exception:  # one bad message must not end the hub
                log.exception("failed to handle a message")
            if not cast("int", session.socket.getsockopt(_EVENTS)) & _POLLIN:
                return  # cheaper than a recv that raises Again

    def _start_beat_echo(
        self,
    ) -> tuple[threading.Thread, zmq.Socket[Any], zmq.Socket[Any]]:
        """Clients' pings answered in C; the copies (``beats``) say whose lease goes on;
        ``steer`` stops the echo."""
        capture = self.context.socket(zmq.PUB)
        capture.bind("inproc://shoal-hub-beats")
        beats = self.context.socket(zmq.SUB)
        beats.subscribe(b"")
        beats.connect("inproc://shoal-hub-beats")
        steer_in = self.context.socket(zmq.PAIR)
        steer_in.bind("inproc://shoal-hub-beat-steer")
        steer = self.context.socket(zmq.PAIR)
        steer.connect("inproc://shoal-hub-beat-steer")
        echo = threading.Thread(
            target=beat_echo,
            args=(self.sockets.pop("beat"), capture, steer_in),
            name="shoal-hub-beat",
            daemon=True,
        )
        echo.start()
        return echo, beats, steer

    def _on_beats(self, beats: zmq.Socket[Any]) -> None:
        """Copies of clients' pings: each names a client (``b<token>``) whose lease goes
        on. Unverified, so they only refresh leases of clients already known."""
        now = time.monotonic()
        for _ in range(1024):
            try:
                ident = beats.recv(zmq.NOBLOCK)
                while beats.rcvmore:
                    beats.recv()
            except zmq.Again:
                return
            client = receiver_of(ident)
            if client in self.clients:
                self.clients[client] = now

    def statistics(self) -> dict[str, SocketStatistics]:
        """What each socket's session sent, received and dropped (by reason); ``log``:
        the engines' log records (dropped: malformed)."""
        stats: dict[str, SocketStatistics] = {
            name: {"sent": st.sent, "received": st.received, "dropped": dict(st.dropped)}
            for name, session in self.sessions.items()
            for st in (session.statistics(),)
        }
        stats["log"] = self.log_sink.statistics()
        return stats

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    # -- clients ------------------------------------------------------------------------
    def _on_client(self, frames: list[Any]) -> None:
        """``[sender, route, head, *buffers]`` from a client's ``s`` socket, or its
        receiving socket's hello ``[r<token>, ping]``."""
        if len(frames) == 2 and frames[1].bytes == PING:  # unverified: answered, not booked
            client = receiver_of(frames[0].bytes)  # answered where its client receives
            with contextlib.suppress(zmq.ZMQError):
                self.sessions["client"].socket.send_multipart([client, PONG])
            if client in self.clients:
                self.clients[client] = time.monotonic()
            return
        if len(frames) < 3:
            self.sessions["client"].refuse(frames, "a client message needs a route and a head")
            return
        route = frames[1].bytes
        if route == LB_BATCH:
            self._lb_batch(frames[0].bytes, frames[2:], frames[0])
            return
        session = self.sessions["client"]
        if route == HUB:
            try:
                request = session.decode_or_drop(frames)
            except SharedMemoryLost:
                return
            if request is not None:
                self._hub_request(self._reply_to(frames[0].bytes), request)
            return
        received = session.verify_or_drop(frames)
        if received is None:
            return
        reply_to = self._reply_to(frames[0].bytes)
        header = received.envelope.header
        msg = frames[received.envelope.at :]
        engine = self.routes.get(route)
        if engine is not None:  # the hot path: a request for one engine's shell
            booked = _Request(msg, header)
            task = Task(header.msg_id, reply_to, booked, lb=False, engine=engine.id)
            if self.scheduler.submit(task):
                self._to_engine(engine, "shell", [reply_to], booked.frames)
            self._carry_out()
        elif route == LB:
            self._lb_submit(reply_to, _Request(msg, header), received.envelope.metadata)
            self._carry_out()
        elif (engine_id := engine_id_of(route)) is not None:
            if route[:1] == b"c" and engine_id in self.engines:
                self._to_engine(self.engines[engine_id], "control", [reply_to], msg)
            else:
                known = sorted(self.engines)
                why = f"engine {engine_id} is not registered (known: {known})"
                self._fail(reply_to, header, ("EngineDiedError", why), route)
        else:
            self._fail(reply_to, header, ("ValueError", f"unknown route {route!r}"), HUB)

    def _reply_to(self, sender: bytes) -> bytes:
        """The receiving socket of the client whose sending socket is ``sender`` (opaque
        bytes); called only for verified messages, so only honest clients are booked."""
        reply_to = receiver_of(sender)
        if reply_to not in self.clients:
            self.clients[reply_to] = time.monotonic()
        return reply_to

    def _to_client(self, client: bytes, route: bytes, frames: list[Any]) -> None:
        """Forward a verified message (its head and buffers) to ``client``."""
        try:
            self.sessions["client"].forward(frames, [client, route])
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
            self.codec.discard(frames)  # its shared memory, which it will never open
            if client in self.clients:
                self._client_gone(client, str(exc))

    def _to_engine(
        self, engine: _Engine, channel: str, identities: list[bytes], frames: list[Any]
    ) -> bool:
        """Forward a verified message to an engine (``identities`` after its own)."""
        try:
            self.sessions[channel].forward(frames, [engine.ident, *identities])
        except zmq.ZMQError as exc:
            self._engine_lost(engine, f"its {channel} connection is gone ({exc.strerror})")
            return False
        return True

    def _tell_engine(self, engine: _Engine, msg_type: str, content: dict[str, Any]) -> bool:
        """A message of the hub's own to an engine's control socket."""
        try:
            self.sessions["control"].send(msg_type, content, identities=[engine.ident])
        except zmq.ZMQError as exc:
            self._engine_lost(engine, f"its control connection is gone ({exc.strerror})")
            return False
        return True

    def _send_hub_msg(
        self,
        client: bytes,
        msg_type: str,
        content: Any,
        *,
        parent: Header | None = None,
        route: bytes = HUB,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.sessions["client"].send(
                msg_type, content, parent=parent, metadata=metadata, identities=[client, route]
            )
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
            if client in self.clients:
                self._client_gone(client, str(exc))

    def _fail(
        self,
        client: bytes,
        request: Header,
        error: tuple[str, str],
        route: bytes,
        engine_id: int | None = None,
        **extra: Any,
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
            **extra,
        }
        meta = {"engine_id": engine_id, "status": "error", "started": None, "completed": None}
        kind = reply_type(request.msg_type)
        self._send_hub_msg(client, kind, content, parent=request, route=route, metadata=meta)

    # -- load balancing -----------------------------------------------------------------
    def _lb_batch(self, sender: Any, frames: list[Any], peer: Any) -> None:
        """Load-balanced tasks a client sent together: each is verified and queued as if
        sent alone. The client is booked only once one of them verified."""
        session = self.sessions["client"]
        counts = array.array("I")
        if len(frames[0]) % counts.itemsize == 0:
            counts.frombytes(frames[0].bytes)
        if not counts or sum(counts) != len(frames) - 1 or 0 in counts:
            session.refuse([peer], "a task batch whose frame counts do not add up")
            return
        at = 1
        for n in counts:
            task_frames = frames[at : at + n]
            at += n
            received = session.verify_or_drop([peer, *task_frames])
            if received is None:
                continue
            request = _Request(task_frames, received.envelope.header)
            self._lb_submit(self._reply_to(sender), request, received.envelope.metadata)
        self._carry_out()

    def _lb_submit(self, client: bytes, request: _Request, metadata: dict[str, Any]) -> None:
        """Hand a load-balanced task to the scheduler; bad flags are answered here."""
        header = request.header
        try:
            retries = int(metadata.get("retries", 0))
            targets = metadata.get("targets")
            task = Task(
                header.msg_id,
                client,
                request,
                retries=retries,
                targets=None if targets is None else {int(t) for t in targets},
                after=[str(m) for m in metadata.get("after", ())],
                follow=[str(m) for m in metadata.get("follow", ())],
            )
            records = metadata.get("records") or {}
            placed = metadata.get("placed") or {}
            for dep, (engine_id, status, submitted, started, completed) in records.items():
                record = (engine_id, str(status), float(submitted), started, completed)
                self.scheduler.placed_by_client(str(dep), engine_id, record)
            for dep, engine_id in placed.items():
                self.scheduler.placed_by_client(str(dep), int(engine_id))
        except (TypeError, ValueError, AttributeError) as exc:
            self._fail(client, header, ("ValueError", f"bad task metadata: {exc}"), LB)
            return
        self.scheduler.submit(task)

    def _carry_out(self) -> None:
        """Do what the scheduler asks, in order; a send that fails (its engine is gone)
        is an event for the scheduler too, whose actions follow (taken by the outermost
        call only, so that they stay in order)."""
        if self._carrying_out:
            return
        self._carrying_out = True
        try:
            self._carry_out_actions()
        finally:
            self._carrying_out = False

    def _carry_out_actions(self) -> None:
        scheduler = self.scheduler
        while actions := scheduler.take_actions():
            for action in actions:
                if isinstance(action, Send):
                    engine = self.engines.get(action.engine_id)
                    if engine is not None:  # else: lost meanwhile, the loss re-queued it
                        request = action.task.payload
                        self._to_engine(engine, "shell", [action.task.client], request.frames)
                elif isinstance(action, Fail):
                    self._answer_failed(action)
                elif isinstance(action, Aborted):
                    task = action.task
                    meta = {"engine_id": None, "status": "aborted"}
                    header = task.payload.header
                    self._send_hub_msg(
                        task.client,
                        reply_type(header.msg_type),
                        {"status": "aborted"},
                        parent=header,
                        route=LB,
                        metadata={**meta, "started": None, "completed": None},
                    )
                elif isinstance(action, AbortOnEngine):
                    engine = self.engines.get(action.engine_id)
                    if engine is not None:
                        msg_ids = list(action.msg_ids)
                        self._tell_engine(engine, MsgType.ABORT_REQUEST, {"msg_ids": msg_ids})
                else:
                    self._no_engines(action.unassigned)

    def _answer_failed(self, action: Fail) -> None:
        task = action.task
        route = LB if task.lb or task.engine is None else engine_route(task.engine)
        extra = {"engine_ids": list(task.killed)} if action.ename == "KilledEngineError" else {}
        if extra:
            log.error("%s", action.evalue)
        error = (action.ename, action.evalue)
        self._fail(task.client, task.payload.header, error, route, action.engine_id, **extra)

    def _no_engines(self, unassigned: int) -> None:
        log.warning("no engine is left: %d task(s) wait for one", unassigned)
        for client in list(self.clients):
            self._send_hub_msg(client, MsgType.NO_ENGINES, {"unassigned": unassigned})

    def _on_shell(self, frames: list[Any]) -> None:
        """An engine's shell message: its hello ``[engine, head]``, or a reply (or output)
        for a client, ``[engine, client, head, *buffers]``."""
        ident = frames[0].bytes
        engine = self.by_ident.get(ident)
        session = self.sessions["shell"]
        if engine is None:
            session.refuse(frames[:1], "a shell message from an engine that is not registered")
            self._stray(ident)
            return
        if _is_head(frames[1]):  # addressed to the hub: the engine's hello
            with contextlib.suppress(SharedMemoryLost):
                msg = session.decode_or_drop(frames)
                if msg is not None and msg.msg_type == MsgType.ENGINE_READY:
                    self._engine_ready(engine)
            return
        received = session.verify_or_drop(frames)
        if received is None:
            return
        envelope = received.envelope
        if envelope.at != 2:
            session.refuse(frames[:1], "an engine reply must name one client")
            return
        client = frames[1].bytes
        relayed = frames[2:]
        parent = envelope.parent_header
        metadata = envelope.metadata
        if envelope.msg_type not in OUTPUT_NOTICES and parent is not None:  # a reply
            started, completed = metadata.get("started"), metadata.get("completed")
            relay = self.scheduler.finished(
                engine.id,
                parent.msg_id,
                str(metadata.get("status")),
                started if isinstance(started, int | float) else None,
                completed if isinstance(completed, int | float) else None,
            )
            self._carry_out()
            if not relay:  # an error with retries left: it runs again, the client waits
                return
        self._to_client(client, engine_route(engine.id), relayed)

    def _on_control(self, frames: list[Any]) -> None:
        """An engine's control message: a reply for a client ``[engine, client, head]``,
        or one for the hub ``[engine, head]`` (registration, history reports)."""
        ident = frames[0].bytes
        session = self.sessions["control"]
        if not _is_head(frames[1]):  # a control reply for a client
            engine = self.by_ident.get(ident)
            received = None if engine is None else session.verify_or_drop(frames)
            if engine is None:
                session.refuse(frames[:1], "a control reply from an engine not registered")
            elif received is not None and received.envelope.at == 2:
                self._to_client(frames[1].bytes, control_route(engine.id), frames[2:])
            return
        try:
            msg = session.decode_or_drop(frames)
        except SharedMemoryLost:
            return
        if msg is None:
            return
        if msg.msg_type == MsgType.REGISTER_REQUEST:
            self._register(ident, msg.header, msg.content)
        elif msg.msg_type == MsgType.HISTORY_REPORT:  # requests clients sent the engine directly
            engine = self.by_ident.get(ident)
            tasks = msg.content.get("tasks", ()) if isinstance(msg.content, dict) else ()
            for task in tasks:
                try:
                    msg_id, status, submitted, started, completed = task
                    engine_id = None if engine is None else engine.id
                    record = (engine_id, str(status), float(submitted), started, completed)
                    self.scheduler.record(str(msg_id), record)
                except (TypeError, ValueError):
                    session.refuse(frames[:1], "a history report entry is not 5 fields")
            self._carry_out()

    def _register(self, ident: bytes, request: Header, content: Any) -> None:
        content = content if isinstance(content, dict) else {}
        reply: dict[str, Any]
        if ident in self.by_ident or ident in self.dead:
            reply = {"status": "error", "evalue": f"identity {ident!r} is already taken"}
        else:
            wanted = content.get("requested_id")
            if isinstance(wanted, int) and wanted >= 0 and wanted not in self.ids_used:
                engine_id = wanted  # an MPI rank: ids = ranks
            else:
                engine_id = self.next_id
            self.ids_used.add(engine_id)  # ids are never reused within a hub's life
            while self.next_id in self.ids_used:
                self.next_id += 1
            pid = content.get("pid", 0)
            engine = _Engine(
                engine_id,
                ident,
                pid if isinstance(pid, int) else 0,
                str(content.get("hostname", "")),
            )
            engine.launch = self.launcher.get(content.get("launch_id"))
            if engine.launch is not None:
                engine.launch.pids.append(engine.pid)
            url = content.get("direct_url")
            engine.direct_url = url if isinstance(url, str) else None
            self.engines[engine_id] = engine
            self.by_ident[ident] = engine
            self.heart.watch(ident)
            reply = {"status": "ok", "engine_id": engine_id, "hub_timeout": self.timeout + 0.3}
            log.info("engine %d registered (pid %s on %s)", engine_id, engine.pid, engine.hostname)
        with contextlib.suppress(zmq.ZMQError):
            self.sessions["control"].send(
                MsgType.REGISTER_REPLY, reply, parent=request, identities=[ident]
            )

    def _engine_ready(self, engine: _Engine) -> None:
        if engine.ready:
            return
        engine.ready = True
        engine.last_beat = time.monotonic()
        self.routes[engine_route(engine.id)] = engine
        for client in list(self.clients):
            self._send_hub_msg(client, MsgType.ENGINE_REGISTERED, self._engine_info(engine))
        self.scheduler.add_engine(engine.id)
        self._carry_out()

    def _beat(self) -> None:
        """Declare dead the engines that stopped echoing the heart's pings or ended;
        end the leases of silent clients."""
        now = time.monotonic()
        self._check_children()
        heart = self.heart
        for engine in list(self.engines.values()):
            silent = now - heart.last.get(engine.ident, now)
            if silent > self.timeout:
                self._engine_lost(engine, f"it did not answer heartbeats for {silent:.1f} s")
            elif engine.ident in heart.unreachable and engine.ident in heart.echoed:
                # Its process is ending (the kernel closed its sockets): say how, if ours.
                ended = engine.launch is not None and self.launcher.poll(engine.launch)
                if ended:
                    self._check_children()
                elif engine.launch is None or silent > self.period * 3:
                    self._engine_lost(engine, "its heartbeat connection is gone")
        for client, heard in list(self.clients.items()):
            if now - heard > self.client_timeout:
                self._client_gone(client, f"silent for {now - heard:.1f} s")
        self._check_launches()
        self.launcher.reap(e.launch for e in self.engines.values() if e.launch is not None)
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.error("the process that started the hub is gone: shutting down")
            self._stopping = True

    def _client_gone(self, client: bytes, why: str) -> None:
        """A client's lease ended: every engine frees the objects the client held."""
        self.clients.pop(client, None)
        log.info("client 0x%s is gone (%s): releasing its objects", client.hex(), why)
        # The owner name engines booked: the client's token (opaque bytes, shown as text).
        owner = client[1:].decode("utf-8", "backslashreplace")
        for engine in list(self.engines.values()):
            self._tell_engine(engine, MsgType.RELEASE_REQUEST, {"owner": owner})

    def _check_children(self) -> None:
        """Engines this hub started whose launch ended are lost, with the cause."""
        for engine in list(self.engines.values()):
            cause = None if engine.launch is None else self.launcher.poll(engine.launch)
            if cause is not None:
                self._engine_lost(engine, cause)

    def _check_launches(self) -> None:
        """Say once, in the log, which launch ended before any engine of it registered
        (ssh could not connect, the job failed), with what it printed."""
        for launch in list(self.launcher.launches.values()):
            cause = self.launcher.poll(launch)
            if cause is None or launch.pids or launch.launch_id in self._failed_launches:
                continue
            self._failed_launches.add(launch.launch_id)
            output = self.launcher.logs(launch)
            note = {
                "launch_id": launch.launch_id,
                "n": launch.n,
                "host": launch.host,
                "cause": cause,
                "output": output,
            }
            self.launch_failures.append(note)
            for client in list(self.clients):
                self._send_hub_msg(client, MsgType.LAUNCH_FAILED, note)
            log.warning(
                "%s (%d engines on %s) ended before its engines registered: %s%s",
                launch.launch_id,
                launch.n,
                launch.host,
                cause,
                f"; it printed:\n{output}" if output else "",
            )

    def _engine_lost(self, engine: _Engine, cause: str, *, kill: bool = True) -> None:
        if self.engines.pop(engine.id, None) is None:
            return
        self.by_ident.pop(engine.ident, None)
        self.routes.pop(engine_route(engine.id), None)
        self.heart.forget(engine.ident)
        self.dead.add(engine.ident)
        log.warning("engine %d is lost: %s", engine.id, cause)
        if kill and engine.launch is not None:
            # Ours, and declared dead (e.g. SIGSTOPped): it must go. Reaped by _beat (and
            # SIGCHLD wakes it), never waited for here: the routing thread goes on.
            self.launcher.signal(engine.launch, signal.SIGKILL, engine.pid)
        note = {"engine_id": engine.id, "cause": cause}
        for client in list(self.clients):  # first: a client that sees the error knows it
            self._send_hub_msg(client, MsgType.ENGINE_UNREGISTERED, note)
        if engine.ready:
            self.scheduler.engine_lost(engine.id, cause)
        self._carry_out()

    def _stray(self, ident: bytes) -> None:
        """A message from an engine declared dead (or unknown): tell it to go."""
        if ident not in self.dead:
            return
        with contextlib.suppress(zmq.ZMQError):
            self.sessions["control"].send(MsgType.SHUTDOWN_REQUEST, {}, identities=[ident])

    # -- history ------------------------------------------------------------------------
    def _store_record(self, msg_id: str, record: Record) -> None:
        if self.store is not None:
            self.store.add(_as_dict(msg_id, record))

    # -- hub requests -------------------------------------------------------------------
    def _hub_request(self, client: bytes, msg: Message) -> None:
        kind = msg.msg_type
        content = msg.content if isinstance(msg.content, dict) else {}
        reply: dict[str, Any] = {"status": "ok"}
        try:
            if kind == MsgType.CONNECT_REQUEST:
                reply["engines"] = self._engine_list()
                reply["launch_failures"] = self.launch_failures[-100:]
                reply["hub_pid"] = os.getpid()
                reply["hwm"] = self.hwm  # clients placing tasks themselves keep to it
            elif kind == MsgType.QUEUE_STATUS_REQUEST:
                reply.update(self._queue_status())
            elif kind == MsgType.STATISTICS_REQUEST:
                reply["sockets"] = self.statistics()
            elif kind == MsgType.HISTORY_REQUEST:
                reply["history"] = self._history(content.get("msg_ids"))
            elif kind == MsgType.ADD_ENGINES_REQUEST:
                reply["pids"] = self.launch(int(content.get("n", 1)))
            elif kind == MsgType.REMOVE_ENGINES_REQUEST:
                reply["removed"] = self._remove(list(content.get("engine_ids", ())))
            elif kind == MsgType.ABORT_REQUEST:
                on_engines = content.get("on_engines")
                reply["aborted"] = self._abort(
                    client,
                    list(content.get("msg_ids", ())),
                    on_engines if isinstance(on_engines, dict) else {},
                )
            elif kind == MsgType.SHUTDOWN_REQUEST:
                self._stopping = True
            else:
                known = ", ".join(sorted(HUB_REQUESTS))
                raise ValueError(f"unknown hub request {kind!r}; the hub serves {known}")
        except Exception as exc:  # answer, never crash the hub
            reply = {
                "status": "error",
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": "",
                "engine_id": None,
                "exception": None,
            }
        self._send_hub_msg(client, reply_type(kind), reply, parent=msg.header)

    def _history(self, msg_ids: list[Any] | None) -> list[dict[str, Any] | None]:
        if msg_ids is None:
            if self.store is not None:
                return list(self.store.all(self.scheduler.history_size))
            return [_as_dict(m, r) for m, r in self.scheduler.history.items()]
        history = self.scheduler.history
        found = [
            None if (r := history.get(str(m))) is None else _as_dict(str(m), r) for m in msg_ids
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
        status = self.scheduler.queue_status()
        ready = any(e.ready for e in self.engines.values())
        return {
            "engines": {
                e.id: {
                    "outstanding": status.outstanding.get(e.id, 0),
                    "pid": e.pid,
                    "hostname": e.hostname,
                }
                for e in self.engines.values()
            },
            "unassigned": status.unassigned,
            "completed": status.completed,
            "clients": len(self.clients),
            "uptime": time.time() - self.started,
            "no_engines": status.unassigned > 0 and not ready,
        }

    def _remove(self, engine_ids: list[int]) -> list[int]:
        removed = []
        for engine_id in engine_ids:
            engine = self.engines.get(int(engine_id))
            if engine is None:
                continue
            self._tell_engine(engine, MsgType.SHUTDOWN_REQUEST, {})
            self._engine_lost(engine, "it was removed", kill=False)  # it exits by itself
            removed.append(engine.id)
        return removed

    def _abort(self, client: bytes, msg_ids: list[str], on_engines: dict[str, Any]) -> list[str]:
        """Drop tasks not yet on an engine; ask engines to drop the ones they queued,
        including ``on_engines`` (engine id -> msg_ids), which the client sent them
        itself."""
        aborted = self.scheduler.abort(msg_ids)
        self._carry_out()
        for key, ids in on_engines.items():
            engine = self.engines.get(int(key))
            if engine is not None and isinstance(ids, list):
                self._tell_engine(engine, MsgType.ABORT_REQUEST, {"msg_ids": [str(m) for m in ids]})
        return aborted

    # -- ending -------------------------------------------------------------------------
    def _shutdown_engines(self, grace: float = 2.0) -> None:
        for engine in list(self.engines.values()):
            with contextlib.suppress(zmq.ZMQError):
                self.sessions["control"].send(
                    MsgType.SHUTDOWN_REQUEST, {}, identities=[engine.ident]
                )
        self.launcher.stop(grace)
        note = {"cause": "the hub shut down"}
        for client in list(self.clients):
            self._send_hub_msg(client, MsgType.HUB_SHUTDOWN, note)

    def close(self) -> None:
        """End a hub that never served: the engines launched so far, then the sockets
        (those of the heart and the log thread too, which never ran)."""
        self.launcher.stop(0.0)
        self.heart.stop()
        self.log_sink.stop()
        self._close()

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
        if self.curve is not None:
            self.curve.stop()  # after the sockets: without it, libzmq would admit anyone
        self.context.term()
