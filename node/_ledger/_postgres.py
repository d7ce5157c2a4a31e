"""``PostgresLedger``: one ledger shared by several node replicas (psycopg 3).

Each process holds one connection (autocommit; the base class issues ``BEGIN``/``COMMIT``).
``channel_lock`` takes ``pg_advisory_xact_lock`` on the channel id, so two replicas serving
one channel take turns in the database: the second reads the first's record before it signs
``seq + 1``. Reservations and heartbeats are UNLOGGED: in-flight requests die with a server
crash too. A dropped connection is reopened on the next call.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._errors import ConfigError
from ._base import SqlLedger

__all__ = ["PostgresLedger", "redact_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id BYTEA PRIMARY KEY, client TEXT NOT NULL, provider TEXT NOT NULL,
    token TEXT NOT NULL, status INTEGER NOT NULL, model_id BYTEA NOT NULL,
    input_price TEXT NOT NULL, output_price TEXT NOT NULL, deposit TEXT NOT NULL,
    paid TEXT NOT NULL, claimed_input BIGINT NOT NULL, claimed_output BIGINT NOT NULL,
    closes_at BIGINT NOT NULL, session_key TEXT, updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    channel_id BYTEA NOT NULL, seq BIGINT NOT NULL, record TEXT NOT NULL,
    signature BYTEA NOT NULL, usage_root BYTEA NOT NULL, completion_ids TEXT NOT NULL,
    model TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, timings TEXT, proof TEXT,
    PRIMARY KEY (channel_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS records_root ON records (channel_id, usage_root);
CREATE TABLE IF NOT EXISTS receipts (
    channel_id BYTEA NOT NULL, seq BIGINT NOT NULL, input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, usage_root BYTEA NOT NULL, signature BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (channel_id, seq));
CREATE TABLE IF NOT EXISTS claims (
    claim_id BIGSERIAL PRIMARY KEY, tx_hash TEXT, status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, gas_used BIGINT, amount TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS claim_items (
    claim_id BIGINT NOT NULL, channel_id BYTEA NOT NULL, seq BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, status TEXT NOT NULL,
    reason TEXT, PRIMARY KEY (claim_id, channel_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS closing (channel_id BYTEA PRIMARY KEY);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS reservations (
    id BIGSERIAL PRIMARY KEY, channel_id BYTEA NOT NULL, owner TEXT NOT NULL,
    prompt BIGINT NOT NULL, max_tokens BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS reservations_channel ON reservations (channel_id);
CREATE UNLOGGED TABLE IF NOT EXISTS replicas (
    owner TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
"""
_SCHEMA_LOCK = 0x7A11_57C6  # replicas starting together create the schema one at a time
LOCK_TIMEOUT = "10s"  # a channel held longer than this by another replica is an error


class PostgresLedger(SqlLedger):
    """``LedgerStore`` on a PostgreSQL database (``postgresql://user@host:port/db``)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._db = self._connect()
        with self._tx():
            self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            self._db.execute(_SCHEMA)

    def _connect(self) -> Any:
        import psycopg

        try:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            where = redact_url(self.url)
            raise ConfigError(f"cannot connect to the PostgreSQL ledger {where}: {exc}") from exc
        db.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        return db

    def _begin(self) -> None:
        if self._db.closed or self._db.broken:
            self._db = self._connect()
        self._db.execute("BEGIN")

    def _lock_channel(self, channel_id: bytes) -> None:
        key = int.from_bytes(channel_id[:8], "big", signed=True)
        self._execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def _commit(self) -> None:
        self._db.execute("COMMIT")

    def _rollback(self) -> None:
        if not (self._db.closed or self._db.broken):
            self._db.execute("ROLLBACK")

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        if self._depth == 0 and (self._db.closed or self._db.broken):
            self._db = self._connect()
        return self._db.execute(sql.replace("?", "%s"), args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._db.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def redact_url(url: str) -> str:
    """``url`` without its password (for errors and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
