"""KernelManager: one engine subprocess, driven from the parent, surviving its crashes.

Theory of operation
-------------------
The manager binds three ROUTER sockets on loopback (shell, control, heartbeat),
writes them and a fresh key into a private connection file, and starts
``python -m shoal.engine`` with a zmq identity of its own. It waits for the engine's
``engine_ready`` on every channel (only then can its ROUTERs address the engine).

Every wait for a reply polls the engine's sockets *and* the process: when the process
ends, the wait raises :class:`EngineDiedError` naming the exit code or the signal, and
the manager can :meth:`restart`. Output the engine streams while a request runs is
handed to ``on_stream`` (by default, written to this process's stdout/stderr) as it
arrives.

Interrupting: :meth:`interrupt` asks the engine's I/O thread to raise
``KeyboardInterrupt`` in the running code. A Ctrl-C in the parent while it waits does
the same. Code that does not stop within ``interrupt_grace`` seconds (a C call that never
returns to Python) is escalated: SIGTERM, then SIGKILL, and a new engine replaces it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import ParamSpec, TypeVar, cast, overload

import zmq

from shoal.wire import (
    Codec,
    ConnectionInfo,
    Header,
    Message,
    Session,
    SharedMemoryLost,
    default_shared_memory,
    generate_key,
    new_header,
    shared_memory_enabled,
    write_connection_file,
)

from ._errors import EngineDiedError, RemoteError
from ._protocol import OUTPUT_NOTICES

__all__ = ["KernelManager"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_CHANNELS = ("shell", "control", "heartbeat")
_POLL_MS = 50


def _print_stream(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()


def _print_display(msg_type: str, content: dict[str, object]) -> None:
    """``display()`` on the engine, as its plain text here; results are returned."""
    data = content.get("data")
    if msg_type in ("display_data", "update_display_data") and isinstance(data, dict):
        text = data.get("text/plain")
        if text is not None:
            _print_stream("stdout", f"{text}\n")


class KernelManager:
    """Start one engine subprocess and run code in it, with no hub at all.

    Parameters
    ----------
    on_stream : callable, optional
        ``on_stream(name, text)`` receives the engine's stdout/stderr as it is written
        (``name`` is ``"stdout"`` or ``"stderr"``). Default: write it to this process's
        own streams.
    on_display : callable, optional
        ``on_display(msg_type, content)`` receives the engine's rich output
        (``display_data``, ``update_display_data``, ``execute_result``,
        ``clear_output``; PROTOCOL.md). Default: print what ``display()`` shows as text.

        .. versionadded:: 0.7
    startup_timeout : float
        Seconds to wait for a new engine to say it is ready.
    interrupt_grace : float
        Seconds an interrupted request has to stop before the engine is terminated and
        replaced.

    Examples
    --------
    >>> with KernelManager() as km:               # doctest: +SKIP
    ...     km.execute("import math; x = math.pi")
    ...     km.apply(lambda r: r * 2, 21)
    42

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        on_stream: Callable[[str, str], None] | None = None,
        on_display: Callable[[str, dict[str, object]], None] | None = None,
        startup_timeout: float = 30.0,
        interrupt_grace: float = 1.0,
    ) -> None:
        self.on_stream = on_stream or _print_stream
        self.on_display = on_display or _print_display
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.process: subprocess.Popen[bytes] | None = None
        self._context: zmq.SyncContext | None = None
        self._sockets: dict[str, zmq.SyncSocket] = {}
        self._folder: str | None = None
        self._codec: Codec | None = None
        self._sessions: dict[str, Session] = {}
        self._identity = b""
        self._session = uuid.uuid4().hex
        self._replies: dict[str, Message] = {}
        self._interrupt_deadline: float | None = None
        self._interrupt_wanted = False  # set by interrupt() from another thread
        self._owner = threading.get_ident()  # zmq sockets are used from this thread only
        self._ready: set[str] = set()  # channels the engine said hello on

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine and wait until it is ready."""
        if self.process is not None:
            raise RuntimeError("this KernelManager's engine is already started")
        ctx: zmq.SyncContext = zmq.Context()
        self._context = ctx
        urls = {}
        for name in _CHANNELS:
            sock = ctx.socket(zmq.ROUTER)
            sock.linger = 0
            sock.router_mandatory = True  # a send to a gone engine fails, never vanishes
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            urls[name] = f"tcp://127.0.0.1:{port}"
            self._sockets[name] = sock
        key = generate_key()
        self._codec = Codec(key, shm=default_shared_memory() if shared_memory_enabled() else None)
        # One Session per socket: caps, verification, drop counts, and its own link stamp.
        self._sessions = {
            name: Session(sock, self._codec)
            for name, sock in self._sockets.items()
            if name != "heartbeat"
        }
        self._folder = tempfile.mkdtemp(prefix="shoal-kernel-")
        path = os.path.join(self._folder, "engine.json")
        write_connection_file(path, ConnectionInfo(urls=urls, key=key))
        self._identity = f"engine-{uuid.uuid4().hex[:12]}".encode()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "shoal.engine",
                "--connection-file",
                path,
                "--identity",
                self._identity.decode(),
                "--parent-pid",
                str(os.getpid()),
            ],
        )
        self._ready.clear()
        try:
            self._wait_for(lambda: len(self._ready) == len(_CHANNELS), self.startup_timeout)
        except BaseException:
            self._cleanup(kill=True)
            raise

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the engine to exit; kill it if it does not within ``timeout`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self._send("control", "shutdown_request", {})
                self.process.wait(timeout)
            except (EngineDiedError, subprocess.TimeoutExpired):
                pass  # killed below
        self._cleanup(kill=True)

    def restart(self) -> None:
        """Replace the engine with a fresh one (its namespace and objects are gone)."""
        self.shutdown(timeout=2.0)
        self.start()

    def is_alive(self) -> bool:
        """Whether the engine process is running."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The engine's process id, or None before start."""
        return None if self.process is None else self.process.pid

    def __enter__(self) -> KernelManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- requests -------------------------------------------------------------------------
    def execute(self, code: str, *, silent: bool = False, timeout: float | None = None) -> object:
        """Run ``code`` in the engine; returns the value of a final expression, or None."""
        return self._call("execute_request", {"code": code, "silent": silent}, timeout)

    def apply(self, f: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Call ``f(*args, **kwargs)`` in the engine and return its result (a copy: it
        comes back serialized)."""
        result = self._call("apply_request", {"f": f, "args": args, "kwargs": kwargs}, None)
        return cast("_R", result)  # what f returned, deserialized: typed by f from here on

    def push(self, namespace: Mapping[str, object]) -> None:
        """Set many names in the engine's namespace at once."""
        self._call("push_request", {"namespace": dict(namespace)}, None)

    @overload
    def pull(self, names: str) -> object: ...
    @overload
    def pull(self, names: list[str]) -> list[object]: ...
    def pull(self, names: str | list[str]) -> object:
        """The value of a name or expression (a str), or a list of them."""
        return self._call("pull_request", {"names": names}, None)

    def status(self, timeout: float = 5.0) -> dict[str, object]:
        """The engine's pid, host, cores, memory, queue length and uptime."""
        header = self._send("control", "status_request", {})
        reply = self._wait_reply(header.msg_id, timeout)
        return dict(reply.content)

    def interrupt(self) -> None:
        """Raise ``KeyboardInterrupt`` in the code the engine runs.

        Safe from any thread: from another thread than the one that started the manager,
        it is sent by that thread while it waits for a reply (within 50 ms).

        The waiting call then raises :class:`RemoteError` (``KeyboardInterrupt``); if the
        code ignores the interrupt for ``interrupt_grace`` seconds, the engine is
        replaced and the waiting call raises :class:`EngineDiedError`.
        """
        if threading.get_ident() != self._owner:
            self._interrupt_wanted = True  # the waiting thread sends it (sockets are its)
            return
        self._interrupt_deadline = time.monotonic() + self.interrupt_grace
        self._send("control", "interrupt_request", {})

    def abort(self, msg_ids: list[str] | None = None, timeout: float = 5.0) -> None:
        """Drop queued requests (all of them, or those of ``msg_ids``) before they run.

        Each dropped request is answered ``aborted``: :meth:`get_reply` returns
        ``{"status": "aborted"}`` for it, and the blocking calls raise :class:`RemoteError`.
        The request running now is not touched (see :meth:`interrupt`).
        """
        content = {"msg_ids": None if msg_ids is None else list(msg_ids)}
        header = self._send("control", "abort_request", content)
        self._wait_reply(header.msg_id, timeout)

    def ping(self, timeout: float = 1.0) -> float:
        """Round trip of a heartbeat, in seconds; answered even while user code runs.

        Raises
        ------
        TimeoutError
            When no echo came back within ``timeout`` seconds.
        """
        sock = self._sockets["heartbeat"]
        token = uuid.uuid4().bytes
        start = time.perf_counter()
        sock.send_multipart([self._identity, token])
        deadline = start + timeout
        while (left := deadline - time.perf_counter()) > 0:
            if sock.poll(int(left * 1000) + 1) and sock.recv_multipart()[-1] == token:
                return time.perf_counter() - start
        raise TimeoutError(f"the engine did not echo a heartbeat within {timeout} s")

    def request(
        self, msg_type: str, content: Mapping[str, object], timeout: float | None = None
    ) -> dict[str, object]:
        """Send any shell request of PROTOCOL.md and return its reply content as is."""
        return self.get_reply(self.submit(msg_type, content), timeout)

    def submit(self, msg_type: str, content: Mapping[str, object]) -> str:
        """Send a shell request without waiting; returns its msg_id for :meth:`get_reply`.

        Requests run one at a time, in the order submitted.
        """
        return str(self._send("shell", msg_type, dict(content)).msg_id)

    def get_reply(self, msg_id: str, timeout: float | None = None) -> dict[str, object]:
        """Wait for the reply to a submitted request; its content as is."""
        return dict(self._wait_reply(msg_id, timeout).content)

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, msg_type: str, content: Mapping[str, object], timeout: float | None) -> object:
        reply = self.request(msg_type, content, timeout)
        if reply.get("status") == "error":
            raise RemoteError.from_reply(reply)
        if reply.get("status") == "aborted":
            raise RemoteError("Aborted", f"{msg_type} was aborted before it ran")
        return reply.get("result")

    def _send(self, channel: str, msg_type: str, content: Mapping[str, object]) -> Header:
        if self.process is None or self._codec is None:
            raise RuntimeError("start() the KernelManager before sending it requests")
        header = new_header(msg_type, self._session, "kernel-manager")
        session = self._sessions[channel]
        frames = self._codec.encode(Message(header, None, {}, content), link=session.link)
        try:
            self._sockets[channel].send_multipart([self._identity, *frames], copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the engine's socket is gone
            raise self._died("before the request could be sent") from exc
        return header

    def _wait_reply(self, msg_id: str, timeout: float | None) -> Message:
        try:
            self._wait_for(lambda: msg_id in self._replies, timeout)
        except KeyboardInterrupt:
            # Ctrl-C here interrupts the engine too, then lets the caller see it.
            self.interrupt()
            try:
                self._wait_for(lambda: msg_id in self._replies, None)
            finally:
                self._replies.pop(msg_id, None)
            raise
        return self._replies.pop(msg_id)

    def _wait_for(self, ready: Callable[[], bool], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = zmq.Poller()
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        while not ready():
            if self._interrupt_wanted:
                self._interrupt_wanted = False
                self.interrupt()
            for sock, _ in poller.poll(_POLL_MS):
                self._receive(sock)
            if ready():
                return
            if self.process is not None and self.process.poll() is not None:
                raise self._died("while a request was outstanding")
            now = time.monotonic()
            if self._interrupt_deadline is not None and now > self._interrupt_deadline:
                self._interrupt_deadline = None
                self._escalate()
            if deadline is not None and now > deadline:
                raise TimeoutError(f"no reply from the engine within {timeout} s")

    def _receive(self, sock: zmq.SyncSocket) -> None:
        if sock is self._sockets["heartbeat"]:
            sock.recv_multipart(copy=False)
            self._ready.add("heartbeat")  # its hello, or a late echo: either says "here"
            return
        session = self._sessions["shell" if sock is self._sockets["shell"] else "control"]
        try:
            frames = session.recv_frames_nowait()
            msg = None if frames is None else session.decode_or_drop(frames)
        except (zmq.Again, SharedMemoryLost):
            return
        if msg is None:
            return  # dropped (counted in the session's statistics): never answered
        if msg.msg_type == "stream":
            self.on_stream(str(msg.content["name"]), str(msg.content["text"]))
        elif msg.msg_type in OUTPUT_NOTICES:  # rich output (input_request needs allow_stdin)
            if isinstance(msg.content, dict):
                self.on_display(msg.msg_type, msg.content)
        elif msg.msg_type == "engine_ready":
            self._ready.add("shell" if sock is self._sockets["shell"] else "control")
        elif msg.parent_header is not None:
            self._replies[msg.parent_header.msg_id] = msg
            if msg.msg_type != "interrupt_reply":
                self._interrupt_deadline = None  # the interrupted request answered

    def _escalate(self) -> None:
        """The engine ignored an interrupt: SIGTERM, then SIGKILL; a new one is started
        by the next restart()."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.interrupt_grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _died(self, when: str) -> EngineDiedError:
        process = self.process
        code = None if process is None else process.poll()
        if code is None:
            cause = "its socket is gone"
        elif code < 0:
            cause = f"it was killed by {signal.Signals(-code).name}"
        else:
            cause = f"it exited with code {code}"
        pid = None if process is None else process.pid
        return EngineDiedError(f"the engine (pid {pid}) died {when}: {cause}; call restart()")

    def _cleanup(self, *, kill: bool) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None and kill:
            process.kill()
        if process is not None:
            process.wait()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._context is not None:
            self._context.term()
            self._context = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._replies.clear()
