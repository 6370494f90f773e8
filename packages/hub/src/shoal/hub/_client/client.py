"""Client: the user's connection to a running cluster.

Theory of operation
-------------------
A client turns calls into requests and replies into results. Its
:class:`~._client.transport.Transport` owns the sockets (to the hub, and straight to the
engines of this host) and their reading; the client encodes each request in the calling
thread, books an :class:`AsyncResult` for it (``_pending``, bounded by
``max_outstanding``: back-pressure), hands the frames to the transport, and resolves the
result when its reply arrives. It also keeps the registry of engines (from the hub's
notices) and the book of reference count changes of remote objects
(:class:`ReferenceBook`). When the hub is lost, every outstanding result fails with
:class:`HubLost` and further requests raise it at once.
"""

from __future__ import annotations

import atexit
import builtins
import collections
import contextlib
import contextvars
import functools
import getpass
import logging
import math
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, overload

from shoal.engine import EngineDiedError, MsgType, RemoteError
from shoal.util import disambiguate_url
from shoal.wire import (
    Codec,
    ConnectionInfo,
    CurveKeys,
    Header,
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
from .._protocol import HUB, LB, LB_BATCH, RECEIVER, SocketStatistics, control_route, engine_route
from .asyncresult import AsyncResult
from .errors import HubLost, error_from_reply
from .placer import Placed, Placer
from .references import ReferenceBook
from .transport import Transport
from .views import DirectView, LoadBalancedView

if TYPE_CHECKING:
    from .._compat.context import ClusterContext
    from .._compat.pool import Executor, Pool

__all__ = ["Client", "TaskRecord", "current_client"]

log = logging.getLogger("shoal.hub.client")
# Load-balanced flags only the hub can judge: tasks with them go through its scheduler.
_HUB_FLAGS = frozenset({"retries", "after", "follow"})
# A placed task whose pickled content is smaller than this may travel in a batch.
_SMALL_TASK = 1 << 16
R = TypeVar("R", bound="AsyncResult[Any]")


class TaskRecord(TypedDict):
    """The hub's metadata on a finished task (``Client.history``); times are
    ``time.time()`` seconds, None where the task never got there."""

    msg_id: str
    engine_id: int | None
    status: str
    submitted: float | None
    started: float | None
    completed: float | None


_REFS_EVERY = 0.05  # seconds between batches of reference count changes
_STOP_AGAIN = 0.5  # seconds between two interrupts of a task that does not stop (_stop)
_IN_FLIGHT = 0.1  # seconds for the reply of a task that ended as it was interrupted


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
    allow_stdin : bool, optional
        Answer ``input()`` and ``getpass.getpass()`` called by this client's tasks on the
        engines by asking this process's user (``input_handler``). Default: when this
        process runs interactively (a terminal on stdin, or inside IPython). Without it,
        ``input()`` on an engine raises ``EOFError`` saying that no front end can answer.
    input_handler : callable, optional
        ``input_handler(prompt, password) -> str`` gives the answer, in a thread of its
        own (so replies keep flowing while the user types). Default:
        :func:`builtins.input`, or :func:`getpass.getpass` when ``password`` is true.
        What it raises is raised by the task's ``input()`` as an ``EOFError``.

        .. versionadded:: 0.6

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
        allow_stdin: bool | None = None,
        input_handler: Callable[[str, bool], str] | None = None,
    ) -> None:
        #: Whether tasks' ``input()`` asks this process's user, and how.
        self.allow_stdin, self.input_handler = _stdin_options(allow_stdin, input_handler)
        path = url_file or os.path.join(profile_dir(profile), CLIENT_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"no cluster found: {path} does not exist; start one with"
                f" `shoal cluster start -n 4 --profile {profile}` or shoal.hub.Cluster(n=4)"
            )
        info = read_connection_file(path)
        self.url_file = path
        location = info.extra.get("location")
        where = location if isinstance(location, str) else None
        # A wildcard bind (``--ip 0.0.0.0``) is dialled on loopback here, else at ``location``.
        self.url = disambiguate_url(info.urls["client"], where)
        beat_url = info.urls.get("beat")
        pid = info.extra.get("pid")
        self.hub_pid: int | None = pid if isinstance(pid, int) else None
        self.hub_timeout = hub_timeout
        self.ping_period = ping_period
        # The hub binds loopback only: the engines are on this host, and large buffers
        # go to them through shared memory.
        use_shm = shared_memory_enabled() if shm is None else shm
        self._codec = Codec(info.key, shm=default_shared_memory() if use_shm else None)
        self._session = uuid.uuid4().hex
        token = uuid.uuid4().hex[:16].encode()
        self._token = token
        self._reply_to = (RECEIVER + token).decode()
        self.direct = direct
        self._curve = info.curve is not None
        self.host = this_host()
        self._pending: dict[str, AsyncResult[Any]] = {}
        self.max_outstanding = max_outstanding
        self._room = threading.Condition()  # signalled when replies make room
        self._engines: dict[int, dict[str, Any]] = {}
        self._engines_changed = threading.Condition()
        #: What the hub's launcher started and ended before its engines registered
        #: (``launch_failed`` notices): ``launch_id``, ``n``, ``host``, ``cause``, ``output``.
        self.launch_failures: list[dict[str, object]] = []
        self._sent_to: dict[str, int] = {}  # msg_id -> the engine it went to directly
        # apply_batch_request ids -> (the engine, the ids of its tasks), until answered.
        self._batches: dict[str, tuple[int, list[str]]] = {}
        # Load-balanced tasks this client places on engines of this host itself; the
        # hub's limit per engine comes with its connect reply.
        self._placer = Placer(self._place, self._place_through_hub, hwm=2)
        self._place_wanted = False  # a reply made room: place at the end of the burst
        # Reference count changes of remote objects: booked by proxies (also from
        # __del__), sent in batches by the reader.
        self.references: ReferenceBook[int] = ReferenceBook(self._send_refs)
        self._transport = Transport(
            url=self.url,
            beat_url=None if beat_url is None else disambiguate_url(beat_url, where),
            curve=info.curve,
            engine_curve=_engine_keys(info),
            codec=self._codec,
            token=token,
            ping_period=ping_period,
            hub_timeout=hub_timeout,
            on_message=self._on_message,
            on_lost=self._hub_lost,
            on_tick=self._tick,
            on_direct=self._direct_opened,
            on_burst=self._after_burst,
            outstanding=self._pending.__len__,
        )
        self._transport.start()
        problem = self._transport.wait_heard(timeout)
        if problem is not None:
            self.close()
            if problem.startswith("no hub answered"):
                raise TimeoutError(
                    f"{problem} (from {path}); is the cluster running? `shoal cluster"
                    " list` shows the running clusters"
                )
            raise ConnectionRefusedError(
                f"cannot connect to the hub at {self.url}: {problem}; use the"
                f" connection file the running hub wrote ({path} is the one used)"
            )
        reply = self._hub_request(MsgType.CONNECT_REQUEST, {}, timeout)
        self._placer.hwm = max(1, int(reply.get("hwm", self._placer.hwm)))
        with self._engines_changed:
            for e in reply["engines"]:
                self._engines[int(e["engine_id"])] = e
            failures = reply.get("launch_failures")
            if isinstance(failures, list):  # before this client connected
                self.launch_failures[:0] = [f for f in failures if isinstance(f, dict)]
        _clients.append(weakref.ref(self))

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
        RuntimeError
            When something the hub started to run engines (an ssh command, an mpiexec, a
            Slurm job) ended before its engines registered, while fewer than ``n`` are:
            the message says how it ended and what it printed (Slurm's reason, ssh's
            error).
        """
        return self._wait_for_engines(n, timeout, None)

    def _wait_for_engines(self, n: int, timeout: float | None, seen: int | None) -> list[int]:
        """:meth:`wait_for_engines`, raising for the launch failures from index ``seen``
        of :attr:`launch_failures` on (None: those that come during the wait)."""
        with self._engines_changed:
            seen = len(self.launch_failures) if seen is None else seen
            ok = self._engines_changed.wait_for(
                lambda: (
                    len(self._engines) >= n
                    or self._lost is not None
                    or len(self.launch_failures) > seen
                ),
                timeout,
            )
            if self._lost is not None:
                raise HubLost(self._lost)
            if len(self._engines) < n and len(self.launch_failures) > seen:
                failed = self.launch_failures[-1]
                raise RuntimeError(
                    f"{len(self._engines)} of {n} engines registered: {_failure(failed)}"
                )
            if not ok:
                raise TimeoutError(
                    f"{len(self._engines)} of {n} engines registered within {timeout} s"
                )
            return sorted(self._engines)

    @overload
    def __getitem__(self, key: int) -> DirectView[int]: ...
    @overload
    def __getitem__(self, key: slice | Sequence[int]) -> DirectView[list[int]]: ...
    def __getitem__(
        self, key: int | slice | Sequence[int]
    ) -> DirectView[int] | DirectView[list[int]]:
        """``client[0]``, ``client[:]``, ``client[::2]``, ``client[[0, 2]]``: a DirectView
        (on one engine, its results unwrapped; on several, a list of their results)."""
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

    @overload
    def direct_view(self, targets: int) -> DirectView[int]: ...
    @overload
    def direct_view(
        self, targets: Sequence[int] | Literal["all"] = "all"
    ) -> DirectView[list[int]]: ...
    def direct_view(
        self, targets: int | Sequence[int] | Literal["all"] = "all"
    ) -> DirectView[int] | DirectView[list[int]]:
        """A DirectView on ``targets`` (``"all"``: every engine registered now)."""
        if isinstance(targets, str):
            if targets != "all":
                raise ValueError(f"targets must be engine ids or 'all', not {targets!r}")
            return self[:]
        return self[targets]

    def load_balanced_view(self, targets: Sequence[int] | None = None) -> LoadBalancedView:
        """A LoadBalancedView: tasks go to whichever engine is free (among ``targets``)."""
        return LoadBalancedView(self, targets)

    def executor(self, targets: Sequence[int] | None = None) -> Executor:
        """A ``concurrent.futures.Executor`` running on the cluster (load balanced)."""
        # The one import that runs back up a floor: Pool and Executor are built on the
        # client, which hands them out.
        from .._compat.pool import Executor  # noqa: PLC0415

        return Executor(self, targets)

    def pool(self, processes: int | None = None) -> Pool:
        """A ``multiprocess.Pool``-compatible pool running on the cluster."""
        from .._compat.pool import Pool  # noqa: PLC0415 - see executor()

        return Pool(processes, client=self)

    def context(self) -> ClusterContext:
        """multiprocess's API with its processes on this cluster's engines:
        ``mp = client.context()`` stands in for ``import multiprocess as mp``."""
        from .._compat.context import get_context  # noqa: PLC0415 - see executor()

        return get_context(self)

    # -- hub requests -------------------------------------------------------------------
    def queue_status(self) -> dict[int | str, object]:
        """Per engine id: a dict of its outstanding requests, pid, host; plus
        ``"unassigned"``, the tasks no engine took yet, and ``"no_engines"``: True while
        tasks wait and no engine is left to run them (ipyparallel's layout)."""
        reply = self._hub_request(MsgType.QUEUE_STATUS_REQUEST, {})
        status: dict[int | str, object] = {int(k): v for k, v in reply["engines"].items()}
        # Tasks this client placed itself (placer.py) pass the hub by: counted here.
        for engine_id, n in self._placer.load().items():
            engine = status.get(engine_id)
            if isinstance(engine, dict) and n:
                engine["outstanding"] = int(engine.get("outstanding", 0)) + n
        status["unassigned"] = int(reply["unassigned"]) + len(self._placer)
        status["no_engines"] = bool(reply.get("no_engines", False))
        return status

    def hub_statistics(self) -> dict[str, SocketStatistics]:
        """What the hub's sockets (``client``, ``shell``, ``control``) sent, received and
        dropped, by reason: the messages it refused before acting on them."""
        return dict(self._hub_request(MsgType.STATISTICS_REQUEST, {})["sockets"])

    def statistics(self) -> SocketStatistics:
        """What this client's own sockets sent, received and dropped (summed), by reason."""
        sent = received = 0
        dropped: collections.Counter[str] = collections.Counter()
        for session in self._transport.sessions():
            stats = session.statistics()
            sent += stats.sent
            received += stats.received
            dropped.update(stats.dropped)
        return {"sent": sent, "received": received, "dropped": dict(dropped)}

    def history(self, msg_ids: Sequence[str] | None = None) -> list[TaskRecord | None]:
        """The hub's metadata on finished tasks: engine, status, submitted/started/completed."""
        content = {"msg_ids": None if msg_ids is None else list(msg_ids)}
        return list(self._hub_request(MsgType.HISTORY_REQUEST, content)["history"])

    def abort(self, msg_ids: Sequence[str]) -> None:
        """Drop the given requests if they have not started (they fail with TaskAborted)."""
        self._transport.flush()
        wanted = set(msg_ids)
        for msg_id in self._placer.abort(wanted):  # still waiting here: never sent
            result = self._pending.pop(msg_id, None)
            if result is not None:
                result._deliver(msg_id, None, error_from_reply({"status": "aborted"}), {})
        # Requests sent straight to engines: the hub passes the abort on to them.
        on_engines: dict[str, list[str]] = {}
        for msg_id in wanted:
            engine = self._sent_to.get(msg_id)
            if engine is not None:
                on_engines.setdefault(str(engine), []).append(msg_id)
        content = {"msg_ids": list(msg_ids), "on_engines": on_engines}
        self._hub_request(MsgType.ABORT_REQUEST, content)

    def _stop(self, msg_ids: Sequence[str], timeout: float) -> bool:
        """Stop requests ``msg_ids``: drop those not started (:meth:`abort`), then send
        each engine that may run one a targeted ``interrupt_request`` (it interrupts only
        one of ``msg_ids``: never another client's work), and wait for their replies.
        Again every ``_STOP_AGAIN`` seconds while one still runs (it started after the
        abort, swallowed an interrupt, or was retried by the hub), for at most
        ``timeout`` seconds. True when each was answered or will never start (its
        engine, which runs none of them, holds it aborted: its reply comes when the
        engine gets to it); False when one still ran at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = [m for m in msg_ids if m in self._pending]
            if left:
                self.abort(left)  # answers at once what waits here or in the hub
                left = [m for m in left if m in self._pending]
            if not left:
                return True
            # The engine is known for what this client sent straight to one; a task the
            # hub scheduled may be on any. An engine acts on an abort before a later
            # interrupt (one control queue), so "not running" means "will not run".
            where = {self._sent_to.get(m) for m in left}
            engines = self.ids if None in where else sorted(e for e in where if e is not None)
            content = {"msg_ids": left}
            asked = [self._control(e, MsgType.INTERRUPT_REQUEST, content) for e in engines]
            self._transport.wait(
                functools.partial(_all_done, asked), max(0.0, deadline - time.monotonic())
            )
            unsure = not _all_done(asked)
            running = any(
                a.done() and a.exception() is None and a.result(0).get("interrupted") for a in asked
            )
            # The stopped ones answer now; so does one that ended as the interrupt came.
            grace = _STOP_AGAIN if running or unsure else _IN_FLIGHT
            self._transport.wait(
                functools.partial(self._answered, left),
                max(0.0, min(grace, deadline - time.monotonic())),
            )
            if not running and not unsure:
                return True
            if time.monotonic() >= deadline:
                return self._answered(msg_ids)

    def _answered(self, msg_ids: Iterable[str]) -> bool:
        """Whether every request of ``msg_ids`` was answered."""
        return all(m not in self._pending for m in msg_ids)

    def add_engines(self, n: int = 1) -> list[int]:
        """Ask the hub to start ``n`` more engines with its launcher; returns the pids of
        the local processes that carry them (the engines, their ssh commands, one
        mpiexec; none for Slurm)."""
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
        make_result: Callable[[list[str]], R],
        *,
        wait_for_room: bool = True,
    ) -> R:
        """Encode and send ``(route, msg_type, content, metadata)`` requests, answered into
        the AsyncResult that ``make_result(msg_ids)`` builds."""
        self._transport.check()
        if wait_for_room and len(self._pending) + len(requests) > self.max_outstanding:
            self._wait_for_room(len(requests))
        encoded: list[tuple[str, bytes, list[Any]]] = []
        placed: list[Placed] = []
        ids: list[str] = []  # in the order of `requests`
        ways = self._transport.direct_engines() if self.direct else []
        for route, msg_type, content, metadata in requests:
            header = new_header(msg_type, self._session, "client")
            meta: dict[str, Any] = (
                {**metadata, "host": self.host} if metadata else {"host": self.host}
            )
            if self.allow_stdin:  # input() on the engine may ask this client
                meta["allow_stdin"] = True
            targets = self._placeable(route, meta, ways)
            if route[:1] == b"e" or targets is not False:
                # an engine's direct socket answers where this names
                meta["reply_to"] = self._reply_to
            if route == LB and targets is False:
                self._describe_dependencies(meta)
            msg_id = str(header.msg_id)
            ids.append(msg_id)
            if targets is not False:
                placed.append(self._to_place(header, meta, content, targets))
                continue
            msg = Message(header, None, meta, content)
            # Stamped by the transport under its send lock, in the order it sends.
            frames = self._codec.encode(msg, shm=self._same_host(route), stamped=False)
            encoded.append((msg_id, route, frames))
        result = make_result(ids)
        if self.allow_stdin:
            self._input_context = contextvars.copy_context()
        for msg_id in ids:  # before sending: a reply can come at once
            self._pending[msg_id] = result
        if placed:
            self._placer.submit(placed, ways)
        sent = 0
        try:
            for msg_id, route, frames in encoded:
                engine = self._transport.send(route, frames)
                if engine is not None:  # straight to the engine, skipping the hub's relay
                    self._sent_to[msg_id] = engine
                sent += 1
        except BaseException:
            for msg_id, _, _ in encoded[sent:]:
                self._pending.pop(msg_id, None)
            raise
        return result

    def _to_place(
        self, header: Header, meta: dict[str, Any], content: Any, targets: frozenset[int] | None
    ) -> Placed:
        """A task for the placer: pickled now (so that what cannot travel fails here),
        encoded when it leaves if it is small, now if it holds large buffers."""
        frames = self._codec.serializer.dumps(content)
        msg_id = str(header.msg_id)
        stream = frames[0]
        if len(frames) == 1 and type(stream) is bytes and len(stream) < _SMALL_TASK:
            return Placed(msg_id, targets, header, meta, stream)
        raw = Message(header, None, meta, RawContent(tuple(frames)))
        # Large buffers go through shared memory only when every engine is on this host:
        # the task may yet go through the hub, which may send it to another host.
        encoded = self._codec.encode(raw, shm=self._same_host(LB), stamped=False)
        return Placed(msg_id, targets, frames=encoded)

    def _placeable(
        self, route: bytes, meta: dict[str, Any], ways: list[int]
    ) -> frozenset[int] | Literal[False] | None:
        """Whether this client places a load-balanced task itself (see ``placer.py``):
        False when not (the hub schedules it), else the engines it may run on (None:
        any). Retries and dependencies are the hub's to judge."""
        if route != LB or not ways or not meta.keys().isdisjoint(_HUB_FLAGS):
            return False
        targets = meta.get("targets")
        if targets is None:
            return None
        allowed = frozenset(int(t) for t in targets)
        return allowed if allowed.intersection(ways) else False

    def _describe_dependencies(self, meta: dict[str, Any]) -> None:
        """Tell the hub about the dependencies this client placed itself, which the hub
        learns of only from the engines' reports: their records when done, else where
        they run (the hub waits for that engine's report)."""
        deps = [*meta.get("after", ()), *meta.get("follow", ())]
        records = {d: self._placer.records[d] for d in deps if d in self._placer.records}
        running = {d: e for d in deps if (e := self._placer.engine_of(d)) is not None}
        if records:
            meta["records"] = records
        if running:
            meta["placed"] = running

    def _place(self, engine: int, tasks: list[Placed]) -> bool:
        """Send placed tasks to ``engine``'s own socket: one, or small ones in one
        ``apply_batch_request`` (False: a lone task went through the hub, the way having
        closed meanwhile)."""
        if len(tasks) > 1:
            self._send_batch(engine, tasks)
            return True
        (task,) = tasks
        sent_to = self._transport.send(engine_route(engine), self._frames_of(task))
        if sent_to is None:
            return False
        self._sent_to[task.msg_id] = sent_to
        return True

    def _send_batch(self, engine: int, tasks: list[Placed]) -> None:
        """Send small tasks to ``engine`` in one message, answered by one reply."""
        batch = [[t.msg_id, t.stream, (t.metadata or {}).get("timeout")] for t in tasks]
        header = new_header(MsgType.APPLY_BATCH_REQUEST, self._session, "client")
        meta: dict[str, Any] = {"host": self.host, "reply_to": self._reply_to}
        if self.allow_stdin:
            meta["allow_stdin"] = True
        frames = self._codec.encode(Message(header, None, meta, {"tasks": batch}), stamped=False)
        batch_id = str(header.msg_id)
        ids = [task.msg_id for task in tasks]
        self._batches[batch_id] = (engine, ids)  # before sending: the reply can come at once
        try:
            self._transport.send_direct(engine_route(engine), frames)
        except BaseException:
            del self._batches[batch_id]
            raise
        for msg_id in ids:
            self._sent_to[msg_id] = engine

    def _frames_of(self, task: Placed) -> list[Any]:
        """A placed task's message, encoded (unstamped) to go alone."""
        if task.frames is None:
            request = task.request()
            task.frames = self._codec.encode(request, shm=self._same_host(LB), stamped=False)
        return task.frames

    def _after_burst(self) -> None:
        """The reader handled a burst of messages: replies made room on engines."""
        if self._place_wanted:
            self._place_wanted = False
            self._placer.place(self._transport.direct_engines())

    def _place_through_hub(self, task: Placed) -> None:
        """A task the placer cannot place here goes to the hub's scheduler."""
        if task.msg_id in self._pending:
            self._transport.send(LB, self._frames_of(task))

    def _direct_opened(self, engine_id: int) -> None:
        """A way to an engine opened: tasks waiting for room may go there."""
        self._placer.place(self._transport.direct_engines())

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
    ) -> AsyncResult[dict[str, object]]:
        """Send one request to engine ``engine_id``'s object store
        (:class:`shoal.engine.ObjectStore`; ``msg_type`` one of its
        :class:`shoal.engine.MsgType` requests, e.g. ``MsgType.FETCH_REQUEST``).

        The AsyncResult's value is the whole reply content (a dict); a failure raises the
        original exception type when this process can import it, caused by a
        :class:`RemoteError` with the engine's traceback. This is the seam that remote
        objects and :mod:`shoal.arrays` build on.
        """

        def make(ids: list[str]) -> AsyncResult[dict[str, object]]:
            result: AsyncResult[dict[str, object]] = AsyncResult(
                self, ids, single=True, label=msg_type
            )
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
                self._transport.check()

    def _request(
        self,
        targets: Sequence[int],
        msg_type: str,
        content_for: Callable[[int], Any],
        *,
        single: bool,
        combine: Callable[[list[Any]], Any] | None = None,
        label: str | None = None,
    ) -> AsyncResult[Any]:
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
        result: AsyncResult[dict[str, object]] = self._submit(
            [(HUB, msg_type, content, None)], lambda ids: self._reply_of(ids, msg_type)
        )
        return dict(result.get(timeout))

    def _control(
        self, engine_id: int, msg_type: str, content: dict[str, Any]
    ) -> AsyncResult[dict[str, object]]:
        return self._submit(
            [(control_route(engine_id), msg_type, content, None)],
            lambda ids: self._reply_of(ids, msg_type),
        )

    def _reply_of(self, ids: list[str], label: str) -> AsyncResult[dict[str, object]]:
        """The result of a hub or control request: no task, so a Ctrl-C while it is
        awaited has nothing to stop."""
        result: AsyncResult[dict[str, object]] = AsyncResult(self, ids, single=True, label=label)
        result._task = False
        return result

    # -- receiving (the transport's reader) ---------------------------------------------
    @property
    def _lost(self) -> str | None:
        """Why the hub is lost; None while it is not."""
        return self._transport.lost

    @property
    def _closed(self) -> bool:
        return self._transport.closed

    def _wait(self, result: AsyncResult[Any], timeout: float | None) -> None:
        """Read replies in this (calling) thread until ``result`` is done or ``timeout``
        passed: the reply reaches its waiter without a hand-off from the I/O thread."""
        self._transport.wait(result.done, timeout)

    def _tick(self, now: float) -> float:
        """At each round of reading: send the booked reference changes when due. How
        long the reader may poll before it must come back for them (no limit when none
        wait: an idle client's reader sleeps until its next ping)."""
        if not self.references:
            return math.inf
        due = self.references.flushed_at + _REFS_EVERY
        if now >= due:
            self.references.flush()
            return math.inf
        return due - now

    def _open_direct(self, engine: dict[str, Any]) -> None:
        """Connect to an engine's own socket when it is on this host."""
        url = engine.get("direct_url")
        if not url or engine.get("hostname") != self.host or not self.direct:
            return  # another host's: through the hub, which relays to it
        if self._curve and self._transport.engine_curve is None:
            return  # no key to reach it by (a hand-made file)
        self._transport.open_direct(int(engine["engine_id"]), str(url))

    def _close_direct(self, engine_id: int, cause: str) -> None:
        """The engine is gone: fail what was sent to it directly, close its sockets."""
        self._transport.close_direct(engine_id)
        self._placer.engine_lost(engine_id)
        for batch_id, (eid, _) in list(self._batches.items()):
            if eid == engine_id:  # its tasks are failed below, one by one
                self._batches.pop(batch_id, None)
        why = f"engine {engine_id} died while this request was outstanding: {cause}"
        for msg_id, eid in list(self._sent_to.items()):
            if eid == engine_id:
                self._fail(msg_id, EngineDiedError(why))
        self._placer.place(self._transport.direct_engines())  # elsewhere, or to the hub

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
        elif kind == MsgType.APPLY_BATCH_REPLY:
            self._on_batch_reply(route, msg)
            return
        result = self._pending.get(parent.msg_id)
        if result is None:
            return
        if kind == MsgType.STREAM:
            result._stream(parent.msg_id, str(msg.content["name"]), str(msg.content["text"]))
            return
        if kind in _RICH_OUTPUT:
            result._display(parent.msg_id, kind, msg.content)
            return
        if kind == MsgType.INPUT_REQUEST:
            self._answer_input(msg)
            return
        self._resolve(route, parent.msg_id, msg.content, msg.metadata)

    # The context of the latest submission while allow_stdin: an answer is asked in it
    # (in a notebook it names the cell that asks).
    _input_context: contextvars.Context | None = None

    def _answer_input(self, request: Message) -> None:
        """An engine's task called ``input()``: ask ``input_handler`` in a thread of its
        own (the reader goes on), then send ``input_reply`` on the engine's control."""
        engine = request.metadata.get("engine_id")
        parent = request.parent_header
        if not isinstance(engine, int) or parent is None:
            log.warning("an input_request came without its engine id: not answered")
            return
        content = request.content if isinstance(request.content, dict) else {}
        prompt, password = str(content.get("prompt", "")), bool(content.get("password"))

        def answer() -> None:
            try:
                reply: dict[str, Any] = {"status": "ok", "value": str(ask(prompt, password))}
            except BaseException as exc:  # the task's input() raises it as EOFError
                why = f"the client could not answer input(): {type(exc).__name__}: {exc}"
                reply = {"status": "error", "value": "", "evalue": why}
            header = new_header(MsgType.INPUT_REPLY, self._session, "client")
            meta = {"msg_id": parent.msg_id}  # the task whose input it answers
            msg = Message(header, request.header, meta, reply)
            with contextlib.suppress(HubLost, RuntimeError):  # lost or closed: nobody waits
                frames = self._codec.encode(msg, stamped=False)
                self._transport.send(control_route(engine), frames)

        context = self._input_context or contextvars.copy_context()

        def ask(prompt: str, password: bool) -> str:
            return context.copy().run(self.input_handler, prompt, password)

        threading.Thread(target=answer, name="shoal-client-input", daemon=True).start()

    def _on_batch_reply(self, route: bytes, msg: Message) -> None:
        """Resolve the tasks of an ``apply_batch_request`` from its one reply."""
        assert msg.parent_header is not None  # noqa: S101 - checked by the caller
        engine_id, ids = self._batches.pop(msg.parent_header.msg_id, (None, []))
        content = msg.content
        if not ids:
            return  # not ours, or its engine was declared dead meanwhile
        if not isinstance(content, dict) or content.get("status") != "ok":
            for msg_id in ids:  # the engine refused the batch whole: say why, for each
                self._resolve(route, msg_id, content, msg.metadata)
            return
        expected = set(ids)
        try:
            for msg_id, status, started, completed, reply in content["replies"]:
                if msg_id in expected:
                    expected.discard(msg_id)
                    meta = {
                        "engine_id": engine_id,
                        "status": status,
                        "started": started,
                        "completed": completed,
                    }
                    self._resolve(route, msg_id, reply, meta)
        except (KeyError, TypeError, ValueError):
            log.warning("engine %s sent a malformed apply_batch_reply", engine_id)
        for msg_id in expected:  # left unanswered: never left waiting
            self._fail(msg_id, RemoteError("ProtocolError", "the engine's batch reply left it out"))

    def _resolve(self, route: bytes, msg_id: str, content: object, meta: Mapping[str, Any]) -> None:
        """Resolve request ``msg_id`` from its reply's ``content`` and ``meta``."""
        result = self._pending.pop(msg_id, None)
        if result is None:
            return
        self._sent_to.pop(msg_id, None)
        if self._placer.done(
            msg_id, str(meta.get("status")), meta.get("started"), meta.get("completed")
        ):  # room on that engine: what waits goes once the burst is read (_after_burst)
            self._place_wanted = True
        if len(self._pending) == self.max_outstanding - 1:
            with self._room:
                self._room.notify_all()
        metadata = dict(meta)
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
            error, value = error_from_reply(content, task_id=msg_id), None
        result._deliver(msg_id, value, error, metadata)

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
        elif kind == MsgType.LAUNCH_FAILED and isinstance(content, dict):
            log.warning("%s", _failure(content))
            with self._engines_changed:
                self.launch_failures.append(dict(content))
                self._engines_changed.notify_all()
        elif kind == MsgType.NO_ENGINES:
            log.warning(
                "no engine is left in the cluster: %s task(s) wait for one; add engines"
                " (Client.add_engines, shoal engine) or abort them",
                content.get("unassigned", "?") if isinstance(content, dict) else "?",
            )
        elif kind == MsgType.HUB_SHUTDOWN:
            self._transport.lose("the hub shut down")

    def _hub_lost(self, why: str) -> None:
        """The transport lost the hub: fail every outstanding result."""
        with self._engines_changed:
            self._engines_changed.notify_all()
        pending, self._pending = self._pending, {}
        for msg_id, result in pending.items():
            result._deliver(msg_id, None, HubLost(why), {})

    # -- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sockets; outstanding results are left unresolved."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"lost: {self._lost}" if self._lost else f"{len(self._engines)} engines"
        return f"<shoal.hub.Client {self.url}: {state}>"


_clients: list[weakref.ref[Client]] = []


def _all_done(results: Iterable[AsyncResult[Any]]) -> bool:
    return all(r.done() for r in results)


_RICH_OUTPUT = frozenset(
    str(m.value)
    for m in (
        MsgType.DISPLAY_DATA,
        MsgType.UPDATE_DISPLAY_DATA,
        MsgType.EXECUTE_RESULT,
        MsgType.CLEAR_OUTPUT,
    )
)


def _stdin_options(
    allow_stdin: object, input_handler: Callable[[str, bool], str] | None
) -> tuple[bool, Callable[[str, bool], str]]:
    """``Client(allow_stdin=..., input_handler=...)`` checked, with their defaults."""
    if input_handler is not None and not callable(input_handler):
        raise TypeError(
            f"Client(input_handler=...) takes a callable(prompt, password) -> str, got"
            f" {type(input_handler).__name__}"
        )
    if allow_stdin not in (None, True, False):
        raise TypeError(f"Client(allow_stdin=...) takes a bool or None, got {allow_stdin!r}")
    allowed = _interactive() if allow_stdin is None else bool(allow_stdin)
    return allowed, input_handler or _ask_user


def _interactive() -> bool:
    """Whether a person can answer here: a terminal on stdin, or a running IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return True
    stdin = sys.stdin
    try:
        return stdin is not None and stdin.isatty()
    except ValueError:  # closed
        return False


def _ask_user(prompt: str, password: bool) -> str:
    """The default ``input_handler``: this process's own input() or getpass()."""
    return getpass.getpass(prompt) if password else builtins.input(prompt)


def _failure(note: Mapping[str, object]) -> str:
    """A ``launch_failed`` notice, said."""
    output = str(note.get("output") or "").strip()
    said = f"; it printed:\n{output}" if output else ""
    return (
        f"the hub's launch {note.get('launch_id')} of {note.get('n')} engines on"
        f" {note.get('host')} ended before they registered: {note.get('cause')}{said}"
    )


def _engine_keys(info: ConnectionInfo) -> CurveKeys | None:
    """Curve keys for the engines' own sockets: they serve with the engines' keypair,
    whose public key the hub put in the client's file."""
    if info.curve is None:
        return None
    peers = info.extra.get("curve_peers")
    engine = peers.get("engine") if isinstance(peers, dict) else None
    if not isinstance(engine, str):
        return None  # a hand-made file: the client talks to the engines through the hub
    return CurveKeys(engine.encode("ascii"), info.curve.client_public, info.curve.client_secret)


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
