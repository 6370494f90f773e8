"""AsyncResult: the future of one or many requests, a ``concurrent.futures.Future``.

Theory of operation
-------------------
An :class:`AsyncResult` stands for the replies to a list of ``msg_ids``. The client's
I/O thread delivers each reply (and each chunk of output) to it; when the last one is
in, the future is resolved: with the combined result (``combine`` turns the list of
per-request results into what the user asked for), with the one error of a single
request, or with a :class:`CompositeError` listing every error. Callers wait with
``get``/``result``/``wait``, ``await`` it, or iterate over it to take results as they
arrive. The client holds an AsyncResult only until its replies are in: the results are
freed when the user drops it.

Stopping: :meth:`AsyncResult.abort` and :meth:`AsyncResult.cancel` drop the requests
not started and interrupt the running ones on their engines (a targeted
``interrupt_request``: only these requests, never another client's), waiting a bounded
time for the engines' answers. A Ctrl-C while a thread waits in ``result``/``get``/
``wait`` (so ``apply_sync``, ``map_sync``...) does the same for the requests awaited,
logs one line saying so, and raises ``KeyboardInterrupt``: an engine is never left
running what nobody waits for.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from shoal.engine import RemoteError

from .errors import CompositeError, HubLost, TaskAborted

if TYPE_CHECKING:
    from .client import Client

__all__ = ["AsyncMapResult", "AsyncResult"]

log = logging.getLogger("shoal.hub.client")
_STOP_WAIT = 5.0  # seconds abort()/cancel() wait for running requests to stop
_CTRL_C_WAIT = 2.0  # the same after a Ctrl-C: the user wants the prompt back

T = TypeVar("T")

_MISSING = object()


class _Condition(threading.Condition):
    """A ``threading.Condition`` over an ``RLock`` that keeps no bound methods of its
    lock: three objects for the garbage collector to track instead of eight. A client
    holds one per outstanding task, and with many thousands outstanding the collector's
    passes over them cost more than the rest of the bookkeeping."""

    def __init__(self) -> None:  # the parent's, minus the bound methods
        self._lock = threading.RLock()
        self._waiters = collections.deque()  # type: ignore[var-annotated]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]


# Future.__init__ sets exactly these: AsyncResult sets them itself, with a lighter
# condition, rather than build a Condition only to drop it (microseconds per task).
_FRESH = concurrent.futures.Future[object]()
_FUTURE_FIELDS_KNOWN = set(vars(_FRESH)) == {
    "_condition",
    "_state",
    "_result",
    "_exception",
    "_waiters",
    "_done_callbacks",
}
_PENDING = _FRESH._state  # the state before a result
del _FRESH


class AsyncResult(concurrent.futures.Future[T], Generic[T]):
    """The pending result of requests sent to the cluster.

    A :class:`concurrent.futures.Future` (``result``, ``exception``, ``done``,
    ``add_done_callback``, ``concurrent.futures.wait``/``as_completed``), awaitable in
    asyncio, with ipyparallel's vocabulary on top.

    Generic in the type of its value: ``view.apply_async(f)`` with ``def f() -> int`` is
    an ``AsyncResult[int]`` on one engine (or a load-balanced view) and an
    ``AsyncResult[list[int]]`` on several; ``get()`` returns that type.

    Attributes
    ----------
    msg_ids : list of str
        One per request.
    """

    # Class defaults, so that a result costs nothing more until it is stopped.
    _task = True  # its requests are tasks on engines (not hub or control requests)
    _holding = False  # cancel() is deciding: the last reply does not resolve the future
    _held = False  # the last reply came while holding

    def __init__(
        self,
        client: Client,
        msg_ids: Sequence[str],
        *,
        combine: Callable[[list[object]], T] | None = None,
        single: bool = False,
        label: str = "request",
    ) -> None:
        if _FUTURE_FIELDS_KNOWN:  # the future's own fields, without the Condition it drops
            self._condition = _Condition()
            self._state = _PENDING
            self._result = None
            self._exception = None
            self._waiters = []
            self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []
        else:  # another Python's Future: its own constructor, then our condition
            super().__init__()
            self._condition = _Condition()
        self._client = client
        self.msg_ids = list(msg_ids)
        self._index = {m: i for i, m in enumerate(self.msg_ids)}
        self._results: list[object] = [_MISSING] * len(self.msg_ids)
        self._errors: list[BaseException | None] = [None] * len(self.msg_ids)
        # By request index, made as replies and output come (an empty dict is not
        # tracked by the garbage collector, a list always is).
        self._meta: dict[int, dict[str, Any]] = {}
        self._out: dict[int, dict[str, list[str]]] = {}  # index -> stream name -> texts
        self._combine = combine
        self._single = single
        self._label = label
        self._remaining = len(self.msg_ids)
        self._arrived = self._condition  # the future's own: one lock per result
        self.submitted = time.time()
        self._completed: float | None = None
        self._object = False  # an object-store request: the whole reply is the value
        if not self.msg_ids:
            self._finish()

    def _metas(self) -> list[dict[str, Any]]:
        """Each request's reply metadata (empty until it came), in order."""
        return [self._meta.get(i, {}) for i in range(len(self.msg_ids))]

    def _outs(self) -> list[dict[str, list[str]]]:
        """Each request's output by stream name, in order."""
        return [self._out.get(i, {}) for i in range(len(self.msg_ids))]

    # -- fed by the client's I/O thread -------------------------------------------------
    def _deliver(
        self, msg_id: str, value: object, error: BaseException | None, metadata: dict[str, Any]
    ) -> None:
        i = self._index[msg_id]
        with self._arrived:
            if self._results[i] is not _MISSING or self._errors[i] is not None:
                return  # a duplicate can never resolve a request twice
            self._meta[i] = dict(metadata)
            if error is None:
                self._results[i] = value
            else:
                self._errors[i] = error
                self._results[i] = None
            self._remaining -= 1
            done = self._remaining == 0
            self._arrived.notify_all()
        if done:
            self._finish()

    def _stream(self, msg_id: str, name: str, text: str) -> None:
        self._out.setdefault(self._index[msg_id], {}).setdefault(name, []).append(text)

    #: Rich output by request index: ``{"msg_type", "data", "metadata", "transient"}``
    #: dicts (``clear_output``: ``{"msg_type", "wait"}``); made on the first one.
    _rich: dict[int, list[dict[str, Any]]] | None = None

    def _display(self, msg_id: str, msg_type: str, content: object) -> None:
        if not isinstance(content, dict):
            return
        if self._rich is None:
            self._rich = {}
        self._rich.setdefault(self._index[msg_id], []).append({"msg_type": msg_type, **content})

    def _finish(self) -> None:
        self._completed = time.time()
        if self._holding:
            with self._arrived:
                if self._holding:  # cancel() resolves it, or cancels it
                    self._held = True
                    return
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
            self._resolve()

    def _resolve(self) -> None:
        if self.cancelled():
            return
        errors = [e for e in self._errors if e is not None]
        try:
            if errors:
                if self._single and len(errors) == 1:
                    self.set_exception(errors[0])
                else:
                    self.set_exception(CompositeError(f"{self._label} failed", errors))
                return
            results = list(self._results)
            if self._combine is not None:
                value = self._combine(results)
            else:
                # Unpickled replies enter typed code here: their type is what the request
                # promised (the view's overloads say which).
                value = cast("T", results[0] if self._single else results)
        except BaseException as exc:  # a failing combine must still resolve the future
            self.set_exception(exc)
            return
        self.set_result(value)

    # -- ipyparallel's vocabulary -------------------------------------------------------
    def result(self, timeout: float | None = None) -> T:
        """The result (``concurrent.futures.Future.result``), read in this thread."""
        start = time.monotonic()
        try:
            self._client._wait(self, timeout)
            return super().result(_left(timeout, start))
        except KeyboardInterrupt:
            self._ctrl_c()
            raise

    def get(self, timeout: float | None = None) -> T:
        """The result, waiting up to ``timeout`` seconds; raises the remote error.

        Raises
        ------
        TimeoutError
            When the result is not in after ``timeout`` seconds.
        """
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            if isinstance(exc, RemoteError):  # the task's own TimeoutError
                raise
            raise TimeoutError(
                f"{self._label}: {self.progress} of {len(self.msg_ids)} replies after {timeout} s"
            ) from None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the result, at most ``timeout`` seconds; whether it is ready."""
        start = time.monotonic()
        try:
            self._client._wait(self, timeout)
            concurrent.futures.wait([self], _left(timeout, start))
        except KeyboardInterrupt:
            self._ctrl_c()
            raise
        return self.done()

    def ready(self) -> bool:
        """Whether every reply is in."""
        return self.done()

    def successful(self) -> bool:
        """Whether every request succeeded; raises ValueError while not ready."""
        if not self.done():
            raise ValueError(f"{self._label} is not ready yet: check ready() first")
        return not self.cancelled() and self.exception() is None

    @property
    def progress(self) -> int:
        """How many replies are in."""
        return len(self.msg_ids) - self._remaining

    @property
    def elapsed(self) -> float:
        """Seconds since submission, until the last reply (or now)."""
        end = self._completed if self._completed is not None else time.time()
        return end - self.submitted

    @property
    def wall_time(self) -> float:
        """Seconds from the first start to the last completion on the engines."""
        starts = [m["started"] for m in self._metas() if m.get("started")]
        ends = [m["completed"] for m in self._metas() if m.get("completed")]
        return max(ends) - min(starts) if starts and ends else 0.0

    @property
    def serial_time(self) -> float:
        """Engine seconds spent on the requests, summed (compare with ``wall_time``)."""
        return sum(
            float(m["completed"]) - float(m["started"])
            for m in self._metas()
            if m.get("started") and m.get("completed")
        )

    @property
    def metadata(self) -> dict[str, object] | list[dict[str, object]]:
        """Per request: ``engine_id``, ``status``, ``started``, ``completed``."""
        return self._metas()[0] if self._single else self._metas()

    @property
    def engine_id(self) -> int | list[int | None] | None:
        """The engine (or list of engines) that ran the request(s); None for a request
        not answered yet."""
        ids = [m.get("engine_id") for m in self._metas()]
        return ids[0] if self._single else ids

    @property
    def stdout(self) -> str | list[str]:
        """What the request(s) printed to stdout: a str, or a list of str."""
        texts = ["".join(o.get("stdout", ())) for o in self._outs()]
        return texts[0] if self._single else texts

    @property
    def stderr(self) -> str | list[str]:
        """What the request(s) wrote to stderr: a str, or a list of str."""
        texts = ["".join(o.get("stderr", ())) for o in self._outs()]
        return texts[0] if self._single else texts

    @property
    def outputs(self) -> list[dict[str, object]] | list[list[dict[str, object]]]:
        """The rich output of the request(s), in the order it came: ``display()``
        (``display_data``, ``update_display_data``), ``clear_output`` and an execute's
        result (``execute_result``), each a dict with ``msg_type`` and the message's
        content (``data``: a mime bundle such as ``{"text/plain": ..., "text/html":
        ...}``, ``metadata``, ``transient``). A list, or one list per request.

        .. versionadded:: 0.6
        """
        rich = self._rich or {}
        lists: list[list[dict[str, object]]] = [
            list(rich.get(i, ())) for i in range(len(self.msg_ids))
        ]
        return lists[0] if self._single else lists

    def display_outputs(self, groupby: str = "engine") -> None:
        """Show every request's output, each piece headed by its engine: ``[stdout:0]``.

        Streams are printed; rich output (``display()`` on the engines, an execute's
        result) is shown as rich output in IPython (a notebook renders its HTML or
        images, through :func:`IPython.display.publish_display_data`), and as its plain
        text elsewhere, headed ``[output:0]`` or ``Out[0:3]:``.

        Parameters
        ----------
        groupby : {"engine", "type", "order"}
            ``"engine"``: each engine's stdout, stderr then rich output, engine after
            engine. ``"type"``: every engine's stdout, then every engine's stderr, then
            every engine's rich output. ``"order"``: as ``"type"``, but the rich output
            taken in turn from each engine (its first output of each, then its second...).
        """
        if groupby not in ("engine", "type", "order"):
            raise ValueError(
                f"display_outputs(groupby=...) takes 'engine', 'type' or 'order', got {groupby!r}"
            )
        metas, outs = self._metas(), self._outs()
        rich = self._rich or {}
        engines = [meta.get("engine_id", "?") for meta in metas]
        pieces: list[tuple[int, str, object]] = []  # (request index, kind, text or output)
        for i, out in enumerate(outs):
            pieces += [(i, name, "".join(out.get(name, ()))) for name in ("stdout", "stderr")]
            pieces += [(i, "output", output) for output in rich.get(i, ())]
        if groupby == "type":  # stable: engines keep their order within a kind
            kinds = ("stdout", "stderr", "output")
            pieces.sort(key=lambda piece: kinds.index(piece[1]))
        elif groupby == "order":
            rank: dict[int, int] = {}
            keyed = []
            for piece in pieces:
                n = 0
                if piece[1] == "output":
                    n = rank[piece[0]] = rank.get(piece[0], -1) + 1
                keyed.append(((("stdout", "stderr", "output").index(piece[1]), n), piece))
            pieces = [piece for _, piece in sorted(keyed, key=lambda kp: kp[0])]
        publish = _ipython_publisher()
        for i, kind, what in pieces:
            engine = engines[i]
            if kind == "output":
                _show_output(engine, cast("dict[str, Any]", what), publish)
            elif what:
                text = cast("str", what)
                stream = sys.stderr if kind == "stderr" else sys.stdout
                print(
                    f"[{kind}:{engine}] {text}",
                    end="" if text.endswith("\n") else "\n",
                    file=stream,
                )

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = None) -> None:
        """Wait with a progress bar (tqdm when installed, else a text line)."""
        total = len(self.msg_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]  # noqa: PLC0415
        except ImportError:
            tqdm = None
        bar = tqdm(total=total, unit="tasks") if tqdm is not None else None
        shown = 0
        try:
            while not self.wait(interval):
                if bar is not None:
                    bar.update(self.progress - shown)
                else:
                    print(
                        f"\r{self.progress}/{total} tasks, {self.elapsed:.1f} s",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                shown = self.progress
                if deadline is not None and time.monotonic() > deadline:
                    return
            if bar is not None:
                bar.update(self.progress - shown)
        finally:
            if bar is not None:
                bar.close()
            else:
                print(f"\r{self.progress}/{total} tasks, {self.elapsed:.1f} s", file=sys.stderr)

    def _unanswered(self) -> list[str]:
        return [m for i, m in enumerate(self.msg_ids) if not self._answered(i)]

    def _answered(self, i: int) -> bool:
        return self._results[i] is not _MISSING or self._errors[i] is not None

    def _stopped(self, i: int) -> bool:
        """Whether request ``i`` was stopped: dropped before it ran, interrupted, or not
        answered (after :meth:`Client._stop` said that it will never start)."""
        error = self._errors[i]
        if not self._answered(i) or isinstance(error, TaskAborted):
            return True
        return isinstance(error, RemoteError) and error.ename == "KeyboardInterrupt"

    def _stop(self, timeout: float) -> bool:
        """Stop the requests not answered yet; whether each one stopped or never started."""
        left = self._unanswered()
        if not left:
            return True
        try:
            return self._client._stop(left, timeout)
        except (HubLost, RuntimeError, TimeoutError):  # lost or closed: nothing to stop
            log.debug("stopping %s failed", self._label, exc_info=True)
            return False

    def abort(self) -> bool:
        """Stop the requests not answered yet, waiting (at most a few seconds) for them
        to stop.

        Requests that have not started are dropped: they fail with
        :class:`~shoal.hub.TaskAborted`. A running one is interrupted on its engine
        (``KeyboardInterrupt`` raised in it; another client's work is never hit): it
        fails with a :class:`~shoal.engine.RemoteError` whose ``ename`` is
        ``"KeyboardInterrupt"``, and the engine serves on. The result stays a future that
        resolves with those errors; :meth:`cancel` cancels it instead.

        Returns
        -------
        bool
            True when every request was stopped or never started; False when one
            finished (before or meanwhile), or still ran after a few seconds because it
            ignores ``KeyboardInterrupt`` (stuck in C code, or catching it).

        .. versionchanged:: 0.6
           Running requests are interrupted too (before: they ran on); returns a bool.
        """
        gone = self._stop(_STOP_WAIT)
        with self._arrived:
            return gone and all(self._stopped(i) for i in range(len(self.msg_ids)))

    def cancel(self) -> bool:
        """Stop this future's requests and cancel it: True only when they were stopped.

        Queued requests are dropped, running ones are interrupted on their engines (as
        :meth:`abort` does), and when every one was stopped or never started the future
        is cancelled (``cancelled()``; ``result()`` raises ``CancelledError``). Waits a
        few seconds at most for the engines' answers.

        Unlike a ``concurrent.futures`` thread pool, whose running futures cannot be
        cancelled, a running task *can* be stopped here, so ``cancel()`` of a running
        task returns True when it was stopped. It returns False, and the future resolves
        as usual, when a request had already finished (nothing is then stopped), when
        one finished meanwhile, or when one ignored the interrupt for a few seconds.
        An already cancelled future returns True, a finished one False.

        .. versionchanged:: 0.6
           A running task is interrupted (before: it ran on, its result dropped, and
           ``cancel()`` said True).
        """
        with self._arrived:
            if self.done():
                return self.cancelled()
            if self._remaining < len(self.msg_ids):  # one finished: too late to cancel
                return False
            self._holding = True
        gone = False
        try:
            gone = self._stop(_STOP_WAIT)
        finally:
            cancelled = self._end_holding(gone)
        return cancelled

    def _end_holding(self, gone: bool) -> bool:
        """Cancel the future if every request stopped (``gone``: the others will never
        start), else resolve it with what came; whether it was cancelled."""
        with self._arrived:
            self._holding = False
            held, self._held = self._held, False
            stopped = gone and all(self._stopped(i) for i in range(len(self.msg_ids)))
            cancelled = stopped and super().cancel()
        if cancelled:
            self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait/as_completed
        elif held:  # every reply is in: resolve with them
            self._finish()
        return cancelled

    def _ctrl_c(self) -> None:
        """A Ctrl-C came while this thread waited: stop the requests awaited, and say so
        in one line. A second Ctrl-C leaves them as they are."""
        if not self._task:
            return  # a hub or control request: nothing runs on an engine for it
        left = self._unanswered()
        if not left:
            return
        try:
            gone = self._stop(_CTRL_C_WAIT)
        except KeyboardInterrupt:
            log.warning("Ctrl-C again: %d task(s) left as they were", len(left))
            return
        with self._arrived:
            stopped = [self._index[m] for m in left if self._stopped(self._index[m])]
            hit = sum(isinstance(self._errors[i], RemoteError) for i in stopped)
        n = len(left)
        tasks = f"the {n} tasks" if n > 1 else "the task"
        if gone and len(stopped) == n:
            log.warning(
                "Ctrl-C: stopped %s this wait was for (%d interrupted, %d dropped before"
                " they ran); without Ctrl-C: AsyncResult.cancel(), view.interrupt()",
                tasks,
                hit,
                n - hit,
            )
        else:
            log.warning(
                "Ctrl-C: interrupted %s this wait was for; %d finished or still run (code"
                " that ignores KeyboardInterrupt): view.interrupt() tries again,"
                " client.remove_engines() ends an engine",
                tasks,
                n - len(stopped),
            )

    def __await__(self) -> Generator[object, None, T]:
        return asyncio.wrap_future(self).__await__()

    def _wait_for(self, i: int, timeout: float | None) -> None:
        with self._arrived:
            ok = self._arrived.wait_for(
                lambda: self._results[i] is not _MISSING or self._errors[i] is not None,
                timeout,
            )
        if not ok:
            raise TimeoutError(f"{self._label}: reply {i} not in after {timeout} s")

    def __repr__(self) -> str:
        state = "finished" if self.done() else f"{self.progress}/{len(self.msg_ids)}"
        return f"<{type(self).__name__}: {self._label}: {state}>"


class AsyncMapResult(AsyncResult[list[T]]):
    """The result of a ``map``: iterate over it to get items as they come in.

    An ``AsyncMapResult[T]`` is an ``AsyncResult[list[T]]`` that iterates ``T``.

    With ``ordered=True`` items come in the order of the input; with ``ordered=False``
    chunk by chunk as the engines finish them.
    """

    def __init__(
        self, client: Client, msg_ids: Sequence[str], *, ordered: bool = True, label: str = "map"
    ) -> None:
        self.ordered = ordered
        self._finish_order: list[int] = []
        super().__init__(client, msg_ids, combine=_flatten, label=label)

    def _deliver(
        self, msg_id: str, value: object, error: BaseException | None, metadata: dict[str, Any]
    ) -> None:
        with self._arrived:
            i = self._index[msg_id]
            if self._results[i] is _MISSING and self._errors[i] is None:
                self._finish_order.append(i)
        super()._deliver(msg_id, value, error, metadata)

    def __iter__(self) -> Iterator[T]:
        for n in range(len(self.msg_ids)):
            try:
                if self.ordered:
                    i = n
                    self._wait_for(i, None)
                else:
                    with self._arrived:
                        self._arrived.wait_for(lambda n=n: len(self._finish_order) > n)  # type: ignore[misc]
                        i = self._finish_order[n]
            except KeyboardInterrupt:
                self._ctrl_c()
                raise
            error = self._errors[i]
            if error is not None:
                raise error
            yield from cast("list[T]", self._results[i])  # an engine's chunk: a list of T


_Publish = Callable[..., None]


def _ipython_publisher() -> tuple[_Publish, _Publish] | None:
    """IPython's ``publish_display_data`` and ``clear_output`` when this process runs
    IPython (a notebook, a terminal): rich output is shown rich there."""
    ipython = sys.modules.get("IPython")
    if ipython is None or getattr(ipython, "get_ipython", lambda: None)() is None:
        return None
    from IPython.display import clear_output, publish_display_data  # noqa: PLC0415

    return publish_display_data, clear_output


def _show_output(
    engine: object, output: dict[str, Any], publish: tuple[_Publish, _Publish] | None
) -> None:
    """One rich output of ``engine``: published to IPython, or its text printed."""
    kind = output.get("msg_type")
    if kind == "clear_output":
        if publish is not None:
            publish[1](wait=bool(output.get("wait")))
        return
    data = output.get("data") or {}
    metadata = output.get("metadata") or {}
    if kind == "execute_result":
        head = f"Out[{engine}:{output.get('execution_count')}]: "
    else:
        head = f"[output:{engine}] "
    if publish is not None:
        if kind == "execute_result" and "text/plain" in data:  # ipyparallel's Out[e:n]
            data = {**data, "text/plain": head + str(data["text/plain"])}
        transient = output.get("transient") or {}
        update = kind == "update_display_data"
        publish[0](data, metadata, transient=transient, update=update)
        return
    text = str(data.get("text/plain", ""))
    print(head + text, end="" if text.endswith("\n") else "\n")


def _left(timeout: float | None, start: float) -> float | None:
    """What remains of ``timeout`` seconds counted from ``start``."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))


def _flatten(chunks: list[object]) -> list[T]:
    out: list[T] = []
    for chunk in chunks:
        out.extend(cast("list[T]", chunk))  # an engine's chunk of a map: a list of T
    return out
