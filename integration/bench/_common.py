"""What every benchmark shares: interleaved timing, the results table, server processes,
the raw pyzmq baselines and the clean-up of the processes a peer's cluster leaves.

Rules of the harness:

* Every measurement is repeated, and the shoal and baseline runs alternate (the order
  flips every repeat; with more than two sides it rotates), so that noise on this
  shared machine hits every side alike.
  The table shows medians and the min-max range.
* A server process is started with ``sys.executable`` running ``_servers.py``; it binds
  a random port (or an ipc path in a temporary folder), prints ``READY <address>`` and
  serves until it is terminated. :func:`server` always ends it (terminate, then kill).
* A peer's cluster (ipyparallel, dask, pools) runs inside a :class:`Reaper`: whatever
  processes it started, even those that leave our process tree as it stops, are ended
  by PID afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from shoal.wire import Codec, Message, generate_key, new_header

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "_servers.py"
KEY_ENV = "SHOAL_BENCH_KEY"
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Stats:
    """Median and range of repeated samples."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


def interleave_all(
    fns: Sequence[Callable[[], float]], repeats: int, warmup: int = 1
) -> list[Stats]:
    """Run each of ``fns`` ``repeats`` times; each repeat starts one further along the list.

    Each callable returns one sample (its own measurement, e.g. us per round trip).
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            gc.collect()
            samples[j].append(fns[j]())
    return [Stats.of(s) for s in samples]


def interleave(
    shoal: Callable[[], float], baseline: Callable[[], float], repeats: int, warmup: int = 1
) -> tuple[Stats, Stats]:
    """Run ``shoal`` and ``baseline`` ``repeats`` times each, alternating who goes first."""
    s, b = interleave_all([shoal, baseline], repeats, warmup)
    return s, b


def us_per_call(n: int, call: Callable[[], Any]) -> float:
    """us per call of ``n`` calls in a row: the sample of a sequential round-trip benchmark."""
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n * 1e6


def calls_vs_peer(
    shoal: Callable[[], Any], n: int, peer: Callable[[], Any], n_peer: int, repeats: int
) -> tuple[Stats, Stats]:
    """us per call, interleaved, against a slower peer that makes fewer calls a sample."""
    return interleave(lambda: us_per_call(n, shoal), lambda: us_per_call(n_peer, peer), repeats)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table.

    The ratio is shoal/baseline (``s/b``), or baseline/shoal (``b/s``) when
    ``inverse`` is set, so that it reads in the same terms as the row's target
    (e.g. "<= 1.5x raw" time is s/b; ">= 20x faster" is b/s; ">= 80% of raw" GB/s is s/b).
    """

    name: str
    unit: str
    shoal: Stats
    baseline_name: str
    baseline: Stats
    target: str = "(none: report)"
    target_ok: bool | None = None  # None: no target, only the ratio is reported
    inverse: bool = False
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.inverse:
            return self.baseline.median / self.shoal.median
        return self.shoal.median / self.baseline.median


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cell(s: Stats) -> str:
    return f"{_fmt(s.median)} [{_fmt(s.low)}-{_fmt(s.high)}]"


def format_table(rows: Sequence[Row], title: str) -> str:
    """The plain-text results table, columns aligned."""
    header = (
        "benchmark",
        "unit",
        "shoal median [min-max]",
        "baseline",
        "baseline median [min-max]",
        "ratio",
        "target",
        "met",
    )
    body = [
        (
            r.name,
            r.unit,
            _cell(r.shoal),
            r.baseline_name,
            _cell(r.baseline),
            f"{r.ratio:,.2f} {'b/s' if r.inverse else 's/b'}",
            r.target,
            "-" if r.target_ok is None else "yes" if r.target_ok else "NO",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    right = {2, 4, 5}

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    out = [title, rule, line(header), rule, *(line(b) for b in body), rule]
    out.append(
        "ratio: s/b = shoal median / baseline median, b/s = baseline / shoal"
        " (each in the terms of its target); us/rt and ms: lower is better, GB/s: higher."
    )
    notes: dict[str, list[str]] = {}
    for r in rows:
        if r.note:
            notes.setdefault(r.note, []).append(r.name)
    out.extend(f"  {'; '.join(names)}: {text}" for text, names in notes.items())
    return "\n".join(out)


# -- server processes ------------------------------------------------------------------
class Server:
    """A running server process and the address it reported."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str) -> None:
        self.proc = proc
        self.address = address


def _read_ready(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise RuntimeError(f"server {proc.args!r} did not report READY (got {buf!r})")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith("READY "):
        raise RuntimeError(f"server said {line!r}, expected 'READY <address>'")
    return line.split(" ", 1)[1]


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """End ``proc``: terminate, wait, then kill by PID if it is still there."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def server(kind: str, *args: str, key: bytes = b"", timeout: float = 60.0) -> Iterator[Server]:
    """Start ``_servers.py kind *args``; yield once it is ready; always end it."""
    env = dict(os.environ)
    env[KEY_ENV] = key.decode("ascii")
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS), kind, *args],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        address = _read_ready(proc, timeout)
        yield Server(proc, address)
    finally:
        stop(proc)


class Skipped(Exception):
    """A benchmark cannot run here (e.g. the code it measures does not exist yet)."""


def note(text: str) -> None:
    """A progress line (stderr, so the table on stdout stays clean)."""
    print(f"  .. {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_link(kind: str) -> Iterator[str]:
    """The server ``LINK`` argument for ``kind`` (ipc gets a fresh temporary folder)."""
    if kind == "tcp":
        yield "tcp"
        return
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as folder:
        yield f"ipc:{folder}"


# -- raw pyzmq baselines ---------------------------------------------------------------
@contextlib.contextmanager
def dealer(address: str) -> Iterator[zmq.Socket[Any]]:
    """A DEALER connected to ``address``, closed with its own context: the raw client side."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(address)
        yield sock
    finally:
        sock.close()
        ctx.term()


def raw_echo_us(sock: zmq.Socket[Any], payload: bytes, n: int) -> float:
    """us per round trip of ``payload`` echoed ``n`` times: the raw round-trip baseline."""
    send, recv = sock.send, sock.recv
    t0 = time.perf_counter()
    for _ in range(n):
        send(payload)
        recv()
    return (time.perf_counter() - t0) / n * 1e6


def raw_send_gbps(sock: zmq.Socket[Any], source: np.ndarray[Any, Any]) -> float:
    """GB/s of one-way ``send(copy=False)`` until the receiver checked the bytes and acked."""
    t0 = time.perf_counter()
    sock.send(memoryview(source), copy=False)
    ack = sock.recv()
    dt = time.perf_counter() - t0
    assert ack == b"ok", ack
    return source.nbytes / dt / 1e9


def apply_request_bytes(
    f: Callable[..., Any], session: str, sender: str = "", route: bytes = b""
) -> int:
    """The size of shoal's ``apply(f)`` frames (and ``route``): what the raw echoes carry."""
    content = {"f": f, "args": (), "kwargs": {}}
    msg = Message(new_header("apply_request", session, sender), None, {}, content)
    frames = Codec(generate_key()).encode(msg)
    return len(route) + sum(memoryview(frame).nbytes for frame in frames)


# -- peers' processes ------------------------------------------------------------------
class Reaper:
    """Ends by PID the processes started while it lives: a stopped cluster leaves some."""

    def __init__(self) -> None:
        import psutil  # an ipyparallel dependency

        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children(recursive=True)}
        self._seen: dict[int, Any] = {}

    def __enter__(self) -> Reaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def snapshot(self) -> None:
        """Note our new descendants: call it before a cluster stops (its nannies leave)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            for proc in self._me.children(recursive=True):
                if proc.pid not in self._before:
                    self._seen.setdefault(proc.pid, proc)

    def end(self) -> None:
        """Wait briefly for the noted processes, then terminate and kill what is left."""
        import psutil

        self.snapshot()
        _, alive = psutil.wait_procs(list(self._seen.values()), timeout=1)
        for signal_them in ("terminate", "kill"):
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    getattr(proc, signal_them)()
            _, alive = psutil.wait_procs(alive, timeout=3)
        if alive:
            note(f"could not end processes {[p.pid for p in alive]}")


@contextlib.contextmanager
def ipp_cluster(ipp: Any, n: int) -> Iterator[Any]:
    """An ipyparallel cluster of ``n`` engines: its client; every process ended after."""
    with Reaper() as reaper:
        cluster = ipp.Cluster(n=n, log_level=logging.ERROR)  # keep the output clean
        rc = None
        try:
            rc = cluster.start_and_connect_sync()
            rc.wait_for_engines(n, timeout=60)
            yield rc
        finally:
            reaper.snapshot()
            if rc is not None:
                rc.close()
            cluster.stop_cluster_sync()
