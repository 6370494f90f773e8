"""Engine-layer benchmarks: one engine subprocess driven by a ``KernelManager``.

Round trips and array transfers are compared with raw pyzmq between two processes
carrying the same bytes; start-up with starting a raw pyzmq echo server process.
ipyparallel, when importable (and not with ``--quick``), is the peer for the no-op round
trip and for start-up; a failing peer prints a note and adds no rows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from _common import (
    MiB,
    Row,
    apply_request_bytes,
    calls_vs_peer,
    dealer,
    interleave,
    ipp_cluster,
    note,
    open_link,
    raw_echo_us,
    raw_send_gbps,
    server,
    us_per_call,
)

from shoal.engine import KernelManager

# Each ipyparallel cluster takes seconds to start: a few repeats only.
PEER_REPEATS = 3
# ipyparallel's round trip is ~10x shoal's: fewer per sample keep the samples short.
PEER_ROUNDTRIP_SHARE = 5


def noop() -> None:
    return None


# noop stands for a function of the user's __main__ script, which shoal and ipyparallel
# both send by value. run.py imports this module, so left as it is, noop would go by
# reference and neither engine could import bench_engine.
noop.__module__ = "__main__"


def _quiet(name: str, text: str) -> None:
    """on_stream: the engine's output would garble the table (there should be none)."""


# -- 1.-3. request round trips -----------------------------------------------------------
def _round_trips(cfg: Any, km: KernelManager, raw: zmq.Socket[Any]) -> list[Row]:
    n: int = cfg.engine_roundtrips
    size = apply_request_bytes(noop, "s")  # what shoal sends for km.apply(noop)
    payload = b"x" * size
    ref = km.request("store_request", {"obj": [1, 2, 3]})
    assert ref["status"] == "ok", ref
    call_len = {
        "id": ref["ref"]["id"],
        "method": "__len__",
        "args": (),
        "kwargs": {},
        "returns": "value",
    }
    assert km.request("call_method_request", call_len)["result"] == 3
    assert km.apply(noop) is None
    assert km.execute("pass") is None

    # (name, the call, the s/b limit or None: only the ratio is reported)
    cases: list[tuple[str, Callable[[], Any], float | None]] = [
        ("engine apply(noop) round trip", lambda: km.apply(noop), 2.0),
        (
            "engine call_method __len__ round trip",
            lambda: km.request("call_method_request", call_len),
            None,
        ),
        ('engine execute("pass") round trip', lambda: km.execute("pass"), None),
    ]
    rows = []
    for name, call, limit in cases:
        note(f"{name}: {cfg.repeats} x {n} round trips each")
        s, b = interleave(
            functools.partial(us_per_call, n, call),
            functools.partial(raw_echo_us, raw, payload, n),
            cfg.repeats,
        )
        rows.append(
            Row(
                name=name,
                unit="us/rt",
                shoal=s,
                baseline_name=f"raw pyzmq {size} B echo",
                baseline=b,
                target="(none: report)" if limit is None else f"s/b <= {limit:g}",
                target_ok=None if limit is None else s.median <= limit * b.median,
                note="KernelManager -> engine subprocess over tcp 127.0.0.1; raw: DEALER ->"
                f" ROUTER echo of {size} B (shoal's apply_request frames) in both directions",
            )
        )
    return rows


# -- 4. push and pull of a large array ---------------------------------------------------
def _transfers(cfg: Any, km: KernelManager, raw: zmq.Socket[Any]) -> list[Row]:
    mib: int = cfg.engine_mib
    nbytes = mib * MiB
    # Ones, not arange: the raw server reads the bytes as float64 and checks the last
    # element equals itself, which a NaN bit pattern (arange's 248..255) would fail.
    source = np.ones(nbytes, dtype=np.uint8)
    raw_once = functools.partial(raw_send_gbps, raw, source)

    def push_once() -> float:
        t0 = time.perf_counter()
        km.push({"a": source})
        return nbytes / (time.perf_counter() - t0) / 1e9

    def pull_once() -> float:
        t0 = time.perf_counter()
        out = km.pull("a")
        dt = time.perf_counter() - t0
        assert out.nbytes == nbytes, (out.shape, out.dtype)
        assert out[-1] == 1
        del out  # free the received copy before the next run
        return nbytes / dt / 1e9

    rows = []
    for verb, once in (("push", push_once), ("pull", pull_once)):
        note(f"engine {verb} of a {mib} MiB array: {cfg.repeats} repeats each")
        s, b = interleave(once, raw_once, cfg.repeats)  # pull finds "a" from the pushes
        rows.append(
            Row(
                name=f"engine {verb} {mib} MiB uint8",
                unit="GB/s",
                shoal=s,
                baseline_name="raw send(copy=False)",
                baseline=b,
                target="s/b >= 0.8",
                target_ok=s.median >= 0.8 * b.median,
                note="push: until the engine replied; pull: until the array arrived; raw (for"
                " both): one-way send until the receiver checked the bytes and acked",
            )
        )
    km.execute("del a")
    return rows


# -- 5. start-up ---------------------------------------------------------------------------
def _start_shoal_ms() -> float:
    t0 = time.perf_counter()
    km = KernelManager(on_stream=_quiet)
    try:
        km.start()
        km.apply(noop)
        return (time.perf_counter() - t0) * 1e3
    finally:
        km.shutdown()  # not timed


def _startup(cfg: Any) -> list[Row]:
    payload = b"x" * apply_request_bytes(noop, "s")

    def raw_once(link: str) -> float:
        t0 = time.perf_counter()
        with server("raw", link) as srv, dealer(srv.address) as sock:
            sock.send(payload)
            sock.recv()
            return (time.perf_counter() - t0) * 1e3  # stopping the server is not timed

    note(f"engine start-up to first reply: {cfg.repeats} repeats each")
    with open_link("tcp") as link:
        s, b = interleave(_start_shoal_ms, lambda: raw_once(link), cfg.repeats)
    return [
        Row(
            name="engine start to first apply reply",
            unit="ms",
            shoal=s,
            baseline_name="raw pyzmq server process",
            baseline=b,
            note="a fresh KernelManager: start() + apply(noop), shutdown not timed; raw: a"
            " python process importing zmq and numpy, bound and READY, + one echo",
        )
    ]


# -- peer: ipyparallel ---------------------------------------------------------------------
def _ipyparallel(cfg: Any) -> list[Row]:
    import ipyparallel as ipp

    def ipp_start_ms() -> float:
        t0 = time.perf_counter()
        with ipp_cluster(ipp, 1) as rc:
            rc[0].apply_sync(noop)
            return (time.perf_counter() - t0) * 1e3  # stopping the cluster is not timed

    note(f"start-up vs ipyparallel Cluster(n=1): {PEER_REPEATS} repeats each")
    s_start, b_start = interleave(_start_shoal_ms, ipp_start_ms, PEER_REPEATS, warmup=0)

    n = cfg.engine_roundtrips
    n_peer = max(n // PEER_ROUNDTRIP_SHARE, 1)
    note(f"apply round trip vs ipyparallel: {PEER_REPEATS} x {n} / {n_peer} round trips")
    with KernelManager(on_stream=_quiet) as km, ipp_cluster(ipp, 1) as rc:
        view = rc[0]
        s_rt, b_rt = calls_vs_peer(
            lambda: km.apply(noop), n, lambda: view.apply_sync(noop), n_peer, PEER_REPEATS
        )
    peer_note = (
        f"ipyparallel {ipp.__version__}, one local engine: rc[0].apply_sync(noop);"
        " start-up: Cluster(n=1) start_and_connect + wait_for_engines(1) +"
        " apply_sync(noop), stop not timed"
    )
    return [
        Row(
            name="engine apply(noop) round trip vs ipyparallel",
            unit="us/rt",
            shoal=s_rt,
            baseline_name="ipyparallel apply_sync",
            baseline=b_rt,
            note=peer_note,
        ),
        Row(
            name="engine start to first reply vs ipyparallel",
            unit="ms",
            shoal=s_start,
            baseline_name="ipyparallel Cluster(n=1)",
            baseline=b_start,
            note=peer_note,
        ),
    ]


def bench_engine(cfg: Any) -> list[Row]:
    """KernelManager round trips, push/pull and start-up vs raw pyzmq (and ipyparallel)."""
    rows = []
    with (
        open_link("tcp") as link,
        server("raw", link) as raw_srv,
        dealer(raw_srv.address) as raw,
        KernelManager(on_stream=_quiet) as km,
    ):
        rows += _round_trips(cfg, km, raw)
        rows += _transfers(cfg, km, raw)
    rows += _startup(cfg)
    if cfg.quick:
        note("ipyparallel peer skipped with --quick")
        return rows
    try:
        rows += _ipyparallel(cfg)
    except Exception as exc:  # a failing peer must not cost the shoal rows
        note(f"ipyparallel peer failed, no rows: {type(exc).__name__}: {exc}")
    return rows
