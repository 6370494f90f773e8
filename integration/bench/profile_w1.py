"""Where W1's time goes: py-spy samples the client, the hub and an engine during no-op
round trips, and this prints, per process, the share of samples per leaf function.

    hatch run bench:python integration/bench/profile_w1.py [--seconds 8] [--lb]

``--lb`` profiles load-balanced round trips (through the hub) instead of direct ones.
Needs py-spy (in the bench environment) and the right to trace the processes (root, or
``kernel.yama.ptrace_scope=0``). Samples in ``Poller.poll`` and ``Condition.wait`` are a
process waiting, not working.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shoal.hub import Cluster

RATE = 500  # samples per second


def noop() -> None:
    return None


def _record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(RATE)]
    cmd += ["-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _leaves(path: Path, top: int) -> list[str]:
    """The leaf functions with the most samples, as lines."""
    if not path.exists():
        return ["  (no samples: could py-spy trace it?)"]
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frame = stack.split(";")[-1]
        name, _, where = frame.partition(" (")
        leaf[f"{name} ({where.rsplit('/', 1)[-1]}"] += n
    lines = [f"  {total} samples ({total / RATE:.2f} s busy or waiting in a poll)"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--lb", action="store_true", help="load-balanced, through the hub")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shoal-profile-w1-"))
    with Cluster(n=1, profile_dir=str(folder / "profile")) as rc:
        view = rc.load_balanced_view() if args.lb else rc[rc.ids[0]]
        for _ in range(500):  # warm: direct sockets open, code paths hot
            view.apply_sync(noop)
        info = json.loads((folder / "profile" / "hub-client.json").read_text())
        pids = {"client": os.getpid(), "hub": int(info["pid"])}
        pids["engine"] = int(rc[rc.ids[0]].apply_sync(os.getpid))
        done = threading.Event()
        calls = 0

        def loop() -> None:
            nonlocal calls
            while not done.is_set():
                view.apply_sync(noop)
                calls += 1

        worker = threading.Thread(target=loop)
        start = time.perf_counter()
        worker.start()
        spies = [_record(pid, args.seconds, folder / f"{name}.txt") for name, pid in pids.items()]
        for spy in spies:
            spy.wait()
        done.set()
        worker.join()
        elapsed = time.perf_counter() - start
    kind = "load-balanced" if args.lb else "direct"
    print(f"W1 {kind}: {calls} round trips, {elapsed / calls * 1e6:.0f} us each (while sampled)")
    for name, pid in pids.items():
        print(f"== {name} (pid {pid})")
        print("\n".join(_leaves(folder / f"{name}.txt", args.top)))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
