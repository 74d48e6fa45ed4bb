"""The store-and-forward buffer (bridge.buffer) on a real SQLite file in tmp_path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.buffer import BufferStore, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, max_bytes: int = 4 * 1024 * 1024, max_age: float = 1e9) -> BufferStore:
    s = BufferStore(tmp_path / "buf" / "b.db", max_bytes, max_age, clock=Clock())
    s.open()
    return s


def test_wal_mode_and_batched_commits(tmp_path: Path) -> None:
    s = store(tmp_path)
    mode = s.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    for i in range(500):
        s.append(f"dev{i % 5}", 1000.0 + i, {"n": i})
    assert s.stats.records == 0 and s.collected == 500  # nothing written yet
    s.flush()
    assert s.stats.commits == 1 and s.stats.records == 500
    assert s.flush() == 0 and s.stats.commits == 1  # nothing to do: no transaction
    s.close()


def test_replay_order_and_delete_after_ack(tmp_path: Path) -> None:
    s = store(tmp_path)
    for i in range(10):
        s.append("a" if i % 2 else "b", 100.0 + i, {"n": i, "x": None, "t": "é"})
    s.flush()
    first = s.oldest(4)
    assert [r.values["n"] for r in first] == [0, 1, 2, 3]
    assert first[0].values == {"n": 0, "x": None, "t": "é"} and first[0].time == 100.0
    rest = s.oldest(100, after=first[-1].id)
    assert [r.values["n"] for r in rest] == [4, 5, 6, 7, 8, 9]
    for r in first:
        s.ack(r.id)
    assert s.stats.records == 10  # deleted only at the next flush
    s.flush()
    assert s.stats.records == 6 and s.stats.replayed == 4
    assert [r.values["n"] for r in s.oldest(100)] == [4, 5, 6, 7, 8, 9]
    s.close()
    again = store(tmp_path)  # survives a restart, ids keep growing
    assert again.stats.records == 6
    again.append("a", 200.0, {"n": 10})
    again.flush()
    ids = [r.id for r in again.oldest(100)]
    assert ids == sorted(ids) and again.oldest(100)[-1].values == {"n": 10}


def test_ids_never_reused_after_everything_is_deleted(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.append("a", 1.0, {"n": 1})
    s.flush()
    (r,) = s.oldest(10)
    s.ack(r.id)
    s.flush()
    s.append("a", 2.0, {"n": 2})
    s.flush()
    assert s.oldest(10)[0].id > r.id


def test_bounded_by_bytes_oldest_go_first(tmp_path: Path) -> None:
    max_bytes = 512 * 1024
    s = store(tmp_path, max_bytes=max_bytes)
    body = {"value": 12345.678, "text": "x" * 40}
    for batch in range(60):
        for i in range(100):
            s.append(f"device-{i:03d}", batch + i / 1000, {**body, "n": batch * 100 + i})
        s.flush()
    assert s.stats.dropped > 0
    assert s.stats.bytes <= s.data_budget
    kept = s.oldest(100_000)
    assert kept[-1].values["n"] == 5999  # the newest survive
    ns = [r.values["n"] for r in kept]
    assert ns == list(range(ns[0], 6000))  # a contiguous tail: the oldest went
    s.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    assert s.disk_bytes() <= max_bytes, (s.disk_bytes(), max_bytes)
    s.close()


def test_bounded_by_age(tmp_path: Path) -> None:
    s = store(tmp_path, max_age=60)
    clock = s.clock
    assert isinstance(clock, Clock)
    s.append("a", clock.now - 120, {"n": 1})
    s.append("a", clock.now - 30, {"n": 2})
    assert s.flush() == 1
    assert [r.values["n"] for r in s.oldest(10)] == [2]
    assert s.stats.dropped == 1 and s.stats.dropped_age == 1
    clock.now += 100  # nothing new: the flush still expires the old one
    assert s.flush() == 1 and s.stats.records == 0


def test_meta_survives_a_restart(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.set_meta("bdSeq", "7")
    s.set_meta("bdSeq", "8")
    s.close()
    assert store(tmp_path).get_meta("bdSeq") == "8"


def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        BufferStore(blocker / "b.db", 1 << 20, 60).open()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        BufferStore(junk, 1 << 20, 60).open()


def test_a_failed_flush_keeps_its_changes(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.append("a", 1.0, {"n": 1})
    other = sqlite3.connect(s.path, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    s.db.execute("PRAGMA busy_timeout=0")
    with pytest.raises(StoreError):
        s.flush()
    other.rollback()
    other.close()
    s.flush()
    assert [r.values for r in s.oldest(10)] == [{"n": 1}]
