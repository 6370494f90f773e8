"""shoal demo: two processes talking through the wire layer (``hatch run demo``).

This process binds a ROUTER socket, writes a private (0600) connection file with the
url and a fresh signing key, and starts a second Python process that reads the file,
connects a DEALER and serves requests. Then, over signed messages:

1. ping/pong round trips (median time),
2. a closure defined here runs over there and returns its result,
3. a 256 MiB numpy array travels without copies (GB/s),
4. a remote exception comes back as data (type, message, traceback text),
5. a message signed with the wrong key is dropped by the receiver, which counts it,
6. the second process shuts down cleanly; it is ended even on Ctrl-C or an error.

The same file is the second process: ``demo.py --child CONNECTION_FILE``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from shoal.wire import (
    ConnectionInfo,
    Message,
    Session,
    generate_key,
    read_connection_file,
    write_connection_file,
)

TIMEOUT = 30.0  # seconds any single reply may take before the demo gives up
PINGS = 200
ARRAY_MIB = 256


# -- the second process ----------------------------------------------------------------
def _exit_when_orphaned() -> None:
    """Leave if the parent disappears (killed before it could stop us)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _handle(session: Session, msg: Message) -> bool:
    """Answer one request; return False when asked to stop."""
    kind, content = msg.msg_type, msg.content
    reply: Any
    if kind == "ping":
        reply = content
    elif kind == "apply":
        func, args = content
        try:
            reply = {"status": "ok", "pid": os.getpid(), "result": func(*args)}
        except Exception as exc:  # the point: errors travel back as data
            reply = {
                "status": "error",
                "pid": os.getpid(),
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
            }
    elif kind == "array":
        arr = content
        reply = {
            "shape": arr.shape,
            "dtype": str(arr.dtype),
            "last": float(arr[-1]),
            "borrowed": not arr.flags.owndata,  # backed by the received frame: no copy
        }
        del arr, content
    elif kind == "stats":
        stats = session.statistics()
        reply = {"received": stats.received, "dropped": dict(stats.dropped)}
    elif kind == "shutdown":
        session.send("bye", os.getpid(), parent=msg)
        return False
    else:
        reply = {"status": "error", "evalue": f"unknown request {kind!r}"}
    session.send(f"{kind}_reply", reply, parent=msg)
    return True


def child(connection_file: str) -> int:
    _exit_when_orphaned()
    logging.basicConfig(format="   [child log] %(name)s: %(message)s")
    info = read_connection_file(connection_file)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 1000
    sock.connect(info.urls["demo"])
    session = Session(sock, info.key, sender="child")
    try:
        session.send("hello", os.getpid())
        while _handle(session, session.recv()):
            pass
    except KeyboardInterrupt:
        return 1
    finally:
        sock.close()
        ctx.term()
    return 0


# -- this process ----------------------------------------------------------------------
def _request(session: Session, peer: tuple[bytes, ...], kind: str, content: Any = None) -> Any:
    sent = session.send(kind, content, identities=peer)
    reply = session.recv(timeout=TIMEOUT)
    assert reply.parent_header is not None
    assert reply.parent_header.msg_id == sent.header.msg_id
    return reply.content


def _make_scaler(factor: float) -> Any:
    """A closure: ``factor`` travels with the function."""
    offset = 0.5
    return lambda xs: [factor * x + offset for x in xs]


def _parse_ratio(text: str) -> float:
    num, den = text.split("/")
    return int(num) / int(den)


def run_demo(session: Session, peer: tuple[bytes, ...], key: bytes) -> None:
    """The five exchanges, printed as they happen."""
    # 1. ping / pong
    for _ in range(20):  # warm up both ends
        _request(session, peer, "ping", 0)
    times = []
    for i in range(PINGS):
        t0 = time.perf_counter()
        assert _request(session, peer, "ping", i) == i
        times.append(time.perf_counter() - t0)
    print(f"1. ping/pong:  median round trip {statistics.median(times) * 1e6:.0f} us"
          f" over {PINGS} signed messages each way (min {min(times) * 1e6:.0f} us)")

    # 2. a closure runs on the other side
    scale = _make_scaler(3.0)
    reply = _request(session, peer, "apply", (scale, ([1, 2, 3],)))
    print(f"2. closure:    lambda xs: [factor*x + offset ...] with factor=3.0 ran in pid"
          f" {reply['pid']} -> {reply['result']}")
    reply = _request(session, peer, "apply", (_parse_ratio, ("22/7",)))
    print(f"               _parse_ratio('22/7') -> {reply['result']:.6f}")

    # 3. a large array, zero copy
    n = ARRAY_MIB * (1 << 20) // 8
    arr = np.linspace(0.0, 1.0, n)
    _request(session, peer, "array", arr[: 1 << 17])  # warm up the path
    t0 = time.perf_counter()
    reply = _request(session, peer, "array", arr)
    dt = time.perf_counter() - t0
    print(f"3. array:      {ARRAY_MIB} MiB float64 {reply['shape']} sent and checked in"
          f" {dt * 1e3:.0f} ms = {arr.nbytes / dt / 1e9:.2f} GB/s;"
          f" last element {reply['last']}")
    print(f"               receiver's array is backed by the message frame (zero copy):"
          f" {'yes' if reply['borrowed'] else 'no'}")
    del arr

    # 4. a remote exception comes back as data
    reply = _request(session, peer, "apply", (_parse_ratio, ("1/0",)))
    last_lines = reply["traceback"].rstrip().splitlines()[-3:]
    print(f"4. remote error: {reply['ename']}: {reply['evalue']} (pid {reply['pid']}),"
          " traceback ends:")
    for line in last_lines:
        print(f"               | {line}")

    # 5. a forged message is dropped, never answered
    forger = Session(session.socket, generate_key(), sender="forger")
    forger.send("ping", "let me in", identities=peer)
    stats = _request(session, peer, "stats")
    print(f"5. wrong key:  the forged ping got no answer; receiver's statistics: received"
          f" {stats['received']}, dropped {stats['dropped']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shoal wire-layer demo")
    parser.add_argument("--child", metavar="CONNECTION_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # keep in step with the child's log
    t_start = time.perf_counter()
    print("shoal demo: two processes exchanging signed messages through shoal.wire")
    key = generate_key()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as folder:
        try:
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            url = f"tcp://127.0.0.1:{port}"
            path = write_connection_file(
                Path(folder) / "demo.json", ConnectionInfo(urls={"demo": url}, key=key)
            )
            print(f"   connection file {path} (mode {path.stat().st_mode & 0o777:o}): {url},"
                  " HMAC-SHA256 key")
            session = Session(sock, key, sender="parent")
            proc = subprocess.Popen([sys.executable, __file__, "--child", str(path)])
            hello = session.recv(timeout=TIMEOUT)
            peer = hello.identities
            print(f"   started process {proc.pid}; it said {hello.msg_type!r} from pid"
                  f" {hello.content}")
            run_demo(session, peer, key)
            bye = _request(session, peer, "shutdown")
            code = proc.wait(TIMEOUT)
            print(f"6. shutdown:   process {bye} said 'bye' and exited with code {code}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            sock.close()
            ctx.term()
    print(f"done in {time.perf_counter() - t_start:.1f} s; no process left behind.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the second process was stopped.", file=sys.stderr)
        sys.exit(130)
