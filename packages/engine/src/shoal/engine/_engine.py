"""The engine process: serves a :class:`Kernel` and an :class:`ObjectStore` over zmq.

Theory of operation
-------------------
Two threads, so that an engine busy in user code still answers control requests:

* The **main thread** runs user code: it takes one request at a time from a queue,
  loads its content, runs :meth:`Kernel.handle` and encodes the reply. What user code
  prints is encoded as ``stream`` messages as it is written.
* The **I/O thread** owns the shell and control sockets. It verifies incoming
  requests (signature, replay) *without* unpickling them and queues them for the main
  thread; it answers control requests itself (interrupt, shutdown, status); it forwards
  what the main thread encoded (over an inproc pipe: zmq sockets are not thread-safe) to
  the peer -- output and the reply on the same socket, so output always arrives before
  its reply; and it exits the process when the parent process is gone.
* The **heartbeat** socket is echoed by ``zmq.proxy`` in a thread of its own, in C and
  without the GIL, so pings are answered even while user code holds the GIL.

An interrupt is SIGINT sent to the main thread, but only while user code runs: the
SIGINT handler raises ``KeyboardInterrupt`` only then, so an interrupt that arrives
between requests cannot break the engine's own loop.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Sequence
from types import FrameType
from typing import Any

import zmq

from shoal.wire import (
    Codec,
    ConnectionInfo,
    Message,
    RawContent,
    RemoteInputError,
    Serializer,
    UnpicklableError,
    new_header,
    read_connection_file,
)

from ._kernel import Kernel
from ._objects import ObjectStore
from ._replies import error_reply

__all__ = ["EngineProcess", "main"]

log = logging.getLogger("shoal.engine")
_POLL_MS = 100  # how often the I/O thread looks at its parent
_SHELL = b"s"


class EngineProcess:
    """One engine: connects to the urls of ``info`` and serves until shut down.

    Parameters
    ----------
    info : ConnectionInfo
        ``urls`` must hold ``shell``, ``control`` and ``heartbeat``.
    identity : bytes
        The zmq identity of every socket, so the peer's ROUTERs can address the engine.
    engine_id : int, optional
        Reported in replies and status.
    """

    def __init__(
        self, info: ConnectionInfo, *, identity: bytes, engine_id: int | None = None
    ) -> None:
        missing = {"shell", "control", "heartbeat"} - set(info.urls)
        if missing:
            raise ValueError(f"connection info lacks urls for {sorted(missing)}")
        self.info = info
        self.identity = identity
        self.engine_id = engine_id
        self.started = time.time()
        self.parent_pid = os.getppid()
        self.serializer = Serializer()
        self.requests: queue.Queue[Message | None] = queue.Queue()
        self.running: Message | None = None  # the request user code is running now
        self._in_user_code = False
        self._main_ident = threading.main_thread().ident
        # The user namespace is a bare __main__ module of its own: `python -m` made this
        # package's __main__.py the __main__ module, and clear_request must not empty it.
        user_main = types.ModuleType("__main__")
        user_main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = user_main
        namespace = user_main.__dict__
        self.kernel = Kernel(
            namespace,
            engine_id=engine_id,
            on_stream=self._stream,
            objects=ObjectStore(self.serializer, engine_id=engine_id),
        )
        self.context: zmq.Context[Any] = zmq.Context()
        self._to_io: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
        self._to_io.bind(f"inproc://shoal-engine-{id(self)}")
        self._codec = Codec(info.key, serializer=self.serializer, replay=None)
        self._send_lock = threading.Lock()

    # -- main thread ----------------------------------------------------------------------
    def run(self) -> int:
        """Serve requests until shutdown; returns the exit code."""
        signal.signal(signal.SIGINT, self._on_sigint)
        io = threading.Thread(target=self._io_loop, name="shoal-engine-io", daemon=True)
        io.start()
        self._send(_SHELL, "engine_ready", {"pid": os.getpid(), "engine_id": self.engine_id})
        while True:
            try:
                request = self.requests.get()
            except KeyboardInterrupt:  # an interrupt that came too late: nothing runs
                continue
            if request is None:
                return 0
            self._serve(request)

    def _serve(self, request: Message) -> None:
        reply: dict[str, Any] | None = None
        started = time.time()
        self.running = request
        try:
            assert isinstance(request.content, RawContent)  # noqa: S101 - queued raw
            try:
                content = request.content.load(self.serializer)
            except Exception as exc:
                reply = error_reply(exc, engine_id=self.engine_id, serializer=None)
            else:
                self._in_user_code = True
                reply = self.kernel.handle(request.msg_type, content)
                self._in_user_code = False
        except KeyboardInterrupt as exc:  # landed just outside Kernel.handle
            self._in_user_code = False
            if reply is None:
                reply = error_reply(exc, engine_id=self.engine_id, serializer=self.serializer)
        finally:
            self.running = None
        self._reply(request, reply, started)

    def _reply(self, request: Message, reply: dict[str, Any], started: float) -> None:
        reply_type = request.msg_type.replace("_request", "_reply")
        meta = {"engine_id": self.engine_id, "started": started, "completed": time.time()}
        try:
            self._send(_SHELL, reply_type, reply, parent=request, metadata=meta)
        except UnpicklableError as exc:  # the result itself cannot travel: say so
            fallback = error_reply(exc, engine_id=self.engine_id, serializer=None)
            self._send(_SHELL, reply_type, fallback, parent=request, metadata=meta)

    def _stream(self, name: str, text: str) -> None:
        parent = self.running
        self._send(_SHELL, "stream", {"name": name, "text": text}, parent=parent)

    def _send(
        self,
        channel: bytes,
        msg_type: str,
        content: Any,
        *,
        parent: Message | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        header = new_header(msg_type, self.identity.decode(), f"engine.{self.engine_id}")
        msg = Message(header, parent.header if parent else None, metadata or {}, content)
        frames = self._codec.encode(msg)
        with self._send_lock:  # user threads may print while a request runs
            self._to_io.send_multipart([channel, *frames], copy=False)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._in_user_code:
            raise KeyboardInterrupt

    # -- I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        ctx, urls = self.context, self.info.urls
        from_main = ctx.socket(zmq.PAIR)
        from_main.connect(f"inproc://shoal-engine-{id(self)}")
        sockets = {}
        for name in ("shell", "control", "heartbeat"):
            sock = ctx.socket(zmq.DEALER)
            sock.identity = self.identity
            sock.linger = 1000
            sock.connect(urls[name])
            sockets[name] = sock
        shell, control = sockets["shell"], sockets["control"]
        codec = Codec(self.info.key, serializer=self.serializer)
        # Say hello on control and heartbeat too: the peer's ROUTERs can address this
        # engine on a channel only once they have heard from it there.
        header = new_header("engine_ready", self.identity.decode(), f"engine.{self.engine_id}")
        control.send_multipart(codec.encode(Message(header, None, {}, {"pid": os.getpid()})))
        sockets["heartbeat"].send(b"ready")
        heart = threading.Thread(
            target=_echo, args=(sockets["heartbeat"],), name="shoal-engine-heart", daemon=True
        )
        heart.start()
        poller = zmq.Poller()
        for sock in (shell, control, from_main):
            poller.register(sock, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll(_POLL_MS):
                if sock is from_main:
                    _channel, *frames = from_main.recv_multipart(copy=False)
                    shell.send_multipart(frames, copy=False)
                    continue
                frames = sock.recv_multipart(copy=False)
                try:  # shell content is loaded by the main thread, never here
                    msg = codec.decode(frames, content=sock is not shell)
                except RemoteInputError as exc:
                    log.warning("dropped a message: %s", exc)
                    continue
                if sock is shell:
                    self.requests.put(msg)
                else:
                    self._control(control, codec, msg)
            if os.getppid() != self.parent_pid:
                log.error("the parent process is gone: exiting")
                os._exit(1)

    def _control(self, control: zmq.Socket[Any], codec: Codec, msg: Message) -> None:
        content: dict[str, Any] = {"status": "ok"}
        kind = msg.msg_type
        if kind == "interrupt_request":
            running = self.running is not None
            if running and self._main_ident is not None:
                signal.pthread_kill(self._main_ident, signal.SIGINT)
            content["interrupted"] = running
        elif kind == "status_request":
            content.update(self.status())
        elif kind == "shutdown_request":
            pass
        else:
            known = "interrupt_request, status_request, shutdown_request"
            problem = ValueError(f"unknown control request {kind!r}; known: {known}")
            content = error_reply(problem, engine_id=self.engine_id, serializer=None)
        reply_type = kind.replace("_request", "_reply")
        header = new_header(reply_type, self.identity.decode(), f"engine.{self.engine_id}")
        frames = codec.encode(Message(header, msg.header, {}, content))
        if kind != "shutdown_request":
            control.send_multipart(frames)
            return
        tracker = control.send_multipart(frames, copy=False, track=True)
        with contextlib.suppress(zmq.NotDone):
            if tracker is not None:
                tracker.wait(1.0)  # the reply is on its way; the peer waits for it
        os._exit(0)

    def status(self) -> dict[str, Any]:
        """What ``status_request`` answers: who and where this engine is, how loaded."""
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * page
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "cores": os.cpu_count(),
            "memory_rss": rss,
            "memory_total": os.sysconf("SC_PHYS_PAGES") * page,
            "queue": self.requests.qsize(),
            "busy": self.running is not None,
            "uptime": time.time() - self.started,
            "engine_id": self.engine_id,
            "python": sys.version.split()[0],
        }


def _echo(sock: zmq.Socket[Any]) -> None:
    """Echo heartbeat pings back, in C and without the GIL, until the context ends."""
    try:
        zmq.proxy(sock, sock)
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close(linger=0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.engine --connection-file FILE --identity ID``."""
    parser = argparse.ArgumentParser(prog="shoal-engine", description=__doc__.split("\n")[0])
    parser.add_argument("--connection-file", required=True, help="JSON file with urls and key")
    parser.add_argument("--identity", required=True, help="zmq identity of this engine")
    parser.add_argument("--engine-id", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(name)s: %(message)s")
    info = read_connection_file(args.connection_file)
    engine = EngineProcess(info, identity=args.identity.encode(), engine_id=args.engine_id)
    return engine.run()
