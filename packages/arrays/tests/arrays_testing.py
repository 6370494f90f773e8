"""Checks the arrays tests share: engines' object counts, and no data to the client."""

from __future__ import annotations

import gc

import shoal.arrays as sa
from shoal.hub import Client, ObjectHub

__all__ = ["NoGather", "object_counts"]


def object_counts(client: Client) -> dict[int, int]:
    """How many objects each engine holds, once the dropped handles' releases landed."""
    gc.collect()
    client.references.flush()
    return ObjectHub(client).counts()


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
