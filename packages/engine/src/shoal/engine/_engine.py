"""The engine process: serves a :class:`Kernel` and an :class:`ObjectStore` over zmq.

Theory of operation
-------------------
Two threads, so that an engine busy in user code still answers control requests:

* The **main thread** owns the shell socket and runs user code. It reads requests,
  loads their content, runs :meth:`Kernel.handle` and sends the reply itself: a request
  costs no thread hand-off. What user code prints on the main thread is sent on shell
  as it is written, so output always arrives before its reply. Output written by other
  threads (and the I/O thread's notices) comes in over an inproc pipe, which the main
  thread forwards whenever it waits and before every reply.
* The **I/O thread** owns the control socket: interrupt, abort, shutdown and status are
  answered even while user code runs. It exits the process when the peer is gone: the
  parent process (``--parent-pid``) or, for an engine registered with a hub, the hub's
  heartbeats.
* The **heartbeat** socket is echoed by ``zmq.proxy`` in a thread of its own, in C and
  without the GIL, so pings are answered even while user code holds the GIL. A copy of
  each ping goes to the I/O thread (the proxy's capture socket, a PUB that never blocks
  the echo), which is how an engine learns that its hub stopped pinging.

An interrupt is SIGINT sent to the main thread, but only while user code runs: the
SIGINT handler raises ``KeyboardInterrupt`` only then, so an interrupt that arrives
between requests cannot break the engine's own loop. A targeted interrupt (``msg_ids``)
is sent only while one of those requests runs, and the handler checks again, on the main
thread, that one of them still runs: the request that follows it on the engine (perhaps
another client's) is never the one interrupted.

A hub-connected engine first registers: ``register_request`` on control, answered with
its engine id and the hub's heartbeat period. Replies carry the request's routing
identities, so a hub can relay them to the client that asked.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, cast

import zmq

from shoal.util import (
    connect_engine_logger,
    disambiguate_url,
    integer_loglevel,
    local_logger,
    outbound_ip,
    split_url,
    validate_url,
    validate_url_container,
)
from shoal.wire import (
    DELIMITER,
    Codec,
    ConnectionInfo,
    CurveKeys,
    CurveServer,
    Message,
    RawContent,
    Serializer,
    Session,
    SharedMemoryLost,
    UnpicklableError,
    bind,
    configure_curve_client,
    default_shared_memory,
    new_header,
    read_connection_file,
    read_private_file,
    shared_memory_enabled,
    this_host,
)

from ._current import set_current_engine
from ._errors import EngineDiedError
from ._jupyter import WAKE, JupyterGateway, open_gateway
from ._kernel import Kernel
from ._objects import ObjectStore
from ._protocol import (
    BATCH_MAX,
    CONTROL_REQUESTS,
    PING,
    PONG,
    MsgType,
    reply_type,
)
from ._replies import error_reply

__all__ = ["EngineProcess", "main"]

log = logging.getLogger("shoal.engine")
# Plain ints: the enum members cost microseconds per use on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
_POLL_MS = 100  # how often the I/O thread looks at its peer
# While requests arrive on the direct socket, the I/O thread reports them to the hub at
# least this often (the hub holds tasks that depend on them until it hears).
_REPORT_MS = 10
_ABORT = b"abort"  # I/O thread -> main thread: look at the abort list now
_RELEASE = b"release"  # I/O thread -> main thread: drop the counts of ended leases
_PEER = b"p"  # the identity prefix of this engine's DEALERs to other engines
# What a log record sent to the hub says after the topic's engine id and level.
_RECORD_FORMAT = logging.Formatter("%(name)s: %(message)s")


class EngineProcess:
    """One engine: connects to the urls of ``info`` and serves until shut down.

    Parameters
    ----------
    info : ConnectionInfo
        ``urls`` must hold ``shell``, ``control`` and ``heartbeat``, and may hold ``log``.
        A url bound on every interface (``tcp://0.0.0.0:5555``) is connected to on
        loopback, or on the host ``info.extra["location"]`` names when that is another
        (:func:`shoal.util.disambiguate_url`).
    identity : bytes, optional
        The zmq identity of every socket, so the peer's ROUTERs can address the engine.
        A fresh unique one if omitted.
    engine_id : int, optional
        Reported in replies and status. With ``register``, the id asked of the hub, which
        gives it when no engine had it (an MPI rank), and another one otherwise.
    register : bool
        Register with a hub before serving (``register_request`` on control).
    parent_pid : int, optional
        Exit when this process is no longer the engine's parent.
    log_url : str, optional
        Publish log records there with :func:`shoal.util.connect_engine_logger` (from
        the moment the engine starts: before it registers, with topics ``engine.<LEVEL>``).
        By default, ``info.urls["log"]`` when there is one (a hub's log socket); ``""``
        publishes nothing.
    log_level : str or int
        The level of the root logger, and of the records published.
    launch_id : str, optional
        Said at registration: the hub's launcher started this engine with it.
    direct : bool
        Also bind a ROUTER for clients and other engines to send requests to directly;
        its url goes to the hub at registration. It listens on loopback when the hub is
        on this host, else on the interface that reaches the hub
        (:func:`shoal.util.outbound_ip`).

    With Curve keys in ``info`` (a hub on another address than loopback), every socket
    is a CurveZMQ client of the hub, and the direct socket a Curve server with the
    engines' keypair that admits only the engines' and the clients' public keys
    (``info.extra["curve_peers"]``).
    """

    def __init__(
        self,
        info: ConnectionInfo,
        *,
        identity: bytes | None = None,
        engine_id: int | None = None,
        register: bool = False,
        parent_pid: int | None = None,
        log_url: str | None = None,
        log_level: str | int = logging.WARNING,
        register_timeout: float = 30.0,
        direct: bool = False,
        launch_id: str | None = None,
    ) -> None:
        missing = {"shell", "control", "heartbeat"} - set(info.urls)
        if missing:
            raise ValueError(f"connection info lacks urls for {sorted(missing)}")
        validate_url_container(dict(info.urls))  # a hand-edited file: say which url is bad
        location = info.extra.get("location")
        #: The urls to connect to: ``info.urls`` with wildcard hosts resolved.
        self.urls = {
            name: disambiguate_url(url, location if isinstance(location, str) else None)
            for name, url in info.urls.items()
        }
        self.info = info
        self.curve: CurveKeys | None = info.curve
        self._curve_peers = _curve_peers(info)
        self.identity = identity or f"engine-{uuid.uuid4().hex[:12]}".encode()
        self.engine_id = engine_id
        self.register = register
        self.launch_id = launch_id
        self.register_timeout = register_timeout
        self.parent_pid = parent_pid
        self.log_url = self.urls.get("log") if log_url is None else log_url
        if self.log_url:
            validate_url(self.log_url)  # now, rather than once the engine runs
        self.log_level = integer_loglevel(log_level)
        self.hub_timeout: float | None = None  # set by registration
        self.started = time.time()
        self.serializer = Serializer()
        # Requests read and not yet run, each with the socket its reply goes out on.
        self.pending: collections.deque[tuple[zmq.Socket[Any], Message]] = collections.deque()
        self.running: Message | None = None  # the request user code is running now
        self._running_sock: zmq.Socket[Any] | None = None
        self._direct_done: list[list[Any]] = []  # history of direct requests, for the hub
        self._in_user_code = False
        self._main_ident = threading.main_thread().ident
        self._abort_ids: set[str] = set()  # filled by the I/O thread
        self._deadline: float | None = None  # when the running request's time is up
        self._timed_out = False
        self._abort_all = False
        self._releases: list[str] = []  # owners whose lease ended, filled by the I/O thread
        self._peers: dict[str, _PeerLink] = {}  # direct url of another engine -> its link
        self._peer_token = uuid.uuid4().hex[:16].encode()
        #: Called on the main thread after each reply is sent (e.g. proxies dropped on
        #: this engine give their references back); a failing hook is logged and kept.
        self.after_request: list[Callable[[], None]] = []
        self.kernel = Kernel(
            _user_namespace(),
            engine_id=engine_id,
            on_stream=self._stream,
            objects=ObjectStore(self.serializer, engine_id=engine_id),
            on_display=self._display,
            on_input=self._input,
            # SHOAL_ENGINE_IPYTHON=0: plain Python even where IPython is installed
            ipython=None if os.environ.get("SHOAL_ENGINE_IPYTHON", "1") != "0" else False,
        )
        self.context: zmq.Context[Any] = zmq.Context()
        # Replay protection is per link (shoal.wire): a request that waited long in a
        # queue is never refused. Large buffers go through shared memory to peers of
        # this host only (requests say where their sender is).
        self._codec = Codec(
            info.key,
            serializer=self.serializer,
            shm=default_shared_memory() if shared_memory_enabled() else None,
        )
        # Every socket sends and receives through a Session of its own: caps, verification,
        # drop counts and the link stamp that orders what it sends.
        self._sessions: dict[zmq.Socket[Any], Session] = {}
        self._pipe_lock = threading.Lock()
        self._pipe_in, self._pipe_out = self._pipe()
        self._shell: zmq.Socket[Any] = self._dealer("shell")
        self._shell.rcvhwm = 0  # requests wait here while user code runs: never refuse one
        self._sessions[self._shell] = Session(self._shell, self._codec)
        self._direct: zmq.Socket[Any] | None = None
        self.direct_url: str | None = None
        self.host = this_host()  # where clients on this host find its shared memory
        if direct:  # clients on this host send here, skipping the hub's relay
            self._bind_direct()

    #: The Curve server of the direct socket (its ZAP handler), when there is one.
    _direct_curve: CurveServer | None = None
    #: When the last direct request was answered (monotonic), for the I/O thread.
    _direct_at = 0.0
    # The requests a targeted interrupt is for (made in run()), and whether an untargeted
    # one is due: set by the I/O thread before its SIGINT, read by the handler.
    _interrupt_ids: set[str]
    _interrupt_any = False
    # input_reply contents from the I/O thread, (the task's msg_id, content): made in run()
    _input_replies: queue.SimpleQueue[tuple[str | None, Any]]
    #: The Jupyter gateway an attached console talks to (_jupyter.py), once opened.
    _jupyter: JupyterGateway | None = None

    def _bind_direct(self) -> None:
        sock: zmq.Socket[Any] = self.context.socket(zmq.ROUTER)
        sock.router_mandatory = True
        sock.rcvhwm = 0
        sock.sndhwm = 0
        sock.linger = 1000
        hub_host = split_url(self.urls["shell"])[1]
        ip = outbound_ip(hub_host)  # where peers on the hub's network reach this host
        if self.curve is not None:
            self._direct_curve = CurveServer(
                self.context,
                public_key=self.curve.client_public,
                secret_key=self.curve.client_secret,
                allowed=self._curve_peers,
            )
            self._direct_curve.configure(sock)
        # Unencrypted beyond loopback only when the hub is (it was told ``insecure``).
        self.direct_url = bind(sock, f"tcp://{ip}:*", insecure=self.curve is None)
        self._sessions[sock] = Session(sock, self._codec)
        self._direct = sock

    def _pipe(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """The inproc pipe to the main thread: it reads one end, other threads write."""
        reader: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
        reader.bind(f"inproc://shoal-engine-{id(self)}")
        writer: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
        writer.connect(f"inproc://shoal-engine-{id(self)}")
        return reader, writer

    @property
    def id(self) -> int | None:
        """The engine id (what log topics name), None until registered."""
        return self.engine_id

    def _dealer(self, channel: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(zmq.DEALER)
        sock.identity = self.identity
        sock.linger = 1000
        if self.curve is not None:
            configure_curve_client(sock, self.curve)
        sock.connect(self.urls[channel])
        return sock

    # -- main thread ----------------------------------------------------------------------
    def run(self) -> int:
        """Serve requests until shutdown; returns the exit code."""
        set_current_engine(self)
        self._interrupt_ids = set()
        self._input_replies = queue.SimpleQueue()
        signal.signal(signal.SIGINT, self._on_sigint)
        control, heartbeat = self._dealer("control"), self._dealer("heartbeat")
        # The control socket is the I/O thread's: a codec of its own (no shared state).
        self._sessions[control] = Session(control, Codec(self.info.key, serializer=self.serializer))
        if self.log_url:
            # Before registering: the connection is up by the time user code logs (a PUB
            # drops what it sends before that), and a refusal reaches the hub's log too.
            handler = connect_engine_logger(
                self.context, self.log_url, self, self.log_level, curve=self.curve
            )
            if handler.formatter is None:
                handler.setFormatter(_RECORD_FORMAT)
        if self.register and not self._register(control):
            return 2
        # Say hello on every channel: the peer's ROUTERs can address this engine on a
        # channel only once they have heard from it there.
        hello = {"pid": os.getpid(), "engine_id": self.engine_id}
        self._send(control, self._encode(MsgType.ENGINE_READY, hello))
        heartbeat.send(b"ready")
        capture = self.context.socket(zmq.PUB)
        capture.bind(f"inproc://shoal-heart-{id(self)}")
        pings = self.context.socket(zmq.SUB)
        pings.subscribe(b"")
        pings.connect(f"inproc://shoal-heart-{id(self)}")
        threading.Thread(
            target=_echo, args=(heartbeat, capture), name="shoal-engine-heart", daemon=True
        ).start()
        threading.Thread(
            target=self._io_loop, args=(control, pings), name="shoal-engine-io", daemon=True
        ).start()
        self._send(self._shell, self._encode(MsgType.ENGINE_READY, hello))
        poller = zmq.Poller()
        poller.register(self._shell, zmq.POLLIN)
        poller.register(self._pipe_in, zmq.POLLIN)
        if self._direct is not None:
            poller.register(self._direct, zmq.POLLIN)
        while True:
            try:
                while not self.pending:
                    if self._jupyter is not None and self._jupyter.serve_next():
                        self._read_all()  # the cluster's requests waiting go next
                        continue
                    for sock, _ in poller.poll():
                        if sock is self._pipe_in:
                            self._forward_pipe()
                        else:
                            self._read(sock)
                    self._apply_aborts()
                self._serve(*self.pending.popleft())
            except KeyboardInterrupt:  # an interrupt that came too late: nothing runs
                continue

    def _register(self, control: zmq.Socket[Any]) -> bool:
        """Ask the hub for an engine id; False when it does not answer or refuses."""
        info: dict[str, object] = {
            "pid": os.getpid(),
            "hostname": self.host,
            "direct_url": self.direct_url,
        }
        if self.launch_id is not None:
            info["launch_id"] = self.launch_id
        if self.engine_id is not None:
            info["requested_id"] = self.engine_id
        session = self._sessions[control]
        self._send(control, self._encode(MsgType.REGISTER_REQUEST, info))
        deadline = time.monotonic() + self.register_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = session.recv(timeout=left)
            except TimeoutError:
                break
            if reply.msg_type != MsgType.REGISTER_REPLY:
                continue
            content = reply.content
            if content.get("status") != "ok":
                log.error("the hub refused this engine: %s", content.get("evalue", content))
                return False
            self.engine_id = int(content["engine_id"])
            self.kernel.engine_id = self.engine_id
            if self.kernel.objects is not None:
                self.kernel.objects.engine_id = self.engine_id
            timeout = content.get("hub_timeout")
            self.hub_timeout = None if timeout is None else float(timeout)
            return True
        log.error("no hub answered at %s within %s s", self.urls["control"], self.register_timeout)
        return False

    def _read(self, sock: zmq.Socket[Any]) -> None:
        """Move every request waiting on ``sock`` into ``pending``, verified, not loaded."""
        session = self._sessions[sock]
        direct = sock is self._direct
        while cast("int", sock.getsockopt(_EVENTS)) & _POLLIN:  # cheaper than a raised Again
            try:
                frames = session.recv_frames_nowait()
            except zmq.Again:
                return
            if frames is None:  # over the caps: dropped and counted
                continue
            if direct and len(frames) == 2 and frames[1].bytes == PING:
                with contextlib.suppress(zmq.ZMQError):  # a client checks the way back
                    sock.send_multipart([frames[0], PONG])
                continue
            self._accept(sock, session, frames)

    def _accept(self, sock: zmq.Socket[Any], session: Session, frames: list[Any]) -> None:
        """Verify one request and queue it in ``pending``, its content not loaded."""
        try:  # content is loaded when the request runs, not here
            msg = session.decode_or_drop(frames, content=False)
        except SharedMemoryLost as exc:  # authentic, but its data is gone: say so
            msg = Message(exc.header, exc.parent_header, {}, None, (), exc.identities)
            failed = error_reply(exc, engine_id=self.engine_id, serializer=None)
            self._reply(sock, self._reply_route(sock, msg), failed, time.time())
            return
        if msg is not None:
            self.pending.append((sock, self._reply_route(sock, msg)))

    def _reply_route(self, sock: zmq.Socket[Any], msg: Message) -> Message:
        """``msg`` with the identity its reply goes to: the one its (signed) metadata
        names as ``reply_to``, for a peer that receives on another socket than it sends
        from; else the sender's own."""
        reply_to = msg.metadata.get("reply_to") if sock is self._direct else None
        if isinstance(reply_to, str):
            return msg._replace(identities=(reply_to.encode("utf-8", "surrogateescape"),))
        return msg

    def _read_all(self) -> None:
        self._read(self._shell)
        if self._direct is not None:
            self._read(self._direct)

    def _forward_pipe(self) -> None:
        """Send on shell what other threads wrote to the pipe."""
        while cast("int", self._pipe_in.getsockopt(_EVENTS)) & _POLLIN:
            try:
                frames = self._pipe_in.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) == 1 and frames[0].bytes == _ABORT:
                self._read_all()  # everything that arrived before the abort is dropped
                self._apply_aborts()
            elif len(frames) == 1 and frames[0].bytes == _RELEASE:
                self._apply_releases()
            elif len(frames) == 1 and frames[0].bytes == WAKE:
                pass  # the Jupyter gateway queued a request: the main loop serves it
            else:
                sock = self._direct if frames[0].bytes == b"d" else self._shell
                if sock is not None:
                    self._send(sock, frames[1:])

    def _apply_releases(self) -> None:
        objects = self.kernel.objects
        while self._releases:
            owner = self._releases.pop()
            if objects is not None:
                freed = objects.release(owner)
                log.info("lease of %r ended: %d objects freed", owner, freed)

    # -- requests to other engines (main thread) ------------------------------------------
    def _peer_keys(self) -> CurveKeys | None:
        """Curve keys for a link to another engine's own socket: it serves with the
        engines' keypair, which this engine holds too."""
        if self.curve is None:
            return None
        own = self.curve
        return CurveKeys(own.client_public, own.client_public, own.client_secret)

    def peer_request(
        self, url: str, msg_type: str, content: Any, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a shell request to the engine whose direct socket is at ``url``; return the
        reply content.

        Made for objects that live on another engine: fetching one, calling its methods.
        While it waits, this engine serves the requests other engines send it, so two
        engines asking each other at once do not deadlock; clients' requests wait.

        Raises
        ------
        TimeoutError
            No reply within ``timeout`` seconds (None: wait as long as it takes).
        """
        if threading.get_ident() != self._main_ident:
            raise RuntimeError("peer_request runs on the engine's main thread only")
        link = self._peers.get(url)
        if link is None:
            link = self._peers[url] = _PeerLink(
                self.context, url, _PEER + self._peer_token, self._codec, self._peer_keys()
            )
            self._sessions[link.sock] = link.session
        header = new_header(msg_type, self.identity.decode(), f"engine.{self.engine_id}")
        msg = Message(header, None, {"host": self.host}, content)  # so it replies in kind
        link.sock.send_multipart(self._codec.encode(msg, link=link.session.link), copy=False)
        poller = zmq.Poller()
        poller.register(link.sock, zmq.POLLIN)
        poller.register(link.monitor, zmq.POLLIN)
        if self._direct is not None:
            poller.register(self._direct, zmq.POLLIN)
        sent = time.monotonic()
        deadline = None if timeout is None else sent + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"no answer to {msg_type} from the engine at {url} in {timeout} s"
                )
            problem = link.problem(sent)
            if problem is not None:  # its process ended, or nothing listens there
                self._peers.pop(url, None)
                self._sessions.pop(link.sock, None)
                link.close()
                raise EngineDiedError(f"{msg_type} to the engine at {url} failed: {problem}")
            wait_ms = _POLL_MS if left is None else min(_POLL_MS, int(left * 1000) + 1)
            for ready, _ in poller.poll(wait_ms):
                if ready is link.monitor:
                    link.read_events()
                elif ready is link.sock:
                    reply = link.receive()
                    if (
                        reply is not None
                        and reply.parent_header is not None
                        and reply.parent_header.msg_id == header.msg_id
                    ):
                        return dict(reply.content)
                else:
                    self._read(ready)
                    self._serve_peers()

    def _serve_peers(self) -> None:
        """Serve now the requests other engines sent, keeping the rest in order."""
        peers = [
            (s, m) for s, m in self.pending if s is self._direct and m.identities[0][:1] == _PEER
        ]
        if not peers:
            return
        self.pending = collections.deque(
            (s, m)
            for s, m in self.pending
            if not (s is self._direct and m.identities[0][:1] == _PEER)
        )
        saved = (self.running, self._running_sock, self._deadline, self._in_user_code)
        try:
            for sock, msg in peers:
                self._serve(sock, msg)
        finally:
            self.running, self._running_sock, self._deadline, self._in_user_code = saved

    def _apply_aborts(self) -> None:
        if not self._abort_all and not self._abort_ids:
            return
        keep: collections.deque[tuple[zmq.Socket[Any], Message]] = collections.deque()
        abort_all, self._abort_all = self._abort_all, False
        for sock, request in self.pending:
            msg_id = request.header.msg_id
            if abort_all and request.msg_type == MsgType.APPLY_BATCH_REQUEST:
                self._serve_batch(sock, request, aborted=True)
            elif abort_all or msg_id in self._abort_ids:
                self._abort_ids.discard(msg_id)
                self._reply(sock, request, {"status": "aborted"}, time.time())
            else:
                keep.append((sock, request))
        self.pending = keep

    def _serve(self, sock: zmq.Socket[Any], request: Message) -> None:
        if request.header.msg_id in self._abort_ids:
            self._abort_ids.discard(request.header.msg_id)
            self._reply(sock, request, {"status": "aborted"}, time.time())
            return
        if request.msg_type == MsgType.APPLY_BATCH_REQUEST:
            self._serve_batch(sock, request)
            return
        started = time.time()
        assert isinstance(request.content, RawContent)  # noqa: S101 - read raw
        reply = self._run(sock, request, request.content, request.metadata.get("timeout"))
        self._forward_pipe()  # other threads' output goes before the reply
        self._reply(sock, request, reply, started)
        self._after_request()

    def _run(
        self, sock: zmq.Socket[Any], request: Message, raw: RawContent | bytes, limit: object
    ) -> dict[str, Any]:
        """Load the content of ``request`` and run it: its reply (an error reply when it
        failed, was interrupted or ran past ``limit`` seconds)."""
        reply: dict[str, Any] | None = None
        if isinstance(limit, int | float) and limit > 0:
            self._deadline = time.monotonic() + limit  # the I/O thread interrupts after it
        self._timed_out = False
        self._interrupt_any = False  # one meant for an earlier request came too late
        self.running = request
        self._running_sock = sock
        try:
            try:
                if isinstance(raw, RawContent):
                    content = raw.load(self.serializer)
                else:
                    content = self.serializer.loads([raw])
            except Exception as exc:
                reply = error_reply(exc, engine_id=self.engine_id, serializer=None)
            else:
                self._in_user_code = True
                self.kernel.allow_stdin = request.metadata.get("allow_stdin") is True
                reply = self.kernel.handle(request.msg_type, content)
                self._in_user_code = False
        except KeyboardInterrupt as exc:  # landed just outside Kernel.handle
            self._in_user_code = False
            if reply is None:
                reply = error_reply(exc, engine_id=self.engine_id, serializer=self.serializer)
        finally:
            self.running = None
            self._running_sock = None
            self._deadline = None
            self._interrupt_ids.discard(request.header.msg_id)
        if self._timed_out and reply.get("ename") == "KeyboardInterrupt":
            reply = error_reply(
                TimeoutError(f"{request.msg_type} ran longer than its limit of {limit} s"),
                engine_id=self.engine_id,
                serializer=self.serializer,
            )
        return reply

    def _after_request(self) -> None:
        for hook in self.after_request:
            try:
                hook()
            except Exception:
                log.exception("an after_request hook failed")

    def _serve_batch(self, sock: zmq.Socket[Any], request: Message, aborted: bool = False) -> None:
        """Run the small ``apply_request`` tasks of an ``apply_batch_request`` one after
        the other, each as if it had come alone (its own id for its output, its history
        and its abort, its own time limit), and answer them in one ``apply_batch_reply``.
        ``aborted``: answer every task aborted, running none."""
        started = time.time()
        assert isinstance(request.content, RawContent)  # noqa: S101 - read raw
        try:
            tasks = _batch_tasks(request.content.load(self.serializer))
        except Exception as exc:  # authentic but malformed: the client fails them all
            failed = error_reply(exc, engine_id=self.engine_id, serializer=None)
            self._reply(sock, request, failed, started)
            return
        replies: list[list[Any]] = []
        header = request.header
        for msg_id, raw, limit in tasks:
            begun = time.time()
            if aborted or msg_id in self._abort_ids:
                self._abort_ids.discard(msg_id)
                reply: dict[str, Any] = {"status": "aborted"}
            else:
                task = request._replace(
                    header=header._replace(msg_id=msg_id, msg_type=MsgType.APPLY_REQUEST),
                    content=None,
                )
                reply = self._run(sock, task, raw, limit)
            completed = time.time()
            replies.append([msg_id, reply.get("status"), begun, completed, reply])
            if sock is self._direct and self.register:  # the hub did not see it: tell it
                status = reply.get("status")
                self._direct_done.append([msg_id, status, header.date, begun, completed])
        self._forward_pipe()  # other threads' output goes before the replies
        self._reply(sock, request, {"status": "ok", "replies": replies}, started, history=False)
        self._after_request()

    def _reply(
        self,
        sock: zmq.Socket[Any],
        request: Message,
        reply: dict[str, Any],
        started: float,
        *,
        history: bool = True,
    ) -> None:
        meta = {
            "engine_id": self.engine_id,
            "status": reply.get("status"),  # for routers, which never load content
            "started": started,
            "completed": time.time(),
        }
        # Large buffers go through shared memory to a requester on this host only.
        shm = request.metadata.get("host", self.host) == self.host
        try:
            frames = self._encode(
                reply_type(request.msg_type), reply, parent=request, metadata=meta, shm=shm
            )
        except UnpicklableError as exc:  # the result itself cannot travel: say so
            if "replies" in reply:  # a batch: only the tasks whose results cannot fail
                reply = {"status": "ok", "replies": [self._travels(r) for r in reply["replies"]]}
            else:
                reply = error_reply(exc, engine_id=self.engine_id, serializer=None)
            frames = self._encode(
                reply_type(request.msg_type), reply, parent=request, metadata=meta, shm=shm
            )
        self._send(sock, frames)
        if history and sock is self._direct and self.register:  # the hub did not see it
            header = request.header
            status = meta["status"]
            self._direct_done.append(
                [header.msg_id, status, header.date, started, meta["completed"]]
            )
            self._direct_at = time.monotonic()

    def _travels(self, entry: list[Any]) -> list[Any]:
        """A batch reply's entry whose reply can be serialized: as it is, or an error
        reply saying why its result cannot travel."""
        try:
            self.serializer.dumps(entry[4])
        except UnpicklableError as exc:
            return [*entry[:4], error_reply(exc, engine_id=self.engine_id, serializer=None)]
        return entry

    def _send(self, sock: zmq.Socket[Any], frames: list[Any]) -> None:
        """Send encoded ``frames`` on ``sock``, stamped now by its session's link."""
        at = 0
        while memoryview(frames[at])[: len(DELIMITER)] != DELIMITER:
            at += 1  # past the routing identities
        self._sessions[sock].stamp(frames, at)
        self._send_now(sock, frames)

    def _send_now(self, sock: zmq.Socket[Any], frames: list[Any]) -> None:
        try:
            # A loop of send() calls: pyzmq's send_multipart checks every part first and
            # costs a few microseconds more per message.
            send = sock.send
            for frame in frames[:-1]:
                send(frame, _SNDMORE, copy=False)
            send(frames[-1], 0, copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH on the direct socket: the client left
            log.warning("dropped a reply: its client is gone (%s)", exc)
            self._codec.discard(frames)  # its shared memory, which nobody will open

    def _stream(self, name: str, text: str) -> None:
        frames = self._encode(MsgType.STREAM, {"name": name, "text": text}, parent=self.running)
        sock = self._running_sock or self._shell
        if threading.get_ident() == self._main_ident:
            self._send(sock, frames)
        else:  # zmq sockets are not thread-safe: the main thread sends it
            tag = b"d" if sock is self._direct else b"s"
            with self._pipe_lock:
                self._pipe_out.send_multipart([tag, *frames], copy=False)

    def _display(self, msg_type: str, content: dict[str, Any]) -> None:
        """Rich output (``display_data`` and its kin) goes where ``stream`` goes."""
        frames = self._encode(msg_type, content, parent=self.running)
        sock = self._running_sock or self._shell
        if threading.get_ident() == self._main_ident:
            self._send(sock, frames)
        else:  # zmq sockets are not thread-safe: the main thread sends it
            tag = b"d" if sock is self._direct else b"s"
            with self._pipe_lock:
                self._pipe_out.send_multipart([tag, *frames], copy=False)

    def _input(self, prompt: str, password: bool) -> str:
        """``input()`` in user code: ask the client that sent the running request
        (``input_request``) and wait for its ``input_reply``, which the I/O thread
        hands over. An interrupt ends the wait (it raises in user code)."""
        request, sock = self.running, self._running_sock
        if request is None or sock is None or threading.get_ident() != self._main_ident:
            raise EOFError("input() is answered only for the request the engine runs")
        while not self._input_replies.empty():  # left by an input that was interrupted
            self._input_replies.get_nowait()
        meta = {"engine_id": self.engine_id}
        content = {"prompt": prompt, "password": password}
        frames = self._encode(MsgType.INPUT_REQUEST, content, parent=request, metadata=meta)
        self._send(sock, frames)
        while True:
            try:
                parent, answer = self._input_replies.get(timeout=_POLL_MS / 1000)
            except queue.Empty:
                self._forward_pipe()  # other threads' output still flows
                continue
            if parent != request.header.msg_id:
                continue  # an answer to an earlier request's input
            if not isinstance(answer, dict):
                answer = {"status": "error", "evalue": f"the client answered {answer!r}"}
            if answer.get("status", "ok") != "ok":  # the client could not ask its user
                raise EOFError(str(answer.get("evalue") or "the client could not answer input()"))
            return str(answer.get("value", ""))

    def _encode(
        self,
        msg_type: str,
        content: Any,
        *,
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
        shm: bool = True,
    ) -> list[Any]:
        header = new_header(msg_type, self.identity.decode(), f"engine.{self.engine_id}")
        if parent is None:
            msg = Message(header, None, metadata or {}, content)
        else:
            msg = Message(header, parent.header, metadata or {}, content, (), parent.identities)
        # Stamped by the socket's link when it is sent (_send), in the socket's order.
        return self._codec.encode(msg, shm=shm, stamped=False)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self._in_user_code:
            return
        if self._interrupt_ids and not self._interrupt_any:  # only targeted ones are due
            running = self.running
            if running is None or running.header.msg_id not in self._interrupt_ids:
                return  # its request ended before the signal landed: spare the next one
        self._interrupt_any = False
        raise KeyboardInterrupt

    # -- I/O thread -----------------------------------------------------------------------
    def _io_loop(self, control: zmq.Socket[Any], pings: zmq.Socket[Any]) -> None:
        session = self._sessions[control]
        codec = session.codec
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(pings, zmq.POLLIN)
        last_ping = time.monotonic()
        while True:
            busy = self._direct_done or time.monotonic() - self._direct_at < 1.0
            for sock, _ in poller.poll(_REPORT_MS if busy else _POLL_MS):
                if sock is pings:
                    while pings.poll(0):
                        pings.recv(copy=False)
                    last_ping = time.monotonic()
                    continue
                while True:
                    try:
                        frames = session.recv_frames_nowait()
                    except zmq.Again:
                        break
                    with contextlib.suppress(SharedMemoryLost):  # control carries none
                        msg = None if frames is None else session.decode_or_drop(frames)
                        if msg is not None:
                            self._control(control, codec, msg)
            if self._direct_done:
                done, self._direct_done = self._direct_done, []
                header = new_header(MsgType.HISTORY_REPORT, self.identity.decode(), "engine")
                report = Message(header, None, {}, {"tasks": done})
                control.send_multipart(codec.encode(report, link=session.link))
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline and self._in_user_code:
                self._deadline = None
                self._timed_out = True
                self._interrupt_any = True
                if self._main_ident is not None:
                    signal.pthread_kill(self._main_ident, signal.SIGINT)
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.error("the parent process is gone: exiting")
                _exit(1)
            if self.hub_timeout is not None and time.monotonic() - last_ping > self.hub_timeout:
                if pings.poll(0):  # pings queued while this thread waited for the GIL
                    last_ping = time.monotonic()
                    continue
                log.error("no heartbeat from the hub for %.1f s: exiting", self.hub_timeout)
                _exit(1)

    def _control(self, control: zmq.Socket[Any], codec: Codec, msg: Message) -> None:
        content: dict[str, Any] = {"status": "ok"}
        kind = msg.msg_type
        if kind == MsgType.INPUT_REPLY:  # the answer to input() in user code: no reply
            task = msg.metadata.get("msg_id")  # the request whose input it answers
            self._input_replies.put((task if isinstance(task, str) else None, msg.content))
            return
        if kind == MsgType.INTERRUPT_REQUEST:
            msg_ids = msg.content.get("msg_ids") if isinstance(msg.content, dict) else None
            if msg_ids is None or (
                isinstance(msg_ids, list) and all(isinstance(m, str) for m in msg_ids)
            ):
                content["interrupted"] = self._interrupt(msg_ids)
            else:
                problem = ValueError(
                    f"interrupt_request: msg_ids must be a list of str or None, not {msg_ids!r}"
                )
                content = error_reply(problem, engine_id=self.engine_id, serializer=None)
        elif kind == MsgType.ABORT_REQUEST:
            msg_ids = msg.content.get("msg_ids") if isinstance(msg.content, dict) else None
            if msg_ids is None:
                self._abort_all = True
            else:
                self._abort_ids.update(str(m) for m in msg_ids)
            with self._pipe_lock:  # wake the main thread, which owns the queue
                self._pipe_out.send(_ABORT)
        elif kind == MsgType.STATUS_REQUEST:
            content.update(self.status())
        elif kind == MsgType.JUPYTER_GATEWAY_REQUEST:  # a console attaches (_jupyter.py)
            content = open_gateway(self, msg.content)
        elif kind == MsgType.RELEASE_REQUEST:  # a client's lease ended: the main thread frees
            owner = msg.content.get("owner") if isinstance(msg.content, dict) else None
            if isinstance(owner, str):
                self._releases.append(owner)
                with self._pipe_lock:
                    self._pipe_out.send(_RELEASE)
        elif kind not in CONTROL_REQUESTS:
            known = ", ".join(sorted(CONTROL_REQUESTS))
            problem = ValueError(f"unknown control request {kind!r}; known: {known}")
            content = error_reply(problem, engine_id=self.engine_id, serializer=None)
        header = new_header(reply_type(kind), self.identity.decode(), f"engine.{self.engine_id}")
        reply = Message(header, msg.header, {}, content, (), msg.identities)
        frames = codec.encode(reply, link=self._sessions[control].link)
        if kind != MsgType.SHUTDOWN_REQUEST:
            control.send_multipart(frames)
            return
        tracker = control.send_multipart(frames, copy=False, track=True)
        with contextlib.suppress(zmq.NotDone):
            if tracker is not None:
                tracker.wait(1.0)  # the reply is on its way; the peer waits for it
        _exit(0)

    def _interrupt(self, msg_ids: list[str] | None) -> bool:
        """Interrupt the running request (I/O thread): any, or only one of ``msg_ids``.
        Whether a signal was sent."""
        running = self.running
        if running is None or self._main_ident is None:
            return False
        if msg_ids is None:
            self._interrupt_any = True
        else:
            if running.header.msg_id not in msg_ids:
                return False  # not running one of them: nothing to do
            self._interrupt_ids.add(running.header.msg_id)
        signal.pthread_kill(self._main_ident, signal.SIGINT)
        return True

    def status(self) -> dict[str, Any]:
        """What ``status_request`` answers: who and where this engine is, how loaded."""
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * page
        return {
            "pid": os.getpid(),
            "hostname": self.host,
            "cores": os.cpu_count(),
            "memory_rss": rss,
            "memory_total": os.sysconf("SC_PHYS_PAGES") * page,
            "queue": len(self.pending),
            "busy": self.running is not None,
            "uptime": time.time() - self.started,
            "engine_id": self.engine_id,
            "python": sys.version.split()[0],
            "objects": 0 if self.kernel.objects is None else len(self.kernel.objects),
            "messages": self.statistics(),
        }

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per socket: messages sent, received, and dropped by reason (what was refused
        before anything was acted on: bad signatures, replays, caps)."""
        peers = {link.sock for link in self._peers.values()}
        out: dict[str, dict[str, Any]] = {}
        for sock, session in list(self._sessions.items()):
            stats = session.statistics()
            if sock is self._shell:
                name = "shell"
            elif sock is self._direct:
                name = "direct"
            else:
                name = "peers" if sock in peers else "control"
            mine = out.setdefault(name, {"sent": 0, "received": 0, "dropped": {}})
            mine["sent"] += stats.sent
            mine["received"] += stats.received
            for reason, n in stats.dropped.items():
                mine["dropped"][reason] = mine["dropped"].get(reason, 0) + n
        if self._jupyter is not None:  # an attached console's gateway (_jupyter.py)
            out["jupyter"] = self._jupyter.statistics()
        return out


class _PeerLink:
    """A DEALER to another engine's direct socket, with a monitor that tells when the
    connection is up and when it went away."""

    CONNECT_TIMEOUT = 5.0  # seconds a request may wait for a first connection

    def __init__(
        self,
        context: zmq.Context[Any],
        url: str,
        identity: bytes,
        codec: Codec,
        curve: CurveKeys | None,
    ) -> None:
        self.sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
        self.sock.identity = identity
        self.sock.linger = 0
        if curve is not None:
            configure_curve_client(self.sock, curve)
        self.session = Session(self.sock, codec)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self.sock.connect(url)
        self.connected = False
        self.lost = False

    def receive(self) -> Message | None:
        """The reply waiting on the socket, verified; None when it was dropped."""
        frames = self.session.recv_frames_nowait()
        if frames is None:
            return None
        try:
            return self.session.decode_or_drop(frames)
        except SharedMemoryLost as exc:
            log.warning("dropped a reply: %s", exc)
            return None

    def read_events(self) -> None:
        while self.monitor.poll(0):
            # The event number: the first 2 bytes of the first frame (zmq_socket_monitor).
            frames = self.monitor.recv_multipart()
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.lost = True

    def problem(self, sent: float) -> str | None:
        """Why a request sent at ``sent`` will never be answered, or None."""
        self.read_events()
        if self.lost:
            return "the connection closed (the engine's process ended?)"
        if not self.connected and time.monotonic() - sent > self.CONNECT_TIMEOUT:
            return f"no engine answered there within {self.CONNECT_TIMEOUT:g} s"
        return None

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def _user_namespace() -> dict[str, Any]:
    """The user's namespace: a bare ``__main__`` module of its own (``python -m`` made
    this package's ``__main__.py`` the ``__main__`` module, and ``clear_request`` must
    not empty it)."""
    user_main = types.ModuleType("__main__")
    user_main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = user_main
    return user_main.__dict__


def _curve_peers(info: ConnectionInfo) -> list[str]:
    """The public keys an engine's own socket admits: the engines' and the clients'."""
    peers = info.extra.get("curve_peers")
    if info.curve is None:
        return []
    if not isinstance(peers, dict) or not all(
        isinstance(peers.get(k), str) for k in ("engine", "client")
    ):
        raise ValueError(
            "the connection file has Curve keys but no 'curve_peers' with the engines'"
            " and clients' public keys; use the hub-engine.json the hub wrote"
        )
    return [peers["engine"], peers["client"]]


def _batch_tasks(content: object) -> list[tuple[str, bytes, float | None]]:
    """The tasks of an ``apply_batch_request``'s content, checked: ``{"tasks": [[msg_id,
    pickled apply_request content, time limit or None], ...]}``."""
    tasks = content.get("tasks") if isinstance(content, dict) else None
    if not isinstance(tasks, list) or not 0 < len(tasks) <= BATCH_MAX:
        raise ValueError(
            f"apply_batch_request needs content['tasks'] as a list of 1 to {BATCH_MAX} tasks"
        )
    checked = []
    for task in tasks:
        if not (
            isinstance(task, list | tuple)
            and len(task) == 3
            and isinstance(task[0], str)
            and isinstance(task[1], bytes)
            and (task[2] is None or type(task[2]) in (int, float))
        ):
            raise ValueError(
                "each task of an apply_batch_request is [msg_id (str), content (pickled"
                " bytes), time limit (seconds or None)]"
            )
        checked.append((task[0], task[1], None if task[2] is None else float(task[2])))
    return checked


def _exit(code: int) -> None:
    """End the process now (from the I/O thread, while user code may hold the main
    thread), first removing the shared memory segments it holds."""
    with contextlib.suppress(Exception):
        default_shared_memory().close()
    os._exit(code)


def _echo(sock: zmq.Socket[Any], capture: zmq.Socket[Any]) -> None:
    """Echo heartbeat pings back, in C and without the GIL, until the context ends."""
    try:
        zmq.proxy(sock, sock, capture)
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close(linger=0)
        capture.close(linger=0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.engine --connection-file FILE [--register] [...]``, or with
    ``--shell URL --control URL --heartbeat URL --key-file FILE`` instead of the file."""
    parser = argparse.ArgumentParser(prog="shoal-engine", description=__doc__.split("\n")[0])
    parser.add_argument("--connection-file", help="JSON file with the urls and the key")
    for channel in ("shell", "control", "heartbeat"):
        parser.add_argument(f"--{channel}", metavar="URL", help=f"the peer's {channel} url")
    parser.add_argument(
        "--key-file", help="file holding the signing key (private: mode 0600), with the urls"
    )
    parser.add_argument("--identity", default=None, help="zmq identity (default: unique)")
    parser.add_argument(
        "--engine-id", type=int, default=None, help="with --register: the id to ask for"
    )
    parser.add_argument(
        "--id-from-rank",
        type=int,
        default=None,
        metavar="BASE",
        help="ask for engine id BASE + this process's MPI rank (or Slurm task id)",
    )
    parser.add_argument(
        "--launch-id", default=None, help="said at registration: the launch that started it"
    )
    parser.add_argument(
        "--register", action="store_true", help="register with a hub for an engine id"
    )
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this parent process is gone"
    )
    parser.add_argument(
        "--log-level", type=_log_level, default="WARNING", help="a level name, or a number"
    )
    parser.add_argument(
        "--log-url",
        default=None,
        help="publish logs to this zmq url (default: the connection file's 'log' url)",
    )
    parser.add_argument(
        "--direct", action="store_true", help="also take requests from clients directly"
    )
    args = parser.parse_args(argv)
    local_logger("", args.log_level)  # timestamped lines on stderr
    urls = {c: getattr(args, c) for c in ("shell", "control", "heartbeat") if getattr(args, c)}
    if args.connection_file and (urls or args.key_file):
        parser.error("give either --connection-file or the urls with --key-file, not both")
    if args.connection_file:
        info = read_connection_file(args.connection_file)
    elif len(urls) == 3 and args.key_file:
        # The key never goes on the command line, where `ps` would show it.
        info = ConnectionInfo(urls, read_private_file(args.key_file).strip())
    else:
        parser.error(
            "say where the peer is: --connection-file FILE, or --shell, --control,"
            " --heartbeat and --key-file"
        )
    engine_id = args.engine_id
    if args.id_from_rank is not None:
        rank = _launch_rank()
        if rank is None:
            parser.error(
                f"--id-from-rank: none of {', '.join(_RANK_VARIABLES)} is set; start the"
                " engine with mpiexec or srun"
            )
        engine_id = args.id_from_rank + rank
    try:
        engine = EngineProcess(
            info,
            identity=None if args.identity is None else args.identity.encode(),
            engine_id=engine_id,
            launch_id=args.launch_id,
            register=args.register,
            parent_pid=args.parent_pid,
            log_url=args.log_url,
            log_level=args.log_level,
            direct=args.direct,
        )
    except (TypeError, ValueError) as exc:  # a malformed url: validate_url says which
        parser.error(str(exc))
    return engine.run()


# Where MPI implementations and Slurm put a process's rank (Open MPI, PMIx, MPICH/PMI).
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def _launch_rank() -> int | None:
    """This process's rank in its MPI job (or Slurm step), from the environment."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _log_level(text: str) -> int:
    """``--log-level`` as a number: a level name in any case, or an integer."""
    try:
        return integer_loglevel(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
