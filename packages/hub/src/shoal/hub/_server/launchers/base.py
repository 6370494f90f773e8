"""What every way of starting engines has in common: one interface for the hub.

A launcher starts engines somewhere (this host, other hosts over SSH, an MPI job, a
Slurm job) and answers for what it started: :meth:`EngineLauncher.start`,
:meth:`~EngineLauncher.poll`, :meth:`~EngineLauncher.signal`,
:meth:`~EngineLauncher.stop` and :meth:`~EngineLauncher.logs`. What one ``start`` makes is a
:class:`Launch`: a local process (an engine, an ``ssh`` client, ``mpiexec``) or a batch
job that runs one or several engines. Every engine it starts is told the launch's id and
says it when it registers, so the hub knows which launch carries which engine: when the
launch ends, its engines are lost, with the cause the launcher gives.

Everything here runs on the hub's routing thread and must not block it: ``poll`` reads
state, ``signal`` and ``start`` start processes and do not wait for them, and only
``stop`` (at the hub's end) waits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

__all__ = ["EngineLauncher", "Launch", "MakeLauncher", "engine_command", "exit_cause", "tail"]

log = logging.getLogger("shoal.hub")


@dataclasses.dataclass(eq=False)
class Launch:
    """What one start made: a process or a job that runs ``n`` engines on ``host``."""

    launch_id: str
    n: int
    host: str
    #: The local process that carries it (the engine, ``ssh``, ``mpiexec``), if any.
    proc: subprocess.Popen[bytes] | None = None
    #: Where its output goes (stdout and stderr), if it is kept apart.
    output: str | None = None
    #: The batch system's id of the job (Slurm), if any.
    job_id: str | None = None
    #: How it ended, once it has (set by :meth:`EngineLauncher.poll`).
    ended: str | None = None
    #: The pids of its engines on their host, as they registered (set by the hub).
    pids: list[int] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)


class EngineLauncher(ABC):
    """Starts engines with ``engine_file`` (the hub's engine connection file).

    Parameters
    ----------
    engine_file : str
        The connection file engines read; launchers that reach other hosts copy it.
    folder : str
        The hub's folder: launchers keep their scripts and their launches' output here.
    log_level : str
        The engines' log level (a number, as a string).
    """

    #: The name ``--engines`` and ``Cluster(engines=...)`` know it by.
    kind: ClassVar[str]

    # -- its command-line options (``python -m shoal.hub --engines KIND ...``) ----------
    @classmethod  # noqa: B027 - a launcher may have no options
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this launcher's options to the hub's command line (prefixed or documented
        as this launcher's: every launcher's options are in one group)."""

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[MakeLauncher, int]:
        """The launcher the command line asks for, and how many engines to start first
        (``args.n``, or this launcher's own default). ``ValueError`` names a bad option."""
        return cls, 0 if args.n is None else args.n

    def __init__(self, engine_file: str, folder: str, log_level: str) -> None:
        self.engine_file = engine_file
        self.folder = folder
        self.log_level = log_level
        self.launches: dict[str, Launch] = {}
        # Short commands started for a launch (kill over ssh, scancel), never waited for
        # on the routing thread: reaped as they end, waited for at stop.
        self._helpers: list[subprocess.Popen[bytes]] = []

    # -- the interface ------------------------------------------------------------------
    @abstractmethod
    def start(self, n: int, first_id: int) -> list[Launch]:
        """Start ``n`` engines; never waits for them to register. ``first_id`` is the
        engine id the hub gives next (launchers whose engines ask for ids use it)."""

    def poll(self, launch: Launch) -> str | None:
        """How ``launch`` ended (``it exited with code 1``), or None while it runs.
        Cheap: it reads state, it never waits."""
        if launch.ended is None and launch.proc is not None:
            launch.ended = exit_cause(launch.proc)
        return launch.ended

    def signal(self, launch: Launch, signum: int, pid: int | None = None) -> None:
        """Send ``signum`` to the engine ``pid`` of ``launch`` (an engine's pid on its
        host), or to the whole launch; never waits."""
        if launch.proc is not None and launch.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                launch.proc.send_signal(signum)

    def stop(self, grace: float) -> None:
        """The hub ends: wait up to ``grace`` seconds for every launch to end (the hub
        asked its engines to shut down), then end the rest for good."""
        deadline = time.monotonic() + grace
        for launch in self.launches.values():
            if launch.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                launch.proc.wait(max(0.0, deadline - time.monotonic()))
            if launch.proc.poll() is None:
                self.signal(launch, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    launch.proc.wait(5.0)

    def logs(self, launch: Launch, lines: int = 20) -> str:
        """The last ``lines`` lines of what ``launch`` printed ('' when it is not kept)."""
        return "" if launch.output is None else tail(launch.output, lines)

    # -- for the hub --------------------------------------------------------------------
    def get(self, launch_id: object) -> Launch | None:
        """The launch an engine named at registration (None: not one of ours)."""
        return self.launches.get(launch_id) if isinstance(launch_id, str) else None

    def reap(self, carrying: Iterable[Launch]) -> None:
        """Forget the launches that ended, but for those still ``carrying`` registered
        engines (their deaths are reported first, with the cause)."""
        keep = {id(launch) for launch in carrying}
        for key, launch in list(self.launches.items()):
            if id(launch) not in keep and self.poll(launch) is not None:
                del self.launches[key]

    def describe(self) -> str:
        """A line for the hub's log: where this launcher starts engines."""
        return self.kind

    # -- for subclasses -----------------------------------------------------------------
    def _new(self, n: int, host: str, **kw: object) -> Launch:
        launch = Launch(f"{self.kind}-{uuid.uuid4().hex[:12]}", n, host, **kw)  # type: ignore[arg-type]
        self.launches[launch.launch_id] = launch
        return launch

    def _helper(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``cmd`` and never wait for it here (reaped later); a command that cannot
        start is logged."""
        self._reap_helpers()
        try:
            proc = subprocess.Popen(  # noqa: S603 - the launcher's own commands
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            log.warning("cannot run %s: %s", shlex.join(cmd), exc)
            return
        self._helpers.append(proc)

    def _reap_helpers(self) -> None:
        self._helpers = [h for h in self._helpers if h.poll() is None]

    def _wait_helpers(self, timeout: float = 5.0) -> None:
        """At stop: wait for each helper up to ``timeout`` seconds, then kill it."""
        for helper in self._helpers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                helper.wait(timeout)
            if helper.poll() is None:
                helper.kill()
                helper.wait()
        self._helpers.clear()

    def _output_file(self, launch_id: str) -> str:
        """A file in the hub's folder for a launch's output."""
        folder = os.path.join(self.folder, "launches")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return os.path.join(folder, f"{launch_id}.log")


#: Makes a launcher from the engine connection file, the hub's folder and the engines'
#: log level: a launcher class, or a ``functools.partial`` of one with its options.
MakeLauncher = Callable[[str, str, str], EngineLauncher]


def engine_command(
    python: str,
    engine_file: str,
    launch_id: str,
    log_level: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one engine that registers with its hub and says its launch."""
    return [
        python,
        "-m",
        "shoal.engine",
        "--connection-file",
        engine_file,
        "--register",
        "--direct",
        "--launch-id",
        launch_id,
        "--log-level",
        log_level,
        *extra,
    ]


def exit_cause(proc: subprocess.Popen[bytes]) -> str | None:
    """How ``proc`` ended (``it was killed by SIGKILL``), or None while it runs."""
    code = proc.poll()
    if code is None:
        return None
    if code < 0:
        return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


PYTHON = sys.executable
