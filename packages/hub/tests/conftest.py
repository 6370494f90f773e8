"""Fixtures for the hub tests: a real cluster (a hub process and its engines)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from shoal.hub import Client

READY = "shoal hub ready: "


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait for the hub's ready line in its output file (or its early exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        if READY in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {proc.returncode}:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"the hub printed no ready line within {timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def running_hub(
    folder: Path, n: int = 2, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], Client]]:
    """A hub process with ``n`` engines in ``folder`` and a Client on it; the hub, its
    engines and the client all end when the block ends. ``args`` go to the hub.

    The hub binds random loopback ports and writes its files in ``folder``, so clusters
    of parallel test workers never meet.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = folder / "hub.log"
    with open(log, "wb") as out:  # a file, not a pipe: the engines inherit it, never block
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.hub", "-n", str(n), "--profile-dir", str(folder), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = None
    try:
        _wait_ready(proc, log, timeout=60)
        client = Client(url_file=str(folder / "hub-client.json"))
        client.wait_for_engines(n, timeout=60)
        yield proc, client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
            client.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: What the ``hub`` fixture gives: ``with hub(folder, n=2, *hub_args) as (proc, client)``.
HubStarter = Callable[..., AbstractContextManager[tuple[subprocess.Popen[bytes], Client]]]


@pytest.fixture(scope="session")
def hub() -> HubStarter:
    """Start a hub of your own in a test: ``with hub(tmp_path, 1, "--timeout", "1.0") as
    (proc, client): ...``."""
    return running_hub


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a hub with 2 engines, started for the module and shut down after it."""
    with running_hub(tmp_path_factory.mktemp("cluster")) as (_, client):
        yield client
