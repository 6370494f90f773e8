"""Load-balanced tasks the client places on engines itself (Ray's direct task submission).

Theory of operation
-------------------
A load-balanced task that needs nothing only the hub can judge (no ``retries``, no
``after``/``follow``) goes straight to an engine of this host whose own socket is open:
the least loaded of those its ``targets`` allow, among the engines holding fewer than
``hwm`` of this client's tasks (the hub's own limit per engine). The other tasks wait
here in submission order, a task whose engines are all full letting the others pass,
and leave when a reply makes room. The hub is not on the way (two hops and a process
fewer per task); it learns of each task from the engine's history report.

An engine holds at most ``hwm`` of this client's messages at once. Small tasks leave in
batches: when this client's tasks run short (a moving average of their run time, from
the replies), one message may carry as many as fit in ``_BATCH_SECONDS`` of work, in
one ``apply_batch_request`` answered by one reply: one wake-up of each process, one
signature and one pickle for many tasks. While an engine's messages are out, the tasks
for it gather here, so that a burst of submissions leaves in full batches. Long tasks
go one by one, ``hwm`` per engine, as through the hub.

When no engine of this host is reachable any more, what waits here goes to the hub,
which schedules it on the engines it knows. A task whose engine dies fails with
``EngineDiedError``, as a task without retries does through the hub.

The placer only books: the client encodes, sends (``send``) and resolves results.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from shoal.engine import BATCH_MAX, EngineDiedError
from shoal.wire import Header, Message, RawContent

__all__ = ["Placed", "Placer"]

_RECORDS_KEPT = 10_000  # finished tasks remembered, for the hub's dependency checks
_BATCH_SECONDS = 0.002  # the work one batch may hold: what an engine's queue may delay
_SMOOTHING = 0.2  # weight of the newest run time in the moving average


@dataclasses.dataclass(slots=True)
class Placed:
    """One task the client places: its id and the engines it may use, and either its
    request's header, metadata and pickled content (a small task: encoded when it
    leaves, alone or in an ``apply_batch_request`` with others) or its message encoded
    (a task with large buffers, encoded when submitted, so that later changes to them
    do not travel). Kept flat: a client may hold many thousands, and each object the
    garbage collector tracks costs on each of its passes."""

    msg_id: str
    targets: frozenset[int] | None
    header: Header | None = None
    metadata: dict[str, Any] | None = None
    stream: bytes | None = None
    frames: list[Any] | None = None
    submitted: float = dataclasses.field(default_factory=time.time)

    def request(self) -> Message:
        """A small task's request, its content left pickled."""
        if self.header is None or self.metadata is None or self.stream is None:
            raise ValueError("a task placed with its message encoded has no request to build")
        return Message(self.header, None, self.metadata, RawContent((self.stream,)))

    @property
    def small(self) -> bool:
        """No large buffer: it may travel in a batch."""
        return self.frames is None


#: ``send(engine_id, tasks) -> bool``: send ``tasks`` (one, or a batch of small ones) to
#: that engine's own socket; False when a lone task went through the hub instead (its
#: way closed meanwhile); ``EngineDiedError`` when nothing was sent.
Send = Callable[[int, list[Placed]], bool]


class Placer:
    """This client's load-balanced tasks placed on engines without the hub."""

    def __init__(self, send: Send, to_hub: Callable[[Placed], None], hwm: int) -> None:
        self.hwm = hwm
        self._send = send
        self._to_hub = to_hub
        # Held by whoever places: a submitting caller or the reader (after a reply).
        self._lock = threading.Lock()
        self._queue: collections.deque[Placed] = collections.deque()
        # Submitted tasks not yet in the queue: appended without the lock (a deque's
        # append is atomic), moved into the queue by whoever places.
        self._inbox: collections.deque[Placed] = collections.deque()
        self._load: dict[int, int] = {}  # engine -> this client's tasks outstanding there
        self._sent: dict[int, int] = {}  # engine -> this client's messages outstanding there
        # msg_id -> (engine, submitted, the tasks of its message still out: one shared list)
        self._where: dict[str, tuple[int, float, list[int]]] = {}
        #: Finished placed tasks: msg_id -> ``(engine, status, submitted, started,
        #: completed)``, the record the hub keeps (bounded, oldest dropped first).
        self.records: collections.OrderedDict[str, tuple[object, ...]] = collections.OrderedDict()
        self._run_time: float | None = None  # moving average of the tasks' run time (s)

    def __len__(self) -> int:
        """Tasks waiting here for room on an engine."""
        return len(self._queue) + len(self._inbox)

    def load(self) -> dict[int, int]:
        """This client's placed tasks outstanding per engine."""
        with self._lock:
            return dict(self._load)

    def engine_of(self, msg_id: str) -> int | None:
        """The engine a placed task is outstanding on; None when it is not."""
        where = self._where.get(msg_id)
        return None if where is None else where[0]

    def submit(self, tasks: Iterable[Placed], engines: Collection[int]) -> None:
        """Queue ``tasks`` and place what fits on ``engines`` (those with a way open).

        When every engine is full the submitting caller leaves the tasks queued: the
        reply that makes room places them (the reader's :meth:`place` after a burst),
        and the caller does not contend with the reader for the lock and the GIL. The
        queue grows before the look at the loads, and a reply frees room before its
        reader places, so a task is never left waiting with room free."""
        self._inbox.extend(tasks)
        sent, hwm = self._sent, self.hwm
        for engine in engines:
            if sent.get(engine, 0) < hwm:
                break
        else:
            if engines:
                return  # every engine is full: a reply will place them
        self.place(engines)

    def done(
        self, msg_id: str, status: str, started: object = None, completed: object = None
    ) -> bool:
        """A placed task's reply came: free its room. False when it was not placed here."""
        with self._lock:
            where = self._where.pop(msg_id, None)
            if where is None:
                return False
            engine, submitted, left = where
            self._load[engine] -= 1
            left[0] -= 1
            if not left[0]:  # the last task of its message: room for another message
                self._sent[engine] -= 1
            # A tuple: the garbage collector stops tracking it, a list it tracks forever.
            self.records[msg_id] = (engine, status, submitted, started, completed)
            if isinstance(started, float) and isinstance(completed, float):
                ran = max(0.0, completed - started)
                mean = self._run_time
                self._run_time = ran if mean is None else mean + _SMOOTHING * (ran - mean)
            if len(self.records) > _RECORDS_KEPT:
                self.records.popitem(last=False)
        return True

    def engine_lost(self, engine_id: int) -> list[str]:
        """Engine ``engine_id`` is gone: forget its tasks (the client fails them)."""
        with self._lock:
            self._load.pop(engine_id, None)
            self._sent.pop(engine_id, None)
            lost = [m for m, (e, _, _) in self._where.items() if e == engine_id]
            for msg_id in lost:
                del self._where[msg_id]
        return lost

    def abort(self, msg_ids: Collection[str]) -> list[str]:
        """Drop the waiting tasks among ``msg_ids``; their ids."""
        with self._lock:
            self._take_inbox()
            dropped = [t.msg_id for t in self._queue if t.msg_id in msg_ids]
            if dropped:
                self._queue = collections.deque(t for t in self._queue if t.msg_id not in msg_ids)
        return dropped

    def _take_inbox(self) -> None:
        """Move the submitted tasks into the queue, in order (the lock held)."""
        inbox, queue = self._inbox, self._queue
        while inbox:
            queue.append(inbox.popleft())

    def batch_size(self) -> int:
        """How many tasks go to an engine in one message: as many as fit in
        ``_BATCH_SECONDS`` of work at the tasks' mean run time (1 until one finished)."""
        mean = self._run_time
        if mean is None:
            return 1
        return max(1, min(BATCH_MAX, int(_BATCH_SECONDS / max(mean, 1e-6))))

    def place(self, engines: Collection[int]) -> None:
        """Send waiting tasks to the least loaded of ``engines`` with room, in order."""
        if not self._queue and not self._inbox:
            return
        with self._lock:
            self._take_inbox()
            size = self.batch_size()
            queue, load, sent, hwm = self._queue, self._load, self._sent, self.hwm
            ways = list(engines)
            skipped: list[Placed] = []
            while queue:
                if not ways:  # no engine of this host left: the hub schedules the rest
                    while queue:
                        self._to_hub(queue.popleft())
                    break
                free = [e for e in ways if sent.get(e, 0) < hwm]
                if not free:
                    break
                task = queue.popleft()
                targets = task.targets
                choices = free if targets is None else [e for e in free if e in targets]
                if not choices:
                    if targets is not None and not targets.intersection(ways):
                        self._to_hub(task)  # its engines are elsewhere (or gone)
                    else:
                        skipped.append(task)  # its engines are busy: let others pass
                    continue
                engine = min(choices, key=lambda e: load.get(e, 0))
                batch = [task]
                while task.small and len(batch) < size and queue:
                    after = queue[0]  # the tasks right behind it, if they may go there
                    if not after.small or (
                        after.targets is not None and engine not in after.targets
                    ):
                        break
                    batch.append(queue.popleft())
                try:
                    ours = self._send(engine, batch)
                except EngineDiedError:  # its way closed after we looked: another one
                    ways.remove(engine)
                    queue.extendleft(reversed(batch))
                    continue
                if ours:
                    load[engine] = load.get(engine, 0) + len(batch)
                    sent[engine] = sent.get(engine, 0) + 1
                    left = [len(batch)]
                    for placed in batch:
                        self._where[placed.msg_id] = (engine, placed.submitted, left)
            queue.extendleft(reversed(skipped))
