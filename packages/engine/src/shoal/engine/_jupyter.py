"""The Jupyter gateway: a running engine seen as a Jupyter kernel, for a console to attach.

Theory of operation
-------------------
A :class:`JupyterGateway` binds the five sockets of a Jupyter kernel (shell, iopub,
stdin, control: ROUTER/PUB; heartbeat: a ROUTER echoed in C) beside an engine's own
connection to its hub, and speaks the Jupyter wire format (messaging spec 5.3) on them:
routing identities, ``<IDS|MSG>``, an HMAC-SHA256 signature over the four JSON frames
(header, parent header, metadata, content), then the buffers. It uses pyzmq, ``json``
and ``hmac`` only: an engine never needs jupyter_client.

Its rules:

* **Opened on demand, with a key of its own.** The engine's I/O thread opens it when a
  ``jupyter_gateway_request`` arrives on control (from a client of the cluster: only
  holders of the cluster's key can ask), with a fresh random key that the reply carries
  with the ports. It binds loopback unless asked for another address, and an address
  other hosts can reach only with ``insecure`` (the Jupyter wire is signed, never
  encrypted). A second request gets the same gateway while it is open.
* **Nothing unverified is acted on.** Every message is checked before it is parsed:
  frame count and size caps, the signature (``hmac.compare_digest``), a replay history
  of signatures. A message that fails is dropped, counted by reason, and logged at most
  once per :data:`_LOG_EVERY` seconds per reason; it is never answered.
* **One thread owns the sockets.** The gateway's thread receives on shell, control and
  stdin, and sends everything: what the engine's main thread has to send (replies,
  iopub messages, input requests) comes to it signed over an inproc pipe.
* **Requests run in turn with the cluster's.** A verified shell request is queued for
  the engine's main thread, which is woken through its pipe and runs it between cluster
  requests (:meth:`JupyterGateway.serve_next`), through the same ``Kernel.handle``, in
  the same namespace. While it runs, its output (``stream``), rich output and result go
  to iopub with ``status`` busy/idle around it (stream writes joined into pieces at
  most 50 ms old), and ``input()`` asks on stdin. A failed
  execute aborts the execute requests queued behind it (Jupyter's ``stop_on_error``).
* **Control answers at once.** ``interrupt_request`` interrupts the running gateway
  request (the engine's targeted interrupt: never a cluster task), ``shutdown_request``
  detaches the gateway and never stops the engine; with ``restart`` it is refused.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import zmq

from shoal.util import outbound_ip, split_url
from shoal.wire import Message, bind, is_loopback_url, new_header

from ._replies import error_reply

if TYPE_CHECKING:
    from ._engine import EngineProcess

__all__ = ["WAKE", "JupyterGateway", "open_gateway"]

log = logging.getLogger("shoal.engine.jupyter")

#: What the gateway writes on the engine's pipe: "a request waits for the main thread".
WAKE: Final = b"jupyter"
DELIMITER: Final = b"<IDS|MSG>"
PROTOCOL_VERSION: Final = "5.3"
_MAX_FRAMES: Final = 64  # identities, delimiter, signature, four JSON frames, buffers
_MAX_BYTES: Final = 64 * 1024 * 1024  # per message; zmq drops (and disconnects) beyond
_REPLAY_HISTORY: Final = 1 << 16  # signatures remembered against replays
_LOG_EVERY: Final = 10.0  # seconds between two log lines about drops of one reason
_POLL_MS: Final = 200  # how often a wait for input looks whether the gateway detached
# Stream output is sent in pieces at most this old or this large: a loop of print()s is
# a few messages, not two per call (a PUB drops what a slow subscriber cannot take).
_STREAM_EVERY_S: Final = 0.05
_STREAM_BYTES: Final = 64 * 1024
_IOPUB_HWM: Final = 100_000  # messages queued for a slow front end before PUB drops

#: Shell requests of the Jupyter protocol and their replies (the others are refused).
SHELL_REPLIES: Final = {
    "execute_request": "execute_reply",
    "kernel_info_request": "kernel_info_reply",
    "complete_request": "complete_reply",
    "inspect_request": "inspect_reply",
    "is_complete_request": "is_complete_reply",
    "history_request": "history_reply",
    "comm_info_request": "comm_info_reply",
}
#: Comm messages need no reply; no comm target is known here, so they are ignored.
_COMMS: Final = frozenset({"comm_open", "comm_msg", "comm_close"})


class _Drops:
    """Dropped messages counted by reason, logged at most once per period per reason."""

    def __init__(self, what: str = "dropped") -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, float] = {}
        self._what = what

    def drop(self, reason: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[reason] = now
            log.warning(
                "jupyter gateway: %s %s (%d so far)", self._what, reason, self.counts[reason]
            )


class JupyterGateway:
    """The Jupyter-wire face of one engine: see the module's theory of operation.

    Parameters
    ----------
    engine : EngineProcess
        The engine whose main thread runs the requests.
    ip : str
        The address to bind (loopback by default).
    insecure : bool
        Allow an address other hosts can reach.

    .. versionadded:: 0.7
    """

    def __init__(
        self, engine: EngineProcess, ip: str = "127.0.0.1", insecure: bool = False
    ) -> None:
        self._engine = engine
        self.key = secrets.token_hex(32).encode("ascii")
        self.session = uuid.uuid4().hex
        self.ip = ip
        self.drops = _Drops("dropped a message:")
        self.received = 0  # verified messages
        self.sent = 0
        self._detached = threading.Event()
        self._tag = uuid.uuid4().hex  # names its inproc pipes: never a closed one's name
        ctx = engine.context
        self._socks, self.ports = _bind_sockets(ctx, ip, insecure)
        # The main thread's way to the sockets: an inproc pipe, used under a lock (output
        # may come from any thread of user code).
        self._out_lock = threading.Lock()
        self._pull: zmq.Socket[Any] = ctx.socket(zmq.PULL)
        self._pull.bind(f"inproc://shoal-jupyter-{self._tag}")
        self._push: zmq.Socket[Any] | None = ctx.socket(zmq.PUSH)
        self._push.linger = 0
        # A full pipe (the gateway's thread starved of the GIL) holds the sender back a
        # while rather than dropping at once, never forever (a detach needs the lock).
        self._push.sndtimeo = 1000
        self._push.sndhwm = _IOPUB_HWM
        self._lost = _Drops("could not send")  # the main thread's, apart from the thread's
        # Stream output not sent yet, under the lock: [name, parent header, texts], and
        # when the oldest piece came.
        self._streams: list[tuple[str, Mapping[str, Any], list[str]]] = []
        self._stream_bytes = 0
        self._stream_since = 0.0
        self._push.connect(f"inproc://shoal-jupyter-{self._tag}")
        self._hb_stop: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
        self._hb_stop.bind(f"inproc://shoal-jupyter-hb-{self._tag}")
        hb_ctrl: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
        hb_ctrl.connect(f"inproc://shoal-jupyter-hb-{self._tag}")
        self._inbox: collections.deque[tuple[list[bytes], dict[str, Any]]] = collections.deque()
        # (the msg_id of the input_request answered, the input_reply's content)
        self._input_replies: queue.Queue[tuple[object, dict[str, Any]]] = queue.Queue()
        self._signatures: collections.deque[bytes] = collections.deque()
        self._seen: set[bytes] = set()
        self._running: str | None = None  # msg_id of the gateway request running now
        # A wake-up is in the engine's pipe and serve_next has not run since: a busy main
        # thread gets one, not one per request (the pipe would fill and block).
        self._woken = False
        self._saw_result = False
        self._kernel_info: dict[str, Any] | None = None  # the Kernel's, once asked on shell
        threading.Thread(
            target=_echo,
            args=(self._socks.pop("hb"), hb_ctrl),
            name="shoal-jupyter-hb",
            daemon=True,
        ).start()
        threading.Thread(target=self._loop, name="shoal-jupyter", daemon=True).start()

    @property
    def closed(self) -> bool:
        """Whether the gateway detached (its sockets are closed or closing)."""
        return self._detached.is_set()

    def statistics(self) -> dict[str, Any]:
        """Messages sent, received (verified) and dropped by reason, like the engine's
        sockets' (``status_request``'s ``messages``)."""
        return {"sent": self.sent, "received": self.received, "dropped": dict(self.drops.counts)}

    # -- what the connection file says ------------------------------------------------------
    def connection_info(self) -> dict[str, object]:
        """The fields of a Jupyter connection file for this gateway."""
        return {
            "transport": "tcp",
            "ip": self.ip,
            "shell_port": self.ports["shell"],
            "iopub_port": self.ports["iopub"],
            "stdin_port": self.ports["stdin"],
            "control_port": self.ports["control"],
            "hb_port": self.ports["hb"],
            "key": self.key.decode("ascii"),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "shoal",
        }

    # -- the wire format --------------------------------------------------------------------
    def _sign(self, parts: list[bytes]) -> bytes:
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode("ascii")

    def _encode(
        self,
        msg_type: str,
        content: Mapping[str, Any],
        parent: Mapping[str, Any] | None,
        identities: list[bytes] | None = None,
        msg_id: str | None = None,
    ) -> list[bytes]:
        header = {
            "msg_id": msg_id or uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "shoal",
            "session": self.session,
            "date": _now(),
            "version": PROTOCOL_VERSION,
        }
        parts = [
            _dumps(header),
            _dumps(dict(parent) if parent else {}),
            _dumps({}),
            _dumps(content),
        ]
        return [*(identities or []), DELIMITER, self._sign(parts), *parts]

    def _decode(self, frames: list[bytes]) -> tuple[list[bytes], dict[str, Any]] | None:
        """A verified message's identities and its parts; None when it was dropped."""
        if len(frames) > _MAX_FRAMES:
            self.drops.drop("too many frames")
            return None
        try:
            at = frames.index(DELIMITER)
        except ValueError:
            self.drops.drop("no <IDS|MSG> delimiter")
            return None
        identities, rest = frames[:at], frames[at + 1 :]
        if len(rest) < 5:
            self.drops.drop("too few frames")
            return None
        signature, parts = rest[0], rest[1:5]
        if not hmac.compare_digest(signature, self._sign(parts)):
            self.drops.drop("bad signature")
            return None
        if signature in self._seen:
            self.drops.drop("replayed signature")
            return None
        self._seen.add(signature)
        self._signatures.append(signature)
        if len(self._signatures) > _REPLAY_HISTORY:
            self._seen.discard(self._signatures.popleft())
        try:
            header, parent, metadata, content = (json.loads(p) for p in parts)
        except ValueError:
            self.drops.drop("JSON that does not parse")
            return None
        if not (
            isinstance(header, dict)
            and isinstance(header.get("msg_id"), str)
            and isinstance(header.get("msg_type"), str)
            and isinstance(content, dict)
        ):
            self.drops.drop("a header without msg_id and msg_type, or content not a dict")
            return None
        msg = {
            "header": header,
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "buffers": rest[5:],
        }
        return identities, msg

    # -- the gateway's thread ---------------------------------------------------------------
    def _loop(self) -> None:
        shell, control, stdin = self._socks["shell"], self._socks["control"], self._socks["stdin"]
        poller = zmq.Poller()
        for sock in (shell, control, stdin, self._pull):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._detached.is_set():
                for sock, _ in poller.poll(int(_STREAM_EVERY_S * 1000)):
                    if sock is self._pull:
                        self._forward()
                        continue
                    while sock.poll(0):
                        frames = sock.recv_multipart()
                        received = self._decode(frames)
                        if received is None:
                            continue
                        self.received += 1
                        if sock is shell:
                            self._inbox.append(received)
                            if not self._woken:  # one wake-up in the pipe at most
                                self._woken = True
                                self._wake()
                        elif sock is stdin:
                            if received[1]["header"]["msg_type"] == "input_reply":
                                parent = received[1]["parent_header"]
                                asked = parent.get("msg_id") if isinstance(parent, dict) else None
                                self._input_replies.put((asked, received[1]["content"]))
                        else:
                            self._on_control(*received)
                        if self._detached.is_set():
                            break
                self._flush_streams_if_due()
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("the jupyter gateway failed; it is detached")
        finally:
            self._close()

    def _forward(self) -> None:
        """Send what the main thread queued: ``[channel, *frames]``."""
        while self._pull.poll(0):
            channel, *frames = self._pull.recv_multipart()
            sock = self._socks.get(channel.decode())
            if sock is not None:
                with contextlib.suppress(zmq.ZMQError):  # a client that left
                    sock.send_multipart(frames)
                    self.sent += 1

    def _wake(self) -> None:
        engine = self._engine
        with engine._pipe_lock:
            engine._pipe_out.send(WAKE)

    def _on_control(self, identities: list[bytes], msg: dict[str, Any]) -> None:
        header = msg["header"]
        kind = header["msg_type"]
        reply: dict[str, Any] = {"status": "ok"}
        detach = False
        if kind == "interrupt_request":
            running = self._running
            if running is not None:
                self._engine._interrupt([running])  # this request only, never a task
        elif kind == "shutdown_request":
            restart = bool(msg["content"].get("restart", False))
            reply["restart"] = restart
            if restart:
                reply = _error(
                    "NotImplementedError",
                    "an attached console cannot restart a shoal engine: its cluster owns"
                    " it (replace it with client.remove_engines([i]) and"
                    " client.add_engines(1)); shutdown without restart detaches the"
                    " console and leaves the engine running",
                )
                reply["restart"] = True
            else:
                detach = True
                reply["detached"] = True
                reply["engine_running"] = True
        elif kind == "kernel_info_request":
            reply = self._kernel_info or _kernel_info_fallback()
        else:
            reply = _error("ValueError", f"unknown control request {kind!r}")
        reply_type = kind.removesuffix("_request") + "_reply"
        self._socks["control"].send_multipart(self._encode(reply_type, reply, header, identities))
        self.sent += 1
        if detach:
            self._socks["iopub"].send_multipart(self._encode("shutdown_reply", reply, header))
            log.info("jupyter gateway: detached by shutdown_request; the engine runs on")
            self._detached.set()

    def _close(self) -> None:
        self._detached.set()
        with self._out_lock:
            if self._push is not None:
                self._push.close(linger=0)
                self._push = None
        with contextlib.suppress(zmq.ZMQError):
            self._hb_stop.send(b"TERMINATE")
        self._hb_stop.close(linger=1000)
        self._pull.close(linger=0)
        for sock in self._socks.values():
            sock.close(linger=1000)  # a last reply (shutdown_reply) still goes out
        self._wake()  # a main thread waiting for input sees it

    # -- the engine's main thread -----------------------------------------------------------
    def _send(self, channel: str, frames: list[bytes]) -> None:
        with self._out_lock:
            self._streams_to_pipe()  # output written before this message goes first
            self._push_locked(channel, frames)

    def _push_locked(self, channel: str, frames: list[bytes]) -> None:
        if self._push is None:
            return  # detached: nobody listens
        try:
            self._push.send_multipart([channel.encode(), *frames])
        except zmq.Again:
            self._lost.drop(f"a {channel} message: the gateway's pipe stayed full")

    def stream(self, name: str, text: str, parent: Mapping[str, Any]) -> None:
        """Output of a running request (any thread): sent with the next message, when
        it is :data:`_STREAM_EVERY_S` old, or when there is :data:`_STREAM_BYTES` of it."""
        with self._out_lock:
            streams = self._streams
            if streams and streams[-1][0] == name and streams[-1][1] is parent:
                streams[-1][2].append(text)
            else:
                if not streams:
                    self._stream_since = time.monotonic()
                streams.append((name, parent, [text]))
            self._stream_bytes += len(text)
            if self._stream_bytes >= _STREAM_BYTES:
                self._streams_to_pipe()

    def _take_streams(self) -> list[list[bytes]]:
        """The stream output kept so far, encoded, and none kept (the lock held)."""
        streams, self._streams, self._stream_bytes = self._streams, [], 0
        return [
            self._encode("stream", {"name": name, "text": "".join(texts)}, parent)
            for name, parent, texts in streams
        ]

    def _streams_to_pipe(self) -> None:
        """Queue the stream output kept so far (the lock held)."""
        for frames in self._take_streams():
            self._push_locked("iopub", frames)

    def _flush_streams_if_due(self) -> None:
        """The gateway's thread: send stream output that waited long enough, after what
        the main thread queued before it."""
        if not self._streams or time.monotonic() - self._stream_since < _STREAM_EVERY_S:
            return
        with self._out_lock:  # the main thread adds nothing meanwhile: order holds
            self._forward()
            for frames in self._take_streams():
                with contextlib.suppress(zmq.ZMQError):
                    self._socks["iopub"].send_multipart(frames)
                    self.sent += 1

    def publish(self, msg_type: str, content: Mapping[str, Any], parent: Mapping[str, Any]) -> None:
        """Send one message on iopub (any thread)."""
        self._send("iopub", self._encode(msg_type, content, parent))

    def serve_next(self) -> bool:
        """Run the oldest waiting shell request (main thread); whether there was one."""
        self._woken = False  # before the pop: a request queued after it wakes again
        if self.closed:  # detached: what it queued has nobody to answer to
            self._inbox.clear()
            return False
        try:
            identities, msg = self._inbox.popleft()
        except IndexError:
            return False
        header = msg["header"]
        kind = header["msg_type"]
        if kind in _COMMS:
            return True
        self.publish("status", {"execution_state": "busy"}, header)
        try:
            try:
                if kind == "execute_request":
                    reply = self._execute(identities, header, msg["content"])
                elif kind in SHELL_REPLIES:
                    reply = self._reply_of(kind, self._run(kind, msg["content"], header))
                else:
                    known = ", ".join(sorted(SHELL_REPLIES))
                    reply = _error("ValueError", f"unknown shell request {kind!r}; known: {known}")
            except Exception as exc:  # the gateway's own failure must not end the engine
                log.exception("jupyter gateway: %s failed", kind)
                reply = _error(type(exc).__name__, f"the engine's Jupyter gateway failed: {exc}")
                if kind == "execute_request":
                    reply["execution_count"] = self._engine.kernel.execution_count
            reply_type = SHELL_REPLIES.get(kind, kind.removesuffix("_request") + "_reply")
            self._send("shell", self._encode(reply_type, reply, header, identities))
        finally:
            self.publish("status", {"execution_state": "idle"}, header)
        return True

    def _run(
        self,
        kind: str,
        content: dict[str, Any],
        header: dict[str, Any],
        identities: list[bytes] | None = None,
    ) -> dict[str, Any]:
        """Run one request through the engine's Kernel, interruptible, its output on iopub."""
        engine = self._engine
        kernel = engine.kernel
        msg_id = str(header["msg_id"])
        shoal_header = new_header(kind, engine.identity.decode())._replace(msg_id=msg_id)
        allow_stdin = bool(content.get("allow_stdin", False)) and identities is not None

        def stream(name: str, text: str) -> None:
            self.stream(name, text, header)

        def display(msg_type: str, content: dict[str, Any]) -> None:
            if msg_type == "execute_result":
                self._saw_result = True
            self.publish(msg_type, content, header)

        def ask(prompt: str, password: bool) -> str:
            return self._ask(prompt, password, header, identities or [])

        engine._interrupt_any = False  # an interrupt meant for an earlier request is late
        engine.running = Message(shoal_header, None, {}, None)
        self._running = msg_id
        self._saw_result = False
        # Output, rich output and input() of this request are the console's, not the
        # cluster client's: the Kernel's callbacks point here while it runs.
        saved = kernel.on_stream, kernel.on_display, kernel.on_input, kernel.allow_stdin
        kernel.on_stream, kernel.on_display, kernel.on_input = stream, display, ask
        kernel.allow_stdin = allow_stdin
        try:
            try:
                engine._in_user_code = True
                reply = kernel.handle(kind, content)
                engine._in_user_code = False
            except KeyboardInterrupt as exc:  # landed just outside Kernel.handle
                engine._in_user_code = False
                reply = error_reply(exc, engine_id=engine.engine_id, serializer=None)
        finally:
            engine._in_user_code = False
            self._running = None
            engine.running = None
            engine._interrupt_ids.discard(msg_id)
            kernel.on_stream, kernel.on_display, kernel.on_input, kernel.allow_stdin = saved
        return reply

    def _ask(
        self, prompt: str, password: bool, parent: dict[str, Any], identities: list[bytes]
    ) -> str:
        """Send ``input_request`` on stdin and wait (interruptibly) for the reply."""
        while not self._input_replies.empty():  # answers to an earlier, interrupted ask
            self._input_replies.get_nowait()
        request = {"prompt": prompt, "password": password}
        msg_id = uuid.uuid4().hex
        self._send("stdin", self._encode("input_request", request, parent, identities, msg_id))
        while True:
            if self.closed:
                raise EOFError("the Jupyter console detached while input() waited")
            try:
                asked, answer = self._input_replies.get(timeout=_POLL_MS / 1000)
            except queue.Empty:
                continue
            if asked and asked != msg_id:  # jupyter_client names no parent: then any goes
                continue  # the answer to another (earlier, interrupted) input_request
            value = answer.get("value")
            if not isinstance(value, str):
                raise EOFError(  # noqa: TRY004 - input() callers expect EOFError
                    f"the console's input_reply has no str 'value': {answer!r}"
                )
            return value

    def _execute(
        self, identities: list[bytes], header: dict[str, Any], content: dict[str, Any]
    ) -> dict[str, Any]:
        kernel = self._engine.kernel
        code = content.get("code")
        silent = bool(content.get("silent", False))
        if not silent and isinstance(code, str):
            count = kernel.execution_count + 1  # the count this cell will have
            self.publish("execute_input", {"code": code, "execution_count": count}, header)
        reply = self._run("execute_request", content, header, identities)
        if reply.get("status") == "ok":
            result = reply.pop("result", None)
            if result is not None and not silent and not self._saw_result:
                data = {"text/plain": _repr(result)}
                out = {"execution_count": kernel.execution_count, "data": data, "metadata": {}}
                self.publish("execute_result", out, header)
            reply.setdefault("user_expressions", {})
            reply.setdefault("payload", [])
        reply["execution_count"] = kernel.execution_count
        reply = self._reply_of("execute_request", reply)
        if reply.get("status") == "error" and not silent:
            error = {k: reply[k] for k in ("ename", "evalue", "traceback")}
            self.publish("error", error, header)
        if reply.get("status") == "error" and content.get("stop_on_error", True):
            self._abort_queued()
        return reply

    def _abort_queued(self) -> None:
        """Jupyter's ``stop_on_error``: the execute requests queued behind a failed one
        are answered ``aborted``, not run (the rest of a "Run All" stops)."""
        keep: collections.deque[tuple[list[bytes], dict[str, Any]]] = collections.deque()
        while self._inbox:
            identities, msg = self._inbox.popleft()
            header = msg["header"]
            if header["msg_type"] != "execute_request":
                keep.append((identities, msg))
                continue
            self.publish("status", {"execution_state": "busy"}, header)
            aborted = {"status": "aborted", "execution_count": self._engine.kernel.execution_count}
            self._send("shell", self._encode("execute_reply", aborted, header, identities))
            self.publish("status", {"execution_state": "idle"}, header)
        self._inbox.extendleft(reversed(keep))

    def _reply_of(self, kind: str, reply: dict[str, Any]) -> dict[str, Any]:
        """The Kernel's reply in Jupyter's shape: JSON data only, a traceback as lines."""
        reply = {k: v for k, v in reply.items() if k not in ("exception", "result")}
        if reply.get("status") == "error":
            tb = reply.get("traceback")
            if isinstance(tb, str):
                reply["traceback"] = tb.rstrip("\n").splitlines()
            elif not isinstance(tb, list):
                reply["traceback"] = []
            reply["ename"] = str(reply.get("ename", "Error"))
            reply["evalue"] = str(reply.get("evalue", ""))
        cleaned: dict[str, Any] = json.loads(_dumps(reply))
        if kind == "kernel_info_request" and cleaned.get("status") == "ok":
            self._kernel_info = cleaned  # what control answers from now on
        return cleaned


def open_gateway(engine: EngineProcess, content: object) -> dict[str, Any]:
    """Answer a ``jupyter_gateway_request`` (I/O thread): the connection info of the
    engine's gateway, opened now if none is open; an error reply for bad content."""
    try:
        if not isinstance(content, Mapping):
            raise TypeError(f"jupyter_gateway_request needs a dict content, got {content!r}")
        unknown = set(content) - {"ip", "insecure"}
        if unknown:
            raise ValueError(
                f"jupyter_gateway_request: unknown fields {sorted(unknown)}; known: ip, insecure"
            )
        ip = content.get("ip", "127.0.0.1")
        insecure = content.get("insecure", False)
        if not isinstance(ip, str) or not ip:
            raise TypeError(f"jupyter_gateway_request: 'ip' must be a non-empty str, got {ip!r}")
        if not isinstance(insecure, bool):
            raise TypeError(f"jupyter_gateway_request: 'insecure' must be a bool, got {insecure!r}")
        if ip == "outbound":  # the interface that routes to the hub: for a remote console
            ip = outbound_ip(split_url(engine.urls["shell"])[1])
        if not insecure and not is_loopback_url(f"tcp://{ip}:1"):
            raise ValueError(
                f"jupyter_gateway_request: {ip!r} is reachable from other hosts, and Jupyter's"
                " wire is signed but not encrypted; ask with insecure=True (`shoal engine"
                " connect-info --insecure`) on a trusted network only, or tunnel to loopback"
            )
        current: JupyterGateway | None = engine._jupyter
        if current is not None and not current.closed:
            if current.ip != ip:
                raise ValueError(
                    f"jupyter_gateway_request: a gateway is open on {current.ip}, not {ip};"
                    " detach it first (shutdown without restart from the console)"
                )
        else:
            current = JupyterGateway(engine, ip, insecure)
            engine._jupyter = current
            log.info("jupyter gateway open on %s: %s", ip, current.ports)
        return {"status": "ok", "engine_id": engine.engine_id, **current.connection_info()}
    except Exception as exc:
        return error_reply(exc, engine_id=engine.engine_id, serializer=None)


def _now() -> str:
    """The time now in ISO 8601, UTC, to the microsecond (what Jupyter's headers say)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _bind_sockets(
    ctx: zmq.Context[Any], ip: str, insecure: bool
) -> tuple[dict[str, zmq.Socket[Any]], dict[str, int]]:
    """A Jupyter kernel's five sockets bound on ``ip`` at free ports, and the ports."""
    socks: dict[str, zmq.Socket[Any]] = {}
    ports: dict[str, int] = {}
    try:
        for name, kind in (
            ("shell", zmq.ROUTER),
            ("iopub", zmq.PUB),
            ("stdin", zmq.ROUTER),
            ("control", zmq.ROUTER),
            ("hb", zmq.ROUTER),
        ):
            sock: zmq.Socket[Any] = ctx.socket(kind)
            sock.linger = 1000
            if kind == zmq.PUB:
                sock.sndhwm = _IOPUB_HWM
            else:
                sock.maxmsgsize = _MAX_BYTES  # the first cap, before any Python work
            socks[name] = sock
            url = bind(sock, f"tcp://{ip}:*", insecure=insecure)
            ports[name] = int(url.rsplit(":", 1)[1])
    except BaseException:
        for sock in socks.values():
            sock.close(linger=0)
        raise
    return socks, ports


def _kernel_info_fallback() -> dict[str, Any]:
    """kernel_info on control before the Kernel gave it on shell (the main thread may be
    busy for long: control answers at once)."""
    from importlib.metadata import version  # noqa: PLC0415 - only when asked

    v = sys.version_info
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "shoal",
        "implementation_version": version("shoal-engine"),
        "language_info": {
            "name": "python",
            "version": f"{v.major}.{v.minor}.{v.micro}",
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": f"shoal engine (pid {os.getpid()}), Python {sys.version.split()[0]}",
        "help_links": [],
    }


def _error(ename: str, evalue: str) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": []}


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the reply
        return f"<repr() of a {type(value).__name__} failed: {exc}>"


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return _repr(value)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, default=_json_default, ensure_ascii=False).encode("utf-8")


def _echo(sock: zmq.Socket[Any], control: zmq.Socket[Any]) -> None:
    """Echo heartbeat pings back, in C and without the GIL, until told to stop."""
    try:
        zmq.proxy_steerable(sock, sock, None, control)
    except zmq.ContextTerminated:
        pass
    finally:
        sock.close(linger=0)
        control.close(linger=0)
