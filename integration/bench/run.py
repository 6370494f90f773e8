"""Run shoal's benchmarks against their baselines and print one table.

    hatch run bench                  # the full run (a few minutes)
    hatch run bench -- --quick       # small sizes, few repeats: a smoke run
    hatch run bench -- --only roundtrip

Benchmarks (``--only`` names): roundtrip, serialize-array, serialize-small, transfer,
connection, engine, hub, remote, data, managers, context, joblib, arrays, multihost.
These are measurements, not tests: nothing fails when a target is missed; the ``met``
column says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import zmq
from _common import Row, Skipped, format_table
from bench_arrays import bench_arrays
from bench_connection import bench_connection
from bench_context import bench_context
from bench_data import bench_data
from bench_engine import bench_engine
from bench_hub import bench_hub
from bench_joblib import bench_joblib
from bench_managers import bench_managers
from bench_multihost import bench_multihost
from bench_remote import bench_remote
from bench_wire import (
    bench_roundtrip,
    bench_serialize_array,
    bench_serialize_small,
    bench_transfer,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and repeat counts for one run."""

    repeats: int = 9
    roundtrips: int = 3000
    array_mib: int = 512
    transfer_mib: int = 512
    small_items: int = 100_000
    engine_roundtrips: int = 500  # an engine request is ~10x a wire round trip
    engine_mib: int = 512
    hub_roundtrips: int = 1000  # a hub round trip crosses 3 processes: ~2x an engine's
    hub_tasks: int = 10_000
    hub_mib: int = 512
    hub_kills: int = 3
    hub_starts: int = 3
    quick: bool = False  # --quick: also skips the slow peers (ipyparallel, and dask)


FULL = Config()
QUICK = Config(
    repeats=3,
    roundtrips=300,
    array_mib=16,
    transfer_mib=16,
    small_items=10_000,
    engine_roundtrips=100,
    engine_mib=64,
    hub_roundtrips=200,
    hub_tasks=1000,
    hub_mib=64,
    hub_kills=2,
    hub_starts=1,
    quick=True,
)

# shoal's layers, bottom up: the title names the installed ones with their versions.
LAYERS = ("shoal-wire", "shoal-util", "shoal-engine", "shoal-hub", "shoal-arrays")

BENCHMARKS: dict[str, Callable[[Config], list[Row]]] = {
    "roundtrip": bench_roundtrip,
    "serialize-array": bench_serialize_array,
    "serialize-small": bench_serialize_small,
    "transfer": bench_transfer,
    "connection": bench_connection,
    "engine": bench_engine,
    "hub": bench_hub,
    "managers": bench_managers,
    "context": bench_context,
    "joblib": bench_joblib,
    "remote": bench_remote,
    "data": bench_data,
    "arrays": bench_arrays,
    "multihost": bench_multihost,
}


def _layer_versions() -> str:
    """E.g. ``shoal-wire 0.1.0, shoal-hub 0.1.0``: which code the numbers are of."""
    found = []
    for name in LAYERS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    names = [args.only] if args.only else list(BENCHMARKS)

    t0 = time.perf_counter()
    rows: list[Row] = []
    skipped: list[str] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(BENCHMARKS[name](cfg))
        except Skipped as exc:
            print(f"  .. skipped: {exc}", file=sys.stderr, flush=True)
            skipped.append(f"skipped {name}: {exc}")
    elapsed = time.perf_counter() - t0

    title = (
        f"shoal benchmarks{' (--quick)' if args.quick else ''}:"
        f" median of {cfg.repeats} interleaved runs | {_layer_versions()}"
        f" | Python {platform.python_version()}, pyzmq {zmq.__version__},"
        f" libzmq {zmq.zmq_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs"
        f" | {elapsed:.0f} s"
    )
    print(format_table(rows, title))
    for line in skipped:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
