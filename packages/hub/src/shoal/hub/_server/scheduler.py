"""The hub's scheduler as state without I/O: queues, outstanding work, retries, deaths, history.

Theory of operation
-------------------
:class:`SchedulerState` holds everything the hub knows about the requests it routes to
engines' shells, and every rule that changes it. It owns no socket, never reads the
time except through its ``clock`` and never logs: the hub (its I/O part) tells it what
happened by calling an *event* method, then drains the *actions* the state wants carried
out with :meth:`SchedulerState.take_actions` and carries them out, in order.

Tasks and their states
~~~~~~~~~~~~~~~~~~~~~~
A :class:`Task` is one request, identified by its ``msg_id``; its ``payload`` (the hub's
frames) and ``client`` are opaque here. A load-balanced task (``lb=True``) goes through::

    submit --> waiting --(dependencies met)--> pending --(Send)--> outstanding --> done
                  |                              ^  |                  |  |
                  |                              |  +-- Fail/Aborted   |  +-- Fail
                  +-- Fail (DependencyError)     +---- error reply or engine death,
                  +-- Aborted                           with retries left

* *waiting*: it names ``after``/``follow`` dependencies that are still in flight. When
  the last one is done it moves to *pending*, or fails with ``DependencyError`` when one
  did not succeed, is unknown, or (``follow``) ran on an engine that is gone.
* *pending*: queued in the hub, in submission order. A task is handed to the least loaded
  engine that may take it (``targets`` allows it, ``excluded`` does not forbid it, and
  the engine holds fewer than ``hwm`` requests); a task whose engines are all busy lets
  the others pass. When engines exist but none may ever run it, it fails with
  ``EngineDiedError`` ("no engine left that may run it"). When there is no engine at
  all, it waits (an engine may register later) unless every engine its ``targets``
  allow is known to be gone.
* *outstanding*: sent to one engine, which runs its shell requests one at a time, in
  arrival order. A direct task (``lb=False``, addressed by the client to one engine) is
  outstanding from its submission on: the scheduler only books it, so that the engine's
  load, its death and the history see it.
* *done*: its record ``(engine_id, status, submitted, started, completed)`` is in
  :attr:`SchedulerState.history` (bounded, oldest dropped first) and it is no longer in
  flight; a task is done exactly once.

Retries and deaths
~~~~~~~~~~~~~~~~~~
An lb task whose reply says ``"error"`` and that has retries left runs again, once per
retry, on another engine when one may take it (else on the same one): its reply is then
dropped by the hub (:meth:`SchedulerState.finished` returns False). When an engine is
lost, the *oldest* request outstanding on it (by dispatch order: the one it was running)
is blamed for the death: the engine id is appended to its ``killed``. A task that has
killed ``allowed_failures`` engines fails with ``KilledEngineError``, whatever its
retries (Dask's ``KilledWorker``): it would otherwise take the cluster down engine by
engine. The other requests outstanding there are not blamed: lb tasks with retries left
go back to the front of *pending* (never to that engine again), the others fail with
``EngineDiedError``. When no engine is left while lb tasks are unassigned, one
:class:`NoEngines` is emitted for the episode; the next one comes only after an engine
was added and lost again.

The blame is a guess that holds when the engine is busy: if it died idle, with a request
still on its way to it, that request is blamed though it never ran. One such guess is
harmless under ``allowed_failures`` > 1; only a task blamed for that many deaths fails.

Who calls what
~~~~~~~~~~~~~~
The hub calls, from its one thread:

* :meth:`~SchedulerState.add_engine` when an engine is ready for tasks;
* :meth:`~SchedulerState.submit` for each request for an engine's shell, lb or direct
  (a direct one is forwarded by the hub itself when ``submit`` returns True);
* :meth:`~SchedulerState.finished` for each shell reply (relay it to the client only when
  it returns True);
* :meth:`~SchedulerState.engine_lost` when it declares an engine dead or removes it;
* :meth:`~SchedulerState.abort` for a client's abort request;
* :meth:`~SchedulerState.record` for the history an engine reports about requests sent
  to it directly (not through the hub).

After each event (or a batch of them) the hub carries out the actions:

* :class:`Send`: send the task's payload to the engine's shell. If the engine was lost
  meanwhile (a send failed and the hub called :meth:`~SchedulerState.engine_lost`), drop
  the action: the loss already re-queued or failed that task.
* :class:`Fail`: answer the task's client with an error reply ``ename``/``evalue`` on the
  engine's behalf (route it as an lb reply when ``task.lb``, else from the task's engine).
  The task is already done and recorded as ``"error"`` -- except a refused duplicate,
  which is not recorded: its msg_id belongs to the task in flight.
* :class:`Aborted`: answer the task's client with an ``"aborted"`` reply; it never ran.
* :class:`AbortOnEngine`: ask the engine (control channel) to drop these queued requests;
  it answers each with an aborted reply, which comes back through ``finished``.
* :class:`NoEngines`: tell clients that tasks wait and no engine is left.

Carrying an action out may itself raise an event (a failed send means a lost engine):
call the event, keep carrying out the actions already taken, then take the new ones,
``while actions := state.take_actions(): ...``, so actions stay in the order the state
emitted them.

Time
~~~~
The clock is read once per task, by ``submit`` (``task.submitted``); ``started`` and
``completed`` come from the engine's reply, through ``finished``.

Invariants
~~~~~~~~~~
* A msg_id in flight is in exactly one place: waiting, pending, or one engine's
  outstanding requests; :meth:`~SchedulerState.in_flight` tells.
* Every accepted task ends exactly once: ``finished`` returning True, a :class:`Fail`,
  or an :class:`Aborted`. A refused submission (a duplicate msg_id in flight, a direct
  task for an unknown engine) gets one :class:`Fail` and is never in flight.
* The scheduler never makes an engine hold more than ``hwm`` requests (direct requests
  count, as they load the engine, but the client may send more of those).
* A task is sent again only after an error reply or an engine death, each consuming one
  retry, and never while it is outstanding.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AbortOnEngine",
    "Aborted",
    "Action",
    "Fail",
    "NoEngines",
    "QueueStatus",
    "Record",
    "SchedulerState",
    "Send",
    "Task",
]

Record = tuple[int | None, str, float, float | None, float | None]
"""A done task's history: ``(engine_id, status, submitted, started, completed)``."""


@dataclass(slots=True, eq=False)
class Task:
    """One request for an engine's shell: what the scheduler knows about it.

    The hub builds it and hands it to :meth:`SchedulerState.submit`; from then on the
    scheduler owns it, and the hub only reads it (``msg_id``, ``client``, ``payload``,
    ``lb``, and ``engine`` for a direct task).

    Parameters
    ----------
    msg_id : str
        The request's id; unique among tasks in flight.
    client : bytes
        Whom to answer (opaque to the scheduler).
    payload : Any
        The request's frames (opaque to the scheduler).
    lb : bool
        Load-balanced (the scheduler picks the engine) or direct (``engine`` is set).
    retries : int
        Times an lb task may run again after an error reply or an engine death.
    targets : set of int, optional
        Engines an lb task may run on (None: any). ``follow`` narrows it.
    after, follow : sequence of str
        Tasks that must succeed first; ``follow`` also runs it on their engine.
    excluded : set of int
        Engines it must not run on again (where it failed or which died under it).
    killed : list of int
        Engines that died while it was the oldest request there, in order (the poison
        count).
    submitted : float
        Set by :meth:`SchedulerState.submit` from its clock.
    engine : int, optional
        The engine it is outstanding on (for a direct task: the one it is addressed to).
    placed : bool
        A task a client sent to ``engine`` itself, booked here only because another
        task depends on it (:meth:`SchedulerState.placed_by_client`): never sent or
        answered from here.
    """

    msg_id: str
    client: bytes
    payload: Any
    lb: bool = True
    retries: int = 0
    targets: set[int] | None = None
    after: Sequence[str] = ()
    follow: Sequence[str] = ()
    excluded: set[int] = field(default_factory=set)
    killed: list[int] = field(default_factory=list)
    submitted: float = 0.0
    engine: int | None = None
    placed: bool = False


# -- actions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send ``task``'s payload to engine ``engine_id``'s shell."""

    engine_id: int
    task: Task


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer ``task`` with an error reply; ``engine_id`` is the engine to blame, if any."""

    task: Task
    ename: str
    evalue: str
    engine_id: int | None


@dataclass(frozen=True, slots=True)
class Aborted:
    """Answer ``task`` (never sent to an engine) with an aborted reply."""

    task: Task


@dataclass(frozen=True, slots=True)
class AbortOnEngine:
    """Ask engine ``engine_id`` to drop the queued requests ``msg_ids``."""

    engine_id: int
    msg_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoEngines:
    """No engine is left while ``unassigned`` lb tasks wait for one."""

    unassigned: int


Action = Send | Fail | Aborted | AbortOnEngine | NoEngines
"""What an event asks the hub to do."""


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """What :meth:`SchedulerState.queue_status` reports."""

    unassigned: int
    """Lb tasks not on an engine yet (pending and waiting)."""
    outstanding: dict[int, int]
    """Requests outstanding per engine (lb and direct)."""
    completed: int
    """Records in the history."""


_NO_ENGINE = "no engine left that may run it"


def _engines(n: int) -> str:
    return "1 engine" if n == 1 else f"{n} engines"


class SchedulerState:
    """The load-balancing scheduler's state and rules, driven by events (no I/O).

    Parameters
    ----------
    hwm : int
        Requests an engine may hold at once (running and queued) before the scheduler
        stops giving it lb tasks.
    history_size : int
        How many done tasks' records :attr:`history` keeps.
    allowed_failures : int
        A task blamed for this many engine deaths fails with ``KilledEngineError``.
    clock : callable
        Returns the time stamped on submitted tasks (``time.time`` by default).
    on_record : callable, optional
        Called with ``(msg_id, record)`` for every record added to the history (e.g. to
        keep it on disk too).

    Examples
    --------
    >>> state = SchedulerState(hwm=1)
    >>> state.add_engine(0)
    >>> state.submit(Task("a", b"client", payload=None))
    True
    >>> state.take_actions()  # doctest: +ELLIPSIS
    [Send(engine_id=0, task=Task(msg_id='a', ...))]
    >>> state.finished(0, "a", "ok")
    True
    >>> state.history["a"][:2]
    (0, 'ok')
    """

    def __init__(
        self,
        *,
        hwm: int = 2,
        history_size: int = 100_000,
        allowed_failures: int = 3,
        clock: Callable[[], float] = time.time,
        on_record: Callable[[str, Record], None] | None = None,
    ) -> None:
        if hwm < 1:
            raise ValueError(f"hwm must be at least 1 task per engine, got {hwm}")
        if allowed_failures < 1:
            raise ValueError(f"allowed_failures must be at least 1, got {allowed_failures}")
        if history_size < 0:
            raise ValueError(f"history_size must be 0 or more, got {history_size}")
        self.hwm = hwm
        self.history_size = history_size
        self.allowed_failures = allowed_failures
        self.clock = clock
        self.on_record = on_record
        self.history: collections.OrderedDict[str, Record] = collections.OrderedDict()
        """Done tasks' records, oldest first, at most ``history_size``."""
        # engine id -> its outstanding requests, in dispatch order (the first one runs)
        self._engines: dict[int, dict[str, Task]] = {}
        self._gone: set[int] = set()  # engines lost: ids are never reused
        self._pending: collections.deque[Task] = collections.deque()
        self._waiting: dict[str, Task] = {}
        self._tasks: dict[str, Task] = {}  # every task in flight, wherever it is
        self._waiters: dict[str, list[Task]] = {}  # in-flight dep -> tasks blocked on it
        # waiting tasks whose blocker is done (or just submitted): to judge, in order
        self._settled: collections.deque[Task] = collections.deque()
        self._told_no_engines = False
        self._actions: list[Action] = []

    # -- events ----------------------------------------------------------------------------
    def add_engine(self, engine_id: int) -> None:
        """Engine ``engine_id`` is ready for tasks (again: no effect).

        Raises
        ------
        ValueError
            If ``engine_id`` was lost before: engine ids are never reused.
        """
        if engine_id in self._gone:
            raise ValueError(f"engine {engine_id} was lost before; engine ids are never reused")
        if engine_id in self._engines:
            return
        self._engines[engine_id] = {}
        self._told_no_engines = False
        self._dispatch()

    def submit(self, task: Task) -> bool:
        """A client's request: queue an lb task, or book a direct one as outstanding.

        Stamps ``task.submitted`` with the clock. Returns False when the task is refused
        (one :class:`Fail` says why): its msg_id is already in flight, or it is direct and
        its ``engine`` is not a ready engine. A direct task accepted (True) is forwarded to
        its engine by the caller; an lb task is sent through :class:`Send` actions.

        Raises
        ------
        ValueError
            If ``task`` is direct and names no engine.
        """
        msg_id = task.msg_id
        if msg_id in self._tasks:
            why = f"msg_id {msg_id!r} is already in flight; a request needs an id of its own"
            self._actions.append(Fail(task, "ValueError", why, None))
            return False
        task.submitted = self.clock()
        if not task.lb:
            if task.engine is None:
                raise ValueError(f"direct task {msg_id} names no engine (task.engine is None)")
            book = self._engines.get(task.engine)
            if book is None:
                known = sorted(self._engines)
                why = f"engine {task.engine} is not registered (known: {known})"
                self._fail(task, "EngineDiedError", why, None)
                return False
            self._tasks[msg_id] = task
            book[msg_id] = task
            return True
        task.engine = None
        self._tasks[msg_id] = task
        if task.after or task.follow:
            self._waiting[msg_id] = task
            self._settled.append(task)  # judged with the others, by _dispatch
        else:
            self._enqueue(task)
        self._dispatch()
        return True

    def finished(
        self,
        engine_id: int,
        msg_id: str,
        status: str,
        started: float | None = None,
        completed: float | None = None,
    ) -> bool:
        """Engine ``engine_id`` replied to ``msg_id`` with ``status``.

        Returns True when the reply is the task's last word (relay it to the client), or
        when the request is unknown here (relay it as well); False when the task runs
        again (an lb ``"error"`` with retries left): drop the reply.
        """
        book = self._engines.get(engine_id)
        task = None if book is None else book.pop(msg_id, None)
        if task is None:
            return True
        if task.lb and status == "error" and task.retries > 0:
            task.retries -= 1  # ipyparallel's retries: run again, elsewhere if possible
            task.excluded.add(engine_id)
            if not self._could_run(task):
                task.excluded.clear()
            task.engine = None
            self._pending.appendleft(task)
            self._dispatch()
            return False
        self._done(task, engine_id, str(status), started, completed)
        self._dispatch()
        return True

    def engine_lost(self, engine_id: int, cause: str) -> None:
        """Engine ``engine_id`` died or was removed (``cause`` says how): re-queue or fail
        its outstanding requests, blaming the oldest for the death. Unknown ids are only
        remembered as gone."""
        self._gone.add(engine_id)
        book = self._engines.pop(engine_id, None)
        if book is None:
            return
        why = f"engine {engine_id} died while this request was outstanding: {cause}"
        again: list[Task] = []
        for i, task in enumerate(book.values()):
            if task.placed:  # the client that placed it answers it
                self._done(task, engine_id, "error", None, None)
                continue
            task.engine = None
            if i == 0:  # the one it was running
                task.killed.append(engine_id)
                if len(task.killed) >= self.allowed_failures:
                    poison = (
                        f"task {task.msg_id} killed {_engines(len(task.killed))}: it was"
                        f" running on engines {task.killed} when each of them died"
                        f" (allowed_failures={self.allowed_failures}); it is not retried"
                        " further"
                    )
                    self._fail(task, "KilledEngineError", poison, engine_id)
                    continue
            if task.lb and task.retries > 0:
                task.retries -= 1
                task.excluded.add(engine_id)
                again.append(task)
            else:
                self._fail(task, "EngineDiedError", why, engine_id)
        self._pending.extendleft(reversed(again))
        if not self._engines and self._pending:
            keep: collections.deque[Task] = collections.deque()
            for task in self._pending:
                if self._never(task):
                    self._fail(task, "EngineDiedError", self._no_engine_why(task), None)
                else:
                    keep.append(task)
            self._pending = keep
        self._dispatch()

    def abort(self, msg_ids: Iterable[str]) -> list[str]:
        """Drop the tasks of ``msg_ids`` not on an engine yet (one :class:`Aborted` each,
        and their ids are returned); ask engines to drop those they hold
        (:class:`AbortOnEngine`). Unknown and done ids are ignored."""
        wanted = list(dict.fromkeys(msg_ids))
        aborted: list[Task] = []
        queued = {m for m in wanted if (t := self._tasks.get(m)) is not None and t.engine is None}
        if queued - self._waiting.keys():
            keep: collections.deque[Task] = collections.deque()
            for task in self._pending:
                (aborted if task.msg_id in queued else keep).append(task)
            self._pending = keep
        aborted += [self._waiting.pop(m) for m in wanted if m in self._waiting]
        for task in aborted:
            self._actions.append(Aborted(task))
            self._done(task, None, "aborted", None, None)
        for engine_id, book in self._engines.items():
            held = tuple(m for m in wanted if m in book)
            if held:
                self._actions.append(AbortOnEngine(engine_id, held))
        self._dispatch()
        return [t.msg_id for t in aborted]

    def record(self, msg_id: str, record: Record) -> None:
        """Add ``record`` ``(engine_id, status, submitted, started, completed)`` for a
        request the scheduler did not see run (an engine's report of requests sent to it
        directly); tasks waiting on ``msg_id`` are judged again."""
        task = self._tasks.get(msg_id)
        if task is not None and task.placed:
            del self._tasks[msg_id]
            book = self._engines.get(task.engine) if task.engine is not None else None
            if book is not None:
                book.pop(msg_id, None)
        self._record(msg_id, record)
        self._dispatch()

    def placed_by_client(
        self, msg_id: str, engine_id: int | None, record: Record | None = None
    ) -> None:
        """A client sent ``msg_id`` to engine ``engine_id`` itself, and names it as a
        dependency: keep the ``record`` the client saw when it is done, else book it as
        outstanding there until that engine reports it (:meth:`record`). Nothing happens
        for a task known here already."""
        if msg_id in self._tasks or msg_id in self.history:
            return
        if record is not None:
            self._record(msg_id, record)
            return
        book = None if engine_id is None else self._engines.get(engine_id)
        if book is None:  # its engine is gone: the task did not finish well
            self._record(msg_id, (engine_id, "error", self.clock(), None, None))
            return
        task = Task(msg_id, b"", None, lb=False, submitted=self.clock(), engine=engine_id)
        task.placed = True
        self._tasks[msg_id] = task
        book[msg_id] = task

    def take_actions(self) -> list[Action]:
        """The actions emitted since the last call, in order; the caller carries them out."""
        actions, self._actions = self._actions, []
        return actions

    # -- queries ---------------------------------------------------------------------------
    def engine_ids(self) -> list[int]:
        """The engines ready for tasks, in the order they were added."""
        return list(self._engines)

    def outstanding(self, engine_id: int) -> int:
        """How many requests engine ``engine_id`` holds (0 for an unknown engine)."""
        book = self._engines.get(engine_id)
        return 0 if book is None else len(book)

    def outstanding_ids(self, engine_id: int) -> list[str]:
        """The requests engine ``engine_id`` holds, oldest (the running one) first."""
        return list(self._engines.get(engine_id, ()))

    @property
    def unassigned(self) -> int:
        """Lb tasks not on an engine yet: pending and waiting."""
        return len(self._pending) + len(self._waiting)

    @property
    def tasks_in_flight(self) -> int:
        """Tasks submitted and not done: unassigned and outstanding."""
        return len(self._tasks)

    def in_flight(self, msg_id: str) -> bool:
        """Whether ``msg_id`` was submitted and is not done."""
        return msg_id in self._tasks

    def task(self, msg_id: str) -> Task | None:
        """The task ``msg_id`` if it is in flight."""
        return self._tasks.get(msg_id)

    def queue_status(self) -> QueueStatus:
        """Unassigned tasks, requests outstanding per engine, and records kept."""
        return QueueStatus(
            unassigned=self.unassigned,
            outstanding={e: len(book) for e, book in self._engines.items()},
            completed=len(self.history),
        )

    # -- rules -----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Judge waiting tasks whose dependencies moved, then hand pending tasks to the
        least loaded engines that may take them; until nothing changes."""
        while True:
            while self._settled:
                self._judge(self._settled.popleft())
            if not self._engines:
                if not self._told_no_engines and (self._pending or self._waiting):
                    self._told_no_engines = True
                    self._actions.append(NoEngines(self.unassigned))
                return
            self._assign()
            if not self._settled:  # failures in _assign may release waiting tasks
                return

    def _assign(self) -> None:
        pending = self._pending
        engines = self._engines
        hwm = self.hwm
        skipped: list[Task] = []
        while pending:
            free = [(e, book) for e, book in engines.items() if len(book) < hwm]
            if not free:
                break
            task = pending.popleft()
            targets = task.targets
            excluded = task.excluded
            best: dict[str, Task] | None = None
            best_id = -1
            for engine_id, book in free:
                if (
                    (targets is None or engine_id in targets)
                    and engine_id not in excluded
                    and (best is None or len(book) < len(best))
                ):
                    best, best_id = book, engine_id
            if best is None:
                if self._could_run(task):
                    skipped.append(task)  # its engines are busy; let others pass
                else:
                    self._fail(task, "EngineDiedError", self._no_engine_why(task), None)
                continue
            task.engine = best_id
            best[task.msg_id] = task
            self._actions.append(Send(best_id, task))
        pending.extendleft(reversed(skipped))

    def _could_run(self, task: Task) -> bool:
        """Whether an engine here may run ``task`` (busy or not)."""
        targets = task.targets
        return any(
            (targets is None or e in targets) and e not in task.excluded for e in self._engines
        )

    def _never(self, task: Task) -> bool:
        """With no engine at all: whether every engine ``task`` may use is gone."""
        return task.targets is not None and task.targets <= self._gone

    def _no_engine_why(self, task: Task) -> str:
        targets = "any" if task.targets is None else sorted(task.targets)
        return (
            f"{_NO_ENGINE} (targets: {targets}, excluded: {sorted(task.excluded)},"
            f" engines: {sorted(self._engines)})"
        )

    def _enqueue(self, task: Task) -> None:
        if not self._engines and self._never(task):
            self._fail(task, "EngineDiedError", self._no_engine_why(task), None)
        else:
            self._pending.append(task)

    def _judge(self, task: Task) -> None:
        """Move a waiting task on when its dependencies allow, or wait for the next one."""
        if self._waiting.get(task.msg_id) is not task:
            return  # aborted, or judged already
        verdict, blocker = self._dependencies(task)
        if verdict is None:
            self._waiters.setdefault(blocker, []).append(task)
            return
        del self._waiting[task.msg_id]
        if verdict:
            self._fail(task, "DependencyError", verdict, None)
        else:
            self._enqueue(task)

    def _dependencies(self, task: Task) -> tuple[str | None, str]:
        """``(None, dep)`` while ``dep`` is still in flight, ``("", "")`` when every
        dependency is met, else ``(why never, "")``; a ``follow`` narrows the targets."""
        blocker = ""
        for dep in (*task.after, *task.follow):
            if dep == task.msg_id:
                return f"task {dep} depends on itself", ""
            if dep in self._tasks:
                blocker = blocker or dep
                continue
            record = self.history.get(dep)
            if record is None:
                return f"dependency {dep} is not a task this hub knows", ""
            if record[1] != "ok":
                return f"dependency {dep} did not succeed ({record[1]})", ""
        if blocker:
            return None, blocker
        where: set[int] = set()
        for dep in task.follow:
            engine_id = self.history[dep][0]
            if engine_id is None:
                return f"follow= names {dep}, which ran on no engine", ""
            where.add(engine_id)
        if len(where) > 1:
            return f"follow= names tasks that ran on different engines {sorted(where)}", ""
        if where:
            (engine_id,) = where
            if engine_id not in self._engines:
                return f"follow= needs engine {engine_id}, which is gone", ""
            task.targets = {engine_id} if task.targets is None else task.targets & {engine_id}
            if not task.targets:
                return "follow= and targets= leave no engine", ""
        return "", ""

    def _fail(self, task: Task, ename: str, evalue: str, engine_id: int | None) -> None:
        self._actions.append(Fail(task, ename, evalue, engine_id))
        self._done(task, engine_id, "error", None, None)

    def _done(
        self,
        task: Task,
        engine_id: int | None,
        status: str,
        started: float | None,
        completed: float | None,
    ) -> None:
        if self._tasks.get(task.msg_id) is task:
            del self._tasks[task.msg_id]
        task.engine = engine_id
        self._record(task.msg_id, (engine_id, status, task.submitted, started, completed))

    def _record(self, msg_id: str, record: Record) -> None:
        history = self.history
        history[msg_id] = record
        if self.on_record is not None:
            self.on_record(msg_id, record)
        if len(history) > self.history_size:
            history.popitem(last=False)
        waiters = self._waiters.pop(msg_id, None)
        if waiters:
            self._settled.extend(waiters)
