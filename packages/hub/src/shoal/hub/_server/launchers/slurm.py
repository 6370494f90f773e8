"""Engines in Slurm batch jobs: ``--engines slurm -n 8 --partition debug --time 00:30:00``.

Each :meth:`SlurmEngines.start` submits one batch job (``sbatch --parsable``) whose ``n``
tasks are ``n`` engines, started by one ``srun`` in the job's script; the job is one
:class:`Launch`. The script is a template (``--slurm-template``) written into
``<hub folder>/launches/<launch id>.sbatch``, and the job's output goes beside it
(``<launch id>.log``). The engines read the hub's engine connection file at its path:
like most HPC sites, this assumes the compute nodes see the hub's folder (the home or
profile folder) at the same path; a template can do otherwise. The hub must listen where
the nodes reach it (``--ip``), unless the nodes are this host.

Rules:

* Nothing here blocks the hub's routing thread for long. ``start`` waits for ``sbatch``
  only (seconds at most; a refusal raises ``RuntimeError`` with Slurm's own message);
  ``signal`` starts ``scancel``/``srun`` and reaps them later; ``poll`` reads
  ``launch.ended``. One daemon thread per launcher asks ``squeue`` about the live jobs
  every second and sets ``ended``, under ``_lock``.
* A job has ended when it reached a final state (``squeue -t all`` still shows a
  finished job while ``slurmctld`` remembers it, ``MinJobAge``) or left the queue. A job
  pending for a reason that no wait can satisfy (``NEVER_STARTS``: bigger than its
  partition, an account or QOS it may not use, a per-job limit) is cancelled and has
  ended: "Slurm will not start job 123: PENDING (PartitionConfig)". Reasons that pass
  (``Resources``, ``Priority``, a node or partition down for maintenance,
  ``ReqNodeNotAvail``, a held job) are waited out.
* One engine is signalled where it runs: an ``srun --jobid --overlap`` step on the job's
  nodes sends the signal to that pid, and only if that process carries the launch's id
  (pids are per node). The other engines of the job go on. An engine that cannot be
  reached so (its node is gone) ends with its job, which Slurm fails; once every engine
  of a job was SIGKILLed, the job is cancelled. Without a pid, ``scancel --signal``
  signals every engine of the job (SIGKILL: ``scancel``, the job ends).
* ``stop`` waits for the jobs to leave the queue (the hub asked the engines to end),
  cancels the rest and waits until ``squeue`` lists none of them.
* ``--partition``, ``--account`` and ``--time`` go on sbatch's command line as well as
  into the script (``${partition_line}``, ...): there they win over ``SBATCH_*``
  variables, which win over ``#SBATCH`` lines.
* ``squeue``, ``scancel`` and ``srun`` are the ones on ``PATH``; the ``SLURM_*``
  variables of an allocation the hub may run in are not passed to ``sbatch``/``srun``
  (they would shape the engines' job like the hub's).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import re
import shlex
import signal
import string
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .base import PYTHON, EngineLauncher, Launch, MakeLauncher, engine_command

__all__ = ["DEFAULT_TEMPLATE", "NEVER_STARTS", "SlurmEngines"]

log = logging.getLogger("shoal.hub")

#: The batch script, a :class:`string.Template`. Placeholders (values shell-quoted):
#: ``${n}`` engines (tasks), ``${job_name}``, ``${output}`` (the job's output file: keep
#: it, the hub shows its end when the job fails), ``${partition_line}``,
#: ``${account_line}``, ``${time_line}`` (an ``#SBATCH`` line, or a comment when the
#: option is not given), ``${engine_command}`` (one engine's command line),
#: ``${engine_args}`` (the same without the Python interpreter), ``${launch_id}``.
#: Anything else with a ``$`` (``$SLURM_JOB_ID``) is left to the shell.
DEFAULT_TEMPLATE = """\
#!/bin/sh
#SBATCH --job-name=${job_name}
#SBATCH --ntasks=${n}
#SBATCH --output=${output}
${partition_line}
${account_line}
${time_line}

# One engine per task. An engine that ends (removed, or killed) leaves the others running.
exec srun --kill-on-bad-exit=0 ${engine_command}
"""

PLACEHOLDERS = frozenset(
    {
        "n",
        "job_name",
        "output",
        "partition_line",
        "account_line",
        "time_line",
        "engine_command",
        "engine_args",
        "launch_id",
    }
)

#: Job states after which a job runs no more (``squeue -t all`` shows them for a while).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)

#: Reasons a job pends that no waiting satisfies: only the user (another partition,
#: account, size or time) or an administrator (new limits) can. Partitions and nodes
#: that are down, reservations, held jobs and busy resources pass: those jobs wait.
NEVER_STARTS = re.compile(
    r"PartitionConfig|PartitionNodeLimit|PartitionTimeLimit"
    r"|InvalidAccount|AccountNotAllowed|InvalidQOS|QOSNotAllowed"
    r"|BadConstraints|DependencyNeverSatisfied|ReservationInvalid"
    r"|MaxMemPerLimit|(QOS|Assoc)Max\w*Per(Job|Node)\w*"
)

POLL_PERIOD = 1.0  # s between two squeue calls while jobs are live
COMMAND_TIMEOUT = 30.0  # s for sbatch, squeue or scancel to answer
STOP_TIMEOUT = 15.0  # s stop() waits for cancelled jobs to leave the queue


@dataclass(frozen=True)
class _JobState:
    state: str
    reason: str
    nodes: int


class SlurmEngines(EngineLauncher):
    """Engines in Slurm batch jobs: one job of ``n`` tasks (engines) per :meth:`start`.

    Parameters
    ----------
    partition, account, time : str, optional
        The jobs' partition, account and time limit (Slurm's format, ``00:30:00``);
        default: Slurm's.
    template : str
        The batch script, a :class:`string.Template` (see :data:`DEFAULT_TEMPLATE`).
    sbatch : sequence of str
        The sbatch command and its options; default ``["sbatch"]``.
    """

    kind = "slurm"

    def __init__(
        self,
        engine_file: str,
        folder: str,
        log_level: str,
        *,
        partition: str | None = None,
        account: str | None = None,
        time: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        sbatch: Sequence[str] = ("sbatch",),
    ) -> None:
        super().__init__(os.path.abspath(engine_file), os.path.abspath(folder), log_level)
        check_template(template)
        self.partition = partition
        self.account = account
        self.time = time
        self.template = string.Template(template)
        self.sbatch = list(sbatch)
        self._lock = threading.Lock()  # guards what the tracker and the hub share:
        self._live: dict[str, Launch] = {}  # job id -> its launch, until it ended
        self._nodes: dict[str, int] = {}  # job id -> its node count, from squeue
        self._closed = False
        self._jobs: list[str] = []  # every job submitted (the hub's thread only)
        self._killed: dict[str, set[int]] = {}  # launch id -> engine pids SIGKILLed
        self._wake = threading.Event()
        self._tracker: threading.Thread | None = None
        self._squeue_failing = False

    # -- command line -------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--partition", default=None, help="slurm: the jobs' partition")
        group.add_argument("--account", default=None, help="slurm: the account to charge")
        group.add_argument(
            "--time", default=None, help="slurm: the jobs' time limit, e.g. 00:30:00"
        )
        group.add_argument(
            "--slurm-template",
            default=None,
            metavar="FILE",
            help="slurm: the batch script to submit, a template with ${n}, ${engine_command}, ...",
        )
        group.add_argument(
            "--sbatch", default="sbatch", help='slurm: the sbatch command, e.g. "sbatch --qos=low"'
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[MakeLauncher, int]:
        # -n is the first job's size: no default guess of how many engines a job wants.
        if args.n is None or args.n < 0:
            raise ValueError(
                "--engines slurm needs -n, the engines of the first job (its tasks), e.g."
                " -n 8; -n 0 submits none until add_engines"
            )
        sbatch = shlex.split(args.sbatch)
        if not sbatch:
            raise ValueError("--sbatch is empty; give the sbatch command, e.g. --sbatch sbatch")
        template = DEFAULT_TEMPLATE
        if args.slurm_template is not None:
            try:
                with open(args.slurm_template, encoding="utf-8") as f:
                    template = f.read()
            except OSError as exc:
                raise ValueError(f"--slurm-template {args.slurm_template}: {exc}") from None
            try:
                check_template(template)
            except ValueError as exc:
                raise ValueError(f"--slurm-template {args.slurm_template}: {exc}") from None
        make = functools.partial(
            cls,
            partition=args.partition,
            account=args.account,
            time=args.time,
            template=template,
            sbatch=sbatch,
        )
        return make, args.n

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "the default partition"
        more = [f"account {self.account}"] if self.account else []
        more += [f"time limit {self.time}"] if self.time else []
        return f"slurm jobs on {where}" + (f" ({', '.join(more)})" if more else "")

    # -- the interface ------------------------------------------------------------------
    def start(self, n: int, first_id: int) -> list[Launch]:
        if n <= 0:
            return []
        launch = self._new(n, self.describe())
        try:
            job = self._submit(launch)
        except BaseException:
            del self.launches[launch.launch_id]  # nothing runs: nothing to report
            raise
        launch.job_id = job
        launch.host = f"slurm job {job}"
        self._jobs.append(job)
        with self._lock:
            self._live[job] = launch
            if self._tracker is None:
                self._tracker = threading.Thread(
                    target=self._track, name="shoal-slurm-squeue", daemon=True
                )
                self._tracker.start()
        self._wake.set()
        log.info("submitted Slurm job %s: %d engines (%s)", job, n, launch.launch_id)
        return [launch]

    def poll(self, launch: Launch) -> str | None:
        with self._lock:
            return launch.ended

    def signal(self, launch: Launch, signum: int, pid: int | None = None) -> None:
        self._reap_helpers()
        job = launch.job_id
        if job is None or self.poll(launch) is not None:
            return
        name = signal.Signals(signum).name.removeprefix("SIG")
        if pid is None:
            self._helper(
                ["scancel", job]
                if signum == signal.SIGKILL
                else ["scancel", f"--signal={name}", job]
            )
            return
        if signum == signal.SIGKILL:
            killed = self._killed.setdefault(launch.launch_id, set())
            killed.add(pid)
            if len(killed) >= launch.n:  # none of its engines is left: the job goes
                self._helper(["scancel", job])
                return
        with self._lock:
            nodes = self._nodes.get(job, 1)
        # A step beside the engines', on each node of the job: the pid is the engine's
        # only where that process carries the launch id (pids are per node).
        self._helper(
            [
                "srun",
                f"--jobid={job}",
                "--overlap",
                f"--nodes={nodes}",
                "--ntasks-per-node=1",
                "--quiet",
                "sh",
                "-c",
                'grep -qF -- "$1" "/proc/$2/cmdline" 2>/dev/null && kill -s "$3" "$2"; true',
                "sh",
                launch.launch_id,
                str(pid),
                name,
            ]
        )

    def stop(self, grace: float) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        deadline = time.monotonic() + max(0.0, grace)
        left = self._queued(self._jobs)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self._queued(left)
        if left:
            log.info("cancelling Slurm jobs %s", ", ".join(left))
            self._run(["scancel", *left])
            deadline = time.monotonic() + STOP_TIMEOUT
            while left and time.monotonic() < deadline:
                time.sleep(0.2)
                left = self._queued(left)
            if left:
                log.warning("Slurm jobs %s are still in the queue after scancel", ", ".join(left))
        with self._lock:
            for launch in self._live.values():
                if launch.ended is None:
                    launch.ended = f"the hub cancelled Slurm job {launch.job_id}"
            self._live.clear()
        self._wait_helpers()

    # -- submitting ---------------------------------------------------------------------
    def _script(self, launch: Launch, output: str) -> str:
        cmd = engine_command(PYTHON, self.engine_file, launch.launch_id, self.log_level)
        values = {
            "n": str(launch.n),
            "job_name": shlex.quote(f"shoal-{launch.launch_id}"),
            # Slurm expands %j and the like in --output: a literal % is %%.
            "output": shlex.quote(output.replace("%", "%%")),
            "partition_line": _line("partition", self.partition),
            "account_line": _line("account", self.account),
            "time_line": _line("time", self.time),
            "engine_command": shlex.join(cmd),
            "engine_args": shlex.join(cmd[1:]),
            "launch_id": shlex.quote(launch.launch_id),
        }
        return self.template.safe_substitute(values)

    def _submit(self, launch: Launch) -> str:
        """Write the launch's script and submit it; returns the job id."""
        launch.output = self._output_file(launch.launch_id)
        script = os.path.splitext(launch.output)[0] + ".sbatch"
        with open(script, "w", encoding="utf-8") as f:
            f.write(self._script(launch, launch.output))
        # Given options go on the command line too: there they beat SBATCH_* variables,
        # which beat the script's #SBATCH lines.
        given = {"partition": self.partition, "account": self.account, "time": self.time}
        options = [f"--{k}={v}" for k, v in given.items() if v is not None]
        cmd = [*self.sbatch, "--parsable", *options, script]
        try:
            done = _slurm(cmd)
        except subprocess.TimeoutExpired:
            # It may have queued the job anyway: its name is ours alone.
            self._helper(["scancel", f"--name=shoal-{launch.launch_id}"])
            raise RuntimeError(
                f"{shlex.join(cmd)} did not answer within {COMMAND_TIMEOUT:.0f} s;"
                " is slurmctld up (scontrol ping)?"
            ) from None
        except OSError as exc:
            raise RuntimeError(
                f"cannot run {self.sbatch[0]}: {exc}; is Slurm installed here?"
            ) from None
        out = done.stdout.decode("utf-8", "replace").strip()
        err = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            raise RuntimeError(
                f"Slurm refused the engines' job ({shlex.join(cmd)} exited with"
                f" {done.returncode}): {err or out}"
            )
        # --parsable: "jobid" or "jobid;cluster", after any warnings on stderr.
        job = out.splitlines()[-1].split(";")[0].strip() if out else ""
        if not job.isdigit():
            raise RuntimeError(f"{shlex.join(cmd)} printed no job id: {out!r} {err!r}")
        if err:
            log.info("sbatch said about job %s: %s", job, err)
        return job

    # -- tracking (the tracker thread) --------------------------------------------------
    def _track(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                jobs = dict(self._live)
            if jobs:
                try:
                    self._update(jobs)
                except Exception:  # the tracker must go on
                    log.exception("failed to follow Slurm jobs %s", ", ".join(jobs))
                self._wake.wait(POLL_PERIOD)
            else:
                self._wake.wait()  # start() or stop() wakes it
            self._wake.clear()

    def _update(self, jobs: Mapping[str, Launch]) -> None:
        states = self._squeue(jobs)
        if states is None:
            return
        for job, launch in jobs.items():
            st = states.get(job)
            cause = None
            if st is None:
                cause = f"Slurm job {job} ended (it left the queue)"
            elif st.state in FINAL_STATES:
                why = "" if st.reason in ("None", "") else f", {st.reason}"
                cause = f"Slurm job {job} ended ({st.state}{why})"
            elif st.state == "PENDING" and NEVER_STARTS.fullmatch(st.reason.split(",")[0]):
                log.info("Slurm job %s pends for ever (%s): cancelling it", job, st.reason)
                self._run(["scancel", job])
                cause = f"Slurm will not start job {job}: PENDING ({st.reason})"
            with self._lock:
                self._nodes[job] = st.nodes if st is not None else 0
                if cause is not None:
                    if launch.ended is None:
                        launch.ended = cause
                    self._live.pop(job, None)
                    self._nodes.pop(job, None)

    def _squeue(self, jobs: Iterable[str]) -> dict[str, _JobState] | None:
        """What ``squeue`` says of ``jobs`` (those it no longer knows are missing), or
        None when it could not say."""
        ids = ",".join(jobs)
        if not ids:
            return {}
        cmd = ["squeue", "-h", "-t", "all", "-o", "%i %T %D %r", "-j", ids]
        try:
            done = _slurm(cmd)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._squeue_failed(str(exc))
            return None
        err = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            if "Invalid job id" in err:  # every one of them is gone from slurmctld
                return {}
            self._squeue_failed(f"exit {done.returncode}: {err}")
            return None
        if self._squeue_failing:
            log.info("squeue answers again")
            self._squeue_failing = False
        states = {}
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            parts = line.split(None, 3)
            if len(parts) >= 3:
                nodes = int(parts[2]) if parts[2].isdigit() else 0
                states[parts[0]] = _JobState(parts[1], parts[3] if len(parts) > 3 else "", nodes)
        return states

    def _squeue_failed(self, why: str) -> None:
        if not self._squeue_failing:  # once per outage
            log.warning("squeue failed (%s); the hub asks again", why)
            self._squeue_failing = True

    def _queued(self, jobs: Sequence[str]) -> list[str]:
        """Which of ``jobs`` are still in the queue (all, when ``squeue`` cannot say)."""
        states = self._squeue(jobs)
        if states is None:
            return list(jobs)
        return [j for j in jobs if j in states and states[j].state not in FINAL_STATES]

    # -- helpers ------------------------------------------------------------------------
    def _helper(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        super()._helper(cmd, _env() if env is None else env)  # without the hub's SLURM_*

    @staticmethod
    def _run(cmd: list[str]) -> None:
        """Run ``cmd``, bounded; off the routing thread only (the tracker, ``stop``)."""
        try:
            done = _slurm(cmd)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s failed: %s", shlex.join(cmd), exc)
            return
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()
            log.info("%s exited with %d: %s", shlex.join(cmd), done.returncode, err)


def check_template(template: str) -> None:
    """``ValueError`` when ``template`` cannot be a batch script for n engines: no
    ``${n}`` or no engine command, or a placeholder misspelt (``${partiton_line}``).
    Other ``$`` names are the shell's."""
    found = set()
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    for name in sorted(found - PLACEHOLDERS):
        close = difflib.get_close_matches(name, PLACEHOLDERS, n=1, cutoff=0.8)
        if close:
            raise ValueError(
                f"${{{name}}} is no placeholder; did you mean ${{{close[0]}}}? (the"
                f" template knows {', '.join('${' + p + '}' for p in sorted(PLACEHOLDERS))})"
            )
    if "n" not in found or not found & {"engine_command", "engine_args"}:
        raise ValueError(
            "the template must use ${n} (the engines) and ${engine_command} or"
            " ${engine_args} (one engine's command), e.g. srun ${engine_command}"
        )


def _line(option: str, value: str | None) -> str:
    if value is None:
        return f"# --{option}: Slurm's default"
    return f"#SBATCH --{option}={shlex.quote(value)}"


def _slurm(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run a Slurm command (sbatch, squeue, scancel), its output captured, bounded by
    ``COMMAND_TIMEOUT``, without the hub's own ``SLURM_*`` variables."""
    return subprocess.run(  # noqa: S603 - Slurm's commands (the user's sbatch), our arguments
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
        env=_env(),
    )


def _env() -> dict[str, str]:
    """This process's environment without the ``SLURM_*`` variables of an allocation
    the hub may run in (``SLURM_CONF`` stays: it says which cluster)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SQUEUE_")) or k == "SLURM_CONF"
    }
