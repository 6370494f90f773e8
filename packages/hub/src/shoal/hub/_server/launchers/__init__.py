"""The ways a hub starts engines: ``--engines local|ssh|mpi|slurm`` (``base.py`` says
what they share)."""

from __future__ import annotations

from .base import EngineLauncher, Launch, exit_cause
from .local import LocalEngines
from .ssh import SSHEngines, parse_hosts

__all__ = ["EngineLauncher", "Launch", "LocalEngines", "SSHEngines", "exit_cause", "parse_hosts"]
