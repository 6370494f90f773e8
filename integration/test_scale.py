"""Many engines at once: 100 engines registering in the same instant.

ipyparallel reports trouble with registration beyond about 100 engines. Here the
engines are forked from one process that imported ``shoal.engine`` already, held at a
gate, and let go together, so the hub sees the burst itself (and not 100 interpreters
starting one after another on two cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal.hub.testing import ClusterStarter, wait_processes_gone, wait_until

pytestmark = pytest.mark.timeout(300)

ENGINES = 100

# Forks ENGINES children that wait at a gate (a pipe), then let them all go at once and
# print the moment it did; each child is `python -m shoal.engine --register`.
_FORKER = textwrap.dedent(
    """
    import os, sys, time
    import shoal.engine

    engine_file, count = sys.argv[1], int(sys.argv[2])
    gate_r, gate_w = os.pipe()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)  # the gate
            code = shoal.engine.main(
                ["--connection-file", engine_file, "--register", "--direct",
                 "--parent-pid", str(os.getppid())]
            )
            os._exit(code)
        children.append(pid)
    os.close(gate_r)
    print("forked", " ".join(map(str, children)), flush=True)
    sys.stdin.readline()  # the test says go
    print("go", time.monotonic(), flush=True)
    os.write(gate_w, b"x" * count)
    for pid in children:
        os.waitpid(pid, 0)
    """
)


def _ended(pids: list[int]) -> list[int]:
    return [pid for pid in pids if not Path(f"/proc/{pid}").exists()]


def _log(folder: Path) -> str:
    path = folder / "hub" / "hub.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(none)"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def test_100_engines_register_at_once_within_5_s(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path / "hub", 0) as (proc, rc):
        idle_rss = _rss_mb(proc.pid)
        forker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _FORKER,
                str(tmp_path / "hub" / "hub-engine.json"),
                str(ENGINES),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert forker.stdin is not None
        assert forker.stdout is not None
        children: list[int] = []
        try:
            words = forker.stdout.readline().split()
            assert words[:1] == ["forked"], words
            children = [int(w) for w in words[1:]]
            forker.stdin.write("go\n")
            forker.stdin.flush()
            words = forker.stdout.readline().split()
            assert words[:1] == ["go"], words
            gate = float(words[1])  # time.monotonic() is one clock for the whole machine
            wait_until(
                lambda: len(rc.ids) == ENGINES,
                timeout=60,
                message=lambda: (
                    f"{len(rc.ids)} of {ENGINES} engines registered; the"
                    f" children that ended: {_ended(children)}; the hub's log:\n{_log(tmp_path)}"
                ),
            )
            took = time.monotonic() - gate
            busy_rss = _rss_mb(proc.pid)
            print(
                f"{ENGINES} engines ready {took:.2f} s after the gate; hub RSS"
                f" {idle_rss:.0f} MB idle, {busy_rss:.0f} MB with them"
            )
            assert took <= 5.0, f"{ENGINES} engines took {took:.2f} s to register"
            assert len(set(rc[:].apply_sync(os.getpid))) == ENGINES
            assert busy_rss < idle_rss + 200, f"the hub grew to {busy_rss:.0f} MB"
        finally:
            if forker.poll() is None and not children:
                forker.kill()
            rc.shutdown()  # the hub tells every engine to end
            wait_until(lambda: forker.poll() is not None, timeout=60)
            forker.stdin.close()
            forker.stdout.close()
            wait_processes_gone(children, timeout=60)
