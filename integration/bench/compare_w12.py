"""W1 and W2 of two versions of shoal in one run: a baseline commit against the tree.

    hatch run python integration/bench/compare_w12.py --baseline 46e441c

The baseline is checked out in a git worktree (in the system's temporary folder) and
run from its sources through PYTHONPATH, which comes before the editable installs; the
tree runs from this checkout's sources. Each repeat runs both, alternating which goes
first, each in a fresh process with its own cluster of two engines, so the machine's
noise falls on both alike. A raw pyzmq DEALER/ROUTER echo round trip is measured in
the same processes as a yardstick. Measurements, not tests: nothing fails here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("wire", "util", "engine", "hub", "arrays")

PROBE = r"""
import json, os, sys, tempfile, time, threading
import zmq
from shoal.hub import Cluster

def noop():
    return None

def us_per_call(n, call):
    t = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t) / n * 1e6

def raw_echo_us(n):
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()
    def echo():
        while not stop.is_set():
            if router.poll(50):
                router.send_multipart(router.recv_multipart())
    t = threading.Thread(target=echo); t.start()
    payload = b"x" * 400
    dealer.send(payload); dealer.recv()
    start = time.perf_counter()
    for _ in range(n):
        dealer.send(payload); dealer.recv()
    us = (time.perf_counter() - start) / n * 1e6
    stop.set(); t.join(); dealer.close(0); router.close(0); ctx.term()
    return us

n_rt, n_tasks = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory(prefix="shoal-w12-") as folder:
    cluster = Cluster(n=2, profile_dir=folder)
    rc = cluster.start_and_connect(timeout=60)
    try:
        direct = rc[rc.ids[0]]
        lb = rc.load_balanced_view()
        for _ in range(50):
            direct.apply_sync(noop); lb.apply_sync(noop)
        out = {
            "w1_direct_us": us_per_call(n_rt, lambda: direct.apply_sync(noop)),
            "w1_lb_us": us_per_call(n_rt, lambda: lb.apply_sync(noop)),
        }
        t = time.perf_counter()
        results = [lb.apply_async(noop) for _ in range(n_tasks)]
        for r in results:
            r.get(120)
        out["w2_tasks_per_s"] = n_tasks / (time.perf_counter() - t)
        out["raw_echo_us"] = raw_echo_us(n_rt)
    finally:
        rc.close()
        cluster.stop()
print("RESULT " + json.dumps(out))
"""


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` (made once, reused)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"shoal-baseline-{sha[:12]}"
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha],
            check=True,
            capture_output=True,
        )
    return path


def run(tree: Path, n_rt: int, n_tasks: int) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(tree / "packages" / x / "src") for x in LAYERS)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(n_rt), str(n_tasks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"the probe failed in {tree}:\n{proc.stdout}\n{proc.stderr}")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="a git revision, e.g. a commit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--roundtrips", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    trees = {"baseline": worktree(args.baseline), "tree": ROOT}
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "tree": []}
    for i in range(args.repeats):
        order = ["baseline", "tree"] if i % 2 == 0 else ["tree", "baseline"]
        for name in order:
            results[name].append(run(trees[name], args.roundtrips, args.tasks))
            print(f"repeat {i + 1}/{args.repeats} {name}: {results[name][-1]}", flush=True)
    keys = [
        ("w1_direct_us", "W1 direct apply(noop) round trip, us"),
        ("w1_lb_us", "W1 load-balanced apply(noop) round trip, us"),
        ("w2_tasks_per_s", f"W2 {args.tasks} no-op tasks at once, tasks/s"),
        ("raw_echo_us", "raw pyzmq DEALER/ROUTER echo, 400 B, us"),
    ]
    print(
        f"\nbaseline {args.baseline} vs tree, {args.repeats} interleaved repeats, median [min-max]:"
    )
    print("| workload | baseline | tree | tree/baseline |\n|---|---|---|---|")
    for key, label in keys:
        b = [r[key] for r in results["baseline"]]
        t = [r[key] for r in results["tree"]]
        ratio = statistics.median(t) / statistics.median(b)
        print(f"| {label} | {summary(b)} | {summary(t)} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
