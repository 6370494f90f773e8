"""Fixtures for the arrays tests: a real cluster (hub process, 3 engines) per pytest
process (xdist worker), from shoal.hub.testing, and ``clean``, which checks each test
leaves the engines as it found them. ``hub`` starts a cluster of a test's own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their shared checks from arrays_testing.py, beside this file.
sys.path.insert(0, str(Path(__file__).parent))
from arrays_testing import NoGather, object_counts

from shoal.hub import Client
from shoal.hub.testing import hub, running_cluster, wait_until


@pytest.fixture(scope="session")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a hub with 3 engines (random ports, a folder of its own), shared by
    this process's arrays tests and stopped after them, even when a test fails."""
    with running_cluster(tmp_path_factory.mktemp("arrays-cluster"), 3) as (_, client):
        yield client


@pytest.fixture
def clean(rc: Client) -> Iterator[Client]:
    """The client; after the test, every engine holds as many objects as before it, and
    no array data came to the client unless the test asked for it by gathering."""
    before = object_counts(rc)
    yield rc
    wait_until(
        lambda: object_counts(rc) == before,
        timeout=10,
        message=lambda: (
            f"engines' object counts back at {before}, not {object_counts(rc)} (blocks leaked)"
        ),
    )


__all__ = ["NoGather", "hub", "object_counts"]
