"""The Slurm launcher (``--engines slurm``) against a real Slurm cluster.

``.ci/slurm.sh up`` makes one on this machine: one node (this host), partition
``debug``, 16 CPUs advertised. Without ``sbatch``, or when ``squeue`` cannot reach
``slurmctld``, the tests that need it are skipped, except where ``SHOAL_REQUIRE_SLURM=1``
(CI) makes that a failure. Each test finds its hub's jobs by their names (``shoal-`` and
the launch ids of the scripts in its profile folder), and cancels what is left of them
however it ends.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.hub import Cluster
from shoal.hub.testing import wait_until

pytestmark = pytest.mark.timeout(300)


def require_slurm() -> None:
    """Skip (fail in CI) unless Slurm's commands are here and ``squeue`` answers."""
    why = None
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        why = "no Slurm here (sbatch/squeue missing); run `.ci/slurm.sh up` as root"
    else:
        try:
            done = subprocess.run(
                ["squeue", "-h", "-o", "%i"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            why = "squeue did not answer within 30 s"
        else:
            if done.returncode != 0:
                why = f"squeue failed ({done.returncode}): {done.stderr.strip()}"
    if why is not None:
        if os.environ.get("SHOAL_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def slurm() -> None:
    require_slurm()


def queued(folder: Path) -> list[str]:
    """The jobs of the hub whose profile folder is ``folder`` that ``squeue`` lists."""
    names = [f"shoal-{p.stem}" for p in (folder / "launches").glob("*.sbatch")]
    if not names:
        return []
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i", "--name", ",".join(names)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split()


@contextlib.contextmanager
def cancelled_at_end(folder: Path) -> Iterator[None]:
    """Cancel the jobs of ``folder``'s hub that are left when the block ends."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            left = queued(folder)
            if left:
                subprocess.run(["scancel", *left], capture_output=True, timeout=30, check=False)


def _cluster(folder: Path, n: int, partition: str = "debug") -> Cluster:
    return Cluster(
        n=n,
        profile_dir=str(folder),
        log_level="INFO",
        engines="slurm",
        partition=partition,
        time="00:10:00",
    )


def _log(cluster: Cluster) -> str:
    return Path(cluster.log_file).read_text(errors="replace")[-5000:]


def test_jobs_of_engines_run_tasks_and_leave_with_the_cluster(slurm: None, tmp_path: Path) -> None:
    """Two jobs of 2 engines (one at start, one added while tasks run) register, run
    the tasks inside their jobs, and leave the queue when the cluster stops."""
    folder = tmp_path / "profile"
    cluster = _cluster(folder, 2)
    with cancelled_at_end(folder):
        try:
            cluster.start(timeout=60)
            rc = cluster.connect_client()
            rc.wait_for_engines(2, timeout=120)
            first = rc[:].apply_sync(os.getenv, "SLURM_JOB_ID")
            assert len(set(first)) == 1, first
            assert first[0] is not None
            assert queued(folder) == [first[0]]
            assert sorted(map(str, rc[:].apply_sync(os.getenv, "SLURM_PROCID"))) == ["0", "1"]

            lview = rc.load_balanced_view()
            squares = lview.map_async(
                lambda x: (__import__("time").sleep(0.1), x * x)[1], range(60)
            )
            cluster.add_engines(2)  # while the tasks run
            rc.wait_for_engines(4, timeout=120)
            assert squares.get(timeout=120) == [x * x for x in range(60)]
            jobs = collections.Counter(rc[:].apply_sync(os.getenv, "SLURM_JOB_ID"))
            assert len(jobs) == 2, jobs
            assert set(jobs.values()) == {2}, jobs
            assert sorted(queued(folder)) == sorted(map(str, jobs))
        finally:
            cluster.stop()
        wait_until(
            lambda: not queued(folder),
            timeout=30,
            message=lambda: f"jobs left in the queue: {queued(folder)}\n{_log(cluster)}",
        )


def test_a_lost_engine_is_killed_alone(slurm: None, tmp_path: Path) -> None:
    """An engine that stops answering is killed where it runs; the other engines of
    its job go on."""
    folder = tmp_path / "profile"
    cluster = _cluster(folder, 3)
    stopped = []
    with cancelled_at_end(folder):
        try:
            cluster.start(timeout=60)
            rc = cluster.connect_client()
            ids = rc.wait_for_engines(3, timeout=120)
            pids = dict(zip(ids, rc[:].apply_sync(os.getpid), strict=True))
            victim, *others = ids
            os.kill(pids[victim], signal.SIGSTOP)  # the job runs on this host
            stopped.append(pids[victim])
            wait_until(lambda: victim not in rc.ids, timeout=60)
            wait_until(
                lambda: not _alive(pids[victim]),
                timeout=60,
                message=lambda: f"engine {victim} (pid {pids[victim]}) still runs\n{_log(cluster)}",
            )
            assert rc[others].apply_sync(os.getpid) == [pids[i] for i in others]
            assert len(queued(folder)) == 1
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            cluster.stop()
        wait_until(lambda: not queued(folder), timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.split()[1:2] == ["Z"] for line in f if line.startswith("State:"))
    except FileNotFoundError:
        return False


def test_a_refused_job_stops_the_hub_with_slurms_message(slurm: None, tmp_path: Path) -> None:
    """sbatch refusing the first job (no such partition) ends the hub with exit 1 and
    Slurm's message, and Cluster.start raises with it."""
    folder, other = tmp_path / "profile", tmp_path / "cluster"
    cmd = [sys.executable, "-m", "shoal.hub", "--profile-dir", str(folder)]
    cmd += ["--engines", "slurm", "-n", "2", "--partition", "nosuch"]
    with cancelled_at_end(folder), cancelled_at_end(other):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
        assert "invalid partition specified: nosuch" in done.stderr, done.stderr
        assert "shoal hub ready" not in done.stdout

        cluster = _cluster(other, 2, partition="nosuch")
        with pytest.raises(RuntimeError, match="invalid partition specified: nosuch"):
            cluster.start(timeout=60)
        assert not queued(folder)
        assert not queued(other)


def test_a_job_slurm_will_never_start_is_cancelled(slurm: None, tmp_path: Path) -> None:
    """A job bigger than the partition (it would pend for ever, PartitionConfig) is
    reported in the hub's log with Slurm's reason, and cancelled."""
    folder = tmp_path / "profile"
    cluster = _cluster(folder, 1000)
    with cancelled_at_end(folder):
        try:
            cluster.start(timeout=60)
            line = wait_until(
                lambda: "".join(
                    ln for ln in _log(cluster).splitlines() if "Slurm will not start job" in ln
                ),
                timeout=30,
                message=lambda: f"no word of the job in the hub's log:\n{_log(cluster)}",
            )
            assert "PENDING (PartitionConfig)" in line, line
            assert "ended before its engines registered" in line, line
            wait_until(lambda: not queued(folder), timeout=30)
            assert cluster.running()
        finally:
            cluster.stop()


def _hub_refuses(folder: Path, *args: str) -> str:
    """What the hub says when it refuses its command line (exit 2)."""
    cmd = [sys.executable, "-m", "shoal.hub", "--profile-dir", str(folder), "--engines", "slurm"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    return done.stderr


def test_options_and_templates_are_checked(tmp_path: Path) -> None:
    """-n is required, and a template must start ${n} engines and spell its placeholders."""
    assert "--engines slurm needs -n" in _hub_refuses(tmp_path)
    template = tmp_path / "job.sbatch"
    template.write_text("#!/bin/sh\n#SBATCH --ntasks=${n}\n${tme_line}\nsrun ${engine_command}\n")
    said = _hub_refuses(tmp_path, "-n", "1", "--slurm-template", str(template))
    assert "did you mean ${time_line}?" in said, said
    template.write_text("#!/bin/sh\nsrun hostname\n")
    said = _hub_refuses(tmp_path, "-n", "1", "--slurm-template", str(template))
    assert "must use ${n}" in said, said
