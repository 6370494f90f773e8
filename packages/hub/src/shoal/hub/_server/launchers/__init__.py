"""The ways a hub starts engines: ``--engines local|ssh|mpi|slurm`` (``base.py`` says
what they share; each launcher is a module of its own)."""

from __future__ import annotations

from .base import EngineLauncher, Launch, MakeLauncher, exit_cause
from .local import LocalEngines
from .mpi import MPIEngines
from .slurm import SlurmEngines
from .ssh import SSHEngines, parse_hosts

#: ``--engines`` name -> launcher.
LAUNCHERS: dict[str, type[EngineLauncher]] = {
    launcher.kind: launcher for launcher in (LocalEngines, SSHEngines, MPIEngines, SlurmEngines)
}

__all__ = [
    "LAUNCHERS",
    "EngineLauncher",
    "Launch",
    "LocalEngines",
    "MPIEngines",
    "MakeLauncher",
    "SSHEngines",
    "SlurmEngines",
    "exit_cause",
    "parse_hosts",
]
