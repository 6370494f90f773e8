"""Where W1's time goes: py-spy samples the client, the hub and an engine during no-op
round trips, and this prints, per process, the share of samples per leaf function.

    hatch run bench:python integration/bench/profile_w1.py [--seconds 8] [--lb] [--via-hub]
    hatch run bench:python integration/bench/profile_w1.py --cpu [--lb] [--via-hub]

``--lb`` profiles load-balanced round trips instead of direct ones; ``--via-hub`` uses a
``Client(direct=False)``, whose requests all pass through the hub. ``--cpu`` samples
nothing: it prints the CPU time each thread of the client, the hub and the engine spent
per round trip (from ``/proc``; the client's calling thread from ``time.thread_time``),
which is where the time goes without a sampler's own cost.
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
from typing import Any

from shoal.hub import Client, Cluster

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


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid`` (``name/tid``), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        cpu[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _cpu_per_call(view: Any, pids: dict[str, int], calls: int) -> None:
    """Print each thread's CPU time per round trip."""
    before = {name: _thread_cpu(pid) for name, pid in pids.items()}
    caller = time.thread_time()
    start = time.perf_counter()
    for _ in range(calls):
        view.apply_sync(noop)
    wall = time.perf_counter() - start
    caller = time.thread_time() - caller
    after = {name: _thread_cpu(pid) for name, pid in pids.items()}
    print(f"{wall / calls * 1e6:.0f} us per round trip (wall); CPU per round trip:")
    print(f"  client calling thread (thread_time): {caller / calls * 1e6:6.0f} us")
    for name in pids:
        for thread, seconds in sorted(after[name].items()):
            used = seconds - before[name].get(thread, 0.0)
            if used > 0:
                print(f"  {name:7s} {thread:24s} {used / calls * 1e6:6.0f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--lb", action="store_true", help="load-balanced, through the hub")
    parser.add_argument("--via-hub", action="store_true", help="a Client(direct=False)")
    parser.add_argument("--cpu", action="store_true", help="CPU per thread, no sampling")
    parser.add_argument("--calls", type=int, default=5000, help="round trips for --cpu")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shoal-profile-w1-"))
    with Cluster(n=1, profile_dir=str(folder / "profile")) as first:
        rc = Client(url_file=first.url_file, direct=False) if args.via_hub else first
        view = rc.load_balanced_view() if args.lb else rc[rc.ids[0]]
        for _ in range(500):  # warm: direct sockets open, code paths hot
            view.apply_sync(noop)
        info = json.loads((folder / "profile" / "hub-client.json").read_text())
        pids = {"client": os.getpid(), "hub": int(info["pid"])}
        pids["engine"] = int(rc[rc.ids[0]].apply_sync(os.getpid))
        if args.cpu:
            _cpu_per_call(view, pids, args.calls)
            if rc is not first:
                rc.close()
            shutil.rmtree(folder, ignore_errors=True)
            return 0
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
        if rc is not first:
            rc.close()
    kind = "load-balanced" if args.lb else "direct"
    print(f"W1 {kind}: {calls} round trips, {elapsed / calls * 1e6:.0f} us each (while sampled)")
    for name, pid in pids.items():
        print(f"== {name} (pid {pid})")
        print("\n".join(_leaves(folder / f"{name}.txt", args.top)))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
