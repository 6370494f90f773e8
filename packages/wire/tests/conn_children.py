"""Targets for the multiprocessing children of test_connection (importable by name)."""

from __future__ import annotations

import os
from typing import Any

from shoal.wire._connection import Connection


def echo(conn: Connection) -> None:
    """Send back every object received, until the peer closes."""
    while True:
        try:
            obj = conn.recv()
        except EOFError:
            break
        conn.send(obj)
    conn.close()


def reply_and_exit(conn: Connection) -> None:
    """Answer one message and return *without* closing: the exit must flush the reply."""
    obj: Any = conn.recv()
    conn.send(("got", obj, os.getpid()))


def ready_then_block(conn: Connection) -> None:
    """Say "ready", then wait for a message that never comes (the test kills us)."""
    conn.send("ready")
    conn.recv()


def exit_now() -> None:
    """Do nothing: the process ends at once (its sentinel becomes ready)."""


def echo_one_way(r: Connection, w: Connection) -> None:
    """Forward one object from the reading end ``r`` to the writing end ``w``."""
    w.send(r.recv())
    w.close()
