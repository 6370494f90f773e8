"""Cluster context benchmark: ``client.context()`` against ``multiprocess.get_context("fork")``.

* ``Queue`` ping-pong: the client puts ``i`` on one queue, a Process echoes it back on
  another, the client gets it: us per round trip (four manager round trips for shoal,
  whose queues live in a manager server; pipes and feeder threads for multiprocess).
* ``Process(target=noop).start()`` then ``join()``: ms per process (a task on an idle
  engine for shoal; a fork for multiprocess).

Run alone (``hatch run bench:python integration/bench/bench_context.py [--quick]``) or
call :func:`bench_context` from a harness. A cluster of 2 engines is started for the run
and stopped afterwards, with every process it started.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from _common import Row, format_table, interleave, note

from shoal.hub.testing import running_cluster

ENGINES = 2


def noop() -> None:
    """What the started processes run."""


def echo_queue(inbox: Any, outbox: Any) -> None:
    """Put back what comes, until None."""
    while (item := inbox.get()) is not None:
        outbox.put(item)


# Run through run.py this module is not importable on the engines: the functions travel
# by value, as a script's would.
noop.__module__ = echo_queue.__module__ = "__main__"


def _ping_pong(inbox: Any, outbox: Any, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        inbox.put(i)
        got = outbox.get()
    dt = time.perf_counter() - t0
    assert got == n - 1, got
    return dt / n * 1e6


def _start_join(ctx: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        assert p.exitcode == 0, p.exitcode
    return (time.perf_counter() - t0) / n * 1e3


class _Echo:
    """A Process echoing between two queues of ``ctx``, stopped on exit."""

    def __init__(self, ctx: Any) -> None:
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=echo_queue, args=(self.inbox, self.outbox))

    def __enter__(self) -> _Echo:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inbox.put(None)
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(30)


def bench_context(cfg: Any) -> list[Row]:
    """The context's queue round trip and process start+join, shoal vs multiprocess
    (``cfg``: run.py's Config; its ``repeats`` and ``quick`` are read)."""
    import multiprocess

    repeats, quick = cfg.repeats, cfg.quick
    version = multiprocess.__version__
    fork = multiprocess.get_context("fork")
    pairs = 200 if quick else 1000
    starts = 10 if quick else 40
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-context-") as folder,
        running_cluster(folder, ENGINES) as (_, client),
    ):
        ctx = client.context()
        try:
            note(f"Queue ping-pong: {repeats} x {pairs} round trips each")
            with _Echo(ctx) as shoal_echo, _Echo(fork) as mp_echo:
                s, b = interleave(
                    lambda: _ping_pong(shoal_echo.inbox, shoal_echo.outbox, pairs),
                    lambda: _ping_pong(mp_echo.inbox, mp_echo.outbox, pairs),
                    repeats,
                )
            rows.append(
                Row(
                    name="context Queue ping-pong vs multiprocess fork",
                    unit="us/round trip",
                    shoal=s,
                    baseline_name=f"multiprocess {version} fork",
                    baseline=b,
                    note=f"client put -> Process get+put -> client get, {pairs} a sample;"
                    " shoal's queues live in the context's manager server",
                )
            )
            note(f"Process start+join of a no-op: {repeats} x {starts} processes each")
            s, b = interleave(
                lambda: _start_join(ctx, starts), lambda: _start_join(fork, starts), repeats
            )
            rows.append(
                Row(
                    name="context Process start+join vs multiprocess fork",
                    unit="ms/process",
                    shoal=s,
                    baseline_name=f"multiprocess {version} fork",
                    baseline=b,
                    note=f"{starts} no-op processes in a row a sample; shoal: a task on"
                    f" an idle engine of {ENGINES}; multiprocess: a fork",
                )
            )
        finally:
            ctx.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--repeats", type=int, default=None, help="samples per side")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rows = bench_context(argparse.Namespace(repeats=repeats, quick=args.quick))
    print(format_table(rows, "shoal cluster context vs multiprocess"))


if __name__ == "__main__":
    main()
