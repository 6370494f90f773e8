"""Server processes for the benchmarks: ``python _servers.py KIND LINK``.

``LINK`` is ``tcp`` (127.0.0.1, random port) or ``ipc:DIR`` (a socket file in DIR).
Each server binds, prints ``READY <address>`` on stdout, then serves until terminated:

* ``raw``: a zmq ROUTER that echoes small messages; a frame of 1 MiB or more is read as
  float64 (length and last element checked) and answered with a short ``ok``.
* ``shoal``: the same through a :class:`shoal.wire.Session`; an array content is checked
  (shape, last element) and answered with a short ``ok``.
* ``mp-conn``: a ``multiprocess.connection.Listener`` that echoes (``ipc:`` = AF_UNIX).
* ``shoal-conn``: a ``shoal.wire._connection.Listener`` that echoes.
* ``broker``: a raw ROUTER/ROUTER relay, the hub's shape without its bookkeeping. It
  binds a client side and a worker side and prints ``READY <client url> <worker url>``;
  a client message goes to the next worker in turn, a worker's answer back to its client.
* ``echo-worker``: (``LINK`` is a broker's worker url) a DEALER that registers with the
  broker and echoes, except that a frame of 1 MiB or more is checked as ``raw`` does and
  answered with a short ``ok``.

The signing key / authkey comes in the ``SHOAL_BENCH_KEY`` environment variable. A
watchdog thread exits the process if its parent goes away.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

BIG = 1 << 20


def _watch_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _ready(address: str) -> None:
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


def _bind(sock: Any, link: str, name: str) -> str:
    if link == "tcp":
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"
    folder = link.removeprefix("ipc:")
    url = f"ipc://{folder}/{name}.sock"
    sock.bind(url)
    return url


def _echo_or_check(sock: Any, address: str, copy: bool) -> None:
    """``raw`` and ``echo-worker``: READY, then echo each frame or check and ack a big one."""
    import numpy as np  # before READY: a raw server's start-up includes it

    _ready(address)
    while True:
        route, frame = sock.recv_multipart(copy=False)
        view = frame.buffer
        if view.nbytes >= BIG:
            arr = np.frombuffer(view, dtype=np.float64)
            ok = arr.shape[0] * 8 == view.nbytes and arr[-1] == arr[-1]
            sock.send_multipart([route, b"ok" if ok else b"bad"])
        else:
            sock.send_multipart([route, frame], copy=copy)


def serve_raw(link: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    _echo_or_check(sock, _bind(sock, link, "raw"), copy=True)


def serve_shoal(link: str, key: bytes) -> None:
    import numpy as np
    import zmq

    from shoal.wire import Session

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    session = Session(sock, key, sender="bench-server")
    _ready(_bind(sock, link, "shoal"))
    while True:
        msg = session.recv()
        content = msg.content
        if type(content) is np.ndarray:
            ok = bool(content.ndim == 1 and content[-1] == content[-1])
            session.send("ok", ok, parent=msg, identities=msg.identities)
        else:
            session.send("echo", content, parent=msg, identities=msg.identities)
        del msg, content


def serve_broker(link: str) -> None:
    import zmq

    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    back = ctx.socket(zmq.ROUTER)
    for sock in (front, back):
        sock.linger = 0
    front_url = _bind(front, link, "broker-front")
    back_url = _bind(back, link, "broker-back")
    _ready(f"{front_url} {back_url}")
    workers: list[bytes] = []
    turn = 0
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart(copy=False)
            if sock is back:
                if len(frames) == 2 and frames[1].bytes == b"hello":  # a worker registers
                    workers.append(frames[0].bytes)
                    back.send_multipart([frames[0].bytes, b"welcome"])
                else:  # [worker, client, *payload]
                    front.send_multipart(frames[1:], copy=False)
            elif workers:  # [client, *payload]
                worker = workers[turn % len(workers)]
                turn += 1
                back.send_multipart([worker, *frames], copy=False)


def serve_echo_worker(backend: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(backend)
    sock.send(b"hello")
    if sock.recv() != b"welcome":
        raise SystemExit("the broker did not welcome this worker")
    _echo_or_check(sock, backend, copy=False)


def _echo(conn: Any) -> None:
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass
    finally:
        conn.close()


def serve_mp_conn(link: str, key: bytes) -> None:
    from multiprocess.connection import Listener

    if link == "tcp":
        listener = Listener(("127.0.0.1", 0), family="AF_INET", authkey=key)
        host, port = listener.address
        address = f"tcp:{host}:{port}"
    else:
        path = os.path.join(link.removeprefix("ipc:"), "mp.sock")
        listener = Listener(path, family="AF_UNIX", authkey=key)
        address = f"unix:{path}"
    _ready(address)
    while True:
        _echo(listener.accept())


def serve_shoal_conn(link: str, key: bytes) -> None:
    from shoal.wire._connection import Listener

    if link == "tcp":
        listener = Listener("tcp://127.0.0.1:0", authkey=key)
    else:
        listener = Listener(f"ipc://{link.removeprefix('ipc:')}/conn.sock", authkey=key)
    _ready(str(listener.address))
    while True:
        _echo(listener.accept())


def main(argv: list[str]) -> None:
    kind, link = argv
    key = os.environ.get("SHOAL_BENCH_KEY", "").encode("ascii")
    _watch_parent()
    if kind == "raw":
        serve_raw(link)
    elif kind == "shoal":
        serve_shoal(link, key)
    elif kind == "mp-conn":
        serve_mp_conn(link, key)
    elif kind == "shoal-conn":
        serve_shoal_conn(link, key)
    elif kind == "broker":
        serve_broker(link)
    elif kind == "echo-worker":
        serve_echo_worker(link)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
