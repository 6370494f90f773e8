"""W1 and W3 between hosts (``.ci/hosts.sh``'s network namespaces), with Curve and without.

The client runs here (the root namespace, 10.77.0.254), the hub in the hub's namespace
(``ip netns exec shoal-hub``, ``--ip 10.77.0.1``) and its one engine on ``nodea``
(started over ssh by the hub; checked to report the host name ``nodea``), so every
request crosses the bridge twice each way: client -> hub -> engine and back. Two hubs
run side by side, one with CurveZMQ (the default for a non-loopback ``--ip``) and one
with ``--insecure`` (plain TCP), and their runs are interleaved with those of a raw
pyzmq baseline of the same shape: a DEALER here -> a ROUTER/ROUTER broker process in the
hub's namespace -> a DEALER worker process in nodea's namespace (``ip netns exec
shoal-a``), with and without Curve (``curve_server`` on the broker's sockets, no ZAP
handler: encrypted, not authenticated).

* W1: sequential ``rc[e].apply_sync(noop)`` round trips vs the raw broker echoing as
  many bytes as shoal's apply request each way.
* W3: ``rc[e].push({"a": a}, block=True)`` and ``rc[e].pull("a", block=True)`` of a
  64 MiB array vs the raw worker receiving 64 MiB (``copy=False``) and acking, and
  answering a small request with the 64 MiB it holds.

Reported: shoal vs raw (each with Curve, each without), and the cost of encryption
(Curve / plain) for shoal and for raw. Without the test hosts the benchmark is skipped.
The hosts' lock (``multihost.hosts_lock``) is held shared throughout, so that no test
cuts a link meanwhile. Every process started here is ended by PID: the hubs (which end
their engines; any left after 30 s are killed), the brokers and the workers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from _common import (
    MiB,
    Row,
    Skipped,
    Stats,
    _read_ready,
    apply_request_bytes,
    interleave_all,
    note,
    stop,
    us_per_call,
)
from bench_hub import noop

# The test hosts' helpers (integration/multihost.py), shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from multihost import Hosts, NetnsHub, hosts_lock, load_hosts

from shoal.hub import Client

ENGINE_HOST = "nodea"
W3_MIB = 64
START_TIMEOUT = 60.0

# The raw baseline's processes: ``python -c _RAW broker IP`` binds a front and a back
# ROUTER on IP and prints ``READY <front url> <back url>``; ``python -c _RAW worker URL``
# registers with the broker at URL (its back) and prints ``READY <url>``. The worker
# echoes small frames, keeps a big one (>= 1 MiB) and answers it ``ok``, and answers
# ``pull`` with the big frame it holds (copy=False). Curve when RAW_SERVER_PUBLIC is set.
_RAW = r"""
import os, sys, threading, time
import zmq

def _watch(parent=os.getppid()):
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)

threading.Thread(target=_watch, daemon=True).start()
role, arg = sys.argv[1], sys.argv[2]
public = os.environ.get("RAW_SERVER_PUBLIC", "").encode()
ctx = zmq.Context()

def socket(kind):
    sock = ctx.socket(kind)
    sock.linger = 0
    if public and kind == zmq.ROUTER:
        sock.curve_secretkey = os.environ["RAW_SERVER_SECRET"].encode()
        sock.curve_publickey = public
        sock.curve_server = True
    elif public:
        sock.curve_serverkey = public
        sock.curve_publickey = os.environ["RAW_CLIENT_PUBLIC"].encode()
        sock.curve_secretkey = os.environ["RAW_CLIENT_SECRET"].encode()
    return sock

if role == "broker":
    front, back = socket(zmq.ROUTER), socket(zmq.ROUTER)
    urls = [f"tcp://{arg}:{s.bind_to_random_port('tcp://' + arg)}" for s in (front, back)]
    print("READY", *urls, flush=True)
    worker = back.recv_multipart()[0]  # its hello
    back.send_multipart([worker, b"welcome"])
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart(copy=False)
            if sock is back:  # [worker, client, *payload]
                front.send_multipart(frames[1:], copy=False)
            else:  # [client, *payload]
                back.send_multipart([worker, *frames], copy=False)
else:
    sock = socket(zmq.DEALER)
    sock.connect(arg)
    sock.send(b"hello")
    if sock.recv() != b"welcome":
        raise SystemExit("the broker did not welcome this worker")
    print("READY", arg, flush=True)
    held = memoryview(b"")
    while True:
        route, frame = sock.recv_multipart(copy=False)
        view = frame.buffer
        if view.nbytes >= 1 << 20:
            held = view
            sock.send_multipart([route, b"ok"])
        elif view == b"pull":
            sock.send_multipart([route, held], copy=False)
        else:
            sock.send_multipart([route, frame], copy=False)
"""


def _hosts() -> Hosts:
    """The test hosts, or Skipped saying why not."""
    try:
        hosts = load_hosts()
    except FileNotFoundError as exc:
        raise Skipped(str(exc)) from None
    if os.geteuid() != 0:
        raise Skipped("`ip netns exec` into the test hosts needs root")
    if ENGINE_HOST not in hosts.netns:
        raise Skipped(f"no host {ENGINE_HOST!r} among the test hosts")
    return hosts


@contextlib.contextmanager
def _hub(hosts: Hosts, folder: Path, curve: bool) -> Iterator[Client]:
    """A hub in the hub's namespace with one engine on ENGINE_HOST; a client of it here,
    once the engine registered and said it runs on ENGINE_HOST."""
    args = ["--ip", hosts.hub_ip, *(() if curve else ("--insecure",))]
    args += ["--engines", "ssh", "--hosts", f"{ENGINE_HOST}:1", "--ssh", hosts.ssh]
    with NetnsHub(hosts, folder, args) as hub:
        has_curve = "curve" in json.loads(hub.client_file.read_text())
        if has_curve != curve:
            raise RuntimeError(f"the hub's Curve is {has_curve}, expected {curve}")
        rc = Client(url_file=str(hub.client_file))
        try:
            (engine,) = rc.wait_for_engines(1, timeout=START_TIMEOUT)
            where = rc[engine].apply_sync(socket.gethostname)
            if where != ENGINE_HOST:
                raise RuntimeError(f"the engine runs on {where!r}, not {ENGINE_HOST!r}")
            yield rc
        finally:
            rc.close()


def _raw_process(
    netns: str, role: str, arg: str, env: dict[str, str], stack: contextlib.ExitStack
) -> str:
    """Start ``_RAW role arg`` in ``netns``, ended when ``stack`` closes: its READY words."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _RAW, role, arg],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    stack.callback(stop, proc)
    return _read_ready(proc, START_TIMEOUT)


@contextlib.contextmanager
def _raw(hosts: Hosts, curve: bool) -> Iterator[zmq.Socket[Any]]:
    """A raw broker (hub namespace) and worker (ENGINE_HOST's namespace): a DEALER
    connected to the broker here, with Curve keys of its own when ``curve``."""
    env: dict[str, str] = {}
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        env = {
            "RAW_SERVER_PUBLIC": server_public.decode(),
            "RAW_SERVER_SECRET": server_secret.decode(),
            "RAW_CLIENT_PUBLIC": client_public.decode(),
            "RAW_CLIENT_SECRET": client_secret.decode(),
        }
    with contextlib.ExitStack() as stack:
        front, back = _raw_process(hosts.hub_netns, "broker", hosts.hub_ip, env, stack).split()
        _raw_process(hosts.netns[ENGINE_HOST], "worker", back, env, stack)
        ctx = zmq.Context()
        stack.callback(ctx.term)
        sock = ctx.socket(zmq.DEALER)
        stack.callback(sock.close)
        sock.linger = 0
        if curve:
            sock.curve_serverkey = server_public
            sock.curve_publickey = client_public
            sock.curve_secretkey = client_secret
        sock.connect(front)
        yield sock


# -- measurements ------------------------------------------------------------------------
def _raw_echo(sock: zmq.Socket[Any], payload: bytes, n: int) -> float:
    """us per round trip of ``payload`` through the raw broker and worker."""
    t0 = time.perf_counter()
    for _ in range(n):
        sock.send(payload)
        sock.recv()
    return (time.perf_counter() - t0) / n * 1e6


def _raw_push(sock: zmq.Socket[Any], source: np.ndarray[Any, Any]) -> float:
    """Seconds to send ``source`` (copy=False) until the worker acked it."""
    t0 = time.perf_counter()
    sock.send(source.data, copy=False)
    ack = sock.recv()
    dt = time.perf_counter() - t0
    assert ack == b"ok", ack
    return dt


def _raw_pull(sock: zmq.Socket[Any], nbytes: int) -> float:
    """Seconds from asking the worker until the big frame it holds arrived."""
    t0 = time.perf_counter()
    sock.send(b"pull")
    frame = sock.recv(copy=False)
    dt = time.perf_counter() - t0
    assert frame.buffer.nbytes == nbytes, frame.buffer.nbytes
    return dt


def _push(view: Any, source: np.ndarray[Any, Any]) -> float:
    t0 = time.perf_counter()
    view.push({"a": source}, block=True)
    return time.perf_counter() - t0


def _pull(view: Any, nbytes: int) -> float:
    t0 = time.perf_counter()
    out = view.pull("a", block=True)
    dt = time.perf_counter() - t0
    assert out.nbytes == nbytes, (out.shape, out.dtype)
    assert out[-1] == 1.0
    return dt


def _mb_per_s(seconds: Stats, nbytes: int) -> Stats:
    """Seconds per transfer as MB/s (the slowest sample is the low end)."""
    return Stats(
        nbytes / seconds.median / 1e6,
        nbytes / seconds.high / 1e6,
        nbytes / seconds.low / 1e6,
        seconds.n,
    )


def _ms(seconds: Stats) -> Stats:
    return Stats(seconds.median * 1e3, seconds.low * 1e3, seconds.high * 1e3, seconds.n)


def _round_trips(cfg: Any, shoal: dict[str, Client], raw: dict[str, zmq.Socket[Any]]) -> list[Row]:
    n: int = cfg.hub_roundtrips
    repeats: int = cfg.repeats
    size = apply_request_bytes(noop, uuid.uuid4().hex, "client", route=b"e0")
    payload = b"x" * size
    calls: list[Callable[[], float]] = []
    for rc in shoal.values():
        view = rc[rc.ids[0]]
        calls.append(functools.partial(us_per_call, n, functools.partial(view.apply_sync, noop)))
    calls += [functools.partial(_raw_echo, sock, payload, n) for sock in raw.values()]
    note(f"W1 apply(noop) across hosts, Curve and plain vs raw: {repeats} x {n} each")
    s_curve, s_plain, r_curve, r_plain = interleave_all(calls, repeats)
    path = (
        "client (root ns) -> hub (ns shoal-hub, --ip 10.77.0.1) -> engine on nodea (ssh) and back"
    )
    raw_text = (
        f"raw: DEALER (root ns) -> ROUTER/ROUTER broker (ns shoal-hub) -> DEALER echo"
        f" (ns shoal-a), {size} B (shoal's apply_request frames) each way"
    )
    curve_text = (
        "Curve: the hub's default for a non-loopback --ip, vs --insecure; raw: curve_server"
        " on the broker's sockets (no ZAP) vs plain"
    )
    return [
        Row(
            name="multihost apply(noop) rt, Curve",
            unit="us/rt",
            shoal=s_curve,
            baseline_name="raw broker, Curve",
            baseline=r_curve,
            note=f"{path}; {raw_text}",
        ),
        Row(
            name="multihost apply(noop) rt, plain",
            unit="us/rt",
            shoal=s_plain,
            baseline_name="raw broker, plain",
            baseline=r_plain,
            note=f"{path}; {raw_text}",
        ),
        Row(
            name="multihost apply(noop) rt, Curve vs plain",
            unit="us/rt",
            shoal=s_curve,
            baseline_name="shoal plain (--insecure)",
            baseline=s_plain,
            note=f"cost of encryption, ratio = Curve time / plain time; {curve_text}",
        ),
        Row(
            name="multihost raw broker rt, Curve vs plain",
            unit="us/rt",
            shoal=r_curve,
            baseline_name="raw broker, plain",
            baseline=r_plain,
            note=f"cost of encryption for raw pyzmq (its 'shoal' column is raw with Curve),"
            f" ratio = Curve time / plain time; {curve_text}",
        ),
    ]


def _transfers(cfg: Any, shoal: dict[str, Client], raw: dict[str, zmq.Socket[Any]]) -> list[Row]:
    nbytes = W3_MIB * MiB
    # Ones: the pulled array's last element is checked.
    source = np.ones(nbytes // 8, dtype=np.float64)
    repeats: int = cfg.repeats  # a 64 MiB sample: ~0.2 s plain, ~0.6 s Curve
    fns: list[Callable[[], float]] = []
    for rc in shoal.values():
        view = rc[rc.ids[0]]
        # push first: each pull finds "a" from the warm-up push
        fns += [functools.partial(_push, view, source), functools.partial(_pull, view, nbytes)]
    for sock in raw.values():
        fns += [
            functools.partial(_raw_push, sock, source),
            functools.partial(_raw_pull, sock, nbytes),
        ]
    note(
        f"W3 push and pull of {W3_MIB} MiB across hosts, Curve and plain vs raw: {repeats} repeats"
    )
    stats = dict(
        zip(
            [
                f"{who} {verb} {how}"
                for who in ("shoal", "raw")
                for how in ("curve", "plain")
                for verb in ("push", "pull")
            ],
            interleave_all(fns, repeats),
            strict=True,
        )
    )
    for rc in shoal.values():
        rc[rc.ids[0]].execute("del a", block=True)
    path = (
        "client (root ns) -> hub (ns shoal-hub) -> engine on nodea; push: until the engine"
        " replied, pull: until the array arrived"
    )
    raw_text = (
        "raw: DEALER (root ns) -> broker (ns shoal-hub) -> worker (ns shoal-a), copy=False;"
        " push: send until the worker acked, pull: a small request until its 64 MiB arrived"
    )
    rows = []
    for verb in ("push", "pull"):
        for how, label in (("curve", "Curve"), ("plain", "plain")):
            rows.append(
                Row(
                    name=f"multihost {verb} {W3_MIB} MiB, {label}",
                    unit="MB/s",
                    shoal=_mb_per_s(stats[f"shoal {verb} {how}"], nbytes),
                    baseline_name=f"raw broker, {label}",
                    baseline=_mb_per_s(stats[f"raw {verb} {how}"], nbytes),
                    note=f"{path}; {raw_text}; MB/s: higher is better, ratio = shoal's"
                    " share of raw's throughput",
                )
            )
    for verb in ("push", "pull"):
        for who, label in (("shoal", "multihost"), ("raw", "multihost raw broker")):
            rows.append(
                Row(
                    name=f"{label} {verb} {W3_MIB} MiB, Curve vs plain",
                    unit="ms",
                    shoal=_ms(stats[f"{who} {verb} curve"]),
                    baseline_name=f"{who} plain",
                    baseline=_ms(stats[f"{who} {verb} plain"]),
                    note="cost of encryption, ratio = Curve time / plain time (the raw rows'"
                    " 'shoal' column is raw with Curve)",
                )
            )
    return rows


def bench_multihost(cfg: Any) -> list[Row]:
    """W1 and W3 client -> hub -> engine across network namespaces, Curve vs plain vs raw."""
    hosts = _hosts()
    with contextlib.ExitStack() as stack:
        stack.enter_context(hosts_lock())  # no test cuts a link while it measures
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shoal-bench-mh-")))
        note(
            f"starting a Curve hub, a plain hub (ns {hosts.hub_netns}), 1 engine each on"
            f" {ENGINE_HOST}, and raw brokers and workers"
        )
        shoal = {
            how: stack.enter_context(_hub(hosts, folder / how, curve=how == "curve"))
            for how in ("curve", "plain")
        }
        raw = {
            how: stack.enter_context(_raw(hosts, curve=how == "curve"))
            for how in ("curve", "plain")
        }
        return [*_round_trips(cfg, shoal, raw), *_transfers(cfg, shoal, raw)]
