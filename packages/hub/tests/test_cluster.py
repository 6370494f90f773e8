"""Cluster and the ``shoal`` command line, with real hub and engine processes.

Every test runs in its own ``$SHOAL_DIR`` (a tmp folder), so tests run in parallel. Every
process a test starts is tracked and killed at teardown if it is still there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.hub._cli.cli import main
from shoal.hub._cli.cluster import Cluster
from shoal.hub._client.client import Client
from shoal.hub._server.launchers.local import THREAD_VARIABLES, thread_limits
from shoal.hub.testing import process_alive, wait_processes_gone, wait_until
from shoal.wire import ConnectionInfo, generate_key, write_connection_file

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "shoal.hub._cli.cli"]


alive = process_alive  # a zombie does not run: it ended, nobody reaped it yet


def still_alive(pids: list[int], timeout: float = 0.0) -> list[int]:
    """The pids still running after up to ``timeout`` seconds."""
    with contextlib.suppress(TimeoutError):
        wait_processes_gone(pids, timeout)
    return [p for p in pids if alive(p)]


def is_shoal(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"shoal" in f.read()
    except OSError:
        return False


class Tracker:
    """Clusters and processes a test started: stopped, then killed, at teardown."""

    def __init__(self) -> None:
        self.clusters: list[Cluster] = []
        self.pids: set[int] = set()

    def cluster(self, n: int, **kwargs: Any) -> Cluster:
        cluster = Cluster(n, **kwargs)
        self.clusters.append(cluster)
        return cluster

    def track(self, *pids: int) -> list[int]:
        self.pids.update(pids)
        return list(pids)

    def track_cluster(self, client: Client) -> list[int]:
        """The hub's and every engine's pid (tracked); the hub's first."""
        assert client.hub_pid is not None
        status = client.queue_status()
        engines = [int(status[i]["pid"]) for i in client.ids]
        return self.track(client.hub_pid, *engines)

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.stop()
        for pid in self.pids:
            if alive(pid) and is_shoal(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's ``$SHOAL_DIR``."""
    monkeypatch.setenv("SHOAL_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    try:
        yield t
    finally:
        t.close()


def hub_file_pid(folder: Path) -> int:
    return int(json.loads((folder / "hub-client.json").read_text())["pid"])


def write_stale_files(folder: Path) -> int:
    """Connection files of a hub that is gone; returns its (dead) pid."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    info = ConnectionInfo(
        {"client": "tcp://127.0.0.1:9"}, generate_key(), extra={"pid": proc.pid, "started": 0}
    )
    write_connection_file(folder / "hub-client.json", info)
    write_connection_file(folder / "hub-engine.json", ConnectionInfo({}, generate_key()))
    return proc.pid


# -- Cluster ----------------------------------------------------------------------------------
def test_start_stop_leaves_no_process(home: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(2, profile="a")
    cluster.start()
    folder = home / "profile_a"
    assert hub_file_pid(folder) == cluster.hub_pid
    assert sorted(cluster.wait_for_engines(2, 60)) == [0, 1]
    rc = cluster.connect_client()
    pids = tracker.track_cluster(rc)
    assert len(pids) == 3
    assert pids[0] == cluster.hub_pid
    assert still_alive(pids) == pids

    cluster.stop()
    assert still_alive(pids) == []
    assert not (folder / "hub-client.json").exists()
    assert not (folder / "hub-engine.json").exists()
    assert not cluster.running()
    cluster.stop()  # idempotent


def test_context_manager_returns_a_working_client(tmp_path: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(2, profile_dir=str(tmp_path / "cm"))
    with cluster as rc:
        assert isinstance(rc, Client)
        pids = tracker.track_cluster(rc)
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids[1:])
    assert still_alive(pids) == []
    assert not (tmp_path / "cm" / "hub-client.json").exists()


def test_context_manager_stops_on_error(tmp_path: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(1, profile_dir=str(tmp_path / "err"))
    pids: list[int] = []

    def fail() -> None:
        with cluster as rc:
            pids.extend(tracker.track_cluster(rc))
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        fail()
    assert len(pids) == 2
    assert still_alive(pids) == []


def test_add_and_remove_engines(tmp_path: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(1, profile_dir=str(tmp_path / "ar"))
    with cluster as rc:
        added = tracker.track(*cluster.add_engines(2))
        assert len(added) == 2
        ids = cluster.wait_for_engines(3, 60)
        assert len(ids) == 3
        status = rc.queue_status()
        pids = {i: int(status[i]["pid"]) for i in ids}
        assert set(added) <= set(pids.values())

        victim = ids[0]
        assert cluster.remove_engines([victim]) == [victim]
        assert still_alive([pids[victim]], 10) == []
        wait_until(lambda: victim not in rc.ids, timeout=10)
        assert rc.ids == ids[1:]
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids[i] for i in ids[1:])
    assert still_alive(list(pids.values())) == []


def test_second_start_on_a_live_profile_is_refused(home: Path, tracker: Tracker) -> None:
    first = tracker.cluster(0, profile="busy")
    first.start()
    tracker.track(*[p for p in [first.hub_pid] if p is not None])
    second = tracker.cluster(0, profile="busy")
    with pytest.raises(RuntimeError, match="shoal cluster stop --profile busy") as info:
        second.start()
    assert str(first.hub_pid) in str(info.value)
    assert second.proc is None
    second.stop()  # nothing to stop
    assert first.running()  # untouched
    assert hub_file_pid(home / "profile_busy") == first.hub_pid


def test_stale_files_are_removed(home: Path, tracker: Tracker) -> None:
    folder = home / "profile_stale"
    dead = write_stale_files(folder)
    cluster = tracker.cluster(0, profile="stale")
    cluster.start()
    assert cluster.hub_pid is not None
    tracker.track(cluster.hub_pid)
    assert hub_file_pid(folder) == cluster.hub_pid != dead
    with cluster.connect_client() as rc:
        assert rc.ids == []
    cluster.stop()
    assert not (folder / "hub-client.json").exists()


def test_hub_that_fails_to_start_is_reported(tmp_path: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(1, profile_dir=str(tmp_path / "bad"), hwm=0)
    with pytest.raises(RuntimeError, match=r"failed to start[\s\S]*hub\.log[\s\S]*hwm"):
        cluster.start()
    assert cluster.proc is None
    assert not (tmp_path / "bad" / "hub-client.json").exists()


STARTER = """
import json, sys, time
from shoal.hub._cli.cluster import Cluster

cluster = Cluster(2, profile_dir=sys.argv[1])
rc = cluster.start_and_connect()
status = rc.queue_status()
print(json.dumps([cluster.hub_pid] + [status[i]["pid"] for i in rc.ids]), flush=True)
if sys.argv[2] == "sleep":
    time.sleep(600)
"""


@pytest.mark.parametrize("end", ["sigkill", "exit"])
def test_no_process_outlives_the_starter(tmp_path: Path, tracker: Tracker, end: str) -> None:
    """A non-daemonized cluster ends with the process that started it, even on SIGKILL."""
    how = "sleep" if end == "sigkill" else "exit"
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "st"), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    tracker.track(starter.pid)
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()
        assert line, "the starter script failed (see its stderr above)"
        pids = tracker.track(*json.loads(line))
        assert len(pids) == 3
        if end == "sigkill":
            assert still_alive(pids) == pids
            starter.kill()
        assert starter.wait(30) == (-signal.SIGKILL if end == "sigkill" else 0)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        if starter.stdout is not None:
            starter.stdout.close()
    assert still_alive(pids, timeout=10) == []


# -- the command line -------------------------------------------------------------------------
def shoal(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_DIR": str(home)}
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cli_daemonized_start_status_list_stop(home: Path, tracker: Tracker) -> None:
    folder = home / "profile_x"
    started = shoal(home, "cluster", "start", "-n", "1", "--daemonize", "--profile", "x")
    if (folder / "hub-client.json").exists():
        tracker.track(hub_file_pid(folder))
    assert started.returncode == 0, started.stderr
    assert str(folder) in started.stdout.splitlines()
    hub = hub_file_pid(folder)
    assert alive(hub)  # it outlived the command that started it
    with Client(profile="x") as rc:
        engines = tracker.track_cluster(rc)[1:]
    assert len(engines) == 1

    status = shoal(home, "status", "--profile", "x")
    assert status.returncode == 0, status.stderr
    assert f"hub pid {hub}" in status.stdout
    row = next(line for line in status.stdout.splitlines() if line.startswith("0 "))
    assert str(engines[0]) in row.split()
    assert "iB" in row  # its memory
    assert "unassigned tasks: 0" in status.stdout

    listed = shoal(home, "cluster", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("x "))
    assert row.split()[:4] == ["x", str(hub), "alive", "1"]

    again = shoal(home, "cluster", "start", "-n", "1", "--daemonize", "--profile", "x")
    assert again.returncode == 1
    assert "shoal cluster stop --profile x" in again.stderr

    stopped = shoal(home, "cluster", "stop", "--profile", "x")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert still_alive([hub, *engines], timeout=5) == []
    assert not (folder / "hub-client.json").exists()

    twice = shoal(home, "cluster", "stop", "--profile", "x")
    assert twice.returncode == 1
    assert "no cluster is running on profile x" in twice.stderr


def test_cli_stop_kills_a_hub_that_does_not_answer(home: Path, tracker: Tracker) -> None:
    cluster = tracker.cluster(1, profile="stuck", daemonize=True)
    rc = cluster.start_and_connect()
    pids = tracker.track_cluster(rc)
    os.kill(pids[0], signal.SIGSTOP)  # deaf to requests and to SIGTERM
    stopped = shoal(home, "cluster", "stop", "--profile", "stuck", "--timeout", "1")
    assert stopped.returncode == 0, stopped.stderr
    assert "killed (SIGKILL)" in stopped.stdout
    assert still_alive(pids, timeout=5) == []
    assert not (home / "profile_stuck" / "hub-client.json").exists()


def test_cli_stop_without_a_cluster(home: Path) -> None:
    result = shoal(home, "cluster", "stop", "--profile", "nothing")
    assert result.returncode == 1
    assert "no cluster is running on profile nothing" in result.stderr
    assert result.stdout == ""


def test_cli_stale_profile(home: Path) -> None:
    folder = home / "profile_old"
    dead = write_stale_files(folder)
    listed = shoal(home, "cluster", "list")
    assert listed.returncode == 0, listed.stderr
    assert ["old", str(dead), "stale", "-"] in [
        line.split()[:4] for line in listed.stdout.splitlines()
    ]
    status = shoal(home, "status", "--profile", "old")
    assert status.returncode == 1
    assert f"its hub (pid {dead}) is gone" in status.stderr
    stopped = shoal(home, "cluster", "stop", "--profile", "old")
    assert stopped.returncode == 1
    assert "removed its stale files" in stopped.stderr
    assert not (folder / "hub-client.json").exists()
    assert not (folder / "hub-engine.json").exists()


def test_cli_foreground_start_stops_on_sigterm(home: Path, tracker: Tracker) -> None:
    env = {**os.environ, "SHOAL_DIR": str(home)}
    cmd = [*CLI, "cluster", "start", "-n", "1", "--profile", "fg"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    tracker.track(proc.pid)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "cluster running on profile fg" in line, line
        with Client(profile="fg") as rc:
            pids = tracker.track_cluster(rc)
        assert f"hub pid {pids[0]}" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert still_alive(pids) == []
    assert not (home / "profile_fg" / "hub-client.json").exists()


def test_cli_usage_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["cluster"]) == 2
    assert main(["cluster", "start", "-n", "-1"]) == 2
    assert "-n must be at least 0" in capsys.readouterr().err
    assert main(["cluster", "stop", "--profile", "a/b"]) == 1
    assert "plain name" in capsys.readouterr().err
    assert main(["status", "--profile", "none"]) == 1
    assert "no cluster is running on profile none" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert main(["hub", "--help"]) == 0
    assert "shoal-hub" in capsys.readouterr().out


# -- launcher options -----------------------------------------------------------------------
def test_launcher_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"hosts is for engines='ssh', not engines='local'"):
        Cluster(hosts={"nodeA": 2}, profile_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"partition, time are for engines='slurm'"):
        Cluster(
            engines="ssh", hosts="a:1", partition="debug", time="1:00", profile_dir=str(tmp_path)
        )
    with pytest.raises(ValueError, match=r'engines="ssh" needs hosts'):
        Cluster(engines="ssh", profile_dir=str(tmp_path))
    cluster = Cluster(engines="ssh", hosts="nodeA:2,nodeB", ssh=["ssh", "-F", "my config"])
    assert cluster.n == 3
    assert cluster.launch_args == [
        "--engines",
        "ssh",
        "--hosts",
        "nodeA:2,nodeB:1",
        "--ssh",
        "ssh -F 'my config'",
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--engines", "nosuch"], "the launchers are local, ssh, mpi, slurm"),
        (["--engines", "ssh"], "--engines ssh needs --hosts"),
        (["--engines", "ssh", "--hosts", "a:x"], "'a:x' is not HOST or HOST:COUNT"),
        (["--ip", "0.0.0.0", "--no-curve"], "--insecure"),  # noqa: S104 - refused
    ],
)
def test_the_hub_command_refuses_bad_launcher_options(
    tmp_path: Path, args: list[str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shoal.hub", "--profile-dir", str(tmp_path), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr


def test_engines_share_the_cores_of_their_host(
    tmp_path: Path, tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Math libraries on each engine get the cores divided among the engines here, as
    Dask's workers do; a limit the user set is kept."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    cores = len(os.sched_getaffinity(0))
    with tracker.cluster(2, profile_dir=str(tmp_path / "threads")) as rc:
        tracker.track_cluster(rc)
        limits = rc[:].apply_sync(_thread_limits_here)
    assert limits == [[str(max(1, cores // 2)), "7"]] * 2
    assert thread_limits(4, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert thread_limits(10**6, {})["OPENBLAS_NUM_THREADS"] == "1"


def _thread_limits_here() -> list[str | None]:
    import os  # runs on the engine

    return [os.environ.get(n) for n in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")]
