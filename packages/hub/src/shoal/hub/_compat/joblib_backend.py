"""joblib's ``Parallel`` on a shoal cluster: the ``"shoal"`` parallel backend.

Theory of operation
-------------------
joblib cuts the calls of a ``Parallel(...)(delayed(f)(x) for x in ...)`` into batches
(``BatchedCalls``, one callable each) and hands each to its backend's ``submit`` with a
callback. :class:`ShoalBackend` sends each batch as one task to a
:class:`~shoal.hub.LoadBalancedView`, so whichever engine is free runs it, and keeps
joblib's contract:

* **Workers.** ``n_jobs`` counts engines: ``-1`` is every engine of the cluster (or of
  the view given), ``-2`` all but one, and so on; a positive ``n_jobs`` beyond the
  engines is cut to their number (more cannot run at once). Fewer than all of them: the
  batches go to the first ``n_jobs`` engine ids, so that no more than ``n_jobs`` run at
  once. joblib runs a call with one worker in the calling process itself, as it does for
  every backend: ``n_jobs == 1``, and a cluster (or view) of a single engine. Without
  ``n_jobs`` (scikit-learn's ``n_jobs=None``) the backend uses every engine: choosing
  the cluster means using it.
* **Batching.** joblib's auto-batching (``AutoBatchingMixin``): ``batch_completed``
  records how long each batch took from dispatch to its callback, and
  ``compute_batch_size`` grows the batches of tiny calls until one takes about 0.2 s, so
  that 10,000 calls of a microsecond are a few dozen tasks, not 10,000.
* **Callbacks.** A task's :class:`~shoal.hub.AsyncResult` completes in the client's I/O
  thread; joblib's callback then dispatches the next batch (it reads the caller's
  generator and pickles the batch). That work runs in one thread per ``Parallel`` call
  (started by ``start_call``, ended by ``stop_call``), never in the I/O thread, which
  must keep reading replies and would deadlock on a full submission window.
* **Results.** ``supports_retrieve_callback``: the callback fetches each result, so
  ``return_as="generator"`` and ``"generator_unordered"`` and ``Parallel(timeout=)``
  work. A call's exception is raised as its task raised it on the engine: an instance
  of its own type (``ValueError`` stays catchable as ``ValueError``) that is also a
  :class:`shoal.hub.RemoteError` with the remote traceback.
* **Abort.** When a call fails (or a generator is closed early) joblib calls
  ``abort_everything``: the batches not started are dropped (``Client.abort``), and each
  engine gets a targeted ``interrupt_request`` naming this backend's unfinished tasks,
  so that a running batch gets ``KeyboardInterrupt`` -- only ours: the engine checks the
  id of what it runs, and another client's task is spared. It returns once they ended
  (again every half second, at most ``_STOP_WAIT`` seconds).
* **Nesting.** A ``Parallel`` call inside a task runs on that engine: in threads at the
  first level of nesting (``n_jobs`` of that call), sequentially deeper, as joblib's own
  process backends do. It never goes back to the cluster: an engine waiting for tasks
  that wait for engines can deadlock the cluster.
* **The cluster.** ``parallel_config(backend="shoal", client=rc)`` or ``view=lbview``
  choose it (the view's ``retries`` and ``timeout`` apply to every batch); else the
  most recently connected open :class:`~shoal.hub.Client`; else a new
  ``Client(profile=profile)`` (``"default"``) of the backend's own, opened by each
  ``Parallel`` call and closed by its ``terminate``.

joblib is optional for shoal: only this module imports it, and ``import shoal.hub``
loads this module only when joblib is already imported (then registering costs
nothing) or when :func:`register_joblib_backend` is called.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from joblib.parallel import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
    register_parallel_backend,
)

from .._client.asyncresult import AsyncResult
from .._client.client import Client, current_client
from .._client.errors import HubLost
from .._client.views import LoadBalancedView

__all__ = ["ShoalBackend", "register_joblib_backend"]

log = logging.getLogger("shoal.hub.joblib")

#: Seconds ``abort_everything`` waits for the interrupted batches to end.
_STOP_WAIT = 10.0

_Callback = Callable[[object], object]


class _CallbackThread:
    """One thread that runs joblib's callbacks of one ``Parallel`` call, in order."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[_Callback, AsyncResult[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(
            target=self._run, args=(self.jobs,), name="shoal-joblib-callbacks", daemon=True
        )
        self.thread.start()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[_Callback, AsyncResult[Any]] | None]) -> None:
        while (job := jobs.get()) is not None:
            callback, future = job
            try:
                callback(future)
            except Exception:  # joblib's own callback: it records outcomes itself
                log.exception("a joblib batch callback failed")

    def stop(self) -> None:
        """End the thread once the callbacks queued so far ran (not waited for)."""
        self.jobs.put(None)


class ShoalBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]  # joblib is untyped
    """joblib's parallel backend running batches on a shoal cluster's engines.

    Registered as ``"shoal"`` by :func:`register_joblib_backend`; its keyword arguments
    come from ``joblib.parallel_config(backend="shoal", **kwargs)``.

    Parameters
    ----------
    client : Client, optional
        The cluster to run on (not closed by the backend).
    view : LoadBalancedView, optional
        The view whose engines (``targets``) and flags (``retries``, ``timeout``) every
        batch uses; its client is the cluster.
    profile : str, optional
        Without ``client`` or ``view``: connect a Client of the backend's own to this
        profile's cluster. Default: the most recently connected open Client, else the
        ``"default"`` profile's cluster.

    Notes
    -----
    joblib's memory-mapping options (``max_nbytes``, ``mmap_mode``, ``temp_folder``)
    are for its process pools on one host; shoal moves arrays its own way (shared
    memory on one host, zero-copy frames between hosts), so they have no effect here.
    ``inner_max_num_threads`` is refused (engines are started with their own
    environment). See the module's theory of operation for the rest.

    .. versionadded:: 0.6.0
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        client: Client | None = None,
        view: LoadBalancedView | None = None,
        profile: str | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            raise TypeError(
                f"the shoal joblib backend got unknown arguments {sorted(unknown)};"
                " it takes client=, view= and profile= (e.g."
                " parallel_config(backend='shoal', client=rc))"
            )
        if inner_max_num_threads is not None:
            raise ValueError(
                f"inner_max_num_threads={inner_max_num_threads!r}: the shoal backend"
                " cannot set the thread limits of engines that already run; start the"
                " engines with OMP_NUM_THREADS (etc.) in their environment instead"
            )
        if client is not None and not isinstance(client, Client):
            raise TypeError(f"client must be a shoal.hub.Client, not {type(client).__name__}")
        if view is not None and not isinstance(view, LoadBalancedView):
            raise TypeError(f"view must be a shoal.hub.LoadBalancedView, not {type(view).__name__}")
        if view is not None and client is not None and view.client is not client:
            raise ValueError("view= belongs to another Client than client=; pass one of them")
        if profile is not None and (client is not None or view is not None):
            raise ValueError(
                "profile= names a cluster to connect to: pass it without client=/view="
            )
        if profile is not None and (not isinstance(profile, str) or not profile):
            raise ValueError(f"profile must be a non-empty str, not {profile!r}")
        super().__init__(nesting_level=nesting_level)
        self._given_client = view.client if view is not None else client
        self._given_view = view
        self._profile = profile
        self._client: Client | None = None
        self._owned: Client | None = None  # the Client this backend opened (and closes)
        self._closer: weakref.finalize[[], ShoalBackend] | None = None  # closes it (or GC)
        self._view: LoadBalancedView | None = None
        self._lock = threading.Lock()
        self._futures: set[AsyncResult[Any]] = set()
        self._callbacks: _CallbackThread | None = None

    # -- the cluster ------------------------------------------------------------------
    def _cluster(self) -> Client:
        """The Client to use, connected on first need."""
        if self._client is not None and not self._client._closed:
            return self._client
        if self._given_client is not None:
            self._client = self._given_client
        elif self._profile is None and (found := _open_client()) is not None:
            self._client = found
        else:
            self._owned = self._client = Client(profile=self._profile or "default")
            # joblib.effective_n_jobs() alone opens it too, and never calls terminate()
            self._closer = weakref.finalize(self, self._owned.close)
        return self._client

    def _engines(self) -> list[int]:
        """The engines batches may run on: the view's targets, else every engine."""
        client = self._cluster()
        ids = client.ids
        view = self._given_view
        if view is not None and view.targets is not None:
            registered = set(ids)
            ids = [i for i in view.targets if i in registered]
        if not ids:
            raise RuntimeError(
                f"the shoal joblib backend has no engine to run on (cluster at"
                f" {client.url}{'' if view is None else f', view {view!r}'}); start some"
                " first (client.wait_for_engines(n) waits for them)"
            )
        return ids

    # -- joblib's backend API -----------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs`` engines (-1: all of them)."""
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
            raise TypeError(f"n_jobs must be an int or None, not {n_jobs!r}")
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        engines = len(self._engines())
        if n_jobs < 0:
            return max(engines + 1 + n_jobs, 1)
        return min(n_jobs, engines)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: object,
    ) -> int:
        """Choose the engines of one ``Parallel`` call; returns how many run at once.

        ``backend_kwargs`` are joblib's process-pool options (``max_nbytes``,
        ``mmap_mode``, ``temp_folder``, ``context``, ``verbose``): no effect here.
        """
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        engines = self._engines()
        client = self._cluster()
        given = self._given_view
        if n >= len(engines):
            # every engine: the given view as it is, or any engine (one that joins later too)
            self._view = given if given is not None else LoadBalancedView(client)
        else:
            view = LoadBalancedView(client, engines[:n])
            if given is not None:  # the given view's flags, on fewer engines
                view.set_flags(
                    retries=given.retries,
                    timeout=given.timeout,
                    after=given.after,
                    follow=given.follow,
                )
            self._view = view
        return n

    def start_call(self) -> None:
        """A ``Parallel`` call begins: its callback thread starts."""
        if self._callbacks is None:
            self._callbacks = _CallbackThread()

    def stop_call(self) -> None:
        """A ``Parallel`` call ended: its callback thread ends."""
        self._stop_callbacks()

    def terminate(self) -> None:
        """The end of a ``Parallel`` call not used as a context manager, or of its
        ``with`` block: close the Client this backend opened, if any."""
        self._stop_callbacks()
        owned, self._owned = self._owned, None
        closer, self._closer = self._closer, None
        if owned is not None:
            if self._client is owned:
                self._client = None
            self._view = None
        if closer is not None:
            closer()

    def _stop_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            callbacks.stop()

    def submit(
        self, func: Callable[[], object], callback: _Callback | None = None
    ) -> AsyncResult[Any]:
        """Run one batch (``func()``) on a free engine; ``callback(future)`` runs in the
        call's callback thread when it is done."""
        view = self._view
        if view is None:
            raise RuntimeError("the shoal joblib backend was not configured for a call")
        if self._callbacks is None:  # joblib calls start_call first; a direct caller may not
            self._callbacks = _CallbackThread()
        jobs = self._callbacks.jobs
        future: AsyncResult[Any] = view.apply_async(func)
        with self._lock:
            self._futures.add(future)

        def done(f: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._futures.discard(future)
            if callback is not None:
                jobs.put((callback, future))

        future.add_done_callback(done)
        return future

    def retrieve_result_callback(self, out: AsyncResult[Any]) -> object:
        """The batch's list of results, or its first error raised as the engine raised it."""
        return out.result(0)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop this backend's batches: drop those not started, interrupt those running
        (only ours), and wait until they ended (at most ``_STOP_WAIT`` seconds)."""
        with self._lock:
            pending = [f for f in self._futures if not f.done()]
        client = self._client
        if not pending or client is None:
            return
        try:
            # Dropped if not started, else interrupted on its engine by id (others'
            # tasks are spared), again while one still runs, up to _STOP_WAIT seconds.
            if not client._stop([m for f in pending for m in f.msg_ids], _STOP_WAIT):
                log.warning(
                    "joblib abort: batches still run after %s s: they ignore KeyboardInterrupt",
                    _STOP_WAIT,
                )
        except (HubLost, RuntimeError, TimeoutError):  # a lost hub runs nothing of ours
            log.debug("abort_everything: the cluster did not answer", exc_info=True)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """What a ``Parallel`` call inside a task uses: threads of its engine at the
        first level of nesting, sequential below (never the cluster again)."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def __repr__(self) -> str:
        where = self._view if self._view is not None else (self._given_client or "default")
        return f"<shoal joblib backend on {where}>"


def _open_client() -> Client | None:
    """The most recently connected open Client, or None."""
    try:
        return current_client()
    except RuntimeError:
        return None


def register_joblib_backend(name: str = "shoal", make_default: bool = False) -> None:
    """Make the cluster a joblib backend: ``joblib.parallel_config(backend=name)``.

    After it, ``Parallel`` calls (and scikit-learn's ``n_jobs``) inside
    ``with joblib.parallel_config(backend="shoal"):`` run their batches on the engines
    of the most recently connected :class:`~shoal.hub.Client` (else the default
    profile's cluster); ``parallel_config(backend="shoal", client=rc)`` or
    ``view=rc.load_balanced_view(...)`` choose the cluster. ``import shoal.hub``
    registers ``"shoal"`` by itself when joblib was imported before it.

    Parameters
    ----------
    name : str
        The backend's name for joblib (ipyparallel's ``register_joblib_backend`` names
        its own ``"ipyparallel"``).
    make_default : bool
        Also make it joblib's default backend, for ``Parallel`` calls outside any
        ``parallel_config``.

    Raises
    ------
    ImportError
        When joblib is not installed (``pip install joblib``).

    Examples
    --------
    >>> import joblib, shoal.hub                                   # doctest: +SKIP
    >>> shoal.hub.register_joblib_backend()                        # doctest: +SKIP
    >>> with joblib.parallel_config(backend="shoal"):              # doctest: +SKIP
    ...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4))
    [0, 1, 2, 3]

    .. versionadded:: 0.6.0
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, not {name!r}")
    if not isinstance(make_default, bool):
        raise TypeError(f"make_default must be a bool, not {make_default!r}")
    register_parallel_backend(name, ShoalBackend, make_default=make_default)
