"""Engines on this host: child processes of the hub, the default launcher.

Each engine is its own launch, so its exit (SIGCHLD wakes the routing thread) is that
engine's death, with its cause. They inherit the hub's stderr (``hub.log`` when
``Cluster`` or ``shoal cluster start`` started the hub) and end with it (``--parent-pid``).

Engines share this host's cores: unless the environment says otherwise, each engine's
math libraries (OpenMP, OpenBLAS, MKL, Accelerate, numexpr) get the cores divided by the
engines running here (at least one), as Dask does for its workers. Two engines on two
cores each running a two-thread matrix product would fight for the cores instead.
"""

from __future__ import annotations

import os
import subprocess

from .base import PYTHON, EngineLauncher, Launch, engine_command

__all__ = ["LocalEngines", "thread_limits"]

#: The variables math libraries read for their thread count when they load.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_limits(engines: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The thread variables for one of ``engines`` engines on this host: this host's
    cores (those this process may use) divided among them, at least one; a variable
    already set in ``environ`` (``os.environ``) is kept as it is."""
    environ = dict(os.environ) if environ is None else environ
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = str(max(1, (cores or 1) // max(1, engines)))
    return {name: environ.get(name, share) for name in THREAD_VARIABLES}


class LocalEngines(EngineLauncher):
    """Engine processes started on this host, each registering with the hub."""

    kind = "local"

    def start(self, n: int, first_id: int) -> list[Launch]:
        launches = []
        running = sum(launch.n for launch in self.launches.values() if not launch.ended)
        env = {**os.environ, **thread_limits(running + n)}
        for _ in range(n):
            launch = self._new(1, "localhost")
            cmd = engine_command(
                PYTHON,
                self.engine_file,
                launch.launch_id,
                self.log_level,
                ["--parent-pid", str(os.getpid())],
            )
            launch.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)  # noqa: S603
            launches.append(launch)
        return launches
