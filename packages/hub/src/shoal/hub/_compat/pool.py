"""Pool and Executor: multiprocess's ``Pool`` and ``concurrent.futures`` on a cluster.

Theory of operation
-------------------
Both are thin layers over a :class:`~shoal.hub.LoadBalancedView`: every task goes to the
hub's scheduler, which runs it on whichever engine (among the pool's) is free.

:class:`Pool` keeps multiprocessing's contract where code can see it:

* ``apply_async``/``map_async``/``starmap_async`` return an :class:`ApplyResult`
  (multiprocessing's ``AsyncResult``: ``get``, ``wait``, ``ready``, ``successful``).
  Its callbacks run in one thread of the pool, in the order results arrive -- never in
  the caller's thread nor in the client's I/O thread -- and the result is ready only
  after its callback ran, so ``pool.close(); pool.join()`` sees every callback done.
  A callback that raises is logged; the pool goes on.
* ``imap``/``imap_unordered`` start at once: a feeder thread reads the input and submits
  it chunk by chunk, as multiprocessing's task handler does, and the
  :class:`IMapIterator` hands out results as they arrive (``next(timeout)`` too). The
  input is read eagerly and results are kept until consumed, as in multiprocessing;
  ``LoadBalancedView.imap`` with ``max_outstanding`` streams in bounded memory instead.
* ``close`` then ``join`` waits for every task and callback. ``terminate`` (and leaving a
  ``with`` block) stops the pool's own tasks, as multiprocessing's kills its workers: the
  hub and the engines drop the ones not started, and each engine of the pool gets a
  targeted ``interrupt_request`` (``msg_ids``: the pool's unfinished tasks), which raises
  ``KeyboardInterrupt`` in the task it runs only when that task is one of them -- another
  client's work on a shared engine is never touched. ``terminate`` returns once those
  tasks ended (re-interrupting, at most ``_STOP_WAIT`` seconds), and every unfinished
  result fails with :class:`~shoal.hub.TaskAborted` (multiprocessing's would never be
  ready).
* Errors: a task's exception is what its :class:`~shoal.hub.AsyncResult` raises (the
  remote exception); where multiprocessing raises one error for a map, a
  :class:`~shoal.hub.CompositeError` gives its first one. Timeouts raise an error that is
  ``multiprocess.TimeoutError`` (when multiprocess is installed),
  ``multiprocessing.TimeoutError`` and the builtin ``TimeoutError`` at once.
* Engines are long-lived and may serve other clients: what multiprocessing does by
  starting processes has no equivalent, and is refused rather than ignored
  (``maxtasksperchild``, ``context``).

:class:`Executor` is a :class:`concurrent.futures.Executor` whose futures are the
cluster's own :class:`~shoal.hub.AsyncResult`.

CPython's own Pool tests (shipped in multiprocess as ``multiprocess.tests``) run against
:class:`Pool` in ``packages/hub/tests/test_pool_cpython.py``, which names the few it
cannot pass and why.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import importlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, cast

from .._client.asyncresult import AsyncResult
from .._client.client import Client
from .._client.errors import MAP_INPUT_NOTE, CompositeError, HubLost, TaskAborted, short_repr
from .._client.views import LoadBalancedView

__all__ = ["Executor", "Pool"]

log = logging.getLogger("shoal.hub.pool")

_T = TypeVar("_T")
_S = TypeVar("_S")
_P = ParamSpec("_P")
_F = TypeVar("_F", bound="AsyncResult[Any]")

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"  # multiprocessing.pool's values
_NO_KWDS: Mapping[str, object] = types.MappingProxyType({})
#: Seconds ``terminate`` waits for the pool's running tasks to stop once interrupted.
_STOP_WAIT = 10.0


def _timeout_bases() -> tuple[type[Exception], ...]:
    """The timeout errors code written for a Pool catches: multiprocess's when it is
    installed (not a dependency of shoal-hub), multiprocessing's, the builtin."""
    bases: tuple[type[Exception], ...] = (multiprocessing.TimeoutError, TimeoutError)
    try:
        multiprocess = importlib.import_module("multiprocess")
    except ImportError:
        return bases
    theirs = getattr(multiprocess, "TimeoutError", None)
    if isinstance(theirs, type) and issubclass(theirs, Exception) and theirs not in bases:
        bases = (theirs, *bases)
    return bases


@functools.cache
def _timeout_class() -> type[TimeoutError]:
    """Made on first need: importing multiprocess costs ~10 ms, and every engine imports
    this module. A class statement cannot take computed bases and stay typed."""
    made = cast("type[TimeoutError]", types.new_class("PoolTimeoutError", _timeout_bases()))
    made.__module__ = __name__
    made.__doc__ = """A result not ready in time: ``multiprocess.TimeoutError`` (when
    multiprocess is installed), ``multiprocessing.TimeoutError`` and the builtin
    ``TimeoutError``, so whichever code written for a Pool catches, it catches this."""
    return made


def _pool_timeout(message: str) -> TimeoutError:
    return _timeout_class()(message)


def _run_chunk(
    func: Callable[..., Any], rows: Sequence[Any], star: bool, offset: int = 0
) -> list[Any]:
    """Runs on an engine: ``func`` over one chunk of inputs (``func(*row)`` if ``star``),
    whose first is input number ``offset``. An input that fails gets a note naming it."""
    out: list[Any] = []
    try:
        out.extend(itertools.starmap(func, rows) if star else map(func, rows))
    except Exception as exc:
        exc.add_note(f"{MAP_INPUT_NOTE} {offset + len(out)}: {short_repr(rows[len(out)])}")
        raise
    return out


class _Star(Generic[_T]):
    """``func(*args)`` for one tuple of arguments: starmap's function, sent to engines."""

    def __init__(self, func: Callable[..., _T]) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", "starmap")

    def __call__(self, args: Iterable[object]) -> _T:
        return self.func(*args)


def _outcome(future: concurrent.futures.Future[Any]) -> tuple[Any, BaseException | None]:
    """``(value, None)`` or ``(None, error)`` of a finished future; a map's
    :class:`CompositeError` becomes its first error, as multiprocessing raises one."""
    if future.cancelled():
        return None, concurrent.futures.CancelledError()
    error = future.exception()
    if error is None:
        return future.result(), None
    if isinstance(error, CompositeError) and error.elist:
        error = error.elist[0]
    return None, error


def _cancel(client: Client, futures: Iterable[AsyncResult[Any]]) -> None:
    """Cancel the unfinished futures and drop their tasks that have not started, with one
    request to the hub."""
    pending = [f for f in futures if not f.done()]
    msg_ids = [m for f in pending for m in f.msg_ids]
    for f in pending:
        # Future.cancel, not AsyncResult.cancel: one abort request for all of them below.
        if concurrent.futures.Future.cancel(f):
            f.set_running_or_notify_cancel()  # wakes concurrent.futures.wait/as_completed
    if msg_ids:
        with contextlib.suppress(HubLost, RuntimeError, TimeoutError):
            client.abort(msg_ids)


class _Callbacks:
    """One thread that runs a pool's callbacks, in order (multiprocessing's result handler)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._stopped = False
        self.thread = threading.Thread(
            target=self._run, args=(self._jobs,), name="shoal-pool-callbacks", daemon=True
        )
        self.thread.start()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while (job := jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("a Pool result handler failed")

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False once stopped."""
        if self._stopped:
            return False
        self._jobs.put(job)
        return True

    def stop(self) -> None:
        """Stop the thread once the jobs queued so far have run."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)

    def join(self) -> None:
        if threading.current_thread() is not self.thread:
            self.thread.join()


def _release(callbacks: _Callbacks, client: Client | None) -> None:
    """End what a pool owns: its callback thread and the client it made, if any."""
    callbacks.stop()
    if client is not None:
        client.close()


class ApplyResult(Generic[_T]):
    """The result of ``Pool.apply_async``/``map_async``: multiprocessing's ``AsyncResult``.

    Attributes
    ----------
    async_result : AsyncResult
        The cluster's future behind it (``msg_ids``, ``metadata``, ``stdout``, ...).
    """

    def __init__(
        self,
        pool: Pool,
        future: AsyncResult[_T],
        callback: Callable[[_T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._pool = pool
        self.async_result = future
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._settled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def _on_done(self, future: concurrent.futures.Future[Any]) -> None:
        value, error = _outcome(future)
        if self._callback is None and self._error_callback is None:
            self._settle(value, error, callbacks=False)
        elif not self._pool._callbacks.submit(lambda: self._settle(value, error, callbacks=True)):
            self._settle(value, error, callbacks=False)  # the pool was terminated

    def _settle(self, value: Any, error: BaseException | None, *, callbacks: bool) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
        try:
            if callbacks and error is None and self._callback is not None:
                self._callback(value)
            elif callbacks and error is not None and self._error_callback is not None:
                self._error_callback(error)
        except Exception:
            log.exception("a Pool callback raised; the pool goes on")
        finally:
            self._value, self._error = value, error
            self._event.set()
            self._pool._forget(self)

    def get(self, timeout: float | None = None) -> _T:
        """The result, waiting up to ``timeout`` seconds; raises the task's error.

        Raises
        ------
        multiprocessing.TimeoutError
            When not ready within ``timeout`` (it is also ``multiprocess.TimeoutError``
            and the builtin ``TimeoutError``).
        Exception
            What the task raised on its engine, as its :class:`~shoal.hub.AsyncResult`
            raises it; for a map, the first failing chunk's error.
        TaskAborted
            The pool was terminated before the task finished.
        """
        if not self._event.wait(timeout):
            raise _pool_timeout(f"the result was not ready within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, at most ``timeout`` seconds."""
        self._event.wait(timeout)

    def ready(self) -> bool:
        """Whether the result is in (and its callback has run)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the task succeeded; raises ValueError while it is not ready."""
        if not self._event.is_set():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} of {self.async_result!r}: {state}>"


#: multiprocessing's name for the result of ``map_async``/``starmap_async``.
MapResult = ApplyResult


class IMapIterator(Generic[_T]):
    """The iterator ``Pool.imap``/``imap_unordered`` return; ``next(timeout)`` waits at
    most ``timeout`` seconds for the next item (``multiprocessing.TimeoutError``)."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._cond = threading.Condition()
        self._arrived: dict[int, tuple[Any, BaseException | None]] = {}
        self._order: collections.deque[int] = collections.deque()  # unordered: arrivals
        self._items: collections.deque[Any] = collections.deque()  # the chunk handed out
        self._taken = 0
        self._total: int | None = None
        self._final: BaseException | None = None

    # -- fed by the pool -----------------------------------------------------------------
    def _put(self, index: int, value: Any, error: BaseException | None) -> None:
        with self._cond:
            if self._final is not None:  # terminated: what comes now was stopped by it
                return
            self._arrived[index] = (value, error)
            if not self._ordered:
                self._order.append(index)
            self._cond.notify_all()

    def _chunk_done(self, index: int, future: concurrent.futures.Future[Any]) -> None:
        value, error = _outcome(future)
        self._put(index, value, error)

    def _set_total(self, total: int) -> None:
        with self._cond:
            self._total = total
            self._cond.notify_all()

    def _abandon(self, error: BaseException) -> None:
        """The pool was terminated: items that have not arrived never will."""
        with self._cond:
            self._final = error
            self._cond.notify_all()

    # -- consumed by the user ------------------------------------------------------------
    def __iter__(self) -> IMapIterator[_T]:
        return self

    def __next__(self) -> _T:
        return self.next()

    def next(self, timeout: float | None = None) -> _T:
        """The next result, waiting at most ``timeout`` seconds; raises the task's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._items:
                    return self._items.popleft()  # type: ignore[no-any-return]
                if self._total is not None and self._taken >= self._total:
                    raise StopIteration
                index = self._taken if self._ordered else (self._order[0] if self._order else -1)
                if index in self._arrived:
                    if not self._ordered:
                        self._order.popleft()
                    value, error = self._arrived.pop(index)
                    self._taken += 1
                    if error is not None:
                        raise error
                    self._items.extend(value)
                    continue
                if self._final is not None:
                    self._total = self._taken
                    raise self._final
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise _pool_timeout(f"no result within {timeout} s")
                self._cond.wait(remaining)


class _Tracking:
    """Keeps the futures not yet done, for ``join``/``terminate``/``shutdown``, under the
    owner's ``_lock`` (which may guard more of its state)."""

    _lock: threading.Lock
    _futures: set[AsyncResult[Any]]

    def _track(self, future: _F) -> _F:
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._untrack)
        return future

    def _untrack(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)


class Pool(_Tracking):
    """multiprocess's (and multiprocessing's) ``Pool``, running on a shoal cluster.

    Code written for ``multiprocess.Pool`` runs unchanged; its functions run on the
    engines, so lambdas and interactively defined functions work.

    Parameters
    ----------
    processes : int, optional
        How many engines to use: the first ``processes`` engine ids (all of them when
        fewer are registered). Default: every engine registered now.
    initializer : callable, optional
        ``initializer(*initargs)`` runs once on each engine used, before any task; if it
        raises, so does the constructor (the first engine's error). Engines are
        long-lived and may be shared: what it sets stays after the pool.
    initargs : tuple
        Arguments of ``initializer``.
    maxtasksperchild : None
        Only None. multiprocessing replaces a worker process after that many tasks;
        engines are long-lived, may hold other clients' state and are not replaced, so
        any other value raises ``ValueError`` rather than being ignored.
    context : None
        Only None. A multiprocessing context says how to start worker processes; the
        engines run already, so any other value raises ``ValueError`` (to choose the
        cluster, pass ``client`` or ``profile``).
    client : Client, optional
        The cluster to use. Default: a new ``Client(profile=profile)``, closed when the
        pool is joined or terminated.
    profile : str
        The profile whose cluster to join when ``client`` is not given.

    Notes
    -----
    A task's exception is raised by ``get()`` (and given to ``error_callback``) as its
    :class:`~shoal.hub.AsyncResult` raises it; a map's is its first failing chunk's, as
    in multiprocessing, never a :class:`~shoal.hub.CompositeError`.
    ``terminate()`` drops the tasks not started yet, interrupts (``KeyboardInterrupt``)
    the pool's tasks running on its engines -- only those, never another client's --
    and fails every unfinished result with :class:`~shoal.hub.TaskAborted`. A task that
    catches ``KeyboardInterrupt`` and goes on is not killed: the engine is not the
    pool's to kill. A pool collected while still running warns (``ResourceWarning``),
    as multiprocessing's does.

    Examples
    --------
    >>> with Pool(4) as pool:                       # doctest: +SKIP
    ...     pool.map(abs, range(-3, 3))
    [3, 2, 1, 0, 1, 2]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[object] = (),
        maxtasksperchild: int | None = None,
        context: object = None,
        *,
        client: Client | None = None,
        profile: str = "default",
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if maxtasksperchild is not None:
            raise ValueError(
                f"maxtasksperchild={maxtasksperchild!r}: shoal's Pool runs tasks on"
                " long-lived engines, which it does not replace after a number of tasks"
                " (they may hold other clients' state); pass maxtasksperchild=None"
            )
        if context is not None:
            raise ValueError(
                f"context={context!r}: shoal's Pool starts no processes (its tasks run on"
                " the cluster's engines), so a multiprocessing context has nothing to"
                " choose; pass context=None, and client= or profile= to choose the cluster"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        owned = client is None
        self._client = Client(profile=profile) if client is None else client
        self._lock = threading.Lock()
        self._state = _RUN
        self._results: set[ApplyResult[Any]] = set()
        self._futures: set[AsyncResult[Any]] = set()
        self._feeders: set[threading.Thread] = set()
        self._iterators: weakref.WeakSet[IMapIterator[Any]] = weakref.WeakSet()
        self._callbacks = _Callbacks()
        self._finalizer = weakref.finalize(
            self, _release, self._callbacks, self._client if owned else None
        )
        try:
            ids = self._client.ids
            if not ids:
                raise RuntimeError(
                    f"the cluster at {self._client.url} has no engines; start some first"
                    " (client.wait_for_engines(n) waits for them)"
                )
            self._targets = ids if processes is None else ids[:processes]
            self._processes = len(self._targets)
            self._view = LoadBalancedView(self._client, self._targets)
            if initializer is not None:
                try:
                    self._client[self._targets].apply_sync(initializer, *initargs)
                except CompositeError as exc:  # one engine's error, as for every task
                    raise exc.elist[0] from exc
        except BaseException:
            self._state = _TERMINATE
            self._finalizer()
            raise

    @property
    def _pool(self) -> list[int]:
        """The engine ids that are this pool's workers (multiprocessing's private
        ``_pool`` lists its worker processes: code that counts them still can)."""
        return list(self._targets)

    # -- bookkeeping ---------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _result(
        self,
        future: AsyncResult[_T],
        callback: Callable[[_T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> ApplyResult[_T]:
        result = ApplyResult(self, future, callback, error_callback)
        with self._lock:
            self._results.add(result)
        future.add_done_callback(result._on_done)  # at once if done: after the add above
        return result

    def _forget(self, result: ApplyResult[Any]) -> None:
        with self._lock:
            self._results.discard(result)

    # -- multiprocessing's API -----------------------------------------------------------
    def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[object] = (),
        kwds: Mapping[str, object] = _NO_KWDS,
    ) -> _T:
        """``func(*args, **kwds)`` on an engine; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[object] = (),
        kwds: Mapping[str, object] = _NO_KWDS,
        callback: Callable[[_T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[_T]:
        """``func(*args, **kwds)`` on an engine; ``callback(result)`` or
        ``error_callback(exception)`` runs in the pool's callback thread."""
        self._check_running()
        future = self._track(self._view.apply_async(func, *args, **dict(kwds)))
        return self._result(future, callback, error_callback)

    def map(
        self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None
    ) -> list[_T]:
        """``list(map(func, iterable))`` in parallel; ``chunksize`` items per task (default:
        about four tasks per engine)."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[list[_T]]:
        """``map`` returning an :class:`ApplyResult` of the list."""
        return self._map_async(func, iterable, chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[object]],
        chunksize: int | None = None,
    ) -> list[_T]:
        """``[func(*args) for args in iterable]`` in parallel."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[object]],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[list[_T]]:
        """``starmap`` returning an :class:`ApplyResult` of the list."""
        return self._map_async(_Star(func), iterable, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None,
        callback: Callable[[list[_T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> ApplyResult[list[_T]]:
        self._check_running()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        future = self._track(self._view.map_async(func, items, chunksize=chunksize))
        return self._result(future, callback, error_callback)

    def imap(
        self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = 1
    ) -> IMapIterator[_T]:
        """Results in input order, as they come; the input is submitted at once, in the
        background, ``chunksize`` items per task."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = 1
    ) -> IMapIterator[_T]:
        """Like :meth:`imap`, results in the order tasks finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None,
        *,
        ordered: bool,
    ) -> IMapIterator[_T]:
        self._check_running()
        chunksize = 1 if chunksize is None else chunksize
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        rows = iter(iterable)
        results: IMapIterator[_T] = IMapIterator(ordered)
        feeder = threading.Thread(
            target=self._feed,
            args=(results, func, rows, chunksize),
            name="shoal-pool-feeder",
            daemon=True,
        )
        with self._lock:  # started under the lock: join() never sees it unstarted
            self._iterators.add(results)
            self._feeders.add(feeder)
            feeder.start()
        return results

    def _feed(
        self, results: IMapIterator[Any], func: Callable[..., Any], rows: Iterator[Any], n: int
    ) -> None:
        """The feeder thread of one imap: submit the input chunk by chunk."""
        index = 0
        try:
            while self._state != _TERMINATE:
                chunk = list(itertools.islice(rows, n))
                if not chunk:
                    break
                future = self._track(
                    self._view.apply_async(_run_chunk, func, chunk, False, index * n)
                )
                future.add_done_callback(functools.partial(results._chunk_done, index))
                index += 1
        except Exception as exc:  # the input or the submission failed: raised in its place
            results._put(index, None, exc)
            index += 1
        finally:
            results._set_total(index)
            with self._lock:
                self._feeders.discard(threading.current_thread())

    def close(self) -> None:
        """Accept no more tasks; the ones submitted go on (``join`` waits for them)."""
        with self._lock:
            if self._state == _RUN:
                self._state = _CLOSE

    def terminate(self) -> None:
        """Stop now: drop the tasks not started, interrupt the pool's tasks running on
        its engines (only those), and fail every unfinished result with
        :class:`~shoal.hub.TaskAborted`. Returns once the pool's tasks stopped (at most
        about ``_STOP_WAIT`` seconds for tasks that ignore ``KeyboardInterrupt``)."""
        with self._lock:
            if self._state == _TERMINATE and not self._finalizer.alive:
                return
            self._state = _TERMINATE
            futures = list(self._futures)
            results = list(self._results)
            iterators = list(self._iterators)
        pending = [f for f in futures if not f.done()]
        # First the results: what the stopped tasks answer (aborted, interrupted) is not
        # what the caller sees, and no callback runs for them.
        why = "the pool was terminated before the task finished"
        for result in results:
            result._settle(None, TaskAborted(why), callbacks=False)
        for iterator in iterators:
            iterator._abandon(TaskAborted(why))
        if pending:
            # Dropped if not started, else interrupted on its engine by id (another
            # client's task is spared), again while one still runs, up to _STOP_WAIT s.
            with contextlib.suppress(HubLost, RuntimeError, TimeoutError):
                if not self._client._stop([m for f in pending for m in f.msg_ids], _STOP_WAIT):
                    log.warning(
                        "terminate(): some of the pool's tasks still run after %s s: they"
                        " ignore KeyboardInterrupt",
                        _STOP_WAIT,
                    )
        self._finalizer()

    def join(self) -> None:
        """Wait for every task and callback; call ``close`` or ``terminate`` first."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        while True:
            with self._lock:
                feeders = [t for t in self._feeders if t is not threading.current_thread()]
            if not feeders:
                break
            for feeder in feeders:
                feeder.join()
        if self._state != _TERMINATE:
            while True:
                with self._lock:
                    futures, results = list(self._futures), list(self._results)
                if not futures and not results:
                    break
                concurrent.futures.wait(futures)
                for result in results:
                    result.wait()
        self._finalizer()
        self._callbacks.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # As multiprocessing's Pool: collected while running, its tasks may be lost.
        if getattr(self, "_state", None) == _RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def __reduce__(self) -> NoReturn:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<shoal.hub.Pool state={self._state} engines={self._targets}>"


class Executor(_Tracking, concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` running on the cluster, load balanced.

    Its futures are :class:`~shoal.hub.AsyncResult` objects, usable with
    ``concurrent.futures.wait``/``as_completed`` and ``await``. A task's exception is
    raised as the future raises it: its own type, which is also a
    :class:`shoal.engine.RemoteError` when the type could travel.

    Parameters
    ----------
    client : Client
        The cluster to use (not closed by ``shutdown``).
    targets : list of int, optional
        The engines allowed to run tasks (default: any).
    """

    def __init__(self, client: Client, targets: Sequence[int] | None = None) -> None:
        self._client = client
        self._view = LoadBalancedView(client, targets)
        self._lock = threading.Lock()
        self._shutdown = False
        self._futures: set[AsyncResult[Any]] = set()

    def _check(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> AsyncResult[_T]:
        """Run ``fn(*args, **kwargs)`` on an engine; its :class:`~shoal.hub.AsyncResult`.

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        """
        self._check()
        return self._track(self._view.apply_async(fn, *args, **kwargs))

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[object],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[_T]:
        """``map(fn, *iterables)`` on the engines: results in order, as they come.

        Every task is submitted now (at most ``buffersize`` chunks ahead of the consumer
        when given); ``chunksize`` items go in one task. The iterator raises
        ``TimeoutError`` when a result is not in ``timeout`` seconds after this call, and
        cancels what is left when it is closed early.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0.")
        self._check()
        end = None if timeout is None else time.monotonic() + timeout
        rows = zip(*iterables, strict=False)  # stops at the shortest, as map() does
        chunks: Iterator[list[Any]] = iter(lambda: list(itertools.islice(rows, chunksize)), [])
        ahead = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        futures = collections.deque(self._submit_chunk(fn, c, chunksize) for c in ahead)
        more = None if buffersize is None else chunks
        return self._results(futures, more, fn, chunksize, end)

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: list[Any], chunksize: int
    ) -> AsyncResult[Any]:
        self._check()
        if chunksize == 1:
            return self._track(self._view.apply_async(fn, *chunk[0]))
        return self._track(self._view.apply_async(_run_chunk, fn, chunk, True))

    def _results(
        self,
        futures: collections.deque[AsyncResult[Any]],
        more: Iterator[list[Any]] | None,
        fn: Callable[..., Any],
        chunksize: int,
        end: float | None,
    ) -> Iterator[Any]:
        try:
            while futures:
                future = futures.popleft()
                value = future.result(None if end is None else end - time.monotonic())
                if more is not None:
                    chunk = next(more, None)
                    if chunk is not None:
                        futures.append(self._submit_chunk(fn, chunk, chunksize))
                if chunksize == 1:
                    yield value
                else:
                    yield from value
        finally:
            _cancel(self._client, futures)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more tasks; with ``wait``, wait for the submitted ones.

        With ``cancel_futures``, every unfinished future is cancelled: tasks not started
        are dropped; running tasks finish on their engine but their results are dropped.
        The client stays open.
        """
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            _cancel(self._client, futures)
        if wait:
            concurrent.futures.wait(futures)

    def __repr__(self) -> str:
        return f"<shoal.hub.Executor {self._view.targets or 'any engine'}>"
