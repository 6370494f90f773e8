"""joblib benchmark: ``Parallel(n_jobs=2)`` over 10,000 tiny calls on shoal's joblib backend
against joblib's own loky backend, Dask's joblib backend and Ray's, in one run.

* Each sample is one ``Parallel(n_jobs=2)(delayed(tiny)(i) for i in range(10_000))`` with
  joblib's defaults (``batch_size="auto"``, ``pre_dispatch="2*n_jobs"``), its list
  checked: ms per call of 10,000 calls, from the generator to the list.
* shoal: ``parallel_config(backend="shoal", client=rc)`` on a cluster of 2 engines.
* loky: joblib's default backend, its 2 worker processes reused between samples (the
  warm-up run starts them).
* dask: ``parallel_config(backend="dask")`` on a distributed ``LocalCluster`` of 2
  worker processes with 1 thread each.
* ray: ``ray.util.joblib.register_ray()`` then ``parallel_config(backend="ray")`` on
  ``ray.init(num_cpus=2)``; Ray's backend makes a pool of 2 actors per call, which is
  part of what a call costs there.

``tiny`` travels by value to every side (its ``__module__`` is ``__main__``, as a
script's function), so each pays for sending a function that is not importable.
Every cluster started here is stopped afterwards, with every process it started.

Run alone (``hatch run bench:python integration/bench/bench_joblib.py [--quick]``) or
call :func:`bench_joblib` from a harness.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from _common import Reaper, Row, Stats, format_table, interleave_all, note

from shoal.hub import Client, register_joblib_backend
from shoal.hub.testing import running_cluster

ENGINES = 2
CALLS = 10_000


def tiny(x: int) -> int:
    """The call: a few hundred nanoseconds of work."""
    return x + 1


# Through run.py this module is not importable where the calls run: the function travels
# by value, as a script's would.
tiny.__module__ = "__main__"


def _sample(n: int, **config: Any) -> float:
    """us per call of one ``Parallel(n_jobs=2)`` call over ``n`` tiny calls."""
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(**config):
        t0 = time.perf_counter()
        out = Parallel(n_jobs=ENGINES)(delayed(tiny)(i) for i in range(n))
        dt = time.perf_counter() - t0
    assert out == list(range(1, n + 1)), (len(out), out[-1:])
    return dt / n * 1e6


@contextlib.contextmanager
def _dask() -> Iterator[Any]:
    """A dask LocalCluster (ENGINES worker processes, 1 thread each), its client the
    default one (which joblib's dask backend uses)."""
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
def _ray() -> Iterator[Any]:
    """``ray.init(num_cpus=ENGINES)`` with joblib's "ray" backend registered."""
    import ray
    from ray.util.joblib import register_ray

    with Reaper() as reaper:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(
            num_cpus=ENGINES,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        try:
            register_ray()
            yield ray
        finally:
            reaper.snapshot()
            ray.shutdown()


def _loky_down() -> None:
    """Stop loky's reusable workers (joblib keeps them for the next call)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def bench_joblib(cfg: Any) -> list[Row]:
    """shoal's joblib backend against loky, Dask's and Ray's (``cfg``: run.py's Config;
    its ``repeats`` is read)."""
    import dask
    import joblib
    import ray

    repeats = cfg.repeats
    n = CALLS
    rows: list[Row] = []
    register_joblib_backend()
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-joblib-") as folder,
        running_cluster(folder, ENGINES) as (_, client),
        Reaper(),
        _dask(),
        _ray(),
    ):
        try:
            stats = _measure(client, n, repeats)
        finally:
            _loky_down()
    shoal = stats["shoal"]
    peers = {
        "loky": f"joblib {joblib.__version__} loky (its default), {ENGINES} workers",
        "dask": f"dask {dask.__version__} joblib backend, LocalCluster({ENGINES} x 1 thread)",
        "ray": f"ray {ray.__version__} joblib backend (register_ray), num_cpus={ENGINES}",
    }
    for name, label in peers.items():
        rows.append(
            Row(
                name=f"joblib Parallel(n_jobs={ENGINES}), {n:,} tiny calls vs {name}",
                unit="us/call",
                shoal=shoal,
                baseline_name=label,
                baseline=stats[name],
                note=f"one Parallel call of {n:,} delayed calls a sample, batch_size='auto';"
                f" shoal: parallel_config(backend='shoal') on {ENGINES} engines",
            )
        )
    return rows


def _measure(client: Client, n: int, repeats: int) -> dict[str, Stats]:
    sides: dict[str, Callable[[], float]] = {
        "shoal": lambda: _sample(n, backend="shoal", client=client),
        "loky": lambda: _sample(n, backend="loky"),
        "dask": lambda: _sample(n, backend="dask"),
        "ray": lambda: _sample(n, backend="ray"),
    }
    note(f"joblib Parallel(n_jobs={ENGINES}): {repeats} x {n:,} calls on each of {list(sides)}")
    stats = interleave_all(list(sides.values()), repeats)
    return dict(zip(sides, stats, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--repeats", type=int, default=None, help="samples per side")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rows = bench_joblib(argparse.Namespace(repeats=repeats, quick=args.quick))
    print(format_table(rows, "shoal's joblib backend vs loky, dask and ray"))


if __name__ == "__main__":
    main()
