"""Engines started by slurm: being written (issue 16)."""

from __future__ import annotations

from .base import EngineLauncher, Launch

__all__ = ["SlurmEngines"]


class SlurmEngines(EngineLauncher):
    """Not written yet: refuses to start."""

    kind = "slurm"

    def start(self, n: int, first_id: int) -> list[Launch]:
        raise NotImplementedError("the slurm launcher is not written yet")
