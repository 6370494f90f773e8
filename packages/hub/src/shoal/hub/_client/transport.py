"""A client's transport: its sockets, the order of what it sends, and their reading.

Theory of operation
-------------------
The transport connects two DEALER sockets to the hub's client port (see
``_server/hub.py``):

* ``s<token>`` sends requests. Any thread may send; a lock keeps one sender at a time,
  and the sending thread encoded its own message, so a request costs no thread hand-off.
  When the hub stops reading (its queues are full), the send waits: back-pressure,
  never loss. A send also stops waiting when the hub is lost.
* ``r<token>`` receives: replies, output streamed by the engines, and the hub's notices.
* ``b<token>`` pings the hub's beat socket every ``ping_period``, echoed there in C, so a
  hub busy routing is never taken for a lost one; when the hub has been silent for
  ``hub_timeout`` seconds the transport is *lost* (``on_lost``).

Requests for one engine of this host go straight to that engine's own socket once it
answered a ping (:meth:`Transport.open_direct`). Small load-balanced tasks sent while
others are unanswered wait up to ``_FLUSH_AFTER`` in an outbox, to leave together in one
message (Nagle's rule).

Reading: whoever holds ``_reading`` reads the sockets: the I/O thread, or a caller
waiting for its own result (:meth:`Transport.wait`), which then gets its reply with no
hand-off. Every socket sends and receives through a :class:`shoal.wire.Session`: a message
is stamped by the socket's link under the send lock, just before it goes out, so the
receiver sees each link's messages in order.

The transport knows frames and routes, not requests: what a message means is the
client's business (``on_message``).
"""

from __future__ import annotations

import array
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.utils.monitor

from shoal.engine import PING, PONG, EngineDiedError
from shoal.wire import Codec, CurveKeys, Session, configure_curve_client

from .._protocol import BEAT, LB, LB_BATCH, RECEIVER, SENDER, engine_route
from .errors import HubLost

__all__ = ["Transport"]

log = logging.getLogger("shoal.hub.client")
# Plain ints: the enum members cost microseconds per use on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_TRACK_BYTES = 64 * 1024  # frames this large go without a copy, and we wait for zmq
_BATCH = 256  # load-balanced tasks sent together at most
_FLUSH_AFTER = 0.001  # seconds a queued task may wait for others
# Seconds the I/O thread leaves the reading to callers after one last waited: a caller
# making calls in a row then finds the sockets free, and wakes no thread per call.
_LINGER = 0.01
_READ_BURST = 64  # messages read from one socket per round, so pings stay on time
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

#: ``on_message(route, frames, session)``: a message from the hub (``route`` its first
#: frame) or, with ``route`` an engine's route, from that engine's own socket.
OnMessage = Callable[[bytes, list[zmq.Frame], Session], None]


class Transport:
    """The sockets of one client, and the reading of them.

    ``on_message`` gets every message; ``on_lost(why)`` is called once when the hub is
    lost; ``on_tick(now)`` runs at each round of reading and returns how many seconds
    may pass before it must run again; ``on_direct(engine_id)`` says that the way to an
    engine's own socket opened; ``on_burst()`` runs after each burst of messages read;
    ``outstanding()`` counts unanswered requests.
    """

    def __init__(
        self,
        *,
        url: str,
        beat_url: str | None,
        codec: Codec,
        token: bytes,
        ping_period: float,
        hub_timeout: float,
        on_message: OnMessage,
        on_lost: Callable[[str], None],
        on_tick: Callable[[float], float],
        on_direct: Callable[[int], None],
        on_burst: Callable[[], None],
        outstanding: Callable[[], int],
        curve: CurveKeys | None = None,
        engine_curve: CurveKeys | None = None,
    ) -> None:
        self.url = url
        self._curve = curve  # to the hub
        self.engine_curve = engine_curve  # to engines' own sockets
        self.ping_period = ping_period
        self.hub_timeout = hub_timeout
        self._codec = codec
        self._token = token
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_tick = on_tick
        self._on_direct_open = on_direct
        self._on_burst = on_burst
        self._outstanding = outstanding
        self.lost: str | None = None
        self.closed = False
        self.heard = threading.Event()  # the hub answered the receiving socket's hello
        self._last_heard = time.monotonic()
        self._context: zmq.Context[Any] = zmq.Context()
        self._connect(beat_url)
        self._send_lock = threading.Lock()
        # Reentrant only so that its owner can be asked (wait() never nests reading).
        self._reading = threading.RLock()
        self._waiters = 0  # callers who want `_reading`
        self._last_waited = 0.0  # when a caller last stopped reading (monotonic)
        self._waiters_changed = threading.Condition()
        self._wake_lock = threading.Lock()
        self._next_ping = 0.0
        self._poller = zmq.Poller()  # the reader's: the hub and the engines' sockets
        # close() wakes the I/O thread through this pipe rather than waiting out its poll.
        address = f"inproc://shoal-client-wake-{token.decode()}"
        self._wake_in: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        self._wake_in.bind(address)
        self._wake_out: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        self._wake_out.connect(address)
        self._poller.register(self._receiver, zmq.POLLIN)
        self._poller.register(self._wake_in, zmq.POLLIN)
        if self._beat is not None:
            self._poller.register(self._beat, zmq.POLLIN)
        # Direct ways to engines on this host: route -> (engine id, sending socket), and
        # receiving socket -> (engine id, sending socket).
        self._direct_senders: dict[bytes, tuple[int, zmq.Socket[Any]]] = {}
        # Their engine ids, made anew (never changed in place) when a way opens or closes:
        # read per request without a lock.
        self._direct_ids: tuple[int, ...] = ()
        self._direct_receivers: dict[zmq.Socket[Any], tuple[int, zmq.Socket[Any]]] = {}
        # Small load-balanced tasks waiting to go together (see _coalesce).
        self._outbox: list[Any] = []
        self._outbox_since = 0.0
        self._io = threading.Thread(target=self._io_loop, name="shoal-client-io", daemon=True)

    def _connect(self, beat_url: str | None) -> None:
        """The sockets to the hub: send, receive and (when the hub has one) beat."""
        token = self._token
        self._sender: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        self._sender.identity = SENDER + token
        self._sender.linger = 0
        self._receiver: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        self._receiver.identity = RECEIVER + token
        self._receiver.linger = 0
        self._receiver.rcvhwm = 0  # replies are never refused: they are what we wait for
        # A refused handshake (a key the hub does not admit, a server key that is not
        # the hub's) is silent otherwise: zmq retries for ever.
        self._handshakes: zmq.Socket[Any] | None = self._receiver.get_monitor_socket(
            _HANDSHAKE_FAILED
        )
        self._secure(self._receiver, self._curve)
        self._secure(self._sender, self._curve)
        self._receiver.connect(self.url)
        self._sender.connect(self.url)
        self._beat: zmq.Socket[Any] | None = None
        if beat_url is not None:
            self._beat = self._context.socket(zmq.DEALER)
            self._beat.identity = BEAT + token
            self._beat.linger = 0
            self._secure(self._beat, self._curve)
            self._beat.connect(beat_url)
        self._sessions: dict[zmq.Socket[Any], Session] = {
            sock: Session(sock, self._codec) for sock in (self._sender, self._receiver)
        }

    @staticmethod
    def _secure(sock: zmq.Socket[Any], keys: CurveKeys | None) -> None:
        if keys is not None:
            configure_curve_client(sock, keys)

    def start(self) -> None:
        """Start the I/O thread (it pings the hub until it answers)."""
        self._io.start()

    def wait_heard(self, timeout: float) -> str | None:
        """Wait until the hub answered; None then, else why not (a refused handshake, said
        at once, or silence for ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        monitor = self._handshakes
        try:
            while not self.heard.wait(0.05):
                if monitor is not None and monitor.poll(0):
                    event = zmq.utils.monitor.recv_monitor_message(monitor)
                    return _handshake_problem(int(event["event"]), int(event["value"]))
                if time.monotonic() > deadline:
                    return f"no hub answered at {self.url} within {timeout} s"
            return None
        finally:
            if monitor is not None:
                # Only our end: the receiver is the I/O thread's now; events it still
                # makes are dropped.
                monitor.close(linger=0)
                self._handshakes = None

    def sessions(self) -> list[Session]:
        """The sessions of every socket, for their statistics."""
        return list(self._sessions.values())

    # -- state --------------------------------------------------------------------------
    def check(self) -> None:
        """Raise when nothing can be sent any more: the hub is lost, or this is closed."""
        if self.lost is not None:
            raise HubLost(self.lost)
        if self.closed:
            raise RuntimeError("this Client is closed; make a new one")

    def lose(self, why: str) -> None:
        """The hub is lost (silent, or it said it shuts down)."""
        self.lost = why
        self._on_lost(why)

    # -- sending ------------------------------------------------------------------------
    def send(self, route: bytes, frames: list[Any]) -> int | None:
        """Send one encoded (unstamped) message on ``route``: to an engine's own socket
        when one is open (its engine id is returned), else through the hub (None); a lone
        small load-balanced task may wait in the outbox for others."""
        direct = self._direct_senders
        way = direct.get(route) if direct else None
        if route == LB and len(frames) == 1 and self._coalesce(frames[0]):
            return None  # queued in the outbox; the next flush sends it
        if way is None:
            self.flush()  # keep the order of what goes to the hub
            self._send_frames([route, *frames], self._sender)
            return None
        self._send_frames(frames, way[1], route)  # straight to the engine
        return way[0]

    def send_direct(self, route: bytes, frames: list[Any]) -> None:
        """Send one encoded (unstamped) message to an engine's own socket only. Raises
        ``EngineDiedError`` when that way is closed (nothing was sent)."""
        way = self._direct_senders.get(route)
        if way is None:
            raise EngineDiedError(f"engine {route[1:].decode()} has no open way from here")
        self._send_frames(frames, way[1], route)

    def _coalesce(self, head: Any) -> bool:
        """Queue a small load-balanced task to go with others in one message (Nagle's
        rule: only while earlier requests are unanswered, so a lone task leaves at once).
        The reader flushes the outbox within ``_FLUSH_AFTER``; a full one goes now."""
        with self._send_lock:
            if not self._outbox and self._outstanding() <= 1:
                return False
            if not self._outbox:
                self._outbox_since = time.monotonic()
                wake = True
            else:
                wake = False
            self._outbox.append(head)
            full = len(self._outbox) >= _BATCH
        if full:
            self.flush()
        elif wake:
            self.wake()  # the reader shortens its poll to flush in time
        return True

    def flush(self) -> None:
        """Send the outbox's tasks, in one message."""
        if not self._outbox:
            return
        with self._send_lock:
            heads, self._outbox = self._outbox, []
        if not heads:
            return
        counts = array.array("I", [1] * len(heads)).tobytes()
        self._send_frames([LB_BATCH, counts, *heads], self._sender, heads=len(heads))

    def _send_frames(
        self,
        frames: list[Any],
        sock: zmq.Socket[Any],
        direct_route: bytes | None = None,
        *,
        heads: int = 0,
    ) -> None:
        """Send ``frames`` on ``sock``: a message (after its route, for the hub), or with
        ``heads`` a batch ``[lbs, counts, head, ...]``; stamped here, under the lock."""
        big = any(memoryview(f).nbytes >= _TRACK_BYTES for f in frames[1:])
        with self._send_lock:
            self.check()
            session = self._sessions.get(sock)
            if session is None:  # closed since the caller chose it: its engine is gone
                assert direct_route is not None  # noqa: S101 - the hub's sockets stay open
                raise EngineDiedError(f"engine {direct_route[1:].decode()} is gone")
            if heads:
                for at in range(2, 2 + heads):
                    session.stamp(frames, at)
            else:
                session.stamp(frames, 0 if direct_route is not None else 1)
            if not big and _send_now(sock, frames):
                return  # the common case: there was room in the queue, no poll needed
            while not sock.poll(100, zmq.POLLOUT):  # the receiver's queue is full: wait
                self.check()
                if direct_route is not None and direct_route not in self._direct_senders:
                    raise EngineDiedError(f"engine {direct_route[1:].decode()} is gone")
            if not big:
                sock.send_multipart(frames)
                return
            tracker = sock.send_multipart(frames, copy=False, track=True)
            # The buffers must not change before zmq has read them (they are signed).
            while tracker is not None and not tracker.done:
                with contextlib.suppress(zmq.NotDone):
                    tracker.wait(0.1)
                if self.lost is not None:
                    raise HubLost(self.lost)

    def wake(self) -> None:
        """Make the reader leave its poll now (and the I/O thread its lingering)."""
        with self._wake_lock:
            self._wake_out.send(b"")
        with self._waiters_changed:
            self._last_waited = 0.0
            self._waiters_changed.notify_all()

    # -- reading ------------------------------------------------------------------------
    def _io_loop(self) -> None:
        while not self.closed and self.lost is None:
            with self._waiters_changed:  # a caller reads for itself: keep out of its way
                while not self.closed:
                    if self._waiters:
                        self._waiters_changed.wait(_LINGER)
                        continue
                    # Callers may come back at once (calls in a row): linger, unless a
                    # task waits in the outbox for this thread to flush it.
                    idle = time.monotonic() - self._last_waited
                    if idle >= _LINGER or self._outbox:
                        break
                    self._waiters_changed.wait(_LINGER - idle)
            if not self._reading.acquire(timeout=self.ping_period):
                continue
            try:
                self._pump(self.ping_period)
            finally:
                self._reading.release()

    def wait(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Read in this (calling) thread until ``done()`` or ``timeout`` passed: a reply
        reaches its waiter without a hand-off from the I/O thread."""
        if done():
            return
        self.flush()  # what the caller waits for may still sit in the outbox
        if threading.current_thread() is self._io:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        reading = self._reading
        # A Ctrl-C may raise KeyboardInterrupt anywhere, even just after an acquire
        # returned: the finally asks the lock whether this thread holds it, else a lock
        # or a waiter count left behind would stop the client's reading for good.
        nested = reading._is_owned()  # type: ignore[attr-defined]  # a callback waits
        counted = False
        try:
            with self._waiters_changed:
                self._waiters += 1
                counted = True  # no check for signals between these two lines
            if nested or not reading.acquire(blocking=False):
                self.wake()  # the I/O thread leaves its poll and yields
                while nested or not reading.acquire(timeout=0.002):
                    if done() or (deadline is not None and time.monotonic() > deadline):
                        return
                    if nested:  # as before: it cannot read, it waits for others
                        time.sleep(0.002)
            while not done() and not self.closed and self.lost is None:
                left = self.ping_period
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        return
                self._pump(left)
        finally:
            if not nested and reading._is_owned():  # type: ignore[attr-defined]
                reading.release()
            if counted:
                with self._waiters_changed:
                    self._waiters -= 1
                    # The I/O thread is not woken: it comes back by itself after _LINGER.
                    self._last_waited = time.monotonic()

    def _pump(self, timeout: float) -> None:
        """One round of reading: a ping when due, then whatever arrives within
        ``timeout``. Only the holder of ``_reading`` runs it."""
        hub = self._receiver
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.ping_period
            # Until the hub answered the receiving socket's hello it may not route to it;
            # after that the beat socket carries the pings (echoed there in C).
            pinger = hub if self._beat is None or not self.heard.is_set() else self._beat
            with contextlib.suppress(zmq.ZMQError):
                pinger.send(PING, zmq.NOBLOCK)
            if self.heard.is_set() and now - self._last_heard > self.hub_timeout:
                silent = now - self._last_heard
                self.lose(f"the hub at {self.url} has been silent for {silent:.1f} s")
                return
        timeout = min(timeout, max(0.0, self._next_ping - now), self._on_tick(now))
        if self._outbox:
            due = self._outbox_since + _FLUSH_AFTER
            if now >= due:
                with contextlib.suppress(HubLost, RuntimeError):
                    self.flush()
            else:
                timeout = min(timeout, due - now)
        try:
            ready = self._poller.poll(int(timeout * 1000) + 1 if timeout > 0 else 0)
        except zmq.ZMQError:
            return  # the context is ending: close() was called
        self._handle(ready)

    def _handle(self, ready: list[tuple[Any, int]]) -> None:
        """Read what waits on each socket the poll found ready (up to ``_READ_BURST``
        messages each: one poll, one wake-up, for a burst of replies)."""
        for sock, _ in ready:
            if sock is self._wake_in:
                while self._wake_in.poll(0):
                    self._wake_in.recv()
                continue
            if sock is self._beat:
                self._read_beats()
                continue
            for _ in range(_READ_BURST):
                session = self._sessions.get(sock)
                if session is None:  # closed meanwhile: its engine is gone
                    break
                try:
                    frames = session.recv_frames_nowait()
                except zmq.ZMQError:  # Again, or the context is ending
                    break
                if frames is not None:  # else over the caps: dropped and counted
                    self._dispatch(sock, frames, session)
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    break  # cheaper than a recv that raises Again
        try:
            self._on_burst()
        except Exception:
            log.exception("failed after reading a burst of messages")

    def _dispatch(self, sock: zmq.Socket[Any], frames: list[Any], session: Session) -> None:
        try:
            if sock is self._receiver:
                self._last_heard = time.monotonic()
                if frames[0].bytes == PONG:
                    self.heard.set()
                else:
                    self._on_message(frames[0].bytes, frames, session)
            else:
                self._on_direct(sock, frames, session)
        except Exception:
            log.exception("failed to handle a message")

    def _read_beats(self) -> None:
        """The hub echoed pings: it is alive."""
        assert self._beat is not None  # noqa: S101 - only polled when there is one
        with contextlib.suppress(zmq.ZMQError):
            while self._beat.poll(0):
                self._beat.recv()
        self._last_heard = time.monotonic()

    # -- direct connections to engines (I/O thread) -------------------------------------
    def open_direct(self, engine_id: int, url: str) -> None:
        """Connect to an engine's own socket; requests go there once it answered a ping."""
        receiver = self._context.socket(zmq.DEALER)
        receiver.identity = RECEIVER + self._token
        receiver.rcvhwm = 0
        receiver.linger = 0
        self._secure(receiver, self.engine_curve)
        receiver.connect(url)
        sender = self._context.socket(zmq.DEALER)
        sender.identity = SENDER + self._token
        sender.linger = 0
        self._secure(sender, self.engine_curve)
        sender.connect(url)
        receiver.send(PING)  # the engine answers once it can route to `receiver`
        self._direct_receivers[receiver] = (engine_id, sender)
        self._sessions[receiver] = Session(receiver, self._codec)
        self._sessions[sender] = Session(sender, self._codec)
        self._poller.register(receiver, zmq.POLLIN)

    def _on_direct(self, receiver: zmq.Socket[Any], frames: list[Any], session: Session) -> None:
        engine_id, sender = self._direct_receivers[receiver]
        first = frames[0].bytes
        if first == PONG:
            self._direct_senders[engine_route(engine_id)] = (engine_id, sender)
            self._direct_ids = (*self._direct_ids, engine_id)
            self._on_direct_open(engine_id)
            return
        self._on_message(engine_route(engine_id), frames, session)

    def direct_engines(self) -> list[int]:
        """The engines whose own socket takes requests now."""
        return list(self._direct_ids)

    def close_direct(self, engine_id: int) -> None:
        """The engine is gone: close the sockets to it."""
        route = engine_route(engine_id)
        with self._send_lock:  # no thread is sending on it while it closes
            self._direct_senders.pop(route, None)
            self._direct_ids = tuple(e for e in self._direct_ids if e != engine_id)
        for receiver, (eid, sender) in list(self._direct_receivers.items()):
            if eid == engine_id:
                del self._direct_receivers[receiver]
                self._sessions.pop(receiver, None)
                self._poller.unregister(receiver)
                receiver.close(linger=0)
                with self._send_lock:
                    self._sessions.pop(sender, None)
                    sender.close(linger=0)

    # -- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Send what waits in the outbox, stop reading, close every socket."""
        if self.closed:
            return
        with contextlib.suppress(HubLost, RuntimeError, zmq.ZMQError):
            self.flush()
        self.closed = True
        self.wake()
        with self._waiters_changed:
            self._waiters_changed.notify_all()
        if self._io.is_alive():
            self._io.join(timeout=2 * self.ping_period + 1)
        if not self._reading.acquire(timeout=2 * self.ping_period + 1):
            log.warning("a thread still reads this Client's sockets while it closes")
        for receiver, (_eid, sender) in self._direct_receivers.items():
            receiver.close(linger=0)
            sender.close(linger=0)
        if self._handshakes is not None:
            self._handshakes.close(linger=0)
        for sock in (self._sender, self._receiver, self._wake_in, self._wake_out):
            sock.close(linger=0)
        if self._beat is not None:
            self._beat.close(linger=0)
        self._context.term()


def _send_now(sock: zmq.Socket[Any], frames: list[Any]) -> bool:
    """Send without waiting; False, having sent nothing, when the queue is full. Once the
    first part is queued, zmq takes the rest of the message."""
    try:
        sock.send(frames[0], (zmq.SNDMORE if len(frames) > 1 else 0) | zmq.NOBLOCK)
    except zmq.Again:
        return False
    if len(frames) == 1:
        return True
    for frame in frames[1:-1]:
        sock.send(frame, zmq.SNDMORE)
    sock.send(frames[-1])
    return True


def _handshake_problem(event: int, value: int) -> str:
    """What a failed handshake with the hub means, from the monitor's event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the hub refused this client's Curve key (ZAP status {value}): the keys in"
            " the connection file are not ones this hub admits"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (
            "the hub speaks another security mechanism than this client (one side uses"
            " CurveZMQ, the other not, or the versions differ)"
        )
    return (
        "the Curve handshake with the hub failed: the server key in the connection file"
        " is not this hub's (the file of an earlier hub?), or the hub does not use Curve"
    )
