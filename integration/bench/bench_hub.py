"""Hub-layer benchmarks: a shoal cluster (a hub and 2 engines) against raw pyzmq and peers.

* W1 sequential no-op round trips, direct and load-balanced, vs a raw pyzmq broker
  process relaying the same bytes between a client and 2 worker processes, and (for the
  direct view) vs a raw pyzmq echo in one other process; peers: multiprocessing.Pool,
  multiprocess.Pool, ProcessPoolExecutor, ipyparallel, dask.distributed. Where the
  Client reaches engines directly by default (``direct=True``), a second client with
  ``direct=False`` measures the way through the hub as well (also in W3).
* W2 many independent no-op tasks submitted at once (tasks/s), and ``map`` with automatic
  chunking; peers: multiprocessing.Pool, multiprocess.Pool, ProcessPoolExecutor,
  ipyparallel, dask.
* W3 push and pull of a large array to an engine vs raw pyzmq ``copy=False`` (point to
  point, and through the raw broker), and the hub's memory over that run.
* W6 an engine SIGKILLed while it runs a request: time until the client has the
  EngineDiedError; peer: ipyparallel.
* W7 cluster start (to 2 engines ready) and stop, vs ipyparallel's Cluster and vs
  starting the raw broker and workers.

Every process started here ends, also when a measurement fails: each cluster, pool and
server is ended in a ``finally`` and whatever it left (ipyparallel's nannies outlive
their cluster) is killed by PID. ipyparallel and dask (slow to start and to run here)
are skipped with ``--quick``; a failing peer prints a note and adds no rows.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import logging
import multiprocessing
import multiprocessing.pool
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from _common import (
    SERVERS,
    MiB,
    Reaper,
    Row,
    Stats,
    _read_ready,
    apply_request_bytes,
    calls_vs_peer,
    dealer,
    interleave,
    interleave_all,
    ipp_cluster,
    note,
    open_link,
    raw_echo_us,
    raw_send_gbps,
    server,
    stop,
    us_per_call,
)

from shoal.hub import Client, EngineDiedError

ENGINES = 2  # this machine has 2 cores: one engine (or worker) each, for every system
PEER_REPEATS = 3  # the peers' clusters are slow to run: a few repeats only
ROUNDTRIP_REPEATS = 5  # W1: a sample of 1,000 round trips takes about a second
TASK_REPEATS = 3  # W2: a sample of 10,000 tasks takes seconds
TRANSFER_REPEATS = 3  # W3: a 512 MiB sample takes over a second through the hub
PEER_SHARE = 10  # ipyparallel's and dask's round trips are ~10x shoal's: fewer per sample
IPP_TASKS = 1000  # W2: ipyparallel runs ~1,000 tasks/s; its rate is measured on these
DASK_TASKS = 500  # W2: dask runs a few hundred tasks/s here; at most this many a sample
KILL_AFTER = 0.3  # W6: the engine is killed this long after its request started
IPP_DETECT_LIMIT = 20.0  # W6: ipyparallel's detection is reported when quicker than this
RSS_BUDGET_MIB = 50.0


def _as_main(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` as if a user's ``__main__`` script defined it, which shoal, ipyparallel,
    multiprocess (dill) and dask (cloudpickle) all send by value.

    Its own globals too: dill sends a ``__main__`` function's globals along, and this
    module's namespace (run.py imports it) would cost multiprocess ~4 kB and ~3 ms a call.
    """
    globals_ = {"__name__": "__main__", "__builtins__": builtins}
    g = types.FunctionType(f.__code__, globals_, f.__name__, f.__defaults__, f.__closure__)
    g.__module__ = "__main__"
    g.__qualname__ = f.__qualname__
    return g


@_as_main
def noop() -> None:
    return None


@_as_main
def ident(x: Any) -> Any:
    return x


def noop_ref() -> None:
    """noop for ProcessPoolExecutor and multiprocessing.Pool: stdlib pickle sends a
    function by reference, and the forked workers find this module in ``sys.modules``."""


def ident_ref(x: Any) -> Any:
    """ident for multiprocessing.Pool.map, by reference as :func:`noop_ref`."""
    return x


# -- helpers --------------------------------------------------------------------------
def _rate(n: int, run: Callable[[int], None]) -> float:
    """Tasks per second of ``run(n)`` (which submits ``n`` tasks and waits for all)."""
    t0 = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - t0)


def _rates(
    runs: Sequence[tuple[Callable[[int], None], int]], repeats: int, warm_up: int
) -> list[Stats]:
    """Tasks/s of each ``run(n)``, interleaved, after one run of each on ``warm_up`` tasks."""
    for run, _ in runs:
        run(warm_up)
    return interleave_all([functools.partial(_rate, n, run) for run, n in runs], repeats, 0)


def _tasks(view: Any, f: Callable[[], Any] = noop) -> Callable[[int], None]:
    """``run(k)``: ``view.apply_async(f)`` k times at once, then every result's ``get()``."""

    def run(k: int) -> None:
        results = [view.apply_async(f) for _ in range(k)]
        for r in results:
            r.get()

    return run


def _ms(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def _vm_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


# -- processes ------------------------------------------------------------------------
def _hub_cluster_class() -> Any:
    """``shoal.hub.Cluster``, or None where it does not exist (yet)."""
    try:
        from shoal.hub import Cluster
    except ImportError:
        return None
    return Cluster


def _start_shoal(folder: str) -> tuple[Client, Callable[[], None]]:
    """A shoal cluster with ENGINES engines in ``folder``: a client once the engines are
    registered, and the function that stops the cluster (closing that client)."""
    cluster_class = _hub_cluster_class()
    if cluster_class is not None:
        cluster = cluster_class(n=ENGINES, profile_dir=folder)
        try:
            return cluster.start_and_connect(timeout=60), cluster.stop
        except BaseException:
            cluster.stop()
            raise
    # No Cluster class: start the hub process ourselves, its output in a log file.
    log_path = os.path.join(folder, "hub.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal.hub",
                "-n",
                str(ENGINES),
                "--profile-dir",
                folder,
                "--parent-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    rc: Client | None = None

    def stop_hub() -> None:
        try:
            if rc is not None:
                with contextlib.suppress(Exception):
                    rc.shutdown()
                rc.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        finally:
            stop(proc)

    try:
        deadline = time.monotonic() + 60
        while True:
            with open(log_path, "rb") as f:
                if b"shoal hub ready:" in f.read():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not start (exit code {proc.poll()})")
            time.sleep(0.01)
        rc = Client(url_file=os.path.join(folder, "hub-client.json"))
        rc.wait_for_engines(ENGINES, 60)
    except BaseException:
        stop_hub()
        raise
    return rc, stop_hub


@contextlib.contextmanager
def _shoal_cluster() -> Iterator[Client]:
    """A running shoal cluster's client; the hub and every engine ended afterwards."""
    with Reaper() as reaper, tempfile.TemporaryDirectory(prefix="shoal-bench-hub-") as folder:
        rc, stop_cluster = _start_shoal(folder)
        try:
            yield rc
        finally:
            reaper.snapshot()
            stop_cluster()


@contextlib.contextmanager
def _raw_broker(link: str) -> Iterator[str]:
    """A raw broker and ENGINES echo workers (started at once); yields the client url."""
    with server("broker", link) as broker:
        front, back = broker.address.split()
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(ENGINES):  # one by one: each started one is stopped on failure
                workers.append(  # noqa: PERF401
                    subprocess.Popen(
                        [sys.executable, str(SERVERS), "echo-worker", back],
                        stdout=subprocess.PIPE,
                    )
                )
            for worker in workers:
                _read_ready(worker, 60)
            yield front
        finally:
            for worker in workers:
                stop(worker)


@contextlib.contextmanager
def _dask_client() -> Iterator[Any]:
    """A dask LocalCluster (ENGINES worker processes, 1 thread each): its client."""
    from distributed import Client as DaskClient
    from distributed import LocalCluster

    with Reaper() as reaper:
        cluster = client = None
        try:
            cluster = LocalCluster(
                n_workers=ENGINES,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = DaskClient(cluster)
            client.wait_for_workers(ENGINES, timeout=60)
            yield client
        finally:
            reaper.snapshot()
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _local_pools() -> Iterator[
    tuple[Any, multiprocessing.pool.Pool, concurrent.futures.ProcessPoolExecutor]
]:
    """A multiprocess.Pool, a multiprocessing.Pool (the standard library's, which pickles
    functions by reference) and a ProcessPoolExecutor, ENGINES workers each."""
    import multiprocess

    with Reaper() as reaper:
        pools: list[Any] = []  # multiprocess's and the standard library's
        executor = None
        try:
            pools.append(multiprocess.Pool(ENGINES))
            pools.append(multiprocessing.Pool(ENGINES))
            executor = concurrent.futures.ProcessPoolExecutor(ENGINES)
            yield pools[0], pools[1], executor
        finally:
            reaper.snapshot()
            for pool in pools:
                pool.terminate()
                pool.join()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def _hub_only_client(rc: Client) -> Client | None:
    """A second client that sends everything through the hub (``direct=False``), where
    the Client can reach engines directly by default; None where it cannot."""
    if "direct" not in inspect.signature(Client).parameters:
        return None
    return Client(url_file=rc.url_file, direct=False)


def _path(rc: Client) -> str:
    """The way ``rc``'s requests to one engine take."""
    if getattr(rc, "direct", False):
        return "Client -> engine's own socket (Client(direct=True), the default; hub bypassed)"
    if "direct" in inspect.signature(Client).parameters:
        return "Client(direct=False) -> hub -> engine"
    return "Client -> hub -> engine"


def _lb_path(rc: Client) -> str:
    """The way ``rc``'s load-balanced no-op tasks take."""
    if getattr(rc, "direct", False):
        return (
            "Client -> the least loaded engine's own socket (Client(direct=True) places a"
            " task without retries or dependencies on this host's engines itself; hub"
            " bypassed)"
        )
    return "Client -> hub -> engine"


# -- W1: sequential round trips ---------------------------------------------------------
def _shoal_calls(rc: Client) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``rc[first].apply_sync(noop)`` and ``lb.apply_sync(noop)``."""
    direct = rc[rc.ids[0]]
    lb = rc.load_balanced_view()
    return (lambda: direct.apply_sync(noop)), (lambda: lb.apply_sync(noop))


def _round_trips(
    cfg: Any, rc: Client, rc_hub: Client | None, raw_url: str, broker_url: str
) -> list[Row]:
    """W1 against raw pyzmq: each shoal way vs the raw broker, and the direct view vs a
    raw direct echo (one DEALER -> a ROUTER echo in another process), all interleaved."""
    n: int = cfg.hub_roundtrips
    repeats = min(cfg.repeats, ROUNDTRIP_REPEATS)
    session = uuid.uuid4().hex
    # what a Client sends for apply(noop): to an engine's own socket as it is, to the hub
    # with the engine's routing frame
    size_direct = apply_request_bytes(noop, session, "client")
    size = apply_request_bytes(noop, session, "client", route=b"e0")
    # (row name, the call, the path it takes, whether its target is the raw broker's)
    direct, lb = _shoal_calls(rc)
    cases: list[tuple[str, Callable[[], Any], str, bool]] = [
        ("hub direct apply(noop) round trip", direct, _path(rc), "hub ->" in _path(rc)),
    ]
    if rc_hub is not None:
        name = "hub direct apply(noop) round trip, via hub"
        cases.append((name, _shoal_calls(rc_hub)[0], _path(rc_hub), True))
    cases.append(("hub lb apply(noop) round trip", lb, _lb_path(rc), True))
    for _, call, _, _ in cases:
        assert call() is None
    note(f"W1 apply(noop) round trips vs raw broker, raw direct: {repeats} x {n} each")
    with dealer(broker_url) as brokered, dealer(raw_url) as raw:
        *stats, b_broker, b_direct = interleave_all(
            [
                *(functools.partial(us_per_call, n, call) for _, call, _, _ in cases),
                functools.partial(raw_echo_us, brokered, b"x" * size, n),
                functools.partial(raw_echo_us, raw, b"x" * size_direct, n),
            ],
            repeats,
        )
    broker_text = (
        "tcp 127.0.0.1; raw: a DEALER -> a broker process (ROUTER/ROUTER relay, copy=False)"
        f" -> 2 worker processes in turn (DEALER echo) and back, {size} B (shoal's"
        " apply_request frames and the engine's route) each way"
    )
    rows = []
    for (name, _, path, vs_broker), s in zip(cases, stats, strict=True):
        row = Row(
            name=name,
            unit="us/rt",
            shoal=s,
            baseline_name=f"raw pyzmq broker, {size} B echo",
            baseline=b_broker,
            note=f"{path} and back; {broker_text}",
        )
        if vs_broker:
            ok = s.median <= 1.5 * b_broker.median
            row = dataclasses.replace(row, target="s/b <= 1.5", target_ok=ok)
        rows.append(row)
    rows.insert(  # next to the direct row's against the raw broker
        1,
        Row(
            name="hub direct apply(noop) round trip vs raw direct",
            unit="us/rt",
            shoal=stats[0],
            baseline_name=f"raw pyzmq direct, {size_direct} B echo",
            baseline=b_direct,
            target="s/b <= 2",
            target_ok=stats[0].median <= 2 * b_direct.median,
            note=f"{_path(rc)} and back; tcp 127.0.0.1; raw: a DEALER in this process ->"
            f" a ROUTER echo in another process and back, one at a time, {size_direct} B"
            " (shoal's apply_request frames) each way",
        ),
    )
    return rows


# -- W2: many tasks at once ---------------------------------------------------------------
def _pool_rows(cfg: Any, rc: Client) -> tuple[list[Row], list[Row]]:
    """W1 and W2 rows against multiprocess.Pool, multiprocessing.Pool and
    ProcessPoolExecutor."""
    n_rt: int = cfg.hub_roundtrips
    n: int = cfg.hub_tasks
    rt_repeats = min(cfg.repeats, ROUNDTRIP_REPEATS)
    repeats = min(cfg.repeats, TASK_REPEATS)
    shoal_direct, shoal_lb = _shoal_calls(rc)
    lb = rc.load_balanced_view()
    items = range(n)
    w1: list[Row] = []
    w2: list[Row] = []
    with _local_pools() as (mp_pool, std_pool, executor):

        def ppe_call() -> None:
            executor.submit(noop_ref).result()

        def ppe_tasks(k: int) -> None:
            futures = [executor.submit(noop_ref) for _ in range(k)]
            for f in futures:
                f.result()

        calls: list[Callable[[], Any]] = [
            shoal_lb,
            shoal_direct,
            lambda: mp_pool.apply(noop),
            lambda: std_pool.apply(noop_ref),
            ppe_call,
        ]
        for call in calls:
            assert call() is None
        note(
            "W1 round trips vs multiprocess and multiprocessing Pool.apply,"
            f" ProcessPoolExecutor.submit: {rt_repeats} x {n_rt} each"
        )
        s_lb, s_direct, b_mp, b_std, b_ppe = interleave_all(
            [functools.partial(us_per_call, n_rt, call) for call in calls], rt_repeats
        )
        rt_note = (
            "peers: each system with 2 worker processes on this machine, sequential calls;"
            " shoal's lb view against pools (load-balanced), its direct view against"
            " ipyparallel's rc[0] and ProcessPoolExecutor; multiprocess sends noop by value"
            " (dill), as shoal does; multiprocessing.Pool and ProcessPoolExecutor send it"
            " by reference (stdlib pickle; the forked workers import it)"
        )
        ppe = "ProcessPoolExecutor(2).submit().result()"
        w1 += [
            Row(
                name="hub lb apply(noop) round trip vs multiprocess",
                unit="us/rt",
                shoal=s_lb,
                baseline_name="multiprocess Pool(2).apply",
                baseline=b_mp,
                note=rt_note,
            ),
            Row(
                name="hub lb apply(noop) round trip vs multiprocessing",
                unit="us/rt",
                shoal=s_lb,
                baseline_name="multiprocessing Pool(2).apply",
                baseline=b_std,
                note=rt_note,
            ),
            Row(
                name="hub lb apply(noop) round trip vs ProcessPoolExecutor",
                unit="us/rt",
                shoal=s_lb,
                baseline_name=ppe,
                baseline=b_ppe,
                target="s/b < 1",
                target_ok=s_lb.median < b_ppe.median,
                note=rt_note,
            ),
            Row(
                name="hub direct apply(noop) round trip vs ProcessPoolExecutor",
                unit="us/rt",
                shoal=s_direct,
                baseline_name=ppe,
                baseline=b_ppe,
                target="s/b < 1",
                target_ok=s_direct.median < b_ppe.median,
                note=rt_note,
            ),
        ]

        note(
            f"W2 {n} no-op tasks at once vs multiprocess and multiprocessing"
            f" Pool.apply_async, PPE.submit: {repeats} repeats"
        )
        s, b_mp, b_std, b_ppe = _rates(
            [
                (_tasks(lb), n),
                (_tasks(mp_pool), n),
                (_tasks(std_pool, noop_ref), n),
                (ppe_tasks, n),
            ],
            repeats,
            warm_up=max(n // 10, 100),
        )
        task_note = (
            f"{n} no-op tasks submitted at once, then every result waited for; tasks/s:"
            " higher is better; multiprocessing.Pool and ProcessPoolExecutor send noop by"
            " reference (stdlib pickle), shoal and multiprocess by value"
        )
        for peer, b, target, ok in (
            ("multiprocess Pool.apply_async", b_mp, "s/b > 1", s.median > b_mp.median),
            ("multiprocessing Pool.apply_async", b_std, "s/b >= 1", s.median >= b_std.median),
            ("ProcessPoolExecutor.submit", b_ppe, "s/b > 1", s.median > b_ppe.median),
        ):
            w2.append(
                Row(
                    name=f"hub lb apply_async x{n}",
                    unit="tasks/s",
                    shoal=s,
                    baseline_name=peer,
                    baseline=b,
                    target=target,
                    target_ok=ok,
                    note=task_note,
                )
            )

        note(
            f"W2 map(ident, range({n})) vs multiprocess and multiprocessing Pool.map:"
            f" {cfg.repeats} repeats"
        )
        s, b_mp, b_std = interleave_all(
            [
                lambda: _ms(lambda: lb.map_sync(ident, items)),
                lambda: _ms(lambda: mp_pool.map(ident, items)),
                lambda: _ms(lambda: std_pool.map(ident_ref, items)),
            ],
            cfg.repeats,
        )
        assert lb.map_sync(ident, items) == list(items)
        assert mp_pool.map(ident, items) == list(items)
        assert std_pool.map(ident_ref, items) == list(items)
        map_note = (
            "automatic chunking on all sides (4 chunks per worker); multiprocessing.Pool"
            " sends ident by reference (stdlib pickle), shoal and multiprocess by value"
        )
        for peer, b, factor in (
            ("multiprocess Pool.map", b_mp, 2.0),
            ("multiprocessing Pool.map", b_std, 1.5),
        ):
            w2.append(
                Row(
                    name=f"hub lb map_sync(ident, range({n}))",
                    unit="ms",
                    shoal=s,
                    baseline_name=peer,
                    baseline=b,
                    target=f"s/b <= {factor:g}",
                    target_ok=s.median <= factor * b.median,
                    note=map_note,
                )
            )
    return w1, w2


# -- W3: large arrays and the hub's memory ----------------------------------------------
def _transfers(
    cfg: Any, rc: Client, rc_hub: Client | None, raw_url: str, broker_url: str
) -> list[Row]:
    mib: int = cfg.hub_mib
    nbytes = mib * MiB
    # Ones, not arange: the raw receivers read the bytes as float64 and check the last
    # element equals itself, which a NaN bit pattern would fail.
    source = np.ones(nbytes, dtype=np.uint8)
    hub_pid = rc.hub_pid
    assert hub_pid is not None, "the hub's connection file names no pid"

    def push_once(view: Any) -> float:
        t0 = time.perf_counter()
        view.push({"a": source}, block=True)
        return nbytes / (time.perf_counter() - t0) / 1e9

    def pull_once(view: Any) -> float:
        t0 = time.perf_counter()
        out = view.pull("a", block=True)
        dt = time.perf_counter() - t0
        assert out.nbytes == nbytes, (out.shape, out.dtype)
        assert out[-1] == 1
        del out  # free the received copy before the next run
        return nbytes / dt / 1e9

    # (name suffix, client): the default client, and one that goes through the hub
    clients = [("", rc)] if rc_hub is None else [("", rc), (", via hub", rc_hub)]
    fns: list[Callable[[], float]] = []
    for _, client in clients:
        view = client[client.ids[0]]
        # push first: pull finds "a" from the warm-up push
        fns += [functools.partial(push_once, view), functools.partial(pull_once, view)]
    repeats = min(cfg.repeats, TRANSFER_REPEATS)
    rss0, hwm0 = _vm_kib(hub_pid, "VmRSS"), _vm_kib(hub_pid, "VmHWM")
    note(f"W3 push and pull of {mib} MiB vs raw, raw via broker: {repeats} repeats each")
    with dealer(raw_url) as raw, dealer(broker_url) as brokered:
        *stats, b, b_broker = interleave_all(
            [
                *fns,
                functools.partial(raw_send_gbps, raw, source),
                functools.partial(raw_send_gbps, brokered, source),
            ],
            repeats,
        )
    rss1, hwm1 = _vm_kib(hub_pid, "VmRSS"), _vm_kib(hub_pid, "VmHWM")
    rc[rc.ids[0]].execute("del a", block=True)
    rows = []
    for i, (suffix, client) in enumerate(clients):
        path = _path(client)
        for verb, s in (("push", stats[2 * i]), ("pull", stats[2 * i + 1])):
            rows.append(
                Row(
                    name=f"hub {verb} {mib} MiB uint8{suffix}",
                    unit="GB/s",
                    shoal=s,
                    baseline_name="raw send(copy=False)",
                    baseline=b,
                    target="s/b >= 0.8",
                    target_ok=s.median >= 0.8 * b.median,
                    note=f"{path} (push: until the engine replied; pull: until the array"
                    " arrived); raw: one process to another, one-way send until the"
                    " receiver checked the bytes and acked",
                )
            )
            if "hub ->" in path:
                rows.append(
                    Row(
                        name=f"hub {verb} {mib} MiB uint8{suffix} vs broker",
                        unit="GB/s",
                        shoal=s,
                        baseline_name="raw send via broker",
                        baseline=b_broker,
                        note="raw via broker: the same one-way send through the raw broker"
                        " process (ROUTER/ROUTER, copy=False) to a worker that checks and acks",
                    )
                )
    growth = (rss1 - rss0) / 1024
    text = (
        f"the hub's VmRSS after the push/pull runs minus before ({rss0 / 1024:.0f} ->"
        f" {rss1 / 1024:.0f} MiB); peak: VmHWM after minus before ({hwm0 / 1024:.0f} ->"
        f" {hwm1 / 1024:.0f} MiB), against one message's size"
    )
    rows.append(
        Row(
            name="hub RSS growth over W3",
            unit="MiB",
            shoal=Stats.of([growth]),
            baseline_name="budget",
            baseline=Stats.of([RSS_BUDGET_MIB]),
            target=f"< {RSS_BUDGET_MIB:g} MiB",
            target_ok=growth < RSS_BUDGET_MIB,
            note=text,
        )
    )
    rows.append(
        Row(
            name="hub peak RSS growth over W3",
            unit="MiB",
            shoal=Stats.of([(hwm1 - hwm0) / 1024]),
            baseline_name="one message",
            baseline=Stats.of([float(mib)]),
            note=text,
        )
    )
    return rows


# -- W6: an engine killed mid-request ---------------------------------------------------
def _kills(cfg: Any, rc: Client, ipp_kill: tuple[str, float] | None) -> list[Row]:
    """W6 on shoal, and the row against ipyparallel's ``(version, ms)`` if measured."""
    note(f"W6 SIGKILL an engine mid-request: {cfg.hub_kills} kills")
    samples: list[float] = []
    served = 0
    problems: list[str] = []
    for i in range(cfg.hub_kills):
        ids = rc.wait_for_engines(ENGINES, 30)
        victim, other = ids[0], ids[-1]
        pid = int(rc.queue_status()[victim]["pid"])
        result = rc[victim].execute("import time; time.sleep(30)")
        time.sleep(KILL_AFTER)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        try:
            result.get(10)
            problems.append("the request finished normally")
        except EngineDiedError:
            samples.append((time.perf_counter() - t0) * 1e3)
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        try:
            assert rc[other].apply_async(noop).get(10) is None
            served += 1
        except Exception as exc:
            problems.append(f"engine {other} after the kill: {type(exc).__name__}: {exc}")
        if i + 1 < cfg.hub_kills:
            rc.add_engines(1)
    if problems:
        note(f"W6 problems: {problems}")
    if not samples:
        note("W6: no kill produced an EngineDiedError; no rows")
        return []
    text = (
        f"{len(samples)} kills (a fresh engine each, rc.add_engines(1)): SIGKILL {KILL_AFTER} s"
        " into rc[i].execute('time.sleep(30)') until .get() raised EngineDiedError; after"
        f" each kill the other engine answered an apply: {served} of {cfg.hub_kills}"
        + (f"; problems: {'; '.join(problems)}" if problems else "")
    )
    s = Stats.of(samples)
    rows = [
        Row(
            name="hub engine SIGKILL to EngineDiedError",
            unit="ms",
            shoal=s,
            baseline_name="limit",
            baseline=Stats.of([1000.0]),
            target="<= 1 s",
            target_ok=s.median <= 1000.0,
            note=text,
        )
    ]
    if ipp_kill is not None:
        version, ms = ipp_kill
        rows.append(
            Row(
                name="hub engine SIGKILL to error vs ipyparallel",
                unit="ms",
                shoal=s,
                baseline_name="ipyparallel (1 kill)",
                baseline=Stats.of([ms]),
                note=f"ipyparallel {version}, 2 engines: SIGKILL {KILL_AFTER} s into"
                " rc[0].execute('time.sleep(30)') until .get() raised; one kill",
            )
        )
    return rows


def _ipp_kill_ms(rc: Any) -> float | None:
    """ipyparallel: SIGKILL engine 0 mid-request; ms until its error, None if > limit."""
    victim, other = rc.ids[0], rc.ids[-1]
    pid = rc[victim].apply_sync(os.getpid)
    result = rc[victim].execute("import time; time.sleep(30)", block=False)
    time.sleep(KILL_AFTER)
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    try:
        result.get(IPP_DETECT_LIMIT)
    except TimeoutError:
        return None
    except Exception as exc:
        if "died" not in str(exc).lower() and "EngineError" not in repr(exc):
            raise
    ms = (time.perf_counter() - t0) * 1e3
    assert rc[other].apply_sync(os.getpid) != pid
    return ms


# -- W7: start and stop ------------------------------------------------------------------
def _shoal_start_stop(stops: list[float]) -> float:
    """ms from nothing to a client with 2 engines registered; appends the stop's ms."""
    with Reaper() as reaper, tempfile.TemporaryDirectory(prefix="shoal-bench-hub-") as folder:
        t0 = time.perf_counter()
        rc, stop_cluster = _start_shoal(folder)
        started = (time.perf_counter() - t0) * 1e3
        assert len(rc.ids) >= ENGINES
        reaper.snapshot()
        stops.append(_ms(stop_cluster))
        return started


def _ipp_start_stop(ipp: Any, stops: list[float]) -> float:
    with Reaper() as reaper:
        cluster = ipp.Cluster(n=ENGINES, log_level=logging.ERROR)
        rc = None
        stopped = False
        try:
            t0 = time.perf_counter()
            rc = cluster.start_and_connect_sync()  # waits for the n engines
            started = (time.perf_counter() - t0) * 1e3
            assert len(rc.ids) >= ENGINES
            reaper.snapshot()
            t0 = time.perf_counter()
            rc.close()
            cluster.stop_cluster_sync()
            stops.append((time.perf_counter() - t0) * 1e3)
            stopped = True
            return started
        finally:
            reaper.snapshot()
            if not stopped:
                if rc is not None:
                    rc.close()
                cluster.stop_cluster_sync()


def _raw_start_stop(link: str, stops: list[float]) -> float:
    """The raw equivalent: a broker and 2 workers started, one echo through each."""
    stack = contextlib.ExitStack()
    with stack:
        t0 = time.perf_counter()
        url = stack.enter_context(_raw_broker(link))
        with dealer(url) as sock:
            for _ in range(ENGINES):
                sock.send(b"x")
                sock.recv()
        started = (time.perf_counter() - t0) * 1e3
        stops.append(_ms(stack.close))
        return started


def _start_stop_vs(
    peer: str, start_stop: Callable[[list[float]], float], repeats: int
) -> list[tuple[str, Stats, Stats]]:
    """W7 against ``start_stop`` (ms to start; appends its stop's ms): (what, shoal, peer)."""
    shoal_stops: list[float] = []
    peer_stops: list[float] = []
    note(f"W7 cluster start and stop vs {peer}: {repeats} repeats each")
    s, b = interleave(
        lambda: _shoal_start_stop(shoal_stops),
        lambda: start_stop(peer_stops),
        repeats,
        warmup=0,
    )
    return [
        ("start to 2 engines ready", s, b),
        ("stop", Stats.of(shoal_stops), Stats.of(peer_stops)),
    ]


def _startup(cfg: Any) -> list[Row]:
    repeats: int = cfg.hub_starts
    how = "shoal.hub.Cluster" if _hub_cluster_class() is not None else "a hub process"
    with open_link("tcp") as link:
        vs_raw = _start_stop_vs(
            "raw broker + workers", functools.partial(_raw_start_stop, link), repeats
        )
    text = (
        f"shoal: {how}(n=2) start_and_connect (start, wait for 2 engines, connect a client);"
        " stop: Cluster.stop() (clients closed, hub and engines gone); raw: a broker process"
        " and 2 echo-worker processes started at once, ready and one echo through each;"
        " stop: terminate and wait"
    )
    rows = [
        Row(
            name=f"hub cluster {what}",
            unit="ms",
            shoal=a,
            baseline_name="raw broker + 2 workers",
            baseline=c,
            note=text,
        )
        for what, a, c in vs_raw
    ]
    if cfg.quick:
        note("W7 ipyparallel peer skipped with --quick")
        return rows
    try:
        import ipyparallel as ipp

        vs_ipp = _start_stop_vs(
            "ipyparallel Cluster(n=2)", functools.partial(_ipp_start_stop, ipp), repeats
        )
    except Exception as exc:  # a failing peer must not cost the shoal rows
        note(f"W7 ipyparallel peer failed, no rows: {type(exc).__name__}: {exc}")
        return rows
    text = (
        f"ipyparallel {ipp.__version__} Cluster(n=2): start_and_connect_sync() (waits for"
        " the engines); stop: rc.close() + stop_cluster_sync() (its nannies linger"
        " afterwards, killed untimed)"
    )
    rows += [
        Row(
            name=f"hub cluster {what} vs ipyparallel",
            unit="ms",
            shoal=a,
            baseline_name="ipyparallel Cluster(n=2)",
            baseline=c,
            target="s/b <= 0.2",
            target_ok=a.median <= 0.2 * c.median,
            note=text,
        )
        for what, a, c in vs_ipp
    ]
    return rows


# -- peers with clusters of their own -----------------------------------------------------
def _ipyparallel_rows(
    cfg: Any, rc: Client
) -> tuple[list[Row], list[Row], tuple[str, float] | None]:
    """W1 and W2 rows against an ipyparallel cluster, and its W6 ``(version, ms)``."""
    import ipyparallel as ipp

    n_rt: int = cfg.hub_roundtrips
    n_peer = max(n_rt // PEER_SHARE, 1)
    n: int = cfg.hub_tasks
    n_ipp = min(n, IPP_TASKS)
    n_half = n // 2  # shoal's rate, on fewer tasks to keep the run short
    direct, _ = _shoal_calls(rc)
    shoal_tasks = _tasks(rc.load_balanced_view())
    with ipp_cluster(ipp, ENGINES) as irc:
        iview = irc[0]
        ipp_tasks = _tasks(irc.load_balanced_view())
        note(f"W1 direct round trip vs ipyparallel: {PEER_REPEATS} x {n_rt} / {n_peer} each")
        s_rt, b_rt = calls_vs_peer(
            direct, n_rt, lambda: iview.apply_sync(noop), n_peer, PEER_REPEATS
        )
        note(f"W2 tasks at once vs ipyparallel: {PEER_REPEATS} x {n_half} / {n_ipp} tasks")
        s_tasks, b_tasks = _rates(
            [(shoal_tasks, n_half), (ipp_tasks, n_ipp)], PEER_REPEATS, max(n_ipp // 10, 10)
        )
        note("W6 ipyparallel: SIGKILL an engine mid-request, once")
        kill_ms = _ipp_kill_ms(irc)
    w1 = [
        Row(
            name="hub direct apply(noop) round trip vs ipyparallel",
            unit="us/rt",
            shoal=s_rt,
            baseline_name="ipyparallel rc[0].apply_sync",
            baseline=b_rt,
            note=f"ipyparallel {ipp.__version__}, 2 engines; {n_peer} calls per sample",
        )
    ]
    w2 = [
        Row(
            name=f"hub lb apply_async x{n_half} vs ipyparallel",
            unit="tasks/s",
            shoal=s_tasks,
            baseline_name=f"ipyparallel lb x{n_ipp}",
            baseline=b_tasks,
            note=f"ipyparallel {ipp.__version__}: lb view, apply_async x{n_ipp} then every"
            f" .get() (its rate is measured on {n_ipp} tasks, shoal's on {n_half}: rates"
            " compare, counts differ); tasks/s: higher is better",
        )
    ]
    if kill_ms is None:
        note(f"W6 ipyparallel did not report the death within {IPP_DETECT_LIMIT:g} s: no row")
        return w1, w2, None
    return w1, w2, (ipp.__version__, kill_ms)


def _dask_rows(cfg: Any, rc: Client) -> tuple[list[Row], list[Row]]:
    """W1 and W2 rows against a dask LocalCluster."""
    import distributed

    n_rt: int = cfg.hub_roundtrips
    n_peer = max(n_rt // PEER_SHARE, 1)
    n: int = cfg.hub_tasks
    n_dask = min(n // 10, DASK_TASKS)
    n_half = n // 2  # shoal's rate, on fewer tasks to keep the run short
    _, shoal_lb = _shoal_calls(rc)
    shoal_tasks = _tasks(rc.load_balanced_view())
    with _dask_client() as client:

        def dask_call() -> None:
            client.submit(noop, pure=False).result()

        def dask_tasks(k: int) -> None:
            client.gather([client.submit(noop, pure=False) for _ in range(k)])

        note(f"W1 lb round trip vs dask: {PEER_REPEATS} x {n_rt} / {n_peer} each")
        s_rt, b_rt = calls_vs_peer(shoal_lb, n_rt, dask_call, n_peer, PEER_REPEATS)
        note(f"W2 tasks at once vs dask: {PEER_REPEATS} x {n_half} / {n_dask} tasks")
        s_tasks, b_tasks = _rates(
            [(shoal_tasks, n_half), (dask_tasks, n_dask)], PEER_REPEATS, max(n_dask // 10, 10)
        )
    version = distributed.__version__
    w1 = [
        Row(
            name="hub lb apply(noop) round trip vs dask",
            unit="us/rt",
            shoal=s_rt,
            baseline_name="dask submit(pure=False).result()",
            baseline=b_rt,
            note=f"dask.distributed {version} LocalCluster(n_workers=2, threads_per_worker=1,"
            f" processes=True); {n_peer} calls per sample",
        )
    ]
    w2 = [
        Row(
            name=f"hub lb apply_async x{n_half} vs dask",
            unit="tasks/s",
            shoal=s_tasks,
            baseline_name=f"dask submit x{n_dask} + gather",
            baseline=b_tasks,
            note=f"dask.distributed {version}: client.submit(noop, pure=False) x{n_dask},"
            f" then client.gather (shoal's rate on {n_half} tasks); tasks/s: higher is better",
        )
    ]
    return w1, w2


def bench_hub(cfg: Any) -> list[Row]:
    """A shoal cluster (hub + 2 engines) vs raw pyzmq, multiprocess, dask, ipyparallel."""
    w1: list[Row] = []
    w2: list[Row] = []
    w3: list[Row] = []
    w6: list[Row] = []
    with (
        open_link("tcp") as link,
        server("raw", link) as raw_srv,
        _raw_broker(link) as broker_url,
        _shoal_cluster() as rc,
        contextlib.ExitStack() as stack,
    ):
        rc_hub = _hub_only_client(rc)
        if rc_hub is not None:
            stack.callback(rc_hub.close)
            rc_hub.wait_for_engines(ENGINES, 30)
        w1 += _round_trips(cfg, rc, rc_hub, raw_srv.address, broker_url)
        p1, p2 = _pool_rows(cfg, rc)
        w1 += p1
        w2 += p2
        w3 += _transfers(cfg, rc, rc_hub, raw_srv.address, broker_url)
        ipp_kill = None
        if cfg.quick:
            note("dask and ipyparallel peers skipped with --quick")
        else:
            try:
                d1, d2 = _dask_rows(cfg, rc)
                w1 += d1
                w2 += d2
            except Exception as exc:  # a failing peer must not cost the shoal rows
                note(f"dask peer failed, no rows: {type(exc).__name__}: {exc}")
            try:
                i1, i2, ipp_kill = _ipyparallel_rows(cfg, rc)
                w1 += i1
                w2 += i2
            except Exception as exc:
                note(f"ipyparallel peer failed, no rows: {type(exc).__name__}: {exc}")
        w6 += _kills(cfg, rc, ipp_kill)  # last: it kills engines
    return [*w1, *w2, *w3, *w6, *_startup(cfg)]
