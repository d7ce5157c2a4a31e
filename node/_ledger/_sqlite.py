"""``SqliteLedger``: the embedded default, one process's ledger in one SQLite file.

One connection in WAL mode with ``synchronous=FULL`` (a commit is fsync'd before it returns,
so a receipt acknowledged over HTTP survives a crash). Every write transaction is
``BEGIN IMMEDIATE``: it holds the whole file, which is this store's per-channel lock.
Reservations, replica heartbeats and leases are TEMP tables: a SQLite ledger belongs to one
process, so they need no fsync and vanish with it (several replicas need PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ._base import SqlLedger

__all__ = ["SqliteLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id BLOB PRIMARY KEY, client TEXT NOT NULL, provider TEXT NOT NULL,
    token TEXT NOT NULL, status INTEGER NOT NULL, model_id BLOB NOT NULL,
    input_price TEXT NOT NULL, output_price TEXT NOT NULL, deposit TEXT NOT NULL,
    paid TEXT NOT NULL, claimed_input INTEGER NOT NULL, claimed_output INTEGER NOT NULL,
    closes_at INTEGER NOT NULL, session_key TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    channel_id BLOB NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL,
    signature BLOB NOT NULL, usage_root BLOB NOT NULL, completion_ids TEXT NOT NULL,
    model TEXT NOT NULL, created_at REAL NOT NULL, timings TEXT, proof TEXT,
    PRIMARY KEY (channel_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS records_root ON records (channel_id, usage_root);
CREATE TABLE IF NOT EXISTS receipts (
    channel_id BLOB NOT NULL, seq INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, usage_root BLOB NOT NULL, signature BLOB NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (channel_id, seq));
CREATE TABLE IF NOT EXISTS claims (
    claim_id INTEGER PRIMARY KEY AUTOINCREMENT, tx_hash TEXT, status TEXT NOT NULL,
    created_at REAL NOT NULL, gas_used INTEGER, amount TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS claim_items (
    claim_id INTEGER NOT NULL, channel_id BLOB NOT NULL, seq INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT, PRIMARY KEY (claim_id, channel_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS closing (channel_id BLOB PRIMARY KEY);
CREATE TEMP TABLE reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel_id BLOB NOT NULL, owner TEXT NOT NULL,
    prompt INTEGER NOT NULL, max_tokens INTEGER NOT NULL);
CREATE INDEX temp.reservations_channel ON reservations (channel_id);
CREATE TEMP TABLE replicas (owner TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TEMP TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
"""


class SqliteLedger(SqlLedger):
    """``LedgerStore`` on one SQLite file (``":memory:"`` for tests)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = str(path)
        self.url = self.path
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _lock_channel(self, channel_id: bytes) -> None:
        pass  # BEGIN IMMEDIATE already holds the whole file

    def _commit(self) -> None:
        self._db.execute("COMMIT")

    def _rollback(self) -> None:
        self._db.execute("ROLLBACK")

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(sql, args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
