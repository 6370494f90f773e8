"""Engines on this host: child processes of the hub, the default launcher.

Each engine is its own launch, so its exit (SIGCHLD wakes the routing thread) is that
engine's death, with its cause. They inherit the hub's stderr (``hub.log`` when
``Cluster`` or ``shoal cluster start`` started the hub) and end with it (``--parent-pid``).
"""

from __future__ import annotations

import os
import subprocess

from .base import PYTHON, EngineLauncher, Launch, engine_command

__all__ = ["LocalEngines"]


class LocalEngines(EngineLauncher):
    """Engine processes started on this host, each registering with the hub."""

    kind = "local"

    def start(self, n: int, first_id: int) -> list[Launch]:
        launches = []
        for _ in range(n):
            launch = self._new(1, "localhost")
            cmd = engine_command(
                PYTHON,
                self.engine_file,
                launch.launch_id,
                self.log_level,
                ["--parent-pid", str(os.getpid())],
            )
            launch.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - ours
            launches.append(launch)
        return launches
