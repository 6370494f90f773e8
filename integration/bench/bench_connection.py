"""connection benchmark: ``Client``/``Listener`` round trips, shoal vs multiprocess.

shoal's ``connection`` module is young: when ``shoal.wire._connection`` cannot be
imported yet, the benchmark prints a note and returns no rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from _common import Row, Skipped, interleave, note, open_link, server

from shoal.wire import generate_key

# shoal tcp vs multiprocess AF_INET; shoal ipc vs multiprocess AF_UNIX.
LINKS = (("tcp", "tcp 127.0.0.1"), ("ipc", "ipc vs AF_UNIX"))


def _mp_client(address: str, key: bytes) -> Any:
    from multiprocess.connection import Client

    scheme, _, rest = address.partition(":")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        return Client((host, int(port)), family="AF_INET", authkey=key)
    return Client(rest, family="AF_UNIX", authkey=key)


def _round_trips(conn: Any, n: int) -> float:
    send, recv = conn.send, conn.recv
    t0 = time.perf_counter()
    for i in range(n):
        send(("ping", i))
        reply = recv()
    dt = time.perf_counter() - t0
    assert reply == ("ping", n - 1), reply
    return dt / n * 1e6


def bench_connection(cfg: Any) -> list[Row]:
    """``conn.send(("ping", i)); conn.recv()`` echoed by another process, us per round trip."""
    try:
        from shoal.wire._connection import Client
    except ImportError as exc:
        raise Skipped(f"shoal.wire._connection is not importable yet ({exc})") from None
    n = cfg.roundtrips
    key = generate_key()
    rows = []
    for kind, label in LINKS:
        note(f"connection round trip over {label}: {cfg.repeats} x {n} round trips each")
        with contextlib.ExitStack() as stack:
            link = stack.enter_context(open_link(kind))
            mp_srv = stack.enter_context(server("mp-conn", link, key=key))
            shoal_srv = stack.enter_context(server("shoal-conn", link, key=key))
            mp_conn = _mp_client(mp_srv.address, key)
            stack.callback(mp_conn.close)
            shoal_conn = Client(shoal_srv.address, authkey=key)
            stack.callback(shoal_conn.close)
            s, b = interleave(
                lambda c=shoal_conn: _round_trips(c, n),
                lambda c=mp_conn: _round_trips(c, n),
                cfg.repeats,
            )
        rows.append(
            Row(
                name=f"connection round trip, {label}",
                unit="us/rt",
                shoal=s,
                baseline_name="multiprocess.connection",
                baseline=b,
                target="(none: report)",
                target_ok=None,
                note="Client -> Listener echo of ('ping', i) in another process",
            )
        )
    return rows
