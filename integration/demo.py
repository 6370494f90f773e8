"""shoal demo: a local cluster on this machine's cores (``hatch run demo``).

1. start a hub and one engine per core (timed),
2. run code and a closure on every engine, and time a round trip,
3. a load-balanced map with a progress bar,
4. the multiprocess ``Pool`` API, running on the cluster,
5. a remote exception, with the engine's traceback,
6. a numpy array pushed to an engine and pulled back (GB/s, through shared memory),
7. a dict kept on an engine and used through a proxy,
8. a 128 MiB array made and computed on in blocks on the engines (shoal.arrays),
9. stop the cluster, and check that no process is left behind.

The cluster lives in a temporary profile folder, so it never touches a cluster of yours.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np

import shoal.arrays as sa
from shoal.hub import Client, Cluster, ObjectHub, RemoteError, gather, scatter


def slow_square(x: int) -> int:
    """A task that takes a little while, so the progress bar has something to show."""
    import time  # runs on the engine

    time.sleep(0.05)
    return x * x


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def broken(x: float) -> float:
    return x / (x - x)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _push_pull(rc: Client) -> None:
    a = np.random.default_rng(0).random(16 * 1024 * 1024)  # 128 MiB
    t = time.perf_counter()
    rc[0].push({"a": a}, block=True)
    back = rc[0].pull("a", block=True)
    seconds = time.perf_counter() - t
    same = bool(np.array_equal(a, back))
    print(
        f"6. 128 MiB array pushed and pulled back in {seconds:.2f} s"
        f" ({2 * a.nbytes / seconds / 1e9:.2f} GB/s), equal: {same}"
    )


def _arrays(rc: Client) -> None:
    x = sa.random((4096, 4096), seed=0)  # 128 MiB, made in blocks on the engines
    received = rc.bytes_received
    t = time.perf_counter()
    ones = np.sin(x) ** 2 + np.cos(x) ** 2  # computed where the blocks are
    total = float(ones.sum())
    seconds = time.perf_counter() - t
    print(
        f"8. a 128 MiB DistArray in {len(x.blocks)} blocks on engines {list(x.engines)}:"
        f" sin^2 + cos^2 summed to {total:.0f} in {seconds:.2f} s,"
        f" {rc.bytes_received - received} bytes to this session"
    )


def main() -> int:
    n = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as folder:
        start = time.perf_counter()
        cluster = Cluster(n=n, profile_dir=folder)
        with cluster as rc:
            print(f"1. cluster: a hub and {n} engines ready in {time.perf_counter() - start:.2f} s")
            hub_pid = rc.hub_pid
            pids = rc[:].apply_sync(os.getpid)

            view = rc[:]
            view.execute("import socket; host = socket.gethostname()", block=True)
            scale = 3
            results = view.apply_sync(lambda x: x * scale, 14)  # a closure, sent by value
            times = []
            for _ in range(200):
                t = time.perf_counter()
                rc[0].apply_sync(len, "")
                times.append(time.perf_counter() - t)
            median_us = statistics.median(times) * 1e6
            print(f"2. on every engine: pids {pids}, hosts {view['host']},")
            print(f"   a closure gave {results}; round trip median {median_us:.0f} us")

            lb = rc.load_balanced_view()
            t = time.perf_counter()
            squares = lb.map_async(slow_square, range(40), chunksize=1)
            squares.wait_interactive()
            total = sum(squares.get())
            elapsed = time.perf_counter() - t
            print(
                f"3. load-balanced map of 40 tasks of 50 ms: sum {total} in {elapsed:.2f} s"
                f" ({squares.serial_time:.2f} s of engine time)"
            )

            with rc.pool() as pool:
                t = time.perf_counter()
                steps = pool.map(collatz_steps, range(1, 20_001), chunksize=2_000)
                print(
                    f"4. Pool.map over 20,000 numbers: longest Collatz chain {max(steps)} steps"
                    f" (from {steps.index(max(steps)) + 1}) in {time.perf_counter() - t:.2f} s"
                )

            try:
                rc[0].apply_sync(broken, 1.0)
            except RemoteError as err:
                print(f"5. remote error from engine {err.engine_id}: {err.ename}: {err.evalue}")
                for line in err.traceback.rstrip().splitlines():
                    print(f"   | {line}")

            _push_pull(rc)

            inventory = scatter({"apples": 3}, destination=0)  # kept on engine 0
            inventory["pears"] = 5  # each call runs there
            inventory.update(plums=2)
            print(
                f"7. a {type(inventory).__name__} on engine {inventory.__engine_id__}:"
                f" {len(inventory)} keys, gathered {gather(inventory)};"
                f" objects per engine {ObjectHub().counts()}"
            )

            _arrays(rc)
            t = time.perf_counter()
        stopped = time.perf_counter() - t
        left = [p for p in [hub_pid, *pids] if p is not None and _alive(p)]
        print(
            f"9. cluster stopped in {stopped:.2f} s;"
            f" {'no process left behind' if not left else f'STILL ALIVE: {left}'}"
        )
        return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
