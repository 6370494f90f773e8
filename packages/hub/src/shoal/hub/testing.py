"""Helpers for tests that run on a real cluster: poll for a condition, start a cluster.

For shoal's own tests and for tests of code built on shoal::

    from shoal.hub.testing import running_cluster, wait_until

    with running_cluster(tmp_path, 2, "--timeout", "2.0") as (proc, client):
        ar = client[0].execute("import time; time.sleep(60)")
        wait_until(lambda: client.queue_status()[0]["outstanding"], message="engine 0 busy")
        ...

Theory of operation
-------------------
* A test waits for the condition it needs (:func:`wait_until`), never for a while: on a
  loaded machine any fixed ``sleep`` is sometimes too short, and always too long. Polling
  sleeps a little between two checks; that orders nothing.
* :func:`running_cluster` is :class:`shoal.hub.Cluster` plus a connected Client: the same
  start (the hub in a session of its own, its ready line awaited in its log) and the same
  stop (a shutdown asked, then SIGTERM, then SIGKILL to the hub's process group). On top,
  it notes the PIDs of the engines the hub started and waits, by PID, until they are gone
  before the block ends, so that no test leaves a process behind. The hub binds random
  loopback ports and keeps its files in the folder given: the clusters of parallel test
  processes (pytest-xdist workers) never meet.
* The pytest fixtures :func:`cluster`, :func:`client` and :func:`hub` exist when pytest
  can be imported; everything else here works without pytest. A ``conftest.py`` takes
  them with ``from shoal.hub.testing import client, cluster, hub``; the conftest at the
  root of a test run may also say ``pytest_plugins = ["shoal.hub.testing"]`` (pytest
  refuses ``pytest_plugins`` in other conftests). Each conftest that imports them has a
  ``cluster`` of its own: one per pytest process (xdist worker) and conftest folder.

.. versionadded:: 0.3
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from ._cli.cluster import Cluster, log_tail, pid_alive
from ._client.client import Client

try:
    import pytest
except ModuleNotFoundError:  # the fixtures need pytest; the rest of the module does not
    _HAVE_PYTEST = False
else:
    _HAVE_PYTEST = True

__all__ = [
    "ClusterStarter",
    "RunningCluster",
    "engine_pids",
    "process_alive",
    "running_cluster",
    "wait_processes_gone",
    "wait_until",
]

T = TypeVar("T")

#: Engines in the shared :func:`cluster` fixture's cluster.
_CLUSTER_ENGINES = 2


# -- polling ------------------------------------------------------------------------------
def _describe(condition: Callable[[], object]) -> str:
    """What ``condition`` checks: a lambda's source line, else the function's name."""
    name: str | None = getattr(condition, "__qualname__", None)
    if name is None:
        return repr(condition)
    if name.endswith("<lambda>"):
        try:
            source: str = inspect.getsource(condition).strip()
        except (OSError, TypeError):  # no source: typed at a prompt, or built by exec
            return name
        return source if len(source) <= 200 else source[:197] + "..."
    return name


def wait_until(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something true, and return that.

    Use it wherever a test would sleep and then assert that something happened: it
    returns as soon as the condition holds, and waits long on a loaded machine.

    Parameters
    ----------
    condition : callable
        Called without arguments, at once and then every ``interval`` seconds. Its
        exceptions propagate: catch inside it what is expected while waiting. A value
        that is false keeps it waiting, ``0`` too: to wait for an engine id, return a
        list of them (``[0]`` is true).
    timeout : float
        Seconds to wait, measured with :func:`time.monotonic`.
    interval : float
        Seconds between two calls.
    message : str or callable, optional
        What is awaited, for the error (a callable is asked only then, so it may
        describe the state, e.g. ``lambda: f"engines {rc.ids}"``). Default: the
        condition's source line (for a lambda) or name.

    Returns
    -------
    object
        The first true value ``condition`` returned.

    Raises
    ------
    TimeoutError
        When ``condition`` returned nothing true within ``timeout`` seconds; the message
        says what was awaited and what the last call returned.
    ValueError
        When ``timeout`` is negative or ``interval`` is not positive.

    Examples
    --------
    >>> wait_until(lambda: 0 not in rc.ids, timeout=20)            # doctest: +SKIP
    True
    >>> pid = wait_until(lambda: rc.queue_status()[0].get("pid"))  # doctest: +SKIP
    """
    if timeout < 0:
        raise ValueError(f"timeout must be at least 0 seconds, got {timeout!r}")
    if interval <= 0:
        raise ValueError(f"interval must be more than 0 seconds, got {interval!r}")
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    what = message() if callable(message) else message
    if what is None:
        what = _describe(condition)
    raise TimeoutError(
        f"waited {timeout} s for {what}; it did not come true (last value: {value!r})"
    )


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an ended process not yet reaped)."""
    return pid_alive(pid)


def wait_processes_gone(pids: Iterable[int], timeout: float = 30.0) -> None:
    """Wait until none of ``pids`` runs (zombies count as gone).

    Raises
    ------
    TimeoutError
        When some still ran after ``timeout`` seconds; the message lists them.
    """
    pending = set(pids)

    def gone() -> bool:
        pending.difference_update([pid for pid in pending if not pid_alive(pid)])
        return not pending

    wait_until(gone, timeout, message=lambda: f"processes {sorted(pending)} to end")


def engine_pids(client: Client) -> dict[int, int]:
    """The PID of each registered engine, by engine id (asked from the hub)."""
    status = client.queue_status()
    return {
        e: int(s["pid"]) for e, s in status.items() if isinstance(e, int) and isinstance(s, dict)
    }


# -- a running cluster --------------------------------------------------------------------
class RunningCluster(NamedTuple):
    """A hub process and a Client on it, as :func:`running_cluster` gives them.

    Unpacks as ``(proc, client)``.
    """

    #: The hub process (``pid``, ``poll()``, ``kill()``, ``wait()``).
    proc: subprocess.Popen[bytes]
    #: A Client connected to the hub, the engines registered; closed when the block ends.
    client: Client

    @property
    def pid(self) -> int:
        """The hub's PID."""
        return self.proc.pid

    @property
    def folder(self) -> Path:
        """The folder of the hub's files (connection files, ``hub.log``)."""
        return Path(self.client.url_file).parent

    @property
    def url_file(self) -> str:
        """The connection file for more clients: ``Client(url_file=cluster.url_file)``."""
        return self.client.url_file

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the hub's log (its and its engines' output)."""
        return log_tail(str(self.folder / "hub.log"), lines)


def _hub_engines(client: Client, hub_pid: int) -> set[int]:
    """PIDs of the engines the hub started (those in its process group), if it answers."""
    try:
        pids = engine_pids(client).values()
    except Exception:  # a dead or deaf hub: the PIDs noted before must serve
        return set()
    mine = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == hub_pid:
                mine.add(pid)
    return mine


@contextlib.contextmanager
def running_cluster(
    folder: Path | str, n: int = 2, *hub_args: str, timeout: float = 60.0
) -> Iterator[RunningCluster]:
    """A hub with ``n`` engines in ``folder`` and a Client on it, for the block's duration.

    The hub binds random loopback ports and keeps its files (connection files, its log
    ``hub.log``) in ``folder``. When the block ends, however it ends, the cluster is
    stopped as :meth:`shoal.hub.Cluster.stop` does it, and the block waits until every
    engine the hub started is gone (SIGKILLing by PID any that outlived the stop).

    Parameters
    ----------
    folder : Path or str
        The hub's folder (made if missing): one per running cluster.
    n : int
        Engines to start and wait for.
    *hub_args : str
        More arguments for ``python -m shoal.hub``, e.g. ``"--timeout", "2.0"``.
    timeout : float
        Seconds to wait for the hub, and again for the engines.

    Yields
    ------
    RunningCluster
        ``(proc, client)``: the hub process and a connected Client.

    Raises
    ------
    RuntimeError
        When the hub failed to start (the message has the end of its log).
    TimeoutError
        When the hub or its engines were not ready within ``timeout`` seconds.

    Examples
    --------
    >>> with running_cluster(tmp_path, 1, "--store", "sqlite") as (proc, rc):  # doctest: +SKIP
    ...     rc[0].apply_sync(os.getpid)
    """
    cluster = Cluster(n, profile_dir=str(folder), hub_args=hub_args)
    cluster.start(timeout)  # the hub's ready line, read as Cluster reads it
    proc = cluster.proc
    if proc is None:  # start() returned, so the hub runs; this keeps type checkers informed
        raise RuntimeError("Cluster.start() returned without a hub process")
    engines: set[int] = set()
    try:
        client = cluster.connect_client()
        client.wait_for_engines(n, timeout)
        engines |= _hub_engines(client, proc.pid)
        yield RunningCluster(proc, client)
        if proc.poll() is None:
            engines |= _hub_engines(client, proc.pid)  # and those added meanwhile
    finally:
        cluster.stop()
        try:
            wait_processes_gone(engines, timeout=10.0)
        except TimeoutError:
            for pid in engines:
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            wait_processes_gone(engines, timeout=10.0)


class ClusterStarter(Protocol):
    """What the :func:`hub` fixture gives: :func:`running_cluster` itself."""

    def __call__(
        self, folder: Path | str, n: int = 2, *hub_args: str, timeout: float = 60.0
    ) -> AbstractContextManager[RunningCluster]:
        """Start a cluster for a ``with`` block; see :func:`running_cluster`."""


# -- pytest fixtures ----------------------------------------------------------------------
if _HAVE_PYTEST:
    __all__ += ["client", "cluster", "hub"]

    @pytest.fixture(scope="session")
    def hub() -> ClusterStarter:
        """Start a cluster of your own in a test, for what the shared one must not see
        (killed engines, hub options)::

            def test_x(tmp_path, hub):
                with hub(tmp_path, 1, "--timeout", "1.0") as (proc, client):
                    ...
        """
        return running_cluster

    @pytest.fixture(scope="session")
    def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
        """A cluster of 2 engines shared by the tests of this pytest process (each xdist
        worker has its own), stopped at the end of the session.

        Its tests must leave it as they found it: no engine killed, removed or added, no
        task left running. Use the :func:`client` fixture for a Client of the test's own.
        """
        with running_cluster(tmp_path_factory.mktemp("cluster"), _CLUSTER_ENGINES) as running:
            yield running

    @pytest.fixture
    def client(cluster: RunningCluster) -> Iterator[Client]:
        """A new Client on the shared :func:`cluster`, closed after the test.

        Fails the test at once when an earlier test broke the shared cluster, and fails
        its teardown when the test left tasks running there.
        """
        if cluster.proc.poll() is not None:
            pytest.fail(
                f"the shared cluster's hub exited with {cluster.proc.returncode}; its log"
                f" ends with:\n{cluster.log_tail()}"
            )
        new = Client(url_file=cluster.url_file)
        try:
            if new.ids != list(range(_CLUSTER_ENGINES)):
                pytest.fail(
                    f"the shared cluster has engines {new.ids}, not 0 to"
                    f" {_CLUSTER_ENGINES - 1}: an earlier test killed, added or removed"
                    " some (such a test needs a cluster of its own: the `hub` fixture)"
                )
            yield new
            _wait_idle(new)
        finally:
            new.close()

    def _wait_idle(client: Client) -> None:
        """Wait until the cluster runs no task and queues none (a test's leftovers)."""

        def idle() -> bool:
            status: dict[Any, Any] = client.queue_status()  # engine ids, and "unassigned"
            busy = [s["outstanding"] for e, s in status.items() if isinstance(e, int)]
            return not any(busy) and not status["unassigned"]

        wait_until(
            idle,
            timeout=30,
            message=lambda: (
                "the test's tasks on the shared cluster to end; they still run:"
                f" {client.queue_status()}"
            ),
        )
