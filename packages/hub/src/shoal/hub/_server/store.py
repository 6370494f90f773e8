"""Task history on disk: an SQLite file that outlives the hub (``--store sqlite``).

Only metadata is kept (ids, engine, status, times), never payloads. Records are
buffered and written in one transaction per heartbeat, so the routing loop does not wait
for the disk for each task.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["HistoryStore"]

_FIELDS = ("msg_id", "engine_id", "status", "submitted", "started", "completed")


class HistoryStore:
    """Finished tasks' metadata in the SQLite database at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (msg_id TEXT PRIMARY KEY, engine_id INTEGER,"
            " status TEXT, submitted REAL, started REAL, completed REAL)"
        )
        self._db.commit()
        self._buffer: list[tuple[Any, ...]] = []

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record; :meth:`flush` writes it."""
        self._buffer.append(tuple(record[f] for f in _FIELDS))

    def flush(self) -> None:
        """Write the queued records in one transaction."""
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?)", rows)

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
        self.flush()
        self._db.close()
