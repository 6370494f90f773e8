"""Wire-layer benchmarks: round trips, serialization, large arrays between processes.

Each ``bench_*`` function takes a :class:`~run.Config` and returns table rows.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import pickle
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq
from _common import (
    MiB,
    Row,
    dealer,
    interleave,
    note,
    open_link,
    raw_echo_us,
    raw_send_gbps,
    server,
)

from shoal.wire import Serializer, Session, generate_key

LINKS = ("tcp", "ipc")


@contextlib.contextmanager
def _pair(link: str, key: bytes) -> Iterator[tuple[zmq.Socket[Any], Session]]:
    """A raw DEALER connected to a raw echo server, and a Session to a shoal server."""
    with (
        server("raw", link) as raw_srv,
        server("shoal", link, key=key) as shoal_srv,
        dealer(raw_srv.address) as raw,
        dealer(shoal_srv.address) as sock,
    ):
        yield raw, Session(sock, key, sender="bench-client")


# -- 1. small-message round trip ---------------------------------------------------------
def bench_roundtrip(cfg: Any) -> list[Row]:
    """Echo one small message, us per round trip: raw DEALER/ROUTER vs Session."""
    n = cfg.roundtrips
    key = generate_key()
    payload = b"ping-0123456789"
    rows = []

    for kind in LINKS:
        note(f"round trip over {kind}: {cfg.repeats} x {n} round trips each")
        with open_link(kind) as link, _pair(link, key) as (raw, session):

            def shoal_rt(session: Session = session) -> float:
                send, recv = session.send, session.recv
                t0 = time.perf_counter()
                for i in range(n):
                    send("ping", ("ping", i))
                    reply = recv()
                dt = time.perf_counter() - t0
                assert reply.content == ("ping", n - 1)
                return dt / n * 1e6

            s, b = interleave(
                shoal_rt, functools.partial(raw_echo_us, raw, payload, n), cfg.repeats
            )
        rows.append(
            Row(
                name=f"small round trip, {kind}",
                unit="us/rt",
                shoal=s,
                baseline_name="raw pyzmq",
                baseline=b,
                target="s/b <= 1.5",
                target_ok=s.median <= 1.5 * b.median,
                note="two processes, DEALER -> ROUTER echo; shoal signs and pickles both ways",
            )
        )
    return rows


# -- 2. a large array through the serializer ---------------------------------------------
def bench_serialize_array(cfg: Any) -> list[Row]:
    """dumps+loads of one big float64 array: Serializer vs pickle protocol 5 in band."""
    nbytes = cfg.array_mib * MiB
    note(f"dumps+loads of a {cfg.array_mib} MiB array: {cfg.repeats} repeats each")
    source = np.arange(nbytes // 8, dtype=np.float64)
    ser = Serializer()
    shared: list[bool] = []

    def shoal_once() -> float:
        t0 = time.perf_counter()
        frames = ser.dumps(source)
        out = ser.loads(frames)
        dt = time.perf_counter() - t0
        shared.append(bool(np.shares_memory(out, source)) and out[-1] == source[-1])
        del frames, out
        return dt * 1e3

    def pickle_once() -> float:
        t0 = time.perf_counter()
        data = pickle.dumps(source, protocol=5)
        out = pickle.loads(data)
        dt = time.perf_counter() - t0
        assert out[-1] == source[-1]
        del data, out  # free the copies before the next run
        gc.collect()
        return dt * 1e3

    s, b = interleave(shoal_once, pickle_once, cfg.repeats)  # source dies with this frame
    zero_copy = all(shared)
    ratio = b.median / s.median
    return [
        Row(
            name=f"dumps+loads {cfg.array_mib} MiB float64",
            unit="ms",
            shoal=s,
            baseline_name="pickle p5 in-band",
            baseline=b,
            inverse=True,
            target="b/s >= 20, zero copy",
            target_ok=zero_copy and ratio >= 20,
            note=f"zero copy (np.shares_memory(result, source) every run): "
            f"{'yes' if zero_copy else 'NO'}",
        )
    ]


# -- 3. many small objects through the serializer ----------------------------------------
def bench_serialize_small(cfg: Any) -> list[Row]:
    """dumps+loads of many small dicts / tuples: Serializer vs pickle protocol 5."""
    n = cfg.small_items
    data = {
        "dicts": [{"a": i, "b": (i, str(i))} for i in range(n)],
        "tuples": [(i, float(i), str(i)) for i in range(n)],
    }
    ser = Serializer()
    rows = []
    for label, obj in data.items():
        note(f"dumps+loads of {n:,} {label}: {cfg.repeats} repeats each")

        def shoal_once(obj: Any = obj) -> float:
            t0 = time.perf_counter()
            out = ser.loads(ser.dumps(obj))
            dt = time.perf_counter() - t0
            assert len(out) == n
            return dt * 1e3

        def pickle_once(obj: Any = obj) -> float:
            t0 = time.perf_counter()
            out = pickle.loads(pickle.dumps(obj, protocol=5))
            dt = time.perf_counter() - t0
            assert len(out) == n
            return dt * 1e3

        assert ser.loads(ser.dumps(obj)) == obj
        s, b = interleave(shoal_once, pickle_once, cfg.repeats)
        rows.append(
            Row(
                name=f"dumps+loads {n:,} small {label}",
                unit="ms",
                shoal=s,
                baseline_name="pickle p5",
                baseline=b,
                target="s/b <= 1.5",
                target_ok=s.median <= 1.5 * b.median,
            )
        )
    return rows


# -- 4. a large array between two processes ----------------------------------------------
def bench_transfer(cfg: Any) -> list[Row]:
    """One big array to another process and a short ack back, GB/s: Session vs raw."""
    nbytes = cfg.transfer_mib * MiB
    key = generate_key()
    source = np.arange(nbytes // 8, dtype=np.float64)
    rows = []
    for kind in LINKS:
        note(
            f"{cfg.transfer_mib} MiB array to another process over {kind}: "
            f"{cfg.repeats} repeats each"
        )
        with open_link(kind) as link, _pair(link, key) as (raw, session):

            def shoal_once(session: Session = session) -> float:
                t0 = time.perf_counter()
                session.send("array", source)
                ack = session.recv()
                dt = time.perf_counter() - t0
                assert ack.content is True, ack.content
                return nbytes / dt / 1e9

            s, b = interleave(
                shoal_once, functools.partial(raw_send_gbps, raw, source), cfg.repeats
            )
        rows.append(
            Row(
                name=f"{cfg.transfer_mib} MiB array to a process, {kind}",
                unit="GB/s",
                shoal=s,
                baseline_name="raw send(copy=False)",
                baseline=b,
                target="s/b >= 0.8",
                target_ok=s.median >= 0.8 * b.median,
                note="send until the receiver checked shape and last element and acked;"
                " shoal signs every byte (BLAKE3 digest in the HMAC) on both ends",
            )
        )
    return rows
