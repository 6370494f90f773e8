"""The hub's liveness threads: the heart pings engines, the beat echo answers clients.

The **heart thread** pings every engine on the hub's ``heartbeat`` ROUTER each ``period``
and records when each echoed; the routing thread only reads those times, so a routing
thread busy with a huge message never stops the pings that keep engines alive. The
**beat echo** answers clients' pings on ``beat`` in C (``zmq.proxy_steerable``, no GIL),
so a client never takes a busy hub for a lost one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

__all__ = ["Heart", "beat_echo"]


class Heart(threading.Thread):
    """Pings the engines on the hub's heartbeat socket every ``period`` and records when
    each echoed; the routing thread reads :attr:`last` and :attr:`unreachable`.

    The routing thread adds and removes engines with :meth:`watch` and :meth:`forget`
    (plain dict operations, atomic under the GIL); this thread owns the socket.
    """

    def __init__(self, sock: zmq.Socket[Any], period: float) -> None:
        super().__init__(name="shoal-hub-heart", daemon=True)
        self.sock = sock
        self.period = period
        self.last: dict[bytes, float] = {}  # identity -> when it last echoed (monotonic)
        # identities the last ping could not be sent to (cleared by a later echo)
        self.unreachable: set[bytes] = set()
        # identities that echoed at least once: only their unreachability means death (a
        # new engine's heartbeat connection may come up after its registration)
        self.echoed: set[bytes] = set()
        self._watched: dict[bytes, None] = {}
        self._halt = threading.Event()
        self._next_ping = 0.0

    def watch(self, ident: bytes) -> None:
        self.last[ident] = time.monotonic()
        self._watched[ident] = None

    def forget(self, ident: bytes) -> None:
        self._watched.pop(ident, None)
        self.last.pop(ident, None)
        self.unreachable.discard(ident)
        self.echoed.discard(ident)

    def stop(self) -> None:
        if self.ident is None:  # it never ran: close its socket
            self.sock.close(linger=0)
            return
        self._halt.set()
        self.join(timeout=5 * self.period + 1)

    def run(self) -> None:
        self._next_ping = time.monotonic()
        try:
            while not self._halt.is_set():
                wait = max(0.0, self._next_ping - time.monotonic())
                if self.sock.poll(int(wait * 1000) + 1):
                    # Echoes: [identity, b"ping"]; the identity is all we use. Pinging is
                    # checked after each message, so a flood here delays no ping round.
                    while time.monotonic() < self._next_ping and self._read_echo():
                        pass
                self._ping_if_due()
        finally:
            self.sock.close(linger=0)

    def _read_echo(self) -> bool:
        """Read one message (frame by frame, kept nowhere); False when none waits.

        A message of many frames (nobody's echo) is read on with pings sent on time, and
        the time it took is not held against the engines whose echoes waited behind it.
        """
        try:
            frame = self.sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        ident = frame.bytes if len(frame) <= 256 else b""  # identities are small
        mark = time.monotonic()
        n = 1
        while frame.more:
            frame = self.sock.recv(copy=False)
            n += 1
            if n % 4096 == 0:
                self._ping_if_due()
                # Echoes wait behind this message: their engines' silence stands still.
                now = time.monotonic()
                last = self.last  # the routing thread may forget one meanwhile: no KeyError
                for watched, heard in list(last.items()):
                    last[watched] = heard + (now - mark)
                mark = now
        if ident in self._watched:
            self.last[ident] = time.monotonic()
            self.unreachable.discard(ident)  # it answers: a failed ping was a start-up race
            self.echoed.add(ident)
        return True

    def _ping_if_due(self) -> None:
        if time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + self.period
        for ident in list(self._watched):
            try:
                self.sock.send(ident, zmq.SNDMORE | zmq.NOBLOCK)
                self.sock.send(b"ping", zmq.NOBLOCK)
            except zmq.ZMQError:  # its connection is gone
                self.unreachable.add(ident)


def beat_echo(sock: zmq.Socket[Any], capture: zmq.Socket[Any], control: zmq.Socket[Any]) -> None:
    """Echo clients' pings in C, without the GIL, until told to stop on ``control``."""
    try:
        zmq.proxy_steerable(sock, sock, capture, control)
    except zmq.ContextTerminated:
        pass
    finally:
        for s in (sock, capture, control):
            s.close(linger=0)
