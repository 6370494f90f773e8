"""The MPI launcher (``--engines mpi``): engines as the ranks of ``mpiexec`` jobs.

The hatch-test env has the ``mpich`` wheel (its ``mpiexec`` beside the env's Python,
which the launcher takes first) and ``mpi4py`` (``.ci/mpi.sh`` checks both). Without
them the tests are skipped, except where ``SHOAL_REQUIRE_MPI=1`` (CI) makes that a
failure. Each test's cluster keeps its files in the test's folder; when the test ends,
however it ends, every process of this host whose command line carries one of its
launch ids (``mpiexec`` and its ranks) must be gone: any left is killed and fails the
test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.hub import Client, Cluster, EngineDiedError
from shoal.hub.testing import engine_pids, process_alive, wait_until

pytestmark = pytest.mark.timeout(240)

HUB = [sys.executable, "-m", "shoal.hub"]

_CHECK = """
from mpi4py import MPI
c = MPI.COMM_WORLD
assert c.size == 2, f"mpiexec -n 2 made a world of {c.size}: a mismatched mpiexec?"
"""


def _mpiexec() -> str | None:
    """The mpiexec the launcher takes by default: this Python's, else PATH's."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpi() -> None:
    """Skip (fail in CI) unless mpiexec and mpi4py are here and make a 2-rank world."""
    why = None
    mpiexec = _mpiexec()
    if mpiexec is None:
        why = "no mpiexec (the hatch-test env's mpich wheel has one; see .ci/mpi.sh)"
    elif importlib.util.find_spec("mpi4py") is None:
        why = "no mpi4py in this Python (see hatch.toml, .ci/mpi.sh)"
    else:
        try:
            done = subprocess.run(
                [mpiexec, "-n", "2", sys.executable, "-c", _CHECK],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            why = f"{mpiexec} -n 2 python with mpi4py did not end within 60 s"
        else:
            if done.returncode != 0:
                why = f"{mpiexec} -n 2 python with mpi4py failed: {done.stderr.strip()[-2000:]}"
    if why is not None:
        if os.environ.get("SHOAL_REQUIRE_MPI") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _launch_ids(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "launches").glob("mpi-*.log")}


def _processes_of(folder: Path) -> dict[int, str]:
    """The live processes of this host whose command line carries a launch id of the
    hub in ``folder`` (its mpiexecs and their ranks): pid -> command line."""
    ids = {i.encode() for i in _launch_ids(folder)}
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ids & set(args):  # a zombie's is empty: gone
            found[int(entry)] = b" ".join(args).decode(errors="replace")
    return found


def _log(folder: Path) -> str:
    return (folder / "hub.log").read_text(errors="replace")[-6000:]


@contextlib.contextmanager
def mpi_cluster(folder: Path, n: int, **options: Any) -> Iterator[tuple[Cluster, Client]]:
    """A started ``Cluster(engines="mpi")`` and a Client; stopped when the block ends,
    and then no process of its launches may be left."""
    cluster = Cluster(n=n, engines="mpi", profile_dir=str(folder), log_level="INFO", **options)
    try:
        cluster.start(timeout=60)
        yield cluster, cluster.connect_client()
    finally:
        cluster.stop()
        try:
            # Cluster.stop waited for the hub, which waited for its mpiexecs.
            wait_until(lambda: not _processes_of(folder), timeout=10)
        except TimeoutError:
            left = _processes_of(folder)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"left after Cluster.stop() (now killed): {left}\n{_log(folder)}")


def _rank() -> int:
    from mpi4py import MPI  # on the engine

    return int(MPI.COMM_WORLD.rank)


def _world() -> tuple[int, int, int]:
    """(rank, size, sum of the ranks): an allreduce over the engine's MPI job."""
    from mpi4py import MPI  # on the engine

    world = MPI.COMM_WORLD
    return world.rank, world.size, world.allreduce(world.rank)


def test_engine_ids_are_mpi_ranks_and_mpi4py_works(
    mpi: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 engines of one mpiexec have ids 0-3 = their ranks; an allreduce across them
    and %px with mpi4py work; nothing is left after Cluster.stop()."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 4) as (cluster, rc):
        assert rc.wait_for_engines(4, timeout=120) == [0, 1, 2, 3]
        assert len(_launch_ids(folder)) == 1
        pids = engine_pids(rc)
        assert rc[:].apply_sync(_rank) == [0, 1, 2, 3]
        assert rc[:].apply_sync(_world) == [(r, 4, 6) for r in range(4)]

        interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
        ip = interactiveshell.InteractiveShell.instance()
        try:
            ip.run_line_magic("load_ext", "shoal.hub")
            capsys.readouterr()
            ip.run_cell("%px from mpi4py import MPI; w = MPI.COMM_WORLD")
            ip.run_cell("%px total = w.allreduce(w.rank)")
            ip.run_cell("%px print('rank', w.rank, 'of', w.size, 'total', total)")
            out = capsys.readouterr().out
        finally:
            interactiveshell.InteractiveShell.clear_instance()
        for engine in range(4):
            assert f"[stdout:{engine}] rank {engine} of 4 total 6" in out, out
        assert cluster.running()
    assert not _processes_of(folder)
    assert not [p for p in pids.values() if process_alive(p)]


def test_added_engines_are_a_second_mpi_job(mpi: None, tmp_path: Path) -> None:
    """add_engines(2) while tasks run starts a second mpiexec: engines 4 and 5 (first
    id + rank), a world of their own, and they run tasks."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 4) as (cluster, rc):
        rc.wait_for_engines(4, timeout=120)
        lview = rc.load_balanced_view()
        squares = lview.map_async(lambda x: (__import__("time").sleep(0.05), x * x)[1], range(80))
        added = cluster.add_engines(2)
        assert len(added) == 1, added  # one mpiexec carries both
        assert rc.wait_for_engines(6, timeout=120) == [0, 1, 2, 3, 4, 5]
        assert squares.get(timeout=120) == [x * x for x in range(80)]
        assert len(_launch_ids(folder)) == 2
        assert rc[:].apply_sync(_world) == [
            (0, 4, 6),
            (1, 4, 6),
            (2, 4, 6),
            (3, 4, 6),
            (0, 2, 1),
            (1, 2, 1),
        ]
        assert rc[[4, 5]].apply_sync(lambda x: x + 1, 41) == [42, 42]
        assert lview.map_sync(lambda x: -x, range(30)) == [-x for x in range(30)]


def test_a_killed_rank_ends_its_mpi_job_only(mpi: None, tmp_path: Path) -> None:
    """A SIGKILLed rank is lost with a cause; MPI ends the other rank of its job (the
    hub says why: mpiexec's exit), the engines of the other mpiexec go on."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 2) as (cluster, rc):
        rc.wait_for_engines(2, timeout=120)
        cluster.add_engines(2)
        rc.wait_for_engines(4, timeout=120)
        assert [w[:2] for w in rc[:].apply_sync(_world)] == [(0, 2), (1, 2), (0, 2), (1, 2)]
        pids = engine_pids(rc)
        first = _launch_of(pids[0])
        assert _launch_of(pids[1]) == first != _launch_of(pids[2])
        sleeping = {e: rc[e].apply_async(time.sleep, 120) for e in (0, 1)}
        os.kill(pids[1], signal.SIGKILL)  # the ranks run on this host (no hostfile)

        causes = {}
        for engine in (0, 1):
            with pytest.raises(EngineDiedError) as died:
                sleeping[engine].get(timeout=60)
            causes[engine] = str(died.value)
        for said in causes.values():
            # Or, when the hub saw its socket close well before mpiexec's exit:
            assert "its mpiexec (pid" in said or "heartbeat connection is gone" in said, said
        wait_until(
            lambda: rc.ids == [2, 3], timeout=30, message=lambda: f"{rc.ids}\n{_log(folder)}"
        )
        # MPI ended the whole first job, mpiexec included; the second one goes on.
        wait_until(
            lambda: not [c for c in _processes_of(folder).values() if first in c],
            timeout=30,
            message=lambda: f"the processes of {first} to end: {_processes_of(folder)}",
        )
        assert rc[[2, 3]].apply_sync(os.getpid) == [pids[2], pids[3]]
        assert rc[[2, 3]].apply_sync(_world) == [(0, 2, 1), (1, 2, 1)]
        log = _log(folder)
        assert "engine 0 is lost:" in log
        assert "engine 1 is lost:" in log
        assert f"exited with code 9 (MPI: rank pid {pids[1]}" in log or "heartbeat" in log, log


def _launch_of(pid: int) -> str:
    """The launch id on engine process ``pid``'s command line."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return args[args.index("--launch-id") + 1]


def test_removing_one_engine_before_and_after_mpi_init(mpi: None, tmp_path: Path) -> None:
    """remove_engines of one engine: before MPI is used, the other rank of its job goes
    on; once its job initialized MPI, MPI ends the whole job (no hang in Finalize)."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 2) as (cluster, rc):
        rc.wait_for_engines(2, timeout=120)
        pids = engine_pids(rc)
        assert cluster.remove_engines([1]) == [1]
        wait_until(lambda: rc.ids == [0], timeout=30)
        wait_until(lambda: pids[1] not in _processes_of(folder), timeout=30)
        assert rc[0].apply_sync(os.getpid) == pids[0]  # no MPI yet: it goes on alone

        cluster.add_engines(2)
        wait_until(lambda: rc.ids == [0, 2, 3], timeout=120)
        assert rc[[2, 3]].apply_sync(_world) == [(0, 2, 1), (1, 2, 1)]
        pids = engine_pids(rc)
        assert cluster.remove_engines([3]) == [3]
        # MPI's rule: a rank that initialized MPI leaves only with its whole job.
        wait_until(lambda: rc.ids == [0], timeout=30, message=lambda: f"{rc.ids}\n{_log(folder)}")
        wait_until(
            lambda: not {pids[2], pids[3]} & set(_processes_of(folder)),
            timeout=30,
            message=lambda: f"ranks of engines 2, 3 to end: {_processes_of(folder)}",
        )
        assert "engine 2 is lost: its mpiexec (pid" in _log(folder)
        assert rc[0].apply_sync(os.getpid) == pids[0]


def test_a_cluster_stopped_at_once_leaves_no_rank(mpi: None, tmp_path: Path) -> None:
    """Stopped right after its start (ranks not yet registered), the cluster leaves no
    process behind."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 3):
        assert len(_launch_ids(folder)) == 1


def test_an_mpiexec_that_fails_is_reported(mpi: None, tmp_path: Path) -> None:
    """An mpiexec that ends before its engines registered (a bad option) is logged by
    the hub with what it printed; the hub goes on."""
    folder = tmp_path / "profile"
    with mpi_cluster(folder, 2, mpiexec=["mpiexec", "--no-such-option"]) as (cluster, _):
        line = wait_until(
            lambda: [
                ln for ln in _log(folder).splitlines() if "before its engines registered" in ln
            ],
            timeout=60,
            message=lambda: f"the failed launch in the hub's log:\n{_log(folder)}",
        )
        assert "its mpiexec (pid" in line[0], line
        assert "no-such-option" in _log(folder)
        assert cluster.running()


def test_a_missing_mpiexec_fails_the_start(tmp_path: Path) -> None:
    """An mpiexec that cannot run stops the hub's start with the reason; an empty
    --mpiexec is refused."""
    cluster = Cluster(
        n=2, engines="mpi", mpiexec=[str(tmp_path / "no-mpiexec")], profile_dir=str(tmp_path)
    )
    with pytest.raises(RuntimeError, match=r"cannot run .*no-mpiexec"):
        cluster.start(timeout=60)
    cluster.stop()
    done = subprocess.run(
        [*HUB, "--profile-dir", str(tmp_path), "--engines", "mpi", "-n", "1", "--mpiexec", ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "--mpiexec is empty" in done.stderr
