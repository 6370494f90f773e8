"""Fixtures for the arrays tests: a real cluster (hub process, 3 engines) per module."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

import shoal.arrays as sa
from shoal.hub import Client, Cluster, ObjectHub


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A Client on a hub with 3 engines (random ports, a folder of its own), stopped
    after the module, even when a test fails."""
    with Cluster(n=3, profile_dir=str(tmp_path_factory.mktemp("cluster"))) as client:
        client.wait_for_engines(3, timeout=60)
        yield client


def object_counts(client: Client) -> dict[int, int]:
    """How many objects each engine holds, once the dropped handles' releases landed."""
    gc.collect()
    client._flush_refs()
    return ObjectHub(client).counts()


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


class NoGather:
    """``with NoGather(client):`` fails if array data reaches the client inside the block
    (both shoal.arrays' own count and the bytes the client received)."""

    def __init__(self, client: Client, slack: int = 64 * 1024) -> None:
        self.client = client
        self.slack = slack

    def __enter__(self) -> NoGather:
        self.count = sa.transfers.count
        self.received = self.client.bytes_received
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert sa.transfers.count == self.count, "an operation gathered an array"
        got = self.client.bytes_received - self.received
        assert got <= self.slack, f"{got} bytes reached the client"
