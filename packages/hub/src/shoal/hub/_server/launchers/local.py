"""The engines a hub starts itself: local processes, children of the hub.

A hub may also serve engines it did not start (``python -m shoal.engine --register``
with its ``hub-engine.json``); those have no process here, and the heartbeats alone say
whether they live. The engines started here are watched as processes too: their exit
(SIGCHLD wakes the routing thread) is a death with its cause, and they are killed when
declared dead, and stopped when the hub stops. Nothing here waits for a process on the
routing thread, except the final stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

__all__ = ["LocalEngines", "exit_cause"]


class LocalEngines:
    """Engine processes started on this host with ``engine_file`` (the hub's engine
    connection file); each registers with the hub like any engine."""

    def __init__(self, engine_file: str, log_level: str) -> None:
        self.engine_file = engine_file
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # pid -> process, until reaped

    def start(self, n: int) -> list[int]:
        """Start ``n`` engines; their pids (they register later)."""
        pids = []
        for _ in range(n):
            cmd = [
                sys.executable,
                "-m",
                "shoal.engine",
                "--connection-file",
                self.engine_file,
                "--register",
                "--direct",
                "--parent-pid",
                str(os.getpid()),
                "--log-level",
                self.log_level,
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - our module
            self.procs[proc.pid] = proc
            pids.append(proc.pid)
        return pids

    def process(self, pid: int) -> subprocess.Popen[bytes] | None:
        """The process of an engine started here (None: not ours)."""
        return self.procs.get(pid)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc`` if it still runs; never waits (:meth:`reap` collects it)."""
        if proc.poll() is None:
            proc.kill()

    def reap(self, registered: Iterable[int]) -> None:
        """Forget the processes that ended, but for those of ``registered`` engines (their
        death is reported first, with its cause)."""
        keep = set(registered)
        for pid, proc in list(self.procs.items()):
            if pid not in keep and proc.poll() is not None:
                del self.procs[pid]

    def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every process to end, then SIGKILL the rest."""
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def exit_cause(proc: subprocess.Popen[bytes]) -> str | None:
    """How ``proc`` ended (``it was killed by SIGKILL``), or None while it runs."""
    code = proc.poll()
    if code is None:
        return None
    if code < 0:
        return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"
