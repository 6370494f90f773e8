"""Managers benchmark: shoal's ``Manager()`` against ``multiprocess.Manager()``.

* ``Queue.put(x)`` then ``Queue.get()`` from the client: us per pair (two round trips to
  the manager's server process). shoal listens on loopback TCP (what engines connect
  to); ``multiprocess.Manager()`` on a Unix socket by default, so a second row compares
  both on TCP (``multiprocess.managers.SyncManager(address=("127.0.0.1", 0))``).
* a ``dict`` proxy's ``d[k] = x`` then ``d[k]``: us per pair.
* start (``Manager()`` returning, server ready) and ``shutdown()``: ms.

Every manager started here is shut down in a ``finally``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import Row, Stats, interleave, note

from shoal.hub._compat.managers import Manager

LIFECYCLE_REPEATS = 5  # a shoal start takes most of a second: a few samples


def _queue_pairs(q: Any, n: int) -> float:
    put, get = q.put, q.get
    t0 = time.perf_counter()
    for i in range(n):
        put(i)
        got = get()
    dt = time.perf_counter() - t0
    assert got == n - 1, got
    return dt / n * 1e6


def _dict_pairs(d: Any, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        d["k"] = i
        got = d["k"]
    dt = time.perf_counter() - t0
    assert got == n - 1, got
    return dt / n * 1e6


@contextlib.contextmanager
def _started(make: Callable[[], Any]) -> Iterator[Any]:
    manager = make()
    try:
        yield manager
    finally:
        manager.shutdown()


def _lifecycle(make: Callable[[], Any], stops: list[float]) -> float:
    """ms until ``make()`` returned a started manager; appends its shutdown's ms."""
    t0 = time.perf_counter()
    manager = make()
    started = (time.perf_counter() - t0) * 1e3
    try:
        manager.Queue().put(1)  # it answers
    finally:
        t0 = time.perf_counter()
        manager.shutdown()
        stops.append((time.perf_counter() - t0) * 1e3)
    return started


def bench_managers(cfg: Any) -> list[Row]:
    """Manager proxies' round trips, and a manager's start and stop, shoal vs multiprocess."""
    import multiprocess
    import multiprocess.managers

    version = multiprocess.__version__
    n = 300 if cfg.quick else 2000
    rows: list[Row] = []

    def mp_tcp() -> Any:
        manager = multiprocess.managers.SyncManager(address=("127.0.0.1", 0))
        manager.start()
        return manager

    with (
        _started(Manager) as shoal,
        _started(multiprocess.Manager) as mp,
        _started(mp_tcp) as mp_inet,
    ):
        peers = [
            ("multiprocess.Manager()", mp, "its default: a Unix socket"),
            ("multiprocess, tcp 127.0.0.1", mp_inet, "SyncManager(address=('127.0.0.1', 0))"),
        ]
        shoal_queue = shoal.Queue()
        for name, peer, how in peers:
            note(f"Queue.put+get vs {name}: {cfg.repeats} x {n} pairs each")
            peer_queue = peer.Queue()
            s, b = interleave(
                lambda: _queue_pairs(shoal_queue, n),
                lambda q=peer_queue: _queue_pairs(q, n),
                cfg.repeats,
            )
            rows.append(
                Row(
                    name=f"manager Queue.put+get vs {name}",
                    unit="us/pair",
                    shoal=s,
                    baseline_name=name,
                    baseline=b,
                    note=f"q.put(i); q.get() from the client, {n} pairs a sample; shoal:"
                    f" Manager() on tcp 127.0.0.1 (shoal's serializer); multiprocess {version}:"
                    f" {how}",
                )
            )
        note(f"dict d[k]=x; d[k] vs multiprocess.Manager(): {cfg.repeats} x {n} pairs each")
        shoal_dict, mp_dict = shoal.dict(), mp.dict()
        s, b = interleave(
            lambda: _dict_pairs(shoal_dict, n), lambda: _dict_pairs(mp_dict, n), cfg.repeats
        )
        rows.append(
            Row(
                name="manager dict set+get vs multiprocess.Manager()",
                unit="us/pair",
                shoal=s,
                baseline_name="multiprocess.Manager()",
                baseline=b,
                note=f"d['k'] = i; d['k'] from the client, {n} pairs a sample; multiprocess"
                f" {version} on its default Unix socket",
            )
        )

    repeats = 2 if cfg.quick else LIFECYCLE_REPEATS
    note(f"Manager() start and shutdown vs multiprocess.Manager(): {repeats} repeats each")
    shoal_stops: list[float] = []
    mp_stops: list[float] = []
    s, b = interleave(
        lambda: _lifecycle(Manager, shoal_stops),
        lambda: _lifecycle(multiprocess.Manager, mp_stops),
        repeats,
        warmup=0,
    )
    text = (
        "ms until Manager() returns (server process ready), then shutdown() until it"
        " ended; shoal starts a fresh interpreter (never forks a client that has zmq"
        f" threads), multiprocess {version} forks"
    )
    rows += [
        Row(
            name=f"manager {what} vs multiprocess.Manager()",
            unit="ms",
            shoal=a,
            baseline_name="multiprocess.Manager()",
            baseline=c,
            note=text,
        )
        for what, a, c in (
            ("start", s, b),
            ("shutdown", Stats.of(shoal_stops), Stats.of(mp_stops)),
        )
    ]
    return rows
