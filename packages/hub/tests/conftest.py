"""Fixtures for the hub tests: a real cluster (a hub process and its engines)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a hub with 2 engines, started for the module and shut down after it.

    The hub binds random loopback ports and writes its files in a private folder, so
    clusters of parallel test workers never meet.
    """
    folder = tmp_path_factory.mktemp("cluster")
    log = folder / "hub.log"
    with open(log, "wb") as out:  # a file, not a pipe: the engines inherit it, never block
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.hub", "-n", "2", "--profile-dir", str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(proc, log, timeout=60)
        client = Client(url_file=str(folder / "hub-client.json"))
        try:
            client.wait_for_engines(2, timeout=60)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.shutdown()
            client.close()
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
