"""The manager server process: how it starts, is configured, serves, and ends.

Theory of operation
-------------------
:meth:`BaseManager.start() <shoal.hub._compat.managers.BaseManager.start>` runs a
:class:`Server`, the stdlib's manager server (a thread per connection) on shoal's
connections (:mod:`shoal.hub._compat.manager_protocol`), in a process of its own:

1. **The server is a fresh interpreter** (``sys.executable -c`` :data:`_SERVER_MAIN`),
   started with :mod:`subprocess`, never forked: the client has zmq threads, and a fork
   of a threaded process can deadlock. Its registry and initializer travel over the
   child's stdin as shoal frames (``shoal.wire.Serializer``), so lambdas and
   interactively defined functions can be registered. The parent's ``sys.path`` goes
   with them. The child answers with one line on its stdout, ``READY <address>`` or
   ``ERROR <why>`` (:func:`_serve_child`, :func:`_read_report`).
2. **The server ends with its creator.** Its stdin stays open for its whole life and the
   creator writes nothing more: end of file means the creator is gone (exited, crashed
   or SIGKILLed). The server also polls its parent pid every 0.5 s. ``shutdown()``, the
   ``with`` block's end, garbage collection of the manager and the creator's normal exit
   (a ``multiprocessing.util.Finalize`` with an exit priority) all close that pipe and
   wait for the process; after ``shutdown_timeout`` it is terminated, then killed
   (:func:`_stop_server`).
3. **A call in flight when the server stops gets no answer**, so that its proxy raises
   ``ManagerLost`` (the stdlib's server would answer it ``None``).
4. **A wildcard host is advertised by name**: a server bound to ``""`` or
   ``"0.0.0.0"`` gives proxies ``socket.gethostname()`` to connect to.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing import managers, process
from typing import IO, Any, Final, cast

from .manager_protocol import _SERIALIZER, _SHUTDOWN, Address, _connection_types, _listen, _Listener

__all__ = ["Server"]

_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - recognised, not bound
_PARENT_POLL: Final = 0.5


def _advertised(address: Any) -> Any:
    """The address to hand to peers: a wildcard host becomes this machine's name."""
    if isinstance(address, tuple) and address[0] in _WILDCARD_HOSTS:
        return (socket.gethostname(), address[1])
    return address


class Server(managers.Server):
    """The stdlib's manager server with shoal's connections, serving until its creator ends.

    ``BaseManager.get_server()`` returns one; ``serve_forever()`` serves until the
    ``shutdown`` request (and, for a server started by :meth:`BaseManager.start`, until the
    creator's pipe closes or the parent process changes).
    """

    listener: Any

    def __init__(
        self,
        registry: dict[str, tuple[Any, Any, Any, Any]],
        address: Address | None,
        authkey: bytes,
        serializer: str,
    ) -> None:
        listen = _connection_types(serializer)[0]
        super().__init__(registry, address, authkey, "pickle")  # binds the socket
        if listen is _listen:  # the stdlib's handle_request() runs the challenge
            self.listener = _Listener(self.listener, authkey, challenge=False)
        self.address = _advertised(self.address)
        self._parent_pid: int | None = None
        self._parent_pipe: IO[bytes] | None = None

    def watch_parent(self, pid: int, pipe: IO[bytes]) -> None:
        """Stop serving when ``pipe`` reaches end of file or the parent is no longer ``pid``."""
        self._parent_pid = pid
        self._parent_pipe = pipe

    def _watch_pipe(self, pipe: IO[bytes]) -> None:
        try:
            while pipe.read(65536):
                pass
        except OSError:
            pass
        self.stop_event.set()

    def accept_connection(self, c: Any, name: str) -> None:
        """Serve one proxy connection until its peer leaves or the server stops."""
        super().accept_connection(c, name)
        # serve_client() returned because the server is stopping. The stdlib would now send
        # ('#RETURN', None), which a proxy waiting on this connection takes as the answer
        # to its call (e.g. get() returning None): end the thread without a reply instead.
        # handle_request() catches the SystemExit and closes the connection.
        sys.exit(0)

    def serve_forever(self) -> None:
        """Serve until stopped, then exit the process (``SystemExit``), as the stdlib does."""
        self.stop_event = threading.Event()
        # RebuildProxy reads it: proxies unpickled here (nested ones) are manager-owned.
        setattr(process.current_process(), "_manager_server", self)  # noqa: B010
        threading.Thread(target=self.accepter, name="manager-accepter", daemon=True).start()
        if self._parent_pipe is not None:
            threading.Thread(
                target=self._watch_pipe,
                args=(self._parent_pipe,),
                name="manager-parent",
                daemon=True,
            ).start()
        try:
            while not self.stop_event.wait(_PARENT_POLL):
                if self._parent_pid is not None and os.getppid() != self._parent_pid:
                    break
        except KeyboardInterrupt:
            pass
        sys.exit(0)


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(struct.pack("!Q", len(data)))
    stream.write(data)


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("the manager's creator closed the pipe before the configuration")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> bytes:
    (size,) = struct.unpack("!Q", _read_exactly(stream, 8))
    return _read_exactly(stream, size)


def _serve_child() -> None:
    """The manager server process: read the configuration, report, serve (see start())."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the creator (bpo-36368)
    pipe, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        header = pickle.loads(_read_frame(pipe))
        parent_path = header["sys_path"]  # the creator's first, then ours ('' is the cwd)
        sys.path[:] = [*parent_path, *(p for p in sys.path if p not in parent_path)]
        # The creator's own configuration, over our stdin (start() wrote it).
        config = cast("tuple[Any, ...]", _SERIALIZER.loads([_read_frame(pipe)]))
        server_type, registry, address, authkey, serializer, initializer, initargs = config
        if initializer is not None:
            initializer(*initargs)
        server = server_type(registry, address, authkey, serializer)
    except BaseException as exc:
        traceback.print_exc()
        out.write(b"ERROR " + json.dumps(f"{type(exc).__name__}: {exc}").encode() + b"\n")
        out.flush()
        sys.exit(1)
    out.write(b"READY " + json.dumps(server.address).encode() + b"\n")
    out.flush()
    os.dup2(2, 1)  # later prints go to stderr; the creator stopped reading stdout
    server.watch_parent(header["parent"], pipe)
    server.serve_forever()


_SERVER_MAIN: Final = "from shoal.hub._compat.manager_server import _serve_child; _serve_child()"


def _read_report(popen: subprocess.Popen[bytes], timeout: float) -> str:
    """The server's one status line (``READY ...``/``ERROR ...``), or why there is none."""
    fd = cast(IO[bytes], popen.stdout).fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"ERROR {json.dumps(f'no report within {timeout:g} s')}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                code = popen.wait()
                message = f"its process exited with code {code} first (its stderr says why)"
                return f"ERROR {json.dumps(message)}"
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _kill(popen: subprocess.Popen[bytes]) -> None:
    """End a server that failed to start."""
    if popen.stdin is not None:
        with contextlib.suppress(OSError):
            popen.stdin.close()
    popen.kill()
    popen.wait()


def _stop_server(
    popen: subprocess.Popen[bytes],
    address: Any,
    state: Any,
    timeout: float,
) -> None:
    """End the server process (the manager's finalizer): close its pipe, wait, insist."""
    state.value = _SHUTDOWN
    if popen.stdin is not None:
        with contextlib.suppress(OSError):
            popen.stdin.close()  # the server watches it: end of file means stop
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    managers.BaseProxy._address_to_local.pop(address, None)
