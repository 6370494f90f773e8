"""shoal.hub.testing itself: polling helpers, running_cluster and the fixtures."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.hub import Client, Cluster, testing
from shoal.hub.testing import (
    RunningCluster,
    engine_pids,
    process_alive,
    running_cluster,
    wait_processes_gone,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


class Boom(Exception):
    """Raised inside a block to check what its end does."""


# -- wait_until ---------------------------------------------------------------------------
def test_wait_until_returns_the_first_true_value() -> None:
    """The condition is called until it returns something true, which is returned."""
    calls = itertools.count()
    assert wait_until(lambda: max(0, next(calls) - 2) * "x", timeout=5) == "x"
    assert next(calls) == 4  # three false values, then the true one


def test_wait_until_checks_once_even_without_time() -> None:
    """timeout=0 still calls the condition once."""
    assert wait_until(lambda: 7, timeout=0) == 7


def test_wait_until_raises_timeout_error_saying_what_was_awaited() -> None:
    """A condition that never holds: TimeoutError names it (or the message) and its last value."""
    with pytest.raises(TimeoutError, match=r"the answer.*last value: \[\]"):
        wait_until(list, timeout=0.05, message="the answer")
    with pytest.raises(TimeoutError, match=r"engines \[1, 2\].*last value: 0"):
        wait_until(lambda: 0, timeout=0.05, message=lambda: f"engines {[1, 2]}")
    found: list[int] = []
    with pytest.raises(TimeoutError, match=r"lambda: bool\(found\)") as err:
        wait_until(lambda: bool(found), timeout=0.05)
    assert "last value: False" in str(err.value)
    assert "0.05 s" in str(err.value)


def test_wait_until_lets_the_conditions_errors_through_and_checks_its_arguments() -> None:
    """An exception in the condition propagates; a bad timeout or interval is refused."""
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0)
    with pytest.raises(ValueError, match="timeout"):
        wait_until(lambda: True, timeout=-1)
    with pytest.raises(ValueError, match="interval"):
        wait_until(lambda: True, interval=0)


def test_process_helpers() -> None:
    """process_alive sees this process and not a reaped child; waiting for it times out."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive(os.getpid())
    assert not process_alive(child.pid)
    wait_processes_gone([child.pid], timeout=0)
    with pytest.raises(TimeoutError, match=f"processes \\[{os.getpid()}\\] to end"):
        wait_processes_gone([os.getpid(), child.pid], timeout=0.05)


def test_exports() -> None:
    """__all__ names every public helper and the fixtures (pytest is installed here)."""
    assert set(testing.__all__) == {
        "ClusterStarter",
        "RunningCluster",
        "client",
        "cluster",
        "engine_pids",
        "hub",
        "process_alive",
        "running_cluster",
        "wait_processes_gone",
        "wait_until",
    }
    assert all(hasattr(testing, name) for name in testing.__all__)


WITHOUT_PYTEST = """
import sys

class NoPytest:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoPytest())
from shoal.hub import testing
print(sorted(testing.__all__), testing.wait_until(lambda: 3))
"""


def test_imports_without_pytest() -> None:
    """Without pytest the helpers import and work; only the fixtures are missing."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("] ")[1].strip() == "3"
    assert "'client'" not in done.stdout
    assert "'wait_until'" in done.stdout


# -- running_cluster ----------------------------------------------------------------------
def test_running_cluster_starts_passes_hub_args_and_ends_everything(tmp_path: Path) -> None:
    """A hub with its engines and a Client; hub arguments reach the hub; all end after."""
    with running_cluster(tmp_path / "c", 2, "--store", "sqlite") as running:
        proc, client = running
        assert isinstance(running, RunningCluster)
        assert running.pid == proc.pid
        assert proc.poll() is None
        assert running.folder == tmp_path / "c"
        assert running.url_file == str(tmp_path / "c" / "hub-client.json")
        assert client.ids == [0, 1]
        pids = engine_pids(client)
        assert sorted(client[:].apply_sync(os.getpid)) == sorted(pids.values())
        assert (tmp_path / "c" / "history.sqlite").exists()  # --store sqlite
        assert "Traceback" not in running.log_tail()
    assert proc.poll() is not None
    assert client._closed
    wait_processes_gone([proc.pid, *pids.values()], timeout=5)


def test_running_cluster_ends_its_processes_when_the_block_raises(tmp_path: Path) -> None:
    """The block raises: the hub and every engine end anyway, and the error comes out."""
    pids: list[int] = []

    def fail_inside() -> None:
        with running_cluster(tmp_path, 1) as (proc, client):
            client.add_engines(1)  # an engine started after the block began ends too
            client.wait_for_engines(2, timeout=60)
            pids.extend([proc.pid, *engine_pids(client).values()])
            raise Boom

    with pytest.raises(Boom):
        fail_inside()
    assert len(pids) == 3
    wait_processes_gone(pids, timeout=5)


def test_running_cluster_reports_a_hub_that_cannot_start(tmp_path: Path) -> None:
    """A hub that exits at once (a bad argument): RuntimeError with its log, nothing left."""
    starting = running_cluster(tmp_path, 1, "--hwm", "0")
    with pytest.raises(RuntimeError, match=r"(?s)failed to start.*hwm"):
        starting.__enter__()
    assert not (tmp_path / "hub-client.json").exists()


def test_cluster_refuses_hub_args_given_as_one_string() -> None:
    """hub_args is a sequence of words: a bare string is refused, naming the fix."""
    with pytest.raises(TypeError, match=r"hub_args must be a sequence of str.*'--timeout'"):
        Cluster(1, profile_dir="unused", hub_args="--timeout 2")  # type: ignore[arg-type]


# -- the fixtures -------------------------------------------------------------------------
def test_client_fixture_is_a_new_client_on_the_shared_cluster(
    client: Client, cluster: RunningCluster
) -> None:
    """``client`` is a Client of the test's own, on the session's 2-engine cluster."""
    assert client is not cluster.client
    assert client.url_file == cluster.url_file
    assert client.ids == [0, 1]
    assert client[:].apply_sync(lambda: 1) == [1, 1]


def test_hub_fixture_is_running_cluster(hub: object) -> None:
    """``hub`` gives running_cluster, to start a cluster of the test's own."""
    assert hub is running_cluster
