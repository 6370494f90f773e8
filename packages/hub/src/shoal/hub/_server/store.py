"""Task history on disk: an SQLite file that outlives the hub (``--store sqlite``).

Only metadata is kept (ids, engine, status, times), never payloads. The routing thread
never waits for the disk: :meth:`HistoryStore.add` queues a record, and a writer thread
of the store's own writes what is queued in one transaction at a time. Reads (history
requests, rare) first wait until what was queued before them is written, then read
through a connection of their own (the database is in WAL mode, so they see every
committed write and never block the writer).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["HistoryStore"]

_FIELDS = ("msg_id", "engine_id", "status", "submitted", "started", "completed")
_BATCH = 10_000  # records written in one transaction at most

log = logging.getLogger("shoal.hub")


class HistoryStore:
    """Finished tasks' metadata in the SQLite database at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path)  # the reading connection (routing thread)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (msg_id TEXT PRIMARY KEY, engine_id INTEGER,"
            " status TEXT, submitted REAL, started REAL, completed REAL)"
        )
        self._db.commit()
        # Records, or an Event a reader waits on (set once what came before is written),
        # or None: the end.
        self._queue: queue.SimpleQueue[tuple[Any, ...] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._writer = threading.Thread(target=self._write, name="shoal-hub-store", daemon=True)
        self._writer.start()

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record; the writer thread writes it soon."""
        self._queue.put(tuple(record[f] for f in _FIELDS))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record queued before this call is written."""
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def _write(self) -> None:
        db = sqlite3.connect(self.path)
        try:
            while True:
                item = self._queue.get()
                rows: list[tuple[Any, ...]] = []
                marks: list[threading.Event] = []
                end = False
                while True:  # what else is queued, up to a batch
                    if item is None:
                        end = True
                    elif isinstance(item, threading.Event):
                        marks.append(item)
                    else:
                        rows.append(item)
                    if end or len(rows) >= _BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if rows:
                    try:
                        with db:
                            db.executemany(
                                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)", rows
                            )
                    except sqlite3.Error:  # a full disk: these are lost, the hub goes on
                        log.exception("lost %d history records (%s)", len(rows), self.path)
                for mark in marks:
                    mark.set()
                if end:
                    return
        finally:
            db.close()

    def get(self, msg_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The records of ``msg_ids`` (None for an unknown id), in order."""
        self.flush()
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(msg_ids), 500):  # SQLite caps the number of parameters
            chunk = list(msg_ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT * FROM tasks WHERE msg_id IN ({marks})", chunk):  # noqa: S608 - only placeholders
                found[row[0]] = dict(zip(_FIELDS, row, strict=True))
        return [found.get(m) for m in msg_ids]

    def all(self, limit: int = 100_000) -> list[dict[str, Any]]:
        """The most recent ``limit`` records, oldest first."""
        self.flush()
        rows = self._db.execute(
            "SELECT * FROM (SELECT rowid, * FROM tasks ORDER BY rowid DESC LIMIT ?) ORDER BY rowid",
            (limit,),
        ).fetchall()
        return [dict(zip(_FIELDS, row[1:], strict=True)) for row in rows]

    def close(self) -> None:
        """Write what is queued, then close."""
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._db.close()
