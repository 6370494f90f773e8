"""Engines in MPI jobs: ``--engines mpi -n 8 [--mpiexec "mpiexec --oversubscribe"]``.

Each :meth:`MPIEngines.start` runs one ``mpiexec -n N python -m shoal.engine ...
--id-from-rank FIRST``, in a session of its own, its output (and its ranks') in
``<hub folder>/launches/<launch id>.log``. That ``mpiexec`` is one :class:`Launch` of
``N`` engines: each rank asks the hub for engine id ``FIRST + rank``, so on a hub with
no other engines the ids are the ranks of ``MPI.COMM_WORLD``, and mpi4py works in the
engines (a collective needs every rank of the job in it: a DirectView on all of them).
Each start is an MPI job of its own, with its own ``COMM_WORLD``.

An MPI job lives and dies as a whole, and the rules follow from that:

* ``poll`` is ``mpiexec``'s exit, and all the engines of the launch end with it.
* One engine (``signal`` with a pid, the hub's SIGKILL of a lost engine) is signalled by
  pid on this host, and only if that process's command line carries the launch id
  (pids are per host; ranks elsewhere, through a hostfile, are out of reach and end by
  themselves when the hub's pings stop). MPI then usually ends the whole job: MPICH and
  Open MPI SIGKILL every rank when one dies by a signal, and so when one exits without
  ``MPI_Finalize`` after initializing MPI (importing ``mpi4py.MPI``). A rank that never
  initialized MPI may exit alone; the others go on.
* ``remove_engines`` of one engine: engines exit with ``os._exit``, never waiting in
  ``MPI_Finalize`` (which waits for every rank, spinning). Before any MPI use the
  engine leaves alone; after, MPI ends its whole launch, and the hub reports the
  others lost with ``mpiexec``'s exit.
* The whole launch is signalled through ``mpiexec``, which passes SIGTERM and SIGINT
  on to its ranks (an idle engine ignores SIGINT: use SIGTERM). The ranks are in no
  process group of ``mpiexec``'s: a SIGKILL also goes to every registered rank, since
  Open MPI's ``mpiexec`` orphans ranks that never initialized MPI when it is SIGKILLed.
* ``stop`` waits up to ``grace`` for every ``mpiexec`` to end (the hub asked each
  registered engine to shut down; a launch with ranks that never registered is not
  waited for), SIGTERMs those left, 2 s later SIGKILLs them, and last SIGKILLs every
  process of this host whose command line is an engine of one of our launches. Every
  wait is bounded: at most ``grace`` + 6 s.
* The default ``mpiexec`` is the one beside this Python (the ``mpich`` wheel puts it
  there): another MPI's ``mpiexec`` does not speak to the MPI library mpi4py loads and
  starts N jobs of one rank each. A bare command name (``--mpiexec "mpiexec -v"``) is
  looked up there first too, then on ``PATH``, as if this Python's environment were
  activated; give a path for another.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .base import PYTHON, EngineLauncher, Launch, MakeLauncher, engine_command, exit_cause, tail

__all__ = ["MPIEngines", "find_command"]

log = logging.getLogger("shoal.hub")

TERM_WAIT = 2.0  # s for mpiexec to end after SIGTERM (Open MPI escalates to SIGKILL at 1 s)
KILL_WAIT = 2.0  # s for mpiexec and the ranks to be gone after SIGKILL

# What MPICH's and Open MPI's mpiexec print when a rank's end ended the job.
_MPICH_RANK = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_MPICH_WHY = re.compile(r"EXIT STRING: (.+)")
_OMPI = re.compile(
    r"(?:noticed that|exited due to) (process rank \d+ with PID \d+ on\s+node [^.]*)"
)


def find_command(name: str) -> str | None:
    """``name`` as this Python's environment would run it: its ``bin`` folder first
    (a venv's ``mpiexec`` matches its MPI library), then ``PATH``; a path stays."""
    if os.sep in name:
        return name
    beside = Path(PYTHON).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


class MPIEngines(EngineLauncher):
    """Engines as the ranks of ``mpiexec`` jobs: one job of ``n`` ranks per :meth:`start`.

    Parameters
    ----------
    mpiexec : sequence of str, optional
        The mpiexec command and its options, e.g. ``["mpiexec", "--oversubscribe"]``;
        a bare name is looked up beside this Python first (:func:`find_command`).
        Default: ``["mpiexec"]``.
    """

    kind = "mpi"

    def __init__(
        self,
        engine_file: str,
        folder: str,
        log_level: str,
        *,
        mpiexec: Sequence[str] = ("mpiexec",),
    ) -> None:
        # Ranks may run elsewhere (a hostfile) and read the file at this path.
        super().__init__(os.path.abspath(engine_file), os.path.abspath(folder), log_level)
        if not mpiexec:
            raise ValueError("mpiexec is empty; give the command, e.g. ['mpiexec']")
        self.mpiexec = [find_command(mpiexec[0]) or mpiexec[0], *mpiexec[1:]]
        self._next_id = 0  # ids asked for by launches not yet registered: no overlap
        self._all: dict[str, Launch] = {}  # every launch, reaped or not (for stop)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--mpiexec",
            default=None,
            help='mpi: the mpiexec command, e.g. "mpiexec --oversubscribe" (default:'
            " the mpiexec beside this Python, else on PATH)",
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[MakeLauncher, int]:
        mpiexec = shlex.split(args.mpiexec) if args.mpiexec is not None else ["mpiexec"]
        if not mpiexec:
            raise ValueError("--mpiexec is empty; give the command, e.g. --mpiexec mpiexec")
        return functools.partial(cls, mpiexec=mpiexec), 0 if args.n is None else args.n

    def describe(self) -> str:
        return f"mpiexec ({shlex.join(self.mpiexec)})"

    # -- the interface ------------------------------------------------------------------
    def start(self, n: int, first_id: int) -> list[Launch]:
        if n <= 0:
            return []
        # Two starts before the first one's engines registered get the same first_id.
        base = max(first_id, self._next_id)
        launch = self._new(n, "mpiexec")
        cmd = [
            *self.mpiexec,
            "-n",
            str(n),
            *engine_command(
                PYTHON,
                self.engine_file,
                launch.launch_id,
                self.log_level,
                ["--id-from-rank", str(base)],
            ),
        ]
        launch.output = self._output_file(launch.launch_id)
        try:
            with open(launch.output, "ab") as out:
                launch.proc = subprocess.Popen(  # noqa: S603 - the user's mpiexec, our engines
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C at the hub's terminal is the hub's
                )
        except OSError as exc:
            del self.launches[launch.launch_id]  # nothing runs: nothing to report
            raise RuntimeError(
                f"cannot run {self.mpiexec[0]}: {exc}; install an MPI (pip install mpich"
                " puts mpiexec beside this Python) or give the command with --mpiexec"
            ) from None
        self._next_id = base + n
        launch.host = f"mpiexec pid {launch.proc.pid}"
        self._all[launch.launch_id] = launch
        log.info(
            "mpiexec pid %d: %d engines, ids from %d (%s)",
            launch.proc.pid,
            n,
            base,
            launch.launch_id,
        )
        return [launch]

    def poll(self, launch: Launch) -> str | None:
        if launch.ended is None and launch.proc is not None:
            how = exit_cause(launch.proc)
            if how is not None:  # once: the output is read only here
                reason = _mpi_reason(launch.output)
                launch.ended = (
                    f"its mpiexec (pid {launch.proc.pid}) {how.removeprefix('it ')}"
                    + (f" (MPI: {reason})" if reason else "")
                    + f"; the {launch.n} engines of {launch.launch_id} end with it"
                )
        return launch.ended

    def signal(self, launch: Launch, signum: int, pid: int | None = None) -> None:
        if pid is not None:
            # This rank alone, if it runs here; MPI usually takes its job down after it.
            _signal_engine(launch.launch_id, pid, signum)
            return
        proc = launch.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)  # mpiexec passes SIGTERM and SIGINT to the ranks
        if signum == signal.SIGKILL:  # a SIGKILLed mpiexec may leave ranks behind
            for rank_pid in launch.pids:
                _signal_engine(launch.launch_id, rank_pid, signum)

    def stop(self, grace: float) -> None:
        live = [la for la in self._all.values() if la.proc is not None and la.proc.poll() is None]
        # The hub asked its registered engines to shut down; unregistered ranks were not.
        deadline = time.monotonic() + max(0.0, grace)
        for launch in live:
            if len(launch.pids) >= launch.n:
                _wait(launch, deadline)
        for step, wait in ((signal.SIGTERM, TERM_WAIT), (signal.SIGKILL, KILL_WAIT)):
            live = [la for la in live if la.proc is not None and la.proc.poll() is None]
            if not live:
                break
            log.info(
                "sending %s to mpiexec %s",
                step.name,
                ", ".join(f"pid {la.proc.pid}" for la in live if la.proc is not None),
            )
            for launch in live:
                self.signal(launch, step)
            deadline = time.monotonic() + wait
            for launch in live:
                _wait(launch, deadline)
        # Ranks outliving their mpiexec (not in its process group): SIGKILL by pid.
        left = _engines_of(self._all)
        if left:
            log.warning("killing engine processes left by mpiexec: pids %s", sorted(left))
            for pid, launch_id in left.items():
                _signal_engine(launch_id, pid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                left = {p: i for p, i in left.items() if _is_engine(i, p)}
            if left:
                log.warning("engine processes %s outlived SIGKILL", sorted(left))


def _wait(launch: Launch, deadline: float) -> None:
    if launch.proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            launch.proc.wait(max(0.0, deadline - time.monotonic()))


def _cmdline(pid: int) -> list[bytes]:
    """Process ``pid``'s arguments on this host ([] when it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _is_engine(launch_id: str, pid: int) -> bool:
    """Whether ``pid`` is, on this host, an engine process of launch ``launch_id``
    (not ``mpiexec``, whose command line has the launch id too)."""
    args = _cmdline(pid)
    return args[1:3] == [b"-m", b"shoal.engine"] and launch_id.encode() in args


def _signal_engine(launch_id: str, pid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid`` if it is an engine of ``launch_id`` on this host;
    whether it was sent. Through a pidfd opened before the check, so that a pid reused
    meanwhile is never signalled. Without pidfds (not Linux) there is no ``/proc`` to
    check either: nothing is sent, the ranks are reached through ``mpiexec`` only."""
    if pid <= 0:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds, or gone
        return False
    try:
        sent = _is_engine(launch_id, pid)
        if sent:
            signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        sent = False
    finally:
        os.close(pidfd)
    return sent


def _engines_of(launches: Iterable[str]) -> dict[int, str]:
    """The engine processes of ``launches`` (launch ids) on this host: pid -> launch id."""
    wanted = {launch_id.encode(): launch_id for launch_id in launches}
    found = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc: the registered pids were signalled already
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        for arg in _cmdline(pid):
            launch_id = wanted.get(arg)
            if launch_id is not None and _is_engine(launch_id, pid):
                found[pid] = launch_id
                break
    return found


def _mpi_reason(output: str | None) -> str | None:
    """What mpiexec printed about the rank whose end ended the job, if it did (MPICH:
    ``rank pid 42 on n1: Killed (signal 9)``; Open MPI: ``process rank 1 with PID 42 on
    node n1 exited on signal 9 (Killed)``, or ``... exiting improperly``)."""
    text = "" if output is None else tail(output, 200)
    ompi = _OMPI.findall(text)
    if ompi:
        return " ".join(str(ompi[-1]).split())
    rank, why = _MPICH_RANK.findall(text), _MPICH_WHY.findall(text)
    if not why:
        return None
    where = f"rank pid {rank[-1][0]} on {rank[-1][1]}: " if rank else ""
    return f"{where}{why[-1].strip()}"
