"""Fixtures for the arrays tests: a real cluster (hub process, 3 engines) per module."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their shared checks from arrays_testing.py, beside this file.
sys.path.insert(0, str(Path(__file__).parent))
from arrays_testing import NoGather, object_counts

from shoal.hub import Client, Cluster


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a hub with 3 engines (random ports, a folder of its own), stopped
    after the module, even when a test fails."""
    with Cluster(n=3, profile_dir=str(tmp_path_factory.mktemp("cluster"))) as client:
        client.wait_for_engines(3, timeout=60)
        yield client


@pytest.fixture
def clean(rc: Client) -> Iterator[Client]:
    """The client; after the test, every engine holds as many objects as before it, and
    no array data came to the client unless the test asked for it by gathering."""
    before = object_counts(rc)
    yield rc
    deadline = time.monotonic() + 10
    while (after := object_counts(rc)) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after == before, f"engines' object counts {before} -> {after}: blocks leaked"


__all__ = ["NoGather", "object_counts"]
