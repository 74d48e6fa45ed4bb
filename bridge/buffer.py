"""The store-and-forward buffer: state changes kept on disk while the broker is away.

An embedded SQLite database (no server to run) in WAL mode. Blocking: the bridge
calls it from one worker thread of its own, never from the event loop.

* `append()` only collects a change in memory; `flush()` writes everything collected,
  deletes what was acknowledged (`ack()`), and enforces the bounds, all in ONE
  transaction: one commit per flush, however many changes (an SD card must not
  see one commit per value). A change is acknowledged by the store once a flush
  that holds it has committed; `synchronous=FULL` makes that commit survive a
  power cut. A kill -9 loses only what was still collected in memory.
* Bounded by bytes and by age: past `max_bytes` (what the records cost, estimated
  so that the database file and its WAL stay within the bound) or `max_age` the
  oldest records go, counted in `stats`.
* Ids only grow (AUTOINCREMENT), so replay in id order is replay in order of
  arrival, per device too, across restarts.
* `meta` keeps small values that must survive a restart (the Sparkplug bdSeq).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.stats import BufferStats

__all__ = ["MIN_BYTES", "BufferStats", "BufferStore", "Record", "StoreError"]

MIN_BYTES = 256 * 1024  # smallest useful max_bytes: room for the WAL and a few pages
PAGE_SIZE = 4096
# What one record costs on disk beyond its device name and body: the row header,
# the rowid, the cell pointer and the free space B-tree pages keep.
ROW_OVERHEAD = 24
FILL = 0.80  # B-tree leaf pages filled in id order end up ~90 % full; keep a margin


class StoreError(Exception):
    """The buffer cannot be opened or written (disk full, permissions, corrupt file)."""


@dataclass(frozen=True)
class Record:
    id: int
    device: str
    time: float  # wall-clock seconds of the change
    values: dict[str, Any]

    @property
    def cost(self) -> int:
        return record_cost(self.device, _body(self.values))


def _body(values: Mapping[str, Any]) -> bytes:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()


def record_cost(device: str, body: bytes) -> int:
    return len(device.encode()) + len(body) + 8 + ROW_OVERHEAD


@dataclass
class BufferStore:
    path: Path
    max_bytes: int
    max_age: float  # seconds
    clock: Callable[[], float] = time.time
    stats: BufferStats = field(default_factory=BufferStats)
    _db: sqlite3.Connection | None = None
    _pending: list[tuple[str, float, bytes]] = field(default_factory=list)
    _acked: list[int] = field(default_factory=list)

    # -- sizing -------------------------------------------------------------

    @property
    def wal_limit(self) -> int:
        """Bytes the WAL may grow to before a checkpoint (and is truncated to after)."""
        return max(8 * PAGE_SIZE, min(4 * 1024 * 1024, self.max_bytes // 8))

    @property
    def data_budget(self) -> int:
        """Estimated record bytes allowed: what is left of max_bytes after the WAL
        (twice: it may hold a whole checkpoint interval), the schema pages and the
        pages B-trees leave partly empty."""
        return int((self.max_bytes - 2 * self.wal_limit - 4 * PAGE_SIZE) * FILL)

    # -- life ------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create its folder: {exc}") from None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode ({mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={self.wal_limit // PAGE_SIZE}")
            db.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS records ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " device TEXT NOT NULL, at REAL NOT NULL, body BLOB NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(device AS BLOB)) + length(body)), 0)"
                " FROM records"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._db = db
        self.stats.records = int(count)
        self.stats.bytes = int(size) + int(count) * (8 + ROW_OVERHEAD)

    def close(self) -> None:
        if self._db is None:
            return
        try:
            self.flush()
        finally:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the buffer is not open")
        return self._db

    # -- writing ---------------------------------------------------------------

    def append(self, device: str, at: float, values: Mapping[str, Any]) -> None:
        """Collect one change (written by the next `flush`)."""
        self._pending.append((device, at, _body(values)))
        self.stats.appended += 1

    @property
    def collected(self) -> int:
        """Changes waiting for the next flush."""
        return len(self._pending)

    def ack(self, record_id: int) -> None:
        """The broker acknowledged this record: delete it at the next flush."""
        self._acked.append(record_id)

    def flush(self) -> int:
        """Write what was collected, delete what was acknowledged, apply the bounds: one
        transaction, or none when there is nothing to do. Returns the records evicted."""
        pending, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        now = self.clock()
        oldest = now - self.max_age
        expired = self.stats.records > 0 and self._oldest_time() < oldest
        if not pending and not acked and not expired and self.stats.bytes <= self.data_budget:
            return 0
        db = self.db
        started = time.perf_counter()
        evicted = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            if acked:
                rows = db.execute(
                    "DELETE FROM records WHERE id IN (SELECT value FROM json_each(?))"
                    " RETURNING length(CAST(device AS BLOB)) + length(body)",
                    (json.dumps(acked),),
                ).fetchall()
                self.stats.replayed += len(rows)
                self.stats.records -= len(rows)
                self.stats.bytes -= sum(int(r[0]) + 8 + ROW_OVERHEAD for r in rows)
            if pending:
                db.executemany("INSERT INTO records (device, at, body) VALUES (?, ?, ?)", pending)
                self.stats.records += len(pending)
                self.stats.bytes += sum(record_cost(d, b) for d, _, b in pending)
            evicted += self._evict(oldest)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._pending = pending + self._pending  # kept for the next try
            self._acked = acked + self._acked
            self._recount()
            raise StoreError(f"{self.path}: {exc}") from None
        self.stats.commits += 1
        self.stats.commit_seconds += time.perf_counter() - started
        return evicted

    def _oldest_time(self) -> float:
        row = self.db.execute("SELECT at FROM records ORDER BY id LIMIT 1").fetchone()
        return float(row[0]) if row else self.clock()

    def _recount(self) -> None:
        count, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(device AS BLOB)) + length(body)), 0)"
            " FROM records"
        ).fetchone()
        self.stats.records = int(count)
        self.stats.bytes = int(size) + int(count) * (8 + ROW_OVERHEAD)

    def _evict(self, oldest: float) -> int:
        db = self.db
        evicted = 0
        rows = db.execute(
            "DELETE FROM records WHERE at < ?"
            " RETURNING length(CAST(device AS BLOB)) + length(body)",
            (oldest,),
        ).fetchall()
        if rows:
            evicted += len(rows)
            self.stats.dropped_age += len(rows)
            self.stats.records -= len(rows)
            self.stats.bytes -= sum(int(r[0]) + 8 + ROW_OVERHEAD for r in rows)
        budget = self.data_budget
        while self.stats.bytes > budget and self.stats.records > 0:
            excess = self.stats.bytes - budget
            # Enough of the oldest rows to cover the excess (estimated from the mean).
            mean = max(1, self.stats.bytes // max(1, self.stats.records))
            n = max(1, min(self.stats.records, excess // mean + 1))
            rows = db.execute(
                "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY id LIMIT ?)"
                " RETURNING length(CAST(device AS BLOB)) + length(body)",
                (n,),
            ).fetchall()
            if not rows:
                break
            evicted += len(rows)
            self.stats.records -= len(rows)
            self.stats.bytes -= sum(int(r[0]) + 8 + ROW_OVERHEAD for r in rows)
        self.stats.dropped += evicted
        return evicted

    # -- reading ---------------------------------------------------------------

    def oldest(self, limit: int, after: int = 0) -> list[Record]:
        """Up to `limit` committed records with ids above `after`, oldest first."""
        rows = self.db.execute(
            "SELECT id, device, at, body FROM records WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Record(int(i), str(d), float(a), json.loads(b)) for i, d, a, b in rows]

    def disk_bytes(self) -> int:
        """What the database takes on disk now: the file, its WAL and shared memory."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    # -- small values that survive a restart ----------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
