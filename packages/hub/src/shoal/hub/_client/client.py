"""Client: the user's connection to a running cluster.

Theory of operation
-------------------
A client connects two DEALER sockets to the hub's client port (see ``_hub.py``):

* ``s<token>`` sends requests. Any thread may send; a lock keeps one sender at a time,
  and the sending thread encodes its own message, so a request costs no thread hand-off.
  When the hub stops reading (its queues are full), the send waits: back-pressure,
  never loss. A send also stops waiting when the hub is lost.
* ``r<token>`` receives, in the client's I/O thread: replies, output streamed by the
  engines, and the hub's notices (engines joining and leaving). Each reply resolves its
  :class:`AsyncResult`.
* ``b<token>`` pings the hub's beat socket every ``ping_period``, echoed there in C, so a
  hub busy routing is never taken for a lost one; when the hub has been silent for
  ``hub_timeout`` seconds (or says it shuts down) every outstanding result fails with
  :class:`HubLost` and further requests raise it at once.

Every socket sends and receives through a :class:`shoal.wire.Session`: a request is
encoded by the calling thread, then stamped by the socket's link under the send lock,
just before it goes out, so the receiver sees each link's messages in order.
"""

from __future__ import annotations

import array
import atexit
import collections
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import zmq

from shoal.engine import PING, PONG, EngineDiedError, MsgType, RemoteError
from shoal.wire import (
    Codec,
    Message,
    RawContent,
    Session,
    SharedMemoryLost,
    default_shared_memory,
    new_header,
    read_connection_file,
    shared_memory_enabled,
    this_host,
)

from .._profile import CLIENT_FILE, profile_dir
from .._protocol import BEAT, HUB, LB, LB_BATCH, RECEIVER, SENDER, control_route, engine_route
from .asyncresult import AsyncResult
from .errors import HubLost, error_from_reply
from .references import ReferenceBook

__all__ = ["Client", "current_client"]

log = logging.getLogger("shoal.hub.client")
_TRACK_BYTES = 64 * 1024  # frames this large go without a copy, and we wait for zmq
_BATCH = 256  # load-balanced tasks sent together at most
_FLUSH_AFTER = 0.001  # seconds a queued task may wait for others
_REFS_EVERY = 0.05  # seconds between batches of reference count changes


class Client:
    """A connection to a shoal cluster (a hub and its engines).

    Parameters
    ----------
    url_file : str, optional
        The hub's client connection file. Default: the profile's ``hub-client.json``.
    profile : str
        The profile whose cluster to join (``~/.shoal/profile_<name>/``, or under
        ``$SHOAL_DIR``).
    timeout : float
        Seconds to wait for the hub to answer when connecting.
    hub_timeout : float
        Seconds of silence after which the hub is declared lost.
    max_outstanding : int
        Requests this client may have unanswered at once: beyond it, submitting waits for
        replies (back-pressure, so that the hub's memory stays bounded).
    direct : bool
        Send requests for one engine straight to engines on this host (their own
        loopback socket) instead of through the hub; the hub still tells when an engine
        dies. ``False``: everything goes through the hub.

    Examples
    --------
    >>> rc = Client()                      # doctest: +SKIP
    >>> rc.ids                             # doctest: +SKIP
    [0, 1, 2, 3]
    >>> rc[:].apply_sync(os.getpid)        # doctest: +SKIP
    """

    def __init__(
        self,
        url_file: str | None = None,
        profile: str = "default",
        *,
        timeout: float = 10.0,
        hub_timeout: float = 2.5,
        ping_period: float = 0.5,
        max_outstanding: int = 100_000,
        direct: bool = True,
        shm: bool | None = None,
    ) -> None:
        path = url_file or os.path.join(profile_dir(profile), CLIENT_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"no cluster found: {path} does not exist; start one with"
                f" `shoal cluster start -n 4 --profile {profile}` or shoal.hub.Cluster(n=4)"
            )
        info = read_connection_file(path)
        self.url_file = path
        self.url = info.urls["client"]
        self.hub_pid: int | None = info.extra.get("pid")
        self.hub_timeout = hub_timeout
        self.ping_period = ping_period
        # The hub binds loopback only: the engines are on this host, and large buffers
        # go to them through shared memory.
        use_shm = shared_memory_enabled() if shm is None else shm
        self._codec = Codec(info.key, shm=default_shared_memory() if use_shm else None)
        self._session = uuid.uuid4().hex
        self._context: zmq.Context[Any] = zmq.Context()
        token = uuid.uuid4().hex[:16].encode()
        self._connect(token, info.urls.get("beat"))
        self._token = token
        self._reply_to = (RECEIVER + token).decode()
        self.direct = direct
        self.host = this_host()
        self._init_io_state()
        self._send_lock = threading.Lock()
        self._pending: dict[str, AsyncResult] = {}
        self.max_outstanding = max_outstanding
        self._room = threading.Condition()  # signalled when replies make room
        self._engines: dict[int, dict[str, Any]] = {}
        self._engines_changed = threading.Condition()
        self._lost: str | None = None
        self._closed = False
        self._heard = threading.Event()
        self._last_heard = time.monotonic()
        self._io = threading.Thread(target=self._io_loop, name="shoal-client-io", daemon=True)
        self._io.start()
        if not self._heard.wait(timeout):
            self.close()
            raise TimeoutError(
                f"no hub answered at {self.url} within {timeout} s (from {path}); is the"
                " cluster running? `shoal cluster list` shows the running clusters"
            )
        reply = self._hub_request(MsgType.CONNECT_REQUEST, {}, timeout)
        with self._engines_changed:
            for e in reply["engines"]:
                self._engines[int(e["engine_id"])] = e
        _clients.append(weakref.ref(self))

    def _connect(self, token: bytes, beat_url: str | None) -> None:
        """The sockets to the hub: send, receive and (when the hub has one) beat."""
        self._sender: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        self._sender.identity = SENDER + token
        self._sender.linger = 0
        self._receiver: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        self._receiver.identity = RECEIVER + token
        self._receiver.linger = 0
        self._receiver.rcvhwm = 0  # replies are never refused: they are what we wait for
        self._receiver.connect(self.url)
        self._sender.connect(self.url)
        self._beat: zmq.Socket[Any] | None = None
        if beat_url is not None:
            self._beat = self._context.socket(zmq.DEALER)
            self._beat.identity = BEAT + token
            self._beat.linger = 0
            self._beat.connect(beat_url)
        self._sessions: dict[zmq.Socket[Any], Session] = {
            sock: Session(sock, self._codec) for sock in (self._sender, self._receiver)
        }

    def _init_io_state(self) -> None:
        # Whoever holds `_reading` reads the sockets: the I/O thread, or a caller waiting
        # for its result (`_wait`), which then needs no hand-off. `_waiters` callers want it.
        self._reading = threading.Lock()
        self._waiters = 0
        self._waiters_changed = threading.Condition()
        self._wake_lock = threading.Lock()
        self._next_ping = 0.0
        self._poller = zmq.Poller()  # the reader's: the hub and the engines' sockets
        # close() wakes the I/O thread through this pipe rather than waiting out its poll.
        address = f"inproc://shoal-client-wake-{self._token.decode()}"
        self._wake_in: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        self._wake_in.bind(address)
        self._wake_out: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        self._wake_out.connect(address)
        self._poller.register(self._receiver, zmq.POLLIN)
        self._poller.register(self._wake_in, zmq.POLLIN)
        if self._beat is not None:
            self._poller.register(self._beat, zmq.POLLIN)
        # Direct ways to engines on this host: route -> (engine id, sending socket), and
        # receiving socket -> (engine id, sending socket); msg_id -> engine it went to.
        self._direct_senders: dict[bytes, tuple[int, zmq.Socket[Any]]] = {}
        self._direct_receivers: dict[zmq.Socket[Any], tuple[int, zmq.Socket[Any]]] = {}
        self._sent_to: dict[str, int] = {}
        # Small load-balanced tasks waiting to go together (see _coalesce).
        self._outbox: list[Any] = []
        self._outbox_since = 0.0
        # Reference count changes of remote objects: booked by proxies (also from
        # __del__), sent in batches by the reader.
        self.references: ReferenceBook[int] = ReferenceBook(self._send_refs)

    # -- engines ------------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        """The ids of the engines registered now, sorted."""
        with self._engines_changed:
            return sorted(self._engines)

    def wait_for_engines(self, n: int, timeout: float | None = None) -> list[int]:
        """Wait until at least ``n`` engines are registered; returns their ids.

        Raises
        ------
        TimeoutError
            When fewer than ``n`` engines registered within ``timeout`` seconds.
        """
        with self._engines_changed:
            ok = self._engines_changed.wait_for(
                lambda: len(self._engines) >= n or self._lost is not None, timeout
            )
            if self._lost is not None:
                raise HubLost(self._lost)
            if not ok:
                raise TimeoutError(
                    f"{len(self._engines)} of {n} engines registered within {timeout} s"
                )
            return sorted(self._engines)

    def __getitem__(self, key: int | slice | Sequence[int]) -> Any:
        """``client[0]``, ``client[:]``, ``client[::2]``, ``client[[0, 2]]``: a DirectView."""
        from .views import DirectView  # noqa: PLC0415 - views import this module

        ids = self.ids
        if isinstance(key, int):
            if key not in ids:
                if key < 0 and -key <= len(ids):
                    key = ids[key]
                else:
                    raise IndexError(f"no engine {key}; the engines are {ids}")
            return DirectView(self, key)
        if isinstance(key, slice):
            targets = ids[key]
        else:
            targets = [int(k) for k in key]
            unknown = sorted(set(targets) - set(ids))
            if unknown:
                raise IndexError(f"no engines {unknown}; the engines are {ids}")
        if not targets:
            raise IndexError(f"{key!r} selects no engine; the engines are {ids}")
        return DirectView(self, targets)

    def direct_view(self, targets: int | Sequence[int] | str = "all") -> Any:
        """A DirectView on ``targets`` (``"all"``: every engine registered now)."""
        if targets == "all":
            return self[:]
        return self[targets]  # type: ignore[index]

    def load_balanced_view(self, targets: Sequence[int] | None = None) -> Any:
        """A LoadBalancedView: tasks go to whichever engine is free (among ``targets``)."""
        from .views import LoadBalancedView  # noqa: PLC0415 - views import this module

        return LoadBalancedView(self, targets)

    def executor(self, targets: Sequence[int] | None = None) -> Any:
        """A ``concurrent.futures.Executor`` running on the cluster (load balanced)."""
        from .._compat.pool import Executor  # noqa: PLC0415

        return Executor(self, targets)

    def pool(self, processes: int | None = None) -> Any:
        """A ``multiprocess.Pool``-compatible pool running on the cluster."""
        from .._compat.pool import Pool  # noqa: PLC0415

        return Pool(processes, client=self)

    # -- hub requests -------------------------------------------------------------------
    def queue_status(self) -> dict[int, Any]:
        """Per engine: outstanding requests, pid, host; plus ``unassigned`` tasks and
        ``no_engines``: True while tasks wait and no engine is left to run them."""
        reply = self._hub_request(MsgType.QUEUE_STATUS_REQUEST, {})
        status: dict[Any, Any] = {int(k): v for k, v in reply["engines"].items()}
        status["unassigned"] = reply["unassigned"]
        status["no_engines"] = bool(reply.get("no_engines", False))
        return status

    def hub_statistics(self) -> dict[str, dict[str, Any]]:
        """What the hub's sockets (``client``, ``shell``, ``control``) sent, received and
        dropped, by reason: the messages it refused before acting on them."""
        return dict(self._hub_request(MsgType.STATISTICS_REQUEST, {})["sockets"])

    def statistics(self) -> dict[str, Any]:
        """What this client's own sockets sent, received and dropped (summed), by reason."""
        sent = received = 0
        dropped: collections.Counter[str] = collections.Counter()
        for session in list(self._sessions.values()):
            stats = session.statistics()
            sent += stats.sent
            received += stats.received
            dropped.update(stats.dropped)
        return {"sent": sent, "received": received, "dropped": dict(dropped)}

    def history(self, msg_ids: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        """The hub's metadata on finished tasks: engine, status, submitted/started/completed."""
        content = {"msg_ids": None if msg_ids is None else list(msg_ids)}
        return list(self._hub_request(MsgType.HISTORY_REQUEST, content)["history"])

    def abort(self, msg_ids: Sequence[str]) -> None:
        """Drop the given requests if they have not started (they fail with TaskAborted)."""
        self._flush()
        self._hub_request(MsgType.ABORT_REQUEST, {"msg_ids": list(msg_ids)})

    def add_engines(self, n: int = 1) -> list[int]:
        """Ask the hub to start ``n`` more local engines; returns their pids."""
        return list(self._hub_request(MsgType.ADD_ENGINES_REQUEST, {"n": n})["pids"])

    def remove_engines(self, engine_ids: Iterable[int]) -> list[int]:
        """Shut engines down and take them out of the cluster."""
        ids = [int(i) for i in engine_ids]
        return list(
            self._hub_request(MsgType.REMOVE_ENGINES_REQUEST, {"engine_ids": ids})["removed"]
        )

    def shutdown(self, hub: bool = True, timeout: float = 10.0) -> None:
        """Stop the cluster: every engine and, with ``hub=True``, the hub."""
        if not hub:
            self.remove_engines(self.ids)
            return
        with contextlib.suppress(HubLost):
            self._hub_request(MsgType.SHUTDOWN_REQUEST, {}, timeout)

    # -- sending ------------------------------------------------------------------------
    def _submit(
        self,
        requests: Sequence[tuple[bytes, str, Any, dict[str, Any] | None]],
        make_result: Callable[[list[str]], AsyncResult],
        *,
        wait_for_room: bool = True,
    ) -> AsyncResult:
        """Encode and send ``(route, msg_type, content, metadata)`` requests, answered into
        the AsyncResult that ``make_result(msg_ids)`` builds."""
        self._check()
        if wait_for_room and len(self._pending) + len(requests) > self.max_outstanding:
            self._wait_for_room(len(requests))
        encoded: list[tuple[str, bytes, list[Any]]] = []
        for route, msg_type, content, metadata in requests:
            header = new_header(msg_type, self._session, "client")
            meta = {**metadata, "host": self.host} if metadata else {"host": self.host}
            if route[:1] == b"e":  # an engine's direct socket answers where this names
                meta["reply_to"] = self._reply_to
            msg = Message(header, None, meta, content)
            # Stamped under the send lock, in the order the socket sends (_send_frames).
            frames = self._codec.encode(msg, shm=self._same_host(route), stamped=False)
            encoded.append((str(header.msg_id), route, frames))
        result = make_result([msg_id for msg_id, _, _ in encoded])
        for msg_id, _, _ in encoded:  # before sending: a reply can come at once
            self._pending[msg_id] = result
        sent = 0
        direct = self._direct_senders
        try:
            for msg_id, route, frames in encoded:
                way = direct.get(route) if direct else None
                if route == LB and len(frames) == 1 and self._coalesce(frames[0]):
                    pass  # queued in the outbox; the next flush sends it
                elif way is None:
                    self._flush()  # keep the order of what goes to the hub
                    self._send_frames([route, *frames], self._sender)
                else:  # straight to the engine, skipping the hub's relay
                    self._sent_to[msg_id] = way[0]
                    self._send_frames(frames, way[1], route)
                sent += 1
        except BaseException:
            for msg_id, _, _ in encoded[sent:]:
                self._pending.pop(msg_id, None)
            raise
        return result

    def _same_host(self, route: bytes) -> bool:
        """Whether a request on ``route`` goes to this host (so its large buffers may go
        through shared memory): its engine is here, or for a load-balanced task every
        engine is; the hub is."""
        if route[:1] in (b"e", b"c") and route[1:].isdigit():
            host = self._engines.get(int(route[1:]), {}).get("hostname", self.host)
            return bool(host == self.host)
        if route in (LB, LB_BATCH):
            engines = list(self._engines.values())  # the I/O thread may add one meanwhile
            return all(e.get("hostname", self.host) == self.host for e in engines)
        return True

    def _coalesce(self, head: Any) -> bool:
        """Queue a small load-balanced task to go with others in one message (Nagle's
        rule: only while earlier requests are unanswered, so a lone task leaves at once).
        The reader flushes the outbox within ``_FLUSH_AFTER``; a full one goes now."""
        with self._send_lock:
            if not self._outbox and len(self._pending) <= 1:
                return False
            if not self._outbox:
                self._outbox_since = time.monotonic()
                wake = True
            else:
                wake = False
            self._outbox.append(head)
            full = len(self._outbox) >= _BATCH
        if full:
            self._flush()
        elif wake:
            with self._wake_lock:
                self._wake_out.send(b"")  # the reader shortens its poll to flush in time
        return True

    def _flush(self) -> None:
        """Send the outbox's tasks, in one message."""
        if not self._outbox:
            return
        with self._send_lock:
            heads, self._outbox = self._outbox, []
        if not heads:
            return
        counts = array.array("I", [1] * len(heads)).tobytes()
        self._send_frames([LB_BATCH, counts, *heads], self._sender, heads=len(heads))

    def direct_url(self, engine_id: int) -> str | None:
        """The address of engine ``engine_id``'s own socket (engines on one host reach each
        other there); None when it has none or is unknown."""
        url = self._engines.get(engine_id, {}).get("direct_url")
        return str(url) if url else None

    @property
    def bytes_received(self) -> int:
        """How many bytes of messages this client has received (shared memory included):
        what a computation that should stay on the engines must leave alone."""
        return self._codec.bytes_received

    @property
    def owner(self) -> str:
        """This client's name in the engines' object stores: the objects its proxies hold
        are booked to it, and freed when its lease with the hub ends."""
        return self._token.decode()

    def object_request(
        self, engine_id: int, msg_type: str, content: Mapping[str, object]
    ) -> AsyncResult:
        """Send one request to engine ``engine_id``'s object store
        (:class:`shoal.engine.ObjectStore`; ``msg_type`` one of its
        :class:`shoal.engine.MsgType` requests, e.g. ``MsgType.FETCH_REQUEST``).

        The AsyncResult's value is the whole reply content (a dict); a failure raises the
        original exception type when this process can import it, caused by a
        :class:`RemoteError` with the engine's traceback. This is the seam that remote
        objects and :mod:`shoal.arrays` build on.
        """

        def make(ids: list[str]) -> AsyncResult:
            result = AsyncResult(self, ids, single=True, label=msg_type)
            result._object = True
            return result

        return self._submit([(engine_route(engine_id), msg_type, dict(content), None)], make)

    def _send_refs(self, engine: int, owner: str, deltas: list[list[int]]) -> None:
        """One batch of the reference book: a ``refs_request`` to ``engine``."""
        if engine not in self._engines:
            return  # an engine that is gone took its objects with it
        content = {"owner": owner, "deltas": deltas}
        with contextlib.suppress(HubLost, RuntimeError, EngineDiedError):
            self._submit(
                [(engine_route(engine), MsgType.REFS_REQUEST, content, None)],
                lambda ids: AsyncResult(self, ids, single=True, label=MsgType.REFS_REQUEST),
                wait_for_room=False,
            )

    def _wait_for_room(self, n: int) -> None:
        limit = max(0, self.max_outstanding - n)
        with self._room:
            while len(self._pending) > limit:
                self._room.wait(0.1)
                self._check()

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
            self._check()
            session = self._sessions[sock]
            if heads:
                for at in range(2, 2 + heads):
                    session.stamp(frames, at)
            else:
                session.stamp(frames, 0 if direct_route is not None else 1)
            if not big and _send_now(sock, frames):
                return  # the common case: there was room in the queue, no poll needed
            while not sock.poll(100, zmq.POLLOUT):  # the receiver's queue is full: wait
                self._check()
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
                if self._lost is not None:
                    raise HubLost(self._lost)

    def _check(self) -> None:
        if self._lost is not None:
            raise HubLost(self._lost)
        if self._closed:
            raise RuntimeError("this Client is closed; make a new one")

    def _request(
        self,
        targets: Sequence[int],
        msg_type: str,
        content_for: Callable[[int], Any],
        *,
        single: bool,
        combine: Callable[[list[Any]], Any] | None = None,
        label: str | None = None,
    ) -> AsyncResult:
        """One request per target engine, gathered in one AsyncResult."""
        contents = [content_for(t) for t in targets]
        relayed = self._relays(targets, msg_type, contents)
        plain = [i for i in range(len(targets)) if i not in relayed]
        if len(plain) > 1 and all(contents[i] is contents[plain[0]] for i in plain):
            shared = self._broadcast(contents[plain[0]], [targets[i] for i in plain])
            for i in plain:
                contents[i] = shared
        for i, content in relayed.items():
            contents[i] = content
        routes = [engine_route(t) for t in targets]
        requests = [(r, msg_type, c, None) for r, c in zip(routes, contents, strict=True)]
        return self._submit(
            requests,
            lambda ids: AsyncResult(
                self, ids, single=single, combine=combine, label=label or msg_type
            ),
        )

    def _broadcast(self, content: Any, targets: Sequence[int]) -> RawContent:
        """The same content for every engine of ``targets``: serialized once, its large
        buffers in one shared memory segment for all when they are on this host."""
        # Each engine unpickles its own copy of every proxy inside: one reference each,
        # where pickling booked one for them all.
        with self.references.broadcast(len(targets)):
            stream, *buffers = self._codec.serializer.dumps(content)
        shm = self._codec.shm
        if shm is not None and all(self._same_host(engine_route(t)) for t in targets):
            buffers = [
                shm.share(b, len(targets)) if memoryview(b).nbytes >= shm.threshold else b
                for b in buffers
            ]
        return RawContent((stream, *buffers))

    def _relays(self, targets: Sequence[int], msg_type: str, contents: list[Any]) -> dict[int, Any]:
        """A push of the same names to several engines of another host crosses to that
        host once: one of them gets it, the others fetch it from that one (on their host:
        shared memory). Their contents, by position in ``targets``."""
        first = contents[0] if contents else None
        if (
            msg_type != MsgType.PUSH_REQUEST
            or not isinstance(first, dict)
            or any(c is not first for c in contents)
        ):
            return {}
        hosts: dict[str, list[int]] = {}
        for i, t in enumerate(targets):
            host = self._engines.get(t, {}).get("hostname", self.host)
            if host != self.host:
                hosts.setdefault(host, []).append(i)
        relayed: dict[int, Any] = {}
        for positions in hosts.values():
            url = self._engines.get(targets[positions[0]], {}).get("direct_url")
            if len(positions) < 2 or not url:
                continue
            token = uuid.uuid4().hex
            relay = {"token": token, "readers": len(positions) - 1}
            relayed[positions[0]] = {**first, "relay": relay}
            for i in positions[1:]:
                relayed[i] = {"namespace_from": {"url": url, "token": token}}
        return relayed

    def _hub_request(
        self, msg_type: str, content: dict[str, Any], timeout: float | None = 10.0
    ) -> dict[str, Any]:
        result = self._submit(
            [(HUB, msg_type, content, None)],
            lambda ids: AsyncResult(self, ids, single=True, label=msg_type),
        )
        return dict(result.get(timeout))

    def _control(self, engine_id: int, msg_type: str, content: dict[str, Any]) -> AsyncResult:
        return self._submit(
            [(control_route(engine_id), msg_type, content, None)],
            lambda ids: AsyncResult(self, ids, single=True, label=msg_type),
        )

    # -- receiving (I/O thread) ---------------------------------------------------------
    def _io_loop(self) -> None:
        while not self._closed and self._lost is None:
            with self._waiters_changed:  # a caller reads for itself: keep out of its way
                while self._waiters and not self._closed:
                    self._waiters_changed.wait(self.ping_period)
            if not self._reading.acquire(timeout=self.ping_period):
                continue
            try:
                self._pump(self.ping_period)
            finally:
                self._reading.release()

    def _wait(self, result: AsyncResult, timeout: float | None) -> None:
        """Read replies in this (calling) thread until ``result`` is done or ``timeout``
        passed: the reply reaches its waiter without a hand-off from the I/O thread."""
        if result.done():
            return
        self._flush()  # what the caller waits for may still sit in the outbox
        if threading.current_thread() is self._io:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._waiters_changed:
            self._waiters += 1
        try:
            if not self._reading.acquire(blocking=False):
                with self._wake_lock:
                    self._wake_out.send(b"")  # the I/O thread leaves its poll and yields
                while not self._reading.acquire(timeout=0.002):
                    if result.done() or (deadline is not None and time.monotonic() > deadline):
                        return
            try:
                while not result.done() and not self._closed and self._lost is None:
                    left = self.ping_period
                    if deadline is not None:
                        left = min(left, deadline - time.monotonic())
                        if left <= 0:
                            return
                    self._pump(left)
            finally:
                self._reading.release()
        finally:
            with self._waiters_changed:
                self._waiters -= 1
                self._waiters_changed.notify_all()

    def _pump(self, timeout: float) -> None:
        """One round of the client's reading: a ping when due, then whatever arrives within
        ``timeout``. Only the holder of ``_reading`` runs it."""
        hub = self._receiver
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.ping_period
            # Until the hub answered the receiving socket's hello it may not route to it;
            # after that the beat socket carries the pings (echoed there in C).
            pinger = hub if self._beat is None or not self._heard.is_set() else self._beat
            with contextlib.suppress(zmq.ZMQError):
                pinger.send(PING, zmq.NOBLOCK)
            if self._heard.is_set() and now - self._last_heard > self.hub_timeout:
                silent = now - self._last_heard
                self._hub_lost(f"the hub at {self.url} has been silent for {silent:.1f} s")
                return
        timeout = min(timeout, max(0.0, self._next_ping - now))
        if self.references:
            due = self.references.flushed_at + _REFS_EVERY
            if now >= due:
                self.references.flush()
            else:
                timeout = min(timeout, due - now)
        if self._outbox:
            due = self._outbox_since + _FLUSH_AFTER
            if now >= due:
                with contextlib.suppress(HubLost, RuntimeError):
                    self._flush()
            else:
                timeout = min(timeout, due - now)
        try:
            ready = self._poller.poll(int(timeout * 1000) + 1 if timeout > 0 else 0)
        except zmq.ZMQError:
            return  # the context is ending: close() was called
        self._handle(ready)

    def _handle(self, ready: list[tuple[Any, int]]) -> None:
        """Read one message from each socket the poll found ready."""
        hub = self._receiver
        for sock, _ in ready:
            if sock is self._wake_in:
                while self._wake_in.poll(0):
                    self._wake_in.recv()
                continue
            if sock is self._beat:
                self._read_beats()
                continue
            session = self._sessions[sock]
            try:
                frames = session.recv_frames_nowait()
            except zmq.ZMQError:  # Again, or the context is ending
                continue
            if frames is None:  # over the caps: dropped and counted
                continue
            try:
                if sock is hub:
                    self._last_heard = time.monotonic()
                    if frames[0].bytes == PONG:
                        self._heard.set()
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
    def _open_direct(self, engine: dict[str, Any]) -> None:
        """Connect to an engine's own socket; requests go there once it answered a ping."""
        url = engine.get("direct_url")
        engine_id = int(engine["engine_id"])
        if not url or engine.get("hostname") != self.host or not self.direct:
            return  # its socket listens on its host's loopback only
        receiver = self._context.socket(zmq.DEALER)
        receiver.identity = RECEIVER + self._token
        receiver.rcvhwm = 0
        receiver.linger = 0
        receiver.connect(url)
        sender = self._context.socket(zmq.DEALER)
        sender.identity = SENDER + self._token
        sender.linger = 0
        sender.connect(url)
        receiver.send(PING)  # the engine answers once it can route to `receiver`
        self._direct_receivers[receiver] = (engine_id, sender)
        self._sessions[receiver] = Session(receiver, self._codec)
        self._sessions[sender] = Session(sender, self._codec)
        self._poller.register(receiver, zmq.POLLIN)

    def _on_direct(self, receiver: zmq.Socket[Any], frames: list[Any], session: Session) -> None:
        engine_id, sender = self._direct_receivers[receiver]
        if frames[0].bytes == PONG:
            self._direct_senders[engine_route(engine_id)] = (engine_id, sender)
            return
        self._on_message(engine_route(engine_id), frames, session)

    def _close_direct(self, engine_id: int, cause: str) -> None:
        """The engine is gone: fail what was sent to it directly, close its sockets."""
        route = engine_route(engine_id)
        with self._send_lock:  # no thread is sending on it while it closes
            self._direct_senders.pop(route, None)
        for receiver, (eid, sender) in list(self._direct_receivers.items()):
            if eid == engine_id:
                del self._direct_receivers[receiver]
                self._sessions.pop(receiver, None)
                self._poller.unregister(receiver)
                receiver.close(linger=0)
                with self._send_lock:
                    self._sessions.pop(sender, None)
                    sender.close(linger=0)
        why = f"engine {engine_id} died while this request was outstanding: {cause}"
        for msg_id, eid in list(self._sent_to.items()):
            if eid == engine_id:
                self._fail(msg_id, EngineDiedError(why))

    def _fail(self, msg_id: str, error: BaseException) -> None:
        self._sent_to.pop(msg_id, None)
        result = self._pending.pop(msg_id, None)
        if result is not None:
            result._deliver(msg_id, None, error, {})

    # -- messages -----------------------------------------------------------------------
    def _on_message(self, route: bytes, frames: list[Any], session: Session) -> None:
        try:
            msg = session.decode_or_drop(frames)
        except SharedMemoryLost as exc:  # a reply whose data is gone: fail its request
            parent = exc.parent_header
            if parent is not None and parent.msg_id in self._pending:
                self._fail(parent.msg_id, RemoteError("SharedMemoryLost", str(exc)))
            return
        if msg is None:  # dropped: counted in the session's statistics, logged
            return
        kind = msg.msg_type
        parent = msg.parent_header
        if parent is None:
            if route == HUB:
                self._notice(kind, msg.content)
            return
        if kind == MsgType.CONNECT_REPLY:
            for engine in msg.content.get("engines", ()):
                self._open_direct(engine)
        result = self._pending.get(parent.msg_id)
        if result is None:
            return
        if kind == MsgType.STREAM:
            result._stream(parent.msg_id, str(msg.content["name"]), str(msg.content["text"]))
            return
        del self._pending[parent.msg_id]
        self._sent_to.pop(parent.msg_id, None)
        if len(self._pending) == self.max_outstanding - 1:
            with self._room:
                self._room.notify_all()
        content = msg.content
        metadata = dict(msg.metadata)
        metadata["submitted"] = result.submitted
        if not isinstance(content, dict):
            error: BaseException | None = RemoteError("ProtocolError", f"bad reply {content!r}")
            value = None
        elif content.get("status") == "ok":
            # Hub, control and object replies are their content; shell replies carry a
            # result.
            whole = route == HUB or route[:1] == b"c" or result._object
            error, value = None, content if whole else content.get("result")
        else:
            error, value = error_from_reply(content, original=result._object), None
        result._deliver(parent.msg_id, value, error, metadata)

    def _notice(self, kind: str, content: Any) -> None:
        if kind == MsgType.ENGINE_REGISTERED:
            with self._engines_changed:
                self._engines[int(content["engine_id"])] = content
                self._engines_changed.notify_all()
            self._open_direct(content)
        elif kind == MsgType.ENGINE_UNREGISTERED:
            engine_id = int(content["engine_id"])
            with self._engines_changed:
                self._engines.pop(engine_id, None)
                self._engines_changed.notify_all()
            self._close_direct(engine_id, str(content.get("cause", "unknown cause")))
        elif kind == MsgType.NO_ENGINES:
            log.warning(
                "no engine is left in the cluster: %s task(s) wait for one; add engines"
                " (Client.add_engines, shoal engine) or abort them",
                content.get("unassigned", "?") if isinstance(content, dict) else "?",
            )
        elif kind == MsgType.HUB_SHUTDOWN:
            self._hub_lost("the hub shut down")

    def _hub_lost(self, why: str) -> None:
        self._lost = why
        with self._engines_changed:
            self._engines_changed.notify_all()
        pending, self._pending = self._pending, {}
        for msg_id, result in pending.items():
            result._deliver(msg_id, None, HubLost(why), {})

    # -- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sockets; outstanding results are left unresolved."""
        if self._closed:
            return
        with contextlib.suppress(HubLost, RuntimeError, zmq.ZMQError):
            self._flush()
        self._closed = True
        with self._wake_lock:
            self._wake_out.send(b"")
        with self._waiters_changed:
            self._waiters_changed.notify_all()
        self._io.join(timeout=2 * self.ping_period + 1)
        if not self._reading.acquire(timeout=2 * self.ping_period + 1):
            log.warning("a thread still reads this Client's sockets while it closes")
        for receiver, (_eid, sender) in self._direct_receivers.items():
            receiver.close(linger=0)
            sender.close(linger=0)
        for sock in (self._sender, self._receiver, self._wake_in, self._wake_out):
            sock.close(linger=0)
        if self._beat is not None:
            self._beat.close(linger=0)
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"lost: {self._lost}" if self._lost else f"{len(self._engines)} engines"
        return f"<shoal.hub.Client {self.url}: {state}>"


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


_clients: list[weakref.ref[Client]] = []


def current_client() -> Client:
    """The most recently connected Client that is still open."""
    for ref in reversed(_clients):
        client = ref()
        if client is not None and not client._closed and client._lost is None:
            return client
    raise RuntimeError("no connected shoal Client: connect one first, e.g. rc = Client()")


def _close_all() -> None:
    for ref in _clients:
        client = ref()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


atexit.register(_close_all)
