"""W5: method calls on a remote object, against shoal's own apply and the peers' actors.

A counter object lives on an engine (a Ray actor, a Dask actor, a name in an ipyparallel
engine's namespace); the client calls its ``inc`` method 1,000 times in a row, waiting
for each result. Targets (issue 5): at most 1.5x shoal's own no-op ``apply`` round trip
measured in the same run, and at least 3x faster than Ray's actor call.

Every system runs with 2 workers on this 2-core machine; each is started and stopped
here, and every process it started is ended by PID (``Reaper``).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from _common import Reaper, Row, calls_vs_peer, interleave, ipp_cluster, note, us_per_call
from bench_hub import ENGINES, PEER_REPEATS, PEER_SHARE, ROUNDTRIP_REPEATS, _shoal_cluster, noop

from shoal.hub import Client, scatter


def _main_class() -> type:
    """A ``Counter`` class as if a user's ``__main__`` script defined it: shoal (dill),
    Ray and Dask (cloudpickle) all send such a class by value."""
    namespace: dict[str, Any] = {"__builtins__": builtins}
    exec(  # noqa: S102 - a fixed class body, compiled under __main__'s name
        compile(
            "class Counter:\n"
            "    def __init__(self):\n"
            "        self.n = 0\n"
            "    def inc(self):\n"
            "        self.n += 1\n"
            "        return self.n\n",
            "<bench>",
            "exec",
        ),
        {"__name__": "__main__", **namespace},
        namespace,
    )
    counter: type = namespace["Counter"]
    counter.__module__ = "__main__"
    return counter


Counter = _main_class()


def _shoal_rows(cfg: Any, rc: Client) -> tuple[list[Row], Callable[[], Any]]:
    n: int = cfg.hub_roundtrips
    counter = scatter(Counter(), destination=rc.ids[0], client=rc)
    direct = rc[rc.ids[0]]
    inc = counter.inc
    note(f"W5 method call vs apply: {min(cfg.repeats, ROUNDTRIP_REPEATS)} x {n} calls each")
    s, b = interleave(
        lambda: us_per_call(n, inc),
        lambda: us_per_call(n, lambda: direct.apply_sync(noop)),
        min(cfg.repeats, ROUNDTRIP_REPEATS),
    )
    row = Row(
        name="remote object method call (counter.inc())",
        unit="us/call",
        shoal=s,
        baseline_name="shoal rc[0].apply_sync(noop)",
        baseline=b,
        target="<= 1.5x",
        target_ok=s.median <= 1.5 * b.median,
        note=f"{n} sequential calls per sample; the proxy's engine is reached directly",
    )
    return [row], inc


@contextlib.contextmanager
def _ray_counter() -> Iterator[Any]:
    import ray

    with Reaper() as reaper:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(
            num_cpus=ENGINES,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        try:
            actor = ray.remote(Counter).remote()
            ray.get(actor.inc.remote())
            yield lambda: ray.get(actor.inc.remote())
        finally:
            reaper.snapshot()
            ray.shutdown()


@contextlib.contextmanager
def _dask_counter() -> Iterator[Any]:
    from bench_hub import _dask_client

    with _dask_client() as client:
        actor = client.submit(Counter, actor=True).result()
        actor.inc().result()
        yield lambda: actor.inc().result()


@contextlib.contextmanager
def _ipp_counter() -> Iterator[Any]:
    import ipyparallel as ipp

    with ipp_cluster(ipp, ENGINES) as irc:
        view = irc[0]
        view.push({"counter": Counter()}, block=True)
        yield lambda: view.pull("counter.inc()", block=True)


def _peer_row(
    cfg: Any, inc: Callable[[], Any], name: str, make: Callable[[], Any], version: str
) -> list[Row]:
    n: int = cfg.hub_roundtrips
    n_peer = max(n // PEER_SHARE, 1)
    try:
        with make() as peer_inc:
            note(f"W5 method call vs {name}: {PEER_REPEATS} x {n} / {n_peer} calls each")
            s, b = calls_vs_peer(inc, n, peer_inc, n_peer, PEER_REPEATS)
    except Exception as exc:  # a peer that will not start here is reported, not fatal
        note(f"W5 {name} could not run: {type(exc).__name__}: {exc}")
        return []
    ray = name.startswith("Ray")
    return [
        Row(
            name=f"remote object method call vs {name}",
            unit="us/call",
            shoal=s,
            baseline_name=name,
            baseline=b,
            target=">= 3x faster" if ray else "(none: report)",
            target_ok=b.median >= 3 * s.median if ray else None,
            inverse=True,
            note=f"{version}; {n_peer} calls per sample; ratio: how many times faster",
        )
    ]


def bench_remote(cfg: Any) -> list[Row]:
    """W5: remote method calls vs apply, Ray actors, Dask actors and ipyparallel."""
    import importlib.metadata as md

    with _shoal_cluster() as rc:
        rows, inc = _shoal_rows(cfg, rc)
        rows += _peer_row(cfg, inc, "Ray actor", _ray_counter, f"ray {md.version('ray')}")
        if not cfg.quick:
            rows += _peer_row(
                cfg,
                inc,
                "Dask actor",
                _dask_counter,
                f"distributed {md.version('distributed')}",
            )
            rows += _peer_row(
                cfg,
                inc,
                "ipyparallel pull('counter.inc()')",
                _ipp_counter,
                f"ipyparallel {md.version('ipyparallel')}",
            )
    return rows
