"""The SQLite history store: written by its own thread, read after what came before."""

from __future__ import annotations

from pathlib import Path

from shoal.hub._server.store import HistoryStore


def _record(i: int) -> dict[str, object]:
    return {
        "msg_id": f"m{i}",
        "engine_id": i % 3,
        "status": "ok",
        "submitted": float(i),
        "started": float(i) + 0.5,
        "completed": float(i) + 1.0,
    }


def test_reads_see_every_record_added_before_them(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "history.sqlite"))
    try:
        for i in range(25_000):  # more than one batch
            store.add(_record(i))
        got = store.get(["m0", "m24999", "nope"])
        assert got[0] == _record(0)
        assert got[1] == _record(24_999)
        assert got[2] is None
        assert len(store.all(limit=30_000)) == 25_000
        assert [r["msg_id"] for r in store.all(limit=2)] == ["m24998", "m24999"]
    finally:
        store.close()


def test_close_writes_what_is_queued_and_the_file_outlives_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite")
    store = HistoryStore(path)
    for i in range(100):
        store.add(_record(i))
    store.close()
    again = HistoryStore(path)
    try:
        assert len(again.all()) == 100
    finally:
        again.close()
